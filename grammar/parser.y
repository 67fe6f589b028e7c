// parser.y — the Bison grammar of .nn scripts: tokens from grammar/lexer.re in, an AST out.
//
// The parser is pure: all its state (the lexer's cursor, the result) lives in one Parser
// struct passed to yyparse and yylex, so there are no globals. Every symbol carries a Pos
// (api.location.type), and a rule's location is its first symbol's, so @2 in a binary rule
// is the operator's position. Actions only build AST nodes (ast.c); lists are built in
// order with a head/tail pair (NodeList) and handed over as their head.
//
// Newlines are tokens (T_NEWLINE) outside ( ) and [ ]: they end lines, statements and
// definitions. Inside ( ) and [ ] the lexer drops them, so a call may span lines. Blank
// lines and comments reach the parser as runs of T_NEWLINE (nls below).
//
// The first syntax error goes through error_at and ends the process: no error recovery.
// Messages read `unexpected 'relu', expected '='`; see yyreport_syntax_error at the end.
// parse.lac full makes the expected-token lists exact.
//
// The grammar has no conflicts (%expect 0) beyond those that precedence settles: the
// operator table below, and NOCALL (see primary).

%require "3.8"
%define api.pure full
%define api.location.type {Pos}
%define parse.error custom
%define parse.lac full
%locations
%expect 0
%param {Parser *ps}

%code requires {
#include "keel.h"

// A list being built: items are appended at tail, the finished list is head.
typedef struct {
  Node *head, *tail;
} NodeList;

// A bracket the lexer has seen open and not yet close: '{', '(' or '['.
typedef struct {
  char ch;     // the opening character
  int line;    // where it opened, for "expected '}' to close the block opened at line 3"
  bool cmp;    // the level around it had seen a comparison (Parser.cmp, saved)
} OpenBracket;

// The state of one parse, shared by yyparse and yylex (grammar/lexer.re).
typedef struct Parser {
  const char *file;        // the file name, for Pos
  const char *src;         // the whole text, for Pos
  const char *lim;         // the terminating NUL: the end of input
  const char *cur, *mar;   // re2c's cursor and marker
  const char *line_start;  // where the current line begins, for columns
  int line;                // the current line, from 1
  int depth;               // ( and [ nesting: newlines inside are not tokens
  const char *tok;         // the text of the last token returned, for syntax errors
  Pos tok_end;             // just past the last token other than a newline (line 0: none
                           // yet): where end of file is reported
  OpenBracket *open;       // the brackets open now, innermost last
  int nopen, capopen;
  bool cmp;                // a comparison operator came at this bracket level since the
                           // last token that ends an expression (, ? : = newline keyword)
  bool chained;            // the last token is a comparison and cmp was already set
  Node *result;            // the list of top-level definitions
} Parser;
}

%code provides {
// grammar/lexer.re: the next token; fills *lval and *loc.
int yylex(YYSTYPE *lval, YYLTYPE *loc, Parser *ps);
}

%code {
#include <string.h>

// A rule's position is its first symbol's (an empty rule takes the previous symbol's).
#define YYLLOC_DEFAULT(Cur, Rhs, N) \
  do {                              \
    if (N)                          \
      (Cur) = YYRHSLOC(Rhs, 1);     \
    else                            \
      (Cur) = YYRHSLOC(Rhs, 0);     \
  } while (0)

static void yyerror(YYLTYPE *loc, Parser *ps, const char *msg);

static Node *node(NodeKind kind, Pos pos, const char *name) {
  Node *n = ast_new(kind, pos);
  n->name = name;
  return n;
}

// Expressions nest at most MAX_DEPTH nodes deep. The passes after the parser (lowering,
// ast_dump) walk them recursively, so a script with `out = x + x + ...` of 200,000 terms (a
// left-deep tree; Bison's own stack stays shallow) would overflow their C stack. Each
// expression node's depth is 1 + its deepest child's (a leaf's is 1, from ast_new); the node
// that passes the limit is reported at its position (a binary node's is its operator's).
#define MAX_DEPTH 1000

static int max_depth(int d, Node *n) { return n && n->depth > d ? n->depth : d; }

// Sets the depth of the expression node n from its children (lhs, rhs, cond, and the args of
// a call); reports n when it is too deep.
static Node *nest(Node *n) {
  int d = max_depth(max_depth(max_depth(0, n->lhs), n->rhs), n->cond);
  for (Node *a = n->args; a; a = a->next)
    d = max_depth(d, a);
  n->depth = d + 1;
  if (n->depth > MAX_DEPTH)
    error_at(n->pos, "expression nested too deeply (more than %d levels)", MAX_DEPTH);
  return n;
}

static Node *binary(int op, Pos pos, Node *lhs, Node *rhs) {
  Node *n = ast_new(ND_BINARY, pos);
  n->op = op;
  n->lhs = lhs;
  n->rhs = rhs;
  return nest(n);
}

// `name = value`: a named parameter, argument or item.
static Node *named(Pos pos, const char *name, Node *value) {
  Node *n = node(ND_NAMED, pos, name);
  n->lhs = value;
  return nest(n);
}

// A definition or statement with a name, arguments, a value and a body.
static Node *def(NodeKind kind, Pos pos, const char *name, Node *args, Node *lhs, Node *body) {
  Node *n = node(kind, pos, name);
  n->args = args;
  n->lhs = lhs;
  n->body = body;
  return n;
}

static NodeList list_new(void) { return (NodeList){NULL, NULL}; }

static NodeList list_add(NodeList l, Node *n) {
  if (l.tail)
    l.tail->next = n;
  else
    l.head = n;
  l.tail = n;
  return l;
}

static NodeList list_cat(NodeList a, NodeList b) {
  if (!a.head)
    return b;
  if (b.head) {
    a.tail->next = b.head;
    a.tail = b.tail;
  }
  return a;
}
}

