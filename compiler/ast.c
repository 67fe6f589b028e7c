// ast.c — syntax tree nodes and their printed form (`keel emit ast`, and the parser tests).
//
// grammar/parser.y builds the tree with ast_new; keel.h says which fields each kind uses.
//
// ast_dump prints one S-expression per top-level definition. Expressions stay on one line;
// each statement or line of a body goes on its own line, indented two spaces per level:
//
//   (layerdef dense (params units)
//     (param weight (dims units in) (init (call uniform (/ (- 1) (call sqrt in)) ...)))
//     (assign out (+ (@ x (call transpose weight)) bias)))
//   (train mlp fashion
//     (line optimizer adamw (= lr 0.001))
//     (line schedule warmup 500 then cosine))
//
// The forms, by kind:
//   num       256, 0.001, 1e-05          printf %g
//   str       "a \"b\"\n"                 escapes \" \\ \n \t written back
//   ident     x                           dims 1x28x28 (a shape literal: its text)
//   unary     (- x)                       binary (op lhs rhs): + - * / @ ^ < > == != <= >=
//   ternary   (? cond a b)                call (call f args...)
//   named     (= name value)              then: then
//   assign    (assign name expr)          state (state name expr)
//   param     (param name (dims d...) (init expr)); no (init) when none; buffer alike
//   mode      (mode train stmts...)       line (line word items...)
//   data      (data name lines...)        network (network name lines...)
//   train     (train name data lines...)
//   layerdef  (layerdef name (params p...) stmts...), optdef alike
//   lossdef   (lossdef name (params p...) expr), scheddef alike

#include "keel.h"

Node *ast_new(NodeKind kind, Pos pos) {
  Node *n = arena_alloc(sizeof(Node));
  n->kind = kind;
  n->pos = pos;
  n->depth = 1;  // a leaf's; grammar/parser.y sets an inner node's from its children
  return n;
}

// ORDER NodeKind
static const char *kind_names[] = {
    "num",      "str",     "ident",   "dims",     "unary",   "binary",
    "ternary",  "call",    "named",   "then",     "assign",  "param",
    "buffer",   "state",   "mode",    "line",     "data",    "network",
    "layerdef", "lossdef", "optdef",  "scheddef", "train",
};
_Static_assert(sizeof(kind_names) / sizeof(kind_names[0]) == ND_TRAIN + 1,
               "kind_names must follow NodeKind");

const char *ast_kind_name(NodeKind kind) {
  if ((unsigned)kind > ND_TRAIN)
    return "?";
  return kind_names[kind];
}

static const char *op_name(int op) {
  switch (op) {
  case OPC_EQ: return "==";
  case OPC_NE: return "!=";
  case OPC_LE: return "<=";
  case OPC_GE: return ">=";
  case '+': return "+";
  case '-': return "-";
  case '*': return "*";
  case '/': return "/";
  case '@': return "@";
  case '^': return "^";
  case '<': return "<";
  case '>': return ">";
  default: return "?";
  }
}

static void dump_str(FILE *out, const char *s) {
  fputc('"', out);
  for (; *s; s++) {
    switch (*s) {
    case '"': fputs("\\\"", out); break;
    case '\\': fputs("\\\\", out); break;
    case '\n': fputs("\\n", out); break;
    case '\t': fputs("\\t", out); break;
    default: fputc(*s, out);
    }
  }
  fputc('"', out);
}

static void dump_expr(FILE *out, Node *n);

// Each node of a list, a space before each.
static void dump_exprs(FILE *out, Node *list) {
  for (Node *n = list; n; n = n->next) {
    fputc(' ', out);
    dump_expr(out, n);
  }
}

// An expression, a parameter, an item or a call argument: on one line.
static void dump_expr(FILE *out, Node *n) {
  switch (n->kind) {
  case ND_NUM:
    fprintf(out, "%g", n->num);
    return;
  case ND_STR:
    dump_str(out, n->name);
    return;
  case ND_IDENT:
  case ND_DIMS:
    fputs(n->name, out);
    return;
  case ND_THEN:
    fputs("then", out);
    return;
  case ND_UNARY:
    fprintf(out, "(%s ", op_name(n->op));
    dump_expr(out, n->lhs);
    fputc(')', out);
    return;
  case ND_BINARY:
    fprintf(out, "(%s ", op_name(n->op));
    dump_expr(out, n->lhs);
    fputc(' ', out);
    dump_expr(out, n->rhs);
    fputc(')', out);
    return;
  case ND_TERNARY:
    fputs("(? ", out);
    dump_expr(out, n->cond);
    fputc(' ', out);
    dump_expr(out, n->lhs);
    fputc(' ', out);
    dump_expr(out, n->rhs);
    fputc(')', out);
    return;
  case ND_CALL:
    fprintf(out, "(call %s", n->name);
    dump_exprs(out, n->args);
    fputc(')', out);
    return;
  case ND_NAMED:
    fprintf(out, "(= %s ", n->name);
    dump_expr(out, n->lhs);
    fputc(')', out);
    return;
  default:
    fprintf(out, "(%s?)", ast_kind_name(n->kind));
    return;
  }
}

static void dump_node(FILE *out, Node *n, int indent);

// The nodes of a body, each on a new line, indented.
static void dump_body(FILE *out, Node *body, int indent) {
  for (Node *n = body; n; n = n->next) {
    fprintf(out, "\n%*s", indent, "");
    dump_node(out, n, indent);
  }
}

// A definition, statement or line; its body goes on the following lines.
static void dump_node(FILE *out, Node *n, int indent) {
  switch (n->kind) {
  case ND_ASSIGN:
  case ND_STATE:
    fprintf(out, "(%s %s ", ast_kind_name(n->kind), n->name);
    dump_expr(out, n->lhs);
    fputc(')', out);
    return;
  case ND_PARAM:
  case ND_BUFFER:
    fprintf(out, "(%s %s (dims", ast_kind_name(n->kind), n->name);
    dump_exprs(out, n->args);
    fputc(')', out);
    if (n->lhs) {
      fputs(" (init ", out);
      dump_expr(out, n->lhs);
      fputc(')', out);
    }
    fputc(')', out);
    return;
  case ND_MODE:
    fprintf(out, "(mode %s", n->name);
    dump_body(out, n->body, indent + 2);
    fputc(')', out);
    return;
  case ND_LINE:
    fprintf(out, "(line %s", n->name);
    dump_exprs(out, n->args);
    fputc(')', out);
    return;
  case ND_DATA:
  case ND_NETWORK:
    fprintf(out, "(%s %s", ast_kind_name(n->kind), n->name);
    dump_body(out, n->body, indent + 2);
    fputc(')', out);
    return;
  case ND_TRAIN:
    fprintf(out, "(train %s %s", n->name, n->name2);
    dump_body(out, n->body, indent + 2);
    fputc(')', out);
    return;
  case ND_LAYERDEF:
  case ND_OPTDEF:
  case ND_LOSSDEF:
  case ND_SCHEDDEF:
    fprintf(out, "(%s %s (params", ast_kind_name(n->kind), n->name);
    dump_exprs(out, n->args);
    fputc(')', out);
    if (n->lhs) {
      fputc(' ', out);
      dump_expr(out, n->lhs);
    }
    dump_body(out, n->body, indent + 2);
    fputc(')', out);
    return;
  default:
    dump_expr(out, n);
    return;
  }
}

void ast_dump(FILE *out, Node *prog) {
  for (Node *n = prog; n; n = n->next) {
    dump_node(out, n, 0);
    fputc('\n', out);
  }
}