%union {
  double num;
  const char *str;
  Node *node;
  NodeList list;
}

// Tokens. Single-character operators and brackets are their own character.
%token T_NEWLINE
%token <num> T_NUMBER
%token <str> T_IDENT T_STRING T_DIMS
%token T_DATA "data" T_NETWORK "network" T_LAYER "layer" T_LOSS "loss"
%token T_OPTIMIZER "optimizer" T_SCHEDULE "schedule" T_TRAIN "train" T_EVAL "eval"
%token T_ON "on" T_THEN "then" T_PARAM "param" T_BUFFER "buffer" T_STATE "state"
%token T_INIT "init"
%token T_EQ "==" T_NE "!=" T_LE "<=" T_GE ">="

%type <node> definition param line item stmt_block line_block init state_item
%type <node> expr iexpr primary arg
%type <list> definitions params param_list lines items stmts stmt state_list
%type <list> args arg_list dims
%type <str> word

// Precedence, lowest first. NOCALL and '(' settle `f (x)` in an item list (see primary).
%precedence NOCALL
%precedence '('
%right '?' ':'
%nonassoc '<' '>' "==" "!=" "<=" ">="
%left '+' '-'
%left '*' '/' '@'
%precedence UMINUS
%right '^'

%%

// ---------------------------------------------------------------------------------------------
// A file: definitions separated by newlines, with blank lines around them.

file
  : opt_nls                           { ps->result = NULL; }
  | opt_nls definitions opt_nls       { ps->result = $2.head; }
  ;

definitions
  : definition                        { $$ = list_add(list_new(), $1); }
  | definitions nls definition        { $$ = list_add($1, $3); }
  ;

// One or more newlines (a blank line or a comment line is one more).
nls
  : T_NEWLINE
  | nls T_NEWLINE
  ;

opt_nls
  : %empty
  | nls
  ;

// ---------------------------------------------------------------------------------------------
// Top-level definitions. A definition's position is its name's.

definition
  : "data" T_IDENT line_block         { $$ = def(ND_DATA, @2, $2, NULL, NULL, $3); }
  | "network" T_IDENT line_block      { $$ = def(ND_NETWORK, @2, $2, NULL, NULL, $3); }
  | "train" T_IDENT "on" T_IDENT line_block {
      $$ = def(ND_TRAIN, @2, $2, NULL, NULL, $5);
      $$->name2 = $4;
    }
  | "layer" T_IDENT '(' params ')' stmt_block {
      $$ = def(ND_LAYERDEF, @2, $2, $4.head, NULL, $6);
    }
  | "optimizer" T_IDENT '(' params ')' stmt_block {
      $$ = def(ND_OPTDEF, @2, $2, $4.head, NULL, $6);
    }
  | "loss" T_IDENT '(' params ')' '=' expr {
      $$ = def(ND_LOSSDEF, @2, $2, $4.head, $7, NULL);
    }
  | "schedule" T_IDENT '(' params ')' '=' expr {
      $$ = def(ND_SCHEDDEF, @2, $2, $4.head, $7, NULL);
    }
  ;

// Parameters of a definition: `units`, `momentum=0.1`; possibly none.
params
  : %empty                            { $$ = list_new(); }
  | param_list                        { $$ = $1; }
  ;

param_list
  : param                             { $$ = list_add(list_new(), $1); }
  | param_list ',' param              { $$ = list_add($1, $3); }
  ;

param
  : T_IDENT                           { $$ = node(ND_IDENT, @1, $1); }
  | T_IDENT '=' expr                  { $$ = named(@1, $1, $3); }
  ;

// ---------------------------------------------------------------------------------------------
// Lines, the body of data, network and train blocks: a word, then items side by side.
//
// Items are juxtaposed, with no separator, so `dense 256 relu` must not read as one
// expression. Two restrictions keep that LALR(1) with no conflicts:
//   - an item does not start with unary minus (`a -1` is `a - 1`; write `(-1)`), and has no
//     `?:` at its top: iexpr below is expr without those two forms at its left edge;
//   - a name followed by '(' is always a call: `f (x)` is f(x), not the items f and (x).
//     This one is a shift/reduce choice that %prec NOCALL settles in favour of the call.
// An operator between two items joins them: `scale 1/255` is one item, (/ 1 255).
// A named item's value is a whole expr: the '=' before it delimits its left edge, so
// `weight_decay=-0.01` (and `every=a ? 1 : 2`) need no parentheses. A '-' where an item
// starts gets its own message (yyreport_syntax_error): `epochs -1` → write (-1).

line_block
  : '{' opt_nls '}'                   { $$ = NULL; }
  | '{' opt_nls lines opt_nls '}'     { $$ = $3.head; }
  ;

lines
  : line                              { $$ = list_add(list_new(), $1); }
  | lines nls line                    { $$ = list_add($1, $3); }
  ;

line
  : word items                        { $$ = def(ND_LINE, @1, $1, $2.head, NULL, NULL); }
  ;

// The keywords that may start a line read as their own text.
word
  : T_IDENT                           { $$ = $1; }
  | "layer"                           { $$ = "layer"; }
  | "loss"                            { $$ = "loss"; }
  | "optimizer"                       { $$ = "optimizer"; }
  | "schedule"                        { $$ = "schedule"; }
  | "train"                           { $$ = "train"; }
  | "eval"                            { $$ = "eval"; }
  ;

items
  : %empty                            { $$ = list_new(); }
  | items item                        { $$ = list_add($1, $2); }
  ;

item
  : iexpr                             { $$ = $1; }
  | T_IDENT '=' expr                  { $$ = named(@1, $1, $3); }
  | "then"                            { $$ = ast_new(ND_THEN, @1); }
  ;

// ---------------------------------------------------------------------------------------------
// Statements, the body of layer and optimizer definitions and of train { } / eval { }.
// A body may sit on one line: `{ out = x }`.

stmt_block
  : '{' opt_nls '}'                   { $$ = NULL; }
  | '{' opt_nls stmts opt_nls '}'     { $$ = $3.head; }
  ;

stmts
  : stmt                              { $$ = $1; }
  | stmts nls stmt                    { $$ = list_cat($1, $3); }
  ;

// A statement is a list: `state m = 0, v = 0` gives one ND_STATE per name.
stmt
  : T_IDENT '=' expr {
      $$ = list_add(list_new(), def(ND_ASSIGN, @1, $1, NULL, $3, NULL));
    }
  | "param" T_IDENT '[' dims ']' init {
      $$ = list_add(list_new(), def(ND_PARAM, @2, $2, $4.head, $6, NULL));
    }
  | "buffer" T_IDENT '[' dims ']' init {
      $$ = list_add(list_new(), def(ND_BUFFER, @2, $2, $4.head, $6, NULL));
    }
  | "state" state_list                { $$ = $2; }
  | "train" stmt_block {
      $$ = list_add(list_new(), def(ND_MODE, @1, "train", NULL, NULL, $2));
    }
  | "eval" stmt_block {
      $$ = list_add(list_new(), def(ND_MODE, @1, "eval", NULL, NULL, $2));
    }
  ;

dims
  : expr                              { $$ = list_add(list_new(), $1); }
  | dims ',' expr                     { $$ = list_add($1, $3); }
  ;

init
  : %empty                            { $$ = NULL; }
  | "init" expr                       { $$ = $2; }
  ;

state_list
  : state_item                        { $$ = list_add(list_new(), $1); }
  | state_list ',' state_item         { $$ = list_add($1, $3); }
  ;

state_item
  : T_IDENT '=' expr                  { $$ = def(ND_STATE, @1, $1, NULL, $3, NULL); }
  ;

// ---------------------------------------------------------------------------------------------
// Expressions. Precedence, lowest first: ?: (right), comparisons (non-associative),
// + -, * / @, unary -, ^ (right; `-x^2` is -(x^2), `2^-1` is 2^(-1)). The position of an
// operator node is its operator's.

expr
  : expr '?' expr ':' expr {
      $$ = ast_new(ND_TERNARY, @2);
      $$->cond = $1;
      $$->lhs = $3;
      $$->rhs = $5;
      nest($$);
    }
  | expr '<' expr                     { $$ = binary('<', @2, $1, $3); }
  | expr '>' expr                     { $$ = binary('>', @2, $1, $3); }
  | expr "==" expr                    { $$ = binary(OPC_EQ, @2, $1, $3); }
  | expr "!=" expr                    { $$ = binary(OPC_NE, @2, $1, $3); }
  | expr "<=" expr                    { $$ = binary(OPC_LE, @2, $1, $3); }
  | expr ">=" expr                    { $$ = binary(OPC_GE, @2, $1, $3); }
  | expr '+' expr                     { $$ = binary('+', @2, $1, $3); }
  | expr '-' expr                     { $$ = binary('-', @2, $1, $3); }
  | expr '*' expr                     { $$ = binary('*', @2, $1, $3); }
  | expr '/' expr                     { $$ = binary('/', @2, $1, $3); }
  | expr '@' expr                     { $$ = binary('@', @2, $1, $3); }
  | expr '^' expr                     { $$ = binary('^', @2, $1, $3); }
  | '-' expr %prec UMINUS {
      $$ = ast_new(ND_UNARY, @1);
      $$->op = '-';
      $$->lhs = $2;
      nest($$);
    }
  | primary                           { $$ = $1; }
  ;

// An item expression: expr with neither unary minus nor ?: at its left edge. Right operands
// are full expressions; precedence still applies, so a ?: there ends the item (and is then
// a syntax error) because ?: binds loosest.
iexpr
  : iexpr '<' expr                    { $$ = binary('<', @2, $1, $3); }
  | iexpr '>' expr                    { $$ = binary('>', @2, $1, $3); }
  | iexpr "==" expr                   { $$ = binary(OPC_EQ, @2, $1, $3); }
  | iexpr "!=" expr                   { $$ = binary(OPC_NE, @2, $1, $3); }
  | iexpr "<=" expr                   { $$ = binary(OPC_LE, @2, $1, $3); }
  | iexpr ">=" expr                   { $$ = binary(OPC_GE, @2, $1, $3); }
  | iexpr '+' expr                    { $$ = binary('+', @2, $1, $3); }
  | iexpr '-' expr                    { $$ = binary('-', @2, $1, $3); }
  | iexpr '*' expr                    { $$ = binary('*', @2, $1, $3); }
  | iexpr '/' expr                    { $$ = binary('/', @2, $1, $3); }
  | iexpr '@' expr                    { $$ = binary('@', @2, $1, $3); }
  | iexpr '^' expr                    { $$ = binary('^', @2, $1, $3); }
  | primary                           { $$ = $1; }
  ;

// A name not followed by '(' is a variable (%prec NOCALL: when '(' follows, shift it and
// read a call; this matters only in item lists, where `(x)` could start the next item).
primary
  : T_NUMBER                          { $$ = ast_new(ND_NUM, @1); $$->num = $1; }
  | T_STRING                          { $$ = node(ND_STR, @1, $1); }
  | T_DIMS                            { $$ = node(ND_DIMS, @1, $1); }
  | T_IDENT %prec NOCALL              { $$ = node(ND_IDENT, @1, $1); }
  | T_IDENT '(' args ')'              { $$ = nest(def(ND_CALL, @1, $1, $3.head, NULL, NULL)); }
  | '(' expr ')'                      { $$ = $2; }
  ;

// Call arguments: expressions and `name = expr`; possibly none.
args
  : %empty                            { $$ = list_new(); }
  | arg_list                          { $$ = $1; }
  ;

arg_list
  : arg                               { $$ = list_add(list_new(), $1); }
  | arg_list ',' arg                  { $$ = list_add($1, $3); }
  ;

arg
  : expr                              { $$ = $1; }
  | T_IDENT '=' expr                  { $$ = named(@1, $1, $3); }
  ;

%%

// ---------------------------------------------------------------------------------------------
// Syntax errors
//
//   unexpected 'relu'                      the token's own text
//   unexpected end of line                 a newline token
//   unexpected end of file                 reported just past the last token (lexer.re)
//   ..., expected '='                      when 1 to 3 tokens could follow, by readable
//   ..., expected a name or ')'            names; the tokens that start an expression
//   ..., expected an expression            count as one, "an expression"
//   unexpected '}', expected ')'           when more could follow, the operators that would
//                                          continue an expression are left out: `(x * 2 }`
//
// and three of their own:
//
//   unexpected end of file, expected '}' to close the block opened at line 3
//       (or `')'`, the parenthesis; `']'`, the bracket) when the innermost open bracket's
//       closer could come; when it could not yet, the message ends with
//       "; the block opened at line 3 is not closed"
//   comparisons cannot be chained ('a < b < c'); write (a < b) * (b < c)
//       at the second comparison operator of one level (see Parser.cmp in lexer.re)
//   a value on a line cannot start with '-'; write it in parentheses: (-1)
//       at a '-' where an item of a line begins (`epochs -1`)

// Bison stops at 10000 nested symbols (YYMAXDEPTH) and reports "memory exhausted": deep
// parentheses `((((x))))`, or a right-deep `a ^ a ^ ...` of 5000 terms. MAX_DEPTH (above)
// catches what the stack holds but later passes would not.
static void yyerror(YYLTYPE *loc, Parser *ps, const char *msg) {
  (void)ps;
  (void)msg;
  error_at(*loc, "expression nested too deeply");
}

// Whether kind can start an expression.
static bool starts_expr(yysymbol_kind_t kind) {
  return kind == YYSYMBOL_T_IDENT || kind == YYSYMBOL_T_NUMBER || kind == YYSYMBOL_T_STRING ||
         kind == YYSYMBOL_T_DIMS || kind == YYTRANSLATE('(') || kind == YYTRANSLATE('-');
}

static bool is_comparison(yysymbol_kind_t kind) {
  return kind == YYTRANSLATE('<') || kind == YYTRANSLATE('>') || kind == YYSYMBOL_T_EQ ||
         kind == YYSYMBOL_T_NE || kind == YYSYMBOL_T_LE || kind == YYSYMBOL_T_GE;
}

// Whether kind, after an expression, would continue it: a binary operator, '?', or the '('
// of a call.
static bool continues_expr(yysymbol_kind_t kind) {
  return is_comparison(kind) || kind == YYTRANSLATE('?') || kind == YYTRANSLATE('+') ||
         kind == YYTRANSLATE('-') || kind == YYTRANSLATE('*') || kind == YYTRANSLATE('/') ||
         kind == YYTRANSLATE('@') || kind == YYTRANSLATE('^') || kind == YYTRANSLATE('(');
}

static const char *expected_name(yysymbol_kind_t kind) {
  switch (kind) {
  case YYSYMBOL_YYEOF:
    return "end of file";
  case YYSYMBOL_T_NEWLINE:
    return "end of line";
  case YYSYMBOL_T_IDENT:
    return "a name";
  case YYSYMBOL_T_NUMBER:
    return "a number";
  case YYSYMBOL_T_STRING:
    return "a string";
  case YYSYMBOL_T_DIMS:
    return "a shape";
  default:
    break;
  }
  // Bison names a character token '=' and a keyword or "==" token by its bare alias.
  const char *s = yysymbol_name(kind);
  return s[0] == '\'' ? s : str_fmt("'%s'", s);
}

// Where a name goes in an expected list: what starts things first, closers and ends last.
static int expected_rank(yysymbol_kind_t kind) {
  if (kind == YYSYMBOL_YYEOF)
    return 6;
  if (kind == YYTRANSLATE('}'))
    return 5;
  if (kind == YYSYMBOL_T_NEWLINE)
    return 4;
  if (kind == YYTRANSLATE(')') || kind == YYTRANSLATE(']'))
    return 3;
  if (kind == YYTRANSLATE(','))
    return 2;
  return starts_expr(kind) ? 0 : 1;
}

static bool has_kind(const yysymbol_kind_t *exp, int n, yysymbol_kind_t kind) {
  for (int i = 0; i < n; i++)
    if (exp[i] == kind)
      return true;
  return false;
}

// The names of the tokens exp[0..n) (in rank order) into names[4]; returns how many, 4
// meaning too many to list. Where a number may come, an expression may: its starters fold
// into one name. skip_ops leaves out what would continue an expression.
static int expected_names(const yysymbol_kind_t *exp, int n, bool skip_ops, const char **names) {
  bool fold = has_kind(exp, n, YYSYMBOL_T_NUMBER);
  int nnames = 0;
  bool said_expr = false;
  for (int i = 0; i < n && nnames < 4; i++) {
    if (fold && starts_expr(exp[i])) {
      if (!said_expr)
        names[nnames++] = "an expression";
      said_expr = true;
    } else if (!(skip_ops && continues_expr(exp[i]))) {
      names[nnames++] = expected_name(exp[i]);
    }
  }
  return nnames;
}

// `epochs -1`: the suggestion for a '-' that starts an item, from the token after it (a
// copy of the lexer state reads it; the real one stays where it is).
static const char *minus_hint(Parser *ps) {
  Parser peek = *ps;
  YYSTYPE val;
  YYLTYPE loc;
  int next = yylex(&val, &loc, &peek);
  const char *after = peek.cur;
  while (*after == ' ' || *after == '\t')
    after++;
  // `-x^2` or `-f(x)` is more than one token: do not guess where the parentheses go.
  if ((next == T_NUMBER || next == T_IDENT) && !(*after && strchr("+-*/@^(<>=!?", *after)))
    return str_fmt(": (-%.*s)", (int)(peek.cur - peek.tok), peek.tok);
  return ", e.g. (-1)";
}

static int yyreport_syntax_error(const yypcontext_t *ctx, Parser *ps) {
  Pos pos = *yypcontext_location(ctx);
  yysymbol_kind_t tok = yypcontext_token(ctx);

  // What could have come instead, in rank order (a stable insertion sort).
  yysymbol_kind_t exp[YYNTOKENS];
  int n = yypcontext_expected_tokens(ctx, exp, YYNTOKENS);
  for (int i = 1; i < n; i++) {
    yysymbol_kind_t k = exp[i];
    int j = i;
    for (; j > 0 && expected_rank(exp[j - 1]) > expected_rank(k); j--)
      exp[j] = exp[j - 1];
    exp[j] = k;
  }

  // Comparisons are non-associative: `0 < x < 1` stops at the second '<'.
  if (is_comparison(tok) && ps->chained)
    error_at(pos, "comparisons cannot be chained ('a < b < c'); write (a < b) * (b < c)");
  // A number could start an item here, but unary minus cannot (see line_block).
  if (tok == YYTRANSLATE('-') && has_kind(exp, n, YYSYMBOL_T_NUMBER))
    error_at(pos, "a value on a line cannot start with '-'; write it in parentheses%s",
             minus_hint(ps));

  const char *msg;
  if (tok == YYSYMBOL_YYEOF)
    msg = "unexpected end of file";
  else if (tok == YYSYMBOL_T_NEWLINE)
    msg = "unexpected end of line";
  else
    msg = str_fmt("unexpected '%.*s'", (int)(ps->cur - ps->tok), ps->tok);

  // End of file inside a bracket: name the innermost one.
  const char *note = "";
  if (tok == YYSYMBOL_YYEOF && ps->nopen > 0) {
    OpenBracket *o = &ps->open[ps->nopen - 1];
    int close = o->ch == '(' ? ')' : o->ch == '[' ? ']' : '}';
    const char *what = o->ch == '(' ? "parenthesis" : o->ch == '[' ? "bracket" : "block";
    if (has_kind(exp, n, YYTRANSLATE(close)))
      error_at(pos, "%s, expected '%c' to close the %s opened at line %d", msg, close, what,
               o->line);
    note = str_fmt("; the %s opened at line %d is not closed", what, o->line);
  }

  const char *names[4];
  int nnames = expected_names(exp, n, false, names);
  if (nnames > 3)
    nnames = expected_names(exp, n, true, names);
  const char *list = "";
  if (nnames >= 1 && nnames <= 3) {
    list = str_fmt(", expected %s", names[0]);
    for (int i = 1; i < nnames; i++)
      list = str_fmt("%s%s%s", list, i == nnames - 1 ? " or " : ", ", names[i]);
  }
  error_at(pos, "%s%s%s", msg, list, note);
}
