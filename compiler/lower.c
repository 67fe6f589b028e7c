// lower.c — from syntax to program: names, arguments, shapes, and the IR of every function.
//
// The script's definitions and the stdlib's share one table (the script's come first, so a
// script may redefine a stdlib layer). The `train` block picks a network, a data set, a loss,
// an optimizer and a schedule; lowering then inlines every layer body of the network into one
// forward pass, twice: once in training mode (train { } bodies, buffer updates) and once in
// evaluation mode (eval { } bodies). The loss follows the forward pass; autodiff appends the
// backward pass; the optimizer body is inlined once per parameter; the updates of parameters,
// buffers and optimizer state become STOREs at the very end of the step, after every read.
//
// Shapes are checked as instructions are built. An error inside a stdlib body is reported at
// the user's layer line (error_context), with a note pointing into the stdlib.

#include "keel.h"
#include "keelrt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------------
// Environments: what a name means inside a body

typedef enum { B_VAL, B_CONST, B_TENSOR } BindKind;

typedef struct Env Env;
struct Env {
  const char *name;
  BindKind kind;
  int val;       // B_VAL: an IR value of the current function
  double c;      // B_CONST
  int tensor;    // B_TENSOR: index into Prog.tensors
  Env *next;
};

static Env *bind(Env *env, const char *name, BindKind kind, int val, double c, int tensor) {
  Env *e = arena_alloc(sizeof *e);
  *e = (Env){name, kind, val, c, tensor, env};
  return e;
}

static Env *find(Env *env, const char *name) {
  for (; env; env = env->next)
    if (!strcmp(env->name, name))
      return env;
  return NULL;
}

// The persistent tensor a name was first bound to, even after later rebinding: assigning to
// a buffer or state variable twice stores the last value.
static Env *find_tensor_binding(Env *env, const char *name) {
  for (; env; env = env->next)
    if (!strcmp(env->name, name) && env->kind == B_TENSOR)
      return env;
  return NULL;
}

// ---------------------------------------------------------------------------------------------
// The lowering state

typedef struct {
  Node *def;           // ND_LAYERDEF
  const char *name;    // "dense1"
  Node *at;            // the item that names it in the network
  Env *args;           // its arguments, as constants
} Instance;

typedef struct {
  Prog *p;
  Node **defs;         // every definition: the script's, then the stdlib's
  int ndefs;
  Fn *fn;              // the function being built
  int *tval;           // per tensor: its OP_TENSOR value in fn, or -1
  bool train;          // lowering the training-mode forward pass
  int stores_t[4096], stores_v[4096], nstores;  // deferred writes, emitted at the end
  int rand_seq;
  Instance *inst;
  int ninst;
} Lower;

static void begin_fn(Lower *L, Fn *fn) {
  L->fn = fn;
  L->tval = arena_alloc(sizeof(int) * (size_t)(L->p->ntensors + 1024));
  for (int i = 0; i < L->p->ntensors + 1024; i++)
    L->tval[i] = -1;
  L->nstores = 0;
}

static int tensor_val(Lower *L, int t) {
  if (L->tval[t] < 0) {
    Tensor *T = &L->p->tensors[t];
    L->tval[t] = ir_emit(L->fn, (Ins){.op = OP_TENSOR, .tensor = t, .shape = T->shape,
                                       .arg = {-1, -1, -1}});
  }
  return L->tval[t];
}

static int find_tensor(Prog *p, const char *name) {
  for (int i = 0; i < p->ntensors; i++)
    if (!strcmp(p->tensors[i].name, name))
      return i;
  return -1;
}

static int add_tensor(Prog *p, Tensor t) {
  static int cap;
  if (p->ntensors == cap) {
    cap = cap ? cap * 2 : 64;
    Tensor *n = arena_alloc(sizeof(Tensor) * (size_t)cap);
    if (p->ntensors)
      memcpy(n, p->tensors, sizeof(Tensor) * (size_t)p->ntensors);
    p->tensors = n;
  }
  if (p->ntensors >= 1024 * 64)
    fatal("too many tensors");
  p->tensors[p->ntensors] = t;
  return p->ntensors++;
}

static void defer_store(Lower *L, int tensor, int v, Pos pos) {
  if (L->nstores == (int)(sizeof L->stores_t / sizeof L->stores_t[0]))
    error_at(pos, "too many updated tensors (the limit is 4096)");
  for (int i = 0; i < L->nstores; i++)
    if (L->stores_t[i] == tensor) {
      L->stores_v[i] = v;
      return;
    }
  L->stores_t[L->nstores] = tensor, L->stores_v[L->nstores++] = v;
}

static void emit_stores(Lower *L) {
  for (int i = 0; i < L->nstores; i++) {
    Tensor *T = &L->p->tensors[L->stores_t[i]];
    ir_emit(L->fn, (Ins){.op = OP_STORE, .tensor = L->stores_t[i], .shape = T->shape,
                         .arg = {L->stores_v[i], -1, -1}});
  }
  L->nstores = 0;
}

static Node *find_def(Lower *L, NodeKind kind, const char *name) {
  for (int i = 0; i < L->ndefs; i++)
    if (L->defs[i]->kind == kind && !strcmp(L->defs[i]->name, name))
      return L->defs[i];
  return NULL;
}

// The closest definition name of that kind, for "did you mean" (edit distance ≤ 2).
static int edit_distance(const char *a, const char *b) {
  int la = (int)strlen(a), lb = (int)strlen(b), d[64][64];
  if (la > 62 || lb > 62)
    return 99;
  for (int i = 0; i <= la; i++)
    d[i][0] = i;
  for (int j = 0; j <= lb; j++)
    d[0][j] = j;
  for (int i = 1; i <= la; i++)
    for (int j = 1; j <= lb; j++) {
      int m = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
      if (d[i - 1][j] + 1 < m)
        m = d[i - 1][j] + 1;
      if (d[i][j - 1] + 1 < m)
        m = d[i][j - 1] + 1;
      d[i][j] = m;
    }
  return d[la][lb];
}

static const char *suggest(Lower *L, NodeKind kind, const char *name) {
  const char *best = NULL;
  int bd = 3;
  for (int i = 0; i < L->ndefs; i++)
    if (L->defs[i]->kind == kind) {
      int d = edit_distance(name, L->defs[i]->name);
      if (d < bd)
        bd = d, best = L->defs[i]->name;
    }
  return best ? str_fmt(" (did you mean '%s'?)", best) : "";
}

static const char *kind_word(NodeKind k) {
  switch (k) {
  case ND_LAYERDEF: return "layer";
  case ND_LOSSDEF: return "loss";
  case ND_OPTDEF: return "optimizer";
  case ND_SCHEDDEF: return "schedule";
  default: return "definition";
  }
}

// ---------------------------------------------------------------------------------------------
// Constants: values known before training (layer arguments, sizes, initialisers)

static double const_eval(Env *env, Node *e);

static double const_call(Env *env, Node *e) {
  int nargs = 0;
  double v[2] = {0};
  for (Node *a = e->args; a; a = a->next) {
    if (a->kind == ND_NAMED || nargs == 2)
      error_at(a->pos, "unexpected argument to '%s'", e->name);
    v[nargs++] = const_eval(env, a);
  }
  static const struct { const char *name; Op op; int nargs; } fns[] = {
      {"exp", OP_EXP, 1}, {"log", OP_LOG, 1},   {"sqrt", OP_SQRT, 1}, {"tanh", OP_TANH, 1},
      {"sigmoid", OP_SIGMOID, 1}, {"abs", OP_ABS, 1}, {"sin", OP_SIN, 1}, {"cos", OP_COS, 1},
      {"floor", OP_FLOOR, 1}, {"max", OP_MAX, 2}, {"min", OP_MIN, 2},
  };
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++)
    if (!strcmp(e->name, fns[i].name)) {
      if (nargs != fns[i].nargs)
        error_at(e->pos, "'%s' takes %d argument%s, got %d", e->name, fns[i].nargs,
                 fns[i].nargs == 1 ? "" : "s", nargs);
      return ir_scalar_op(fns[i].op, v[0], v[1], 0);
    }
  error_at(e->pos, "'%s' is not a number known before training", e->name);
}

static double const_eval(Env *env, Node *e) {
  switch (e->kind) {
  case ND_NUM: return e->num;
  case ND_IDENT: {
    Env *b = find(env, e->name);
    if (b && b->kind == B_CONST)
      return b->c;
    if (!strcmp(e->name, "pi"))
      return M_PI;
    if (b)
      error_at(e->pos, "'%s' is not known before training; a number is needed here", e->name);
    error_at(e->pos, "unknown name '%s'", e->name);
  }
  case ND_UNARY: return -const_eval(env, e->lhs);
  case ND_BINARY: {
    double a = const_eval(env, e->lhs), b = const_eval(env, e->rhs);
    switch (e->op) {
    case '+': return a + b;
    case '-': return a - b;
    case '*': return a * b;
    case '/': return a / b;
    case '^': return pow(a, b);
    case '<': return a < b;
    case '>': return a > b;
    case OPC_EQ: return a == b;
    case OPC_NE: return a != b;
    case OPC_LE: return a <= b;
    case OPC_GE: return a >= b;
    default: error_at(e->pos, "'@' needs tensors, not numbers");
    }
  }
  case ND_TERNARY: return const_eval(env, e->cond) != 0 ? const_eval(env, e->lhs)
                                                        : const_eval(env, e->rhs);
  case ND_CALL: return const_call(env, e);
  case ND_STR: error_at(e->pos, "expected a number, got a string");
  default: error_at(e->pos, "expected a number here");
  }
}

static int64_t const_int(Env *env, Node *e, const char *what, int64_t min) {
  double v = const_eval(env, e);
  if (v != floor(v) || v < (double)min || v > 1e15)
    error_at(e->pos, "%s must be a whole number%s, got %g", what,
             min > 0 ? " above 0" : min == 0 ? " (0 or more)" : "", v);
  return (int64_t)v;
}

// ---------------------------------------------------------------------------------------------
// Arguments: binding a definition's parameters from positional and name= items

// Binds def's parameters, skipping the first `skip` (a loss's tensors), from the item list
// items[0..nitems). `what` names the thing for messages ("layer 'dense'").
static Env *bind_args(Env *env, Node *def, int skip, Node **items, int nitems, Pos at,
                      const char *what) {
  Node *params[64];
  int np = 0;
  for (Node *p = def->args; p; p = p->next)
    if (np < 64)
      params[np++] = p;
  bool have[64] = {0};
  double val[64];
  int next = skip;
  for (int i = 0; i < nitems; i++) {
    Node *it = items[i];
    int k;
    if (it->kind == ND_NAMED) {
      for (k = skip; k < np && strcmp(params[k]->name, it->name); k++)
        ;
      if (k == np) {
        char list[512] = "";
        for (int j = skip; j < np; j++)
          snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", j > skip ? ", " : "",
                   params[j]->name);
        error_at(it->pos, "%s has no parameter '%s'%s%s%s", what, it->name,
                 np > skip ? " (its parameters: " : "", list, np > skip ? ")" : "");
      }
      if (have[k])
        error_at(it->pos, "%s: '%s' is given twice", what, it->name);
    } else {
      while (next < np && have[next])
        next++;
      if (next >= np) {
        int want = np - skip;
        error_at(it->pos, "%s takes %s%d argument%s, got more", what, want ? "" : "no ",
                 want, want == 1 ? "" : "s");
      }
      k = next;
    }
    Node *v = it->kind == ND_NAMED ? it->lhs : it;
    if (v->kind == ND_STR)
      error_at(v->pos, "%s: '%s' must be a number, got a string", what, params[k]->name);
    val[k] = const_eval(env, v);
    have[k] = true;
  }
  Env *out = NULL;
  for (int k = skip; k < np; k++) {
    if (!have[k]) {
      if (params[k]->kind != ND_NAMED)
        error_at(at, "%s needs a value for '%s'", what, params[k]->name);
      val[k] = const_eval(NULL, params[k]->lhs);
    }
    out = bind(out, params[k]->name, B_CONST, -1, val[k], -1);
  }
  // constants from outside (none today) stay visible below the arguments
  if (!out)
    return env;
  Env *last = out;
  while (last->next)
    last = last->next;
  last->next = env;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Expressions

static int lower_expr(Lower *L, Env *env, Node *e);

static int axis_arg(Lower *L, Env *env, Node *call, Node *named, int rank) {
  int64_t a = (int64_t)const_eval(env, named->lhs);
  if (a < 0)
    a += rank;
  if (a < 0 || a >= rank || const_eval(env, named->lhs) != floor(const_eval(env, named->lhs)))
    error_at(named->pos, "axis=%g is out of range for a tensor of rank %d",
             const_eval(env, named->lhs), rank);
  return (int)a;
}

static int lower_call(Lower *L, Env *env, Node *e) {
  Fn *fn = L->fn;
  Node *pos[4], *axis = NULL;
  int np = 0;
  for (Node *a = e->args; a; a = a->next) {
    if (a->kind == ND_NAMED) {
      if (strcmp(a->name, "axis"))
        error_at(a->pos, "'%s' has no argument '%s'", e->name, a->name);
      axis = a;
    } else if (np == 4) {
      error_at(a->pos, "too many arguments to '%s'", e->name);
    } else {
      pos[np++] = a;
    }
  }
  const char *f = e->name;
  static const struct { const char *name; Op op; } unary[] = {
      {"exp", OP_EXP}, {"log", OP_LOG}, {"sqrt", OP_SQRT}, {"tanh", OP_TANH},
      {"sigmoid", OP_SIGMOID}, {"abs", OP_ABS}, {"sin", OP_SIN}, {"cos", OP_COS},
      {"floor", OP_FLOOR},
  };
#define WANT(k)                                                                             \
  do {                                                                                      \
    if (np != (k))                                                                          \
      error_at(e->pos, "'%s' takes %d argument%s, got %d", f, k, (k) == 1 ? "" : "s", np); \
  } while (0)
  for (size_t i = 0; i < sizeof unary / sizeof unary[0]; i++)
    if (!strcmp(f, unary[i].name)) {
      WANT(1);
      if (axis)
        error_at(axis->pos, "'%s' has no argument 'axis'", f);
      int a = lower_expr(L, env, pos[0]);
      fn->cur_pos = e->pos;
      return ir_op1(fn, unary[i].op, a);
    }
  bool is_max = !strcmp(f, "max"), is_min = !strcmp(f, "min");
  if ((is_max || is_min) && np == 2) {
    if (axis)
      error_at(axis->pos, "'%s' of two values has no axis", f);
    int a = lower_expr(L, env, pos[0]), b = lower_expr(L, env, pos[1]);
    fn->cur_pos = e->pos;
    return ir_op2(fn, is_max ? OP_MAX : OP_MIN, a, b);
  }
  Op red = is_max ? OP_RMAX : !strcmp(f, "sum") ? OP_SUM : !strcmp(f, "mean") ? OP_MEAN
           : !strcmp(f, "logsumexp") ? OP_LSE : OP_COUNT;
  if (red != OP_COUNT) {
    WANT(1);
    int a = lower_expr(L, env, pos[0]);
    fn->cur_pos = e->pos;
    int ax = axis ? axis_arg(L, env, e, axis, fn->ins[a].shape.rank) : -1;
    return ir_reduce(fn, red, a, ax);
  }
  if (axis)
    error_at(axis->pos, "'%s' has no argument 'axis'", f);
  if (!strcmp(f, "transpose")) {
    WANT(1);
    int a = lower_expr(L, env, pos[0]);
    fn->cur_pos = e->pos;
    return ir_emit(fn, (Ins){.op = OP_TRANSPOSE, .arg = {a, -1, -1}});
  }
  if (!strcmp(f, "flatten")) {
    WANT(1);
    int a = lower_expr(L, env, pos[0]);
    Shape s = fn->ins[a].shape;
    fn->cur_pos = e->pos;
    if (s.rank < 2)
      error_at(e->pos, "flatten needs a batch of samples, got shape %s", shape_str(s));
    Shape to = shape_make(2, s.dim[0], 1);
    for (int i = 1; i < s.rank; i++)
      to.dim[1] *= s.dim[i];
    return ir_reshape(fn, a, to);
  }
  if (!strcmp(f, "pick")) {
    WANT(2);
    int a = lower_expr(L, env, pos[0]), b = lower_expr(L, env, pos[1]);
    fn->cur_pos = e->pos;
    return ir_emit(fn, (Ins){.op = OP_PICK, .arg = {a, b, -1}});
  }
  if (!strcmp(f, "rand")) {
    WANT(1);
    Node *s = pos[0];
    if (s->kind == ND_CALL && !strcmp(s->name, "shape")) {
      if (!s->args || s->args->next)
        error_at(s->pos, "'shape' takes 1 argument");
      s = s->args;
    }
    int a = lower_expr(L, env, s);
    fn->cur_pos = e->pos;
    return ir_emit(fn, (Ins){.op = OP_RAND, .shape = fn->ins[a].shape, .seq = ++L->rand_seq,
                             .arg = {-1, -1, -1}});
  }
  if (!strcmp(f, "shape"))
    error_at(e->pos, "'shape' can only be used inside rand(shape(...))");
  if (!strcmp(f, "uniform") || !strcmp(f, "normal"))
    error_at(e->pos, "'%s' can only be used after 'init'", f);
  error_at(e->pos, "unknown function '%s'", f);
#undef WANT
}

static int lower_expr(Lower *L, Env *env, Node *e) {
  Fn *fn = L->fn;
  switch (e->kind) {
  case ND_NUM: return ir_const(fn, e->num);
  case ND_IDENT: {
    Env *b = find(env, e->name);
    if (!b) {
      if (!strcmp(e->name, "pi"))
        return ir_const(fn, M_PI);
      error_at(e->pos, "unknown name '%s'", e->name);
    }
    switch (b->kind) {
    case B_VAL: return b->val;
    case B_CONST: return ir_const(fn, b->c);
    case B_TENSOR: return tensor_val(L, b->tensor);
    }
    unreachable();
  }
  case ND_UNARY: {
    int a = lower_expr(L, env, e->lhs);
    fn->cur_pos = e->pos;
    return ir_op1(fn, OP_NEG, a);
  }
  case ND_BINARY: {
    int a = lower_expr(L, env, e->lhs), b = lower_expr(L, env, e->rhs);
    fn->cur_pos = e->pos;
    switch (e->op) {
    case '+': return ir_op2(fn, OP_ADD, a, b);
    case '-': return ir_op2(fn, OP_SUB, a, b);
    case '*': return ir_op2(fn, OP_MUL, a, b);
    case '/': return ir_op2(fn, OP_DIV, a, b);
    case '^': return ir_op2(fn, OP_POW, a, b);
    case '@': return ir_matmul(fn, a, b, 0, 0);
    case '<': return ir_op2(fn, OP_LT, a, b);
    case '>': return ir_op2(fn, OP_GT, a, b);
    case OPC_EQ: return ir_op2(fn, OP_EQ, a, b);
    case OPC_NE: return ir_op2(fn, OP_NE, a, b);
    case OPC_LE: return ir_op2(fn, OP_LE, a, b);
    case OPC_GE: return ir_op2(fn, OP_GE, a, b);
    }
    unreachable();
  }
  case ND_TERNARY: {
    int c = lower_expr(L, env, e->cond);
    int a = lower_expr(L, env, e->lhs), b = lower_expr(L, env, e->rhs);
    fn->cur_pos = e->pos;
    return ir_select(fn, c, a, b);
  }
  case ND_CALL: return lower_call(L, env, e);
  case ND_STR: error_at(e->pos, "a string is not a value here");
  default: error_at(e->pos, "expected a value here");
  }
}

// ---------------------------------------------------------------------------------------------
// Layer bodies and optimizer bodies

// Declares (or, in the second lowering, finds) a param / buffer / state tensor.
static int declare_tensor(Lower *L, Env *env, Node *s, const char *name, TensorKind kind,
                          Shape shape, int param) {
  int t = find_tensor(L->p, name);
  if (t >= 0)
    return t;
  Tensor T = {.name = name, .kind = kind, .shape = shape, .init = INIT_CONST, .param = param};
  Node *init = s->lhs;
  if (init && init->kind == ND_CALL &&
      (!strcmp(init->name, "uniform") || !strcmp(init->name, "normal"))) {
    Node *a = init->args, *b = a ? a->next : NULL;
    if (!a || !b || b->next || a->kind == ND_NAMED || b->kind == ND_NAMED)
      error_at(init->pos, "'%s' takes 2 arguments: %s", init->name,
               init->name[0] == 'u' ? "low and high" : "mean and standard deviation");
    T.init = init->name[0] == 'u' ? INIT_UNIFORM : INIT_NORMAL;
    T.a = const_eval(env, a), T.b = const_eval(env, b);
  } else if (init) {
    T.a = const_eval(env, init);
  }
  return add_tensor(L->p, T);
}

static void lower_stmts(Lower *L, Env **env, Node *body, Instance *inst) {
  for (Node *s = body; s; s = s->next) {
    L->fn->cur_pos = s->pos;
    switch (s->kind) {
    case ND_PARAM:
    case ND_BUFFER: {
      if (!inst)
        error_at(s->pos, "'%s' belongs in a layer", s->kind == ND_PARAM ? "param" : "buffer");
      Shape shape = {0};
      for (Node *d = s->args; d; d = d->next) {
        if (shape.rank == MAX_RANK)
          error_at(d->pos, "tensors have at most %d dimensions", MAX_RANK);
        shape.dim[shape.rank++] =
            const_int(*env, d, str_fmt("a size of '%s'", s->name), 1);
      }
      const char *name = str_fmt("%s.%s", inst->name, s->name);
      int t = declare_tensor(L, *env, s, name, s->kind == ND_PARAM ? TK_PARAM : TK_BUFFER,
                             shape, -1);
      *env = bind(*env, s->name, B_TENSOR, -1, 0, t);
      break;
    }
    case ND_STATE:
      error_at(s->pos, "'state' belongs in an optimizer; a layer keeps state in a 'buffer'");
    case ND_ASSIGN: {
      int v = lower_expr(L, *env, s->lhs);
      Env *b = find_tensor_binding(*env, s->name);
      if (b) {
        if (L->p->tensors[b->tensor].kind == TK_PARAM)
          error_at(s->pos, "cannot assign to the parameter '%s': parameters change only "
                           "through the optimizer", s->name);
        defer_store(L, b->tensor, v, s->pos);
      }
      *env = bind(*env, s->name, B_VAL, v, 0, -1);
      break;
    }
    case ND_MODE:
      if (!strcmp(s->name, "train") == L->train)
        lower_stmts(L, env, s->body, inst);
      break;
    default: error_at(s->pos, "expected a statement here");
    }
  }
}

static int lower_layer(Lower *L, Instance *inst, int x) {
  Fn *fn = L->fn;
  Shape xs = fn->ins[x].shape;
  int64_t in = xs.rank >= 2 ? xs.dim[1] : 1;
  Env *env = inst->args;
  env = bind(env, "x", B_VAL, x, 0, -1);
  env = bind(env, "in", B_CONST, -1, (double)in, -1);
  env = bind(env, "n", B_VAL, ir_input(fn, IN_N, shape_scalar()), 0, -1);
  fn->cur_layer = inst->name;
  error_context(inst->at->pos, str_fmt("in layer '%s' (input shape %s): ", inst->def->name,
                                       shape_str(xs)));
  lower_stmts(L, &env, inst->def->body, inst);
  Env *out = find(env, "out");
  if (!out || out->kind != B_VAL)
    error_at(inst->def->pos, "layer '%s' never sets 'out'", inst->def->name);
  error_context_clear();
  fn->cur_layer = NULL;
  return out->val;
}

// The forward pass of the network, in L->train mode, from the input x.
static int lower_forward(Lower *L, int x, bool record) {
  for (int i = 0; i < L->ninst; i++) {
    Instance *inst = &L->inst[i];
    int before = L->p->ntensors;
    x = lower_layer(L, inst, x);
    if (record) {
      LayerInfo *li = &L->p->layers[i];
      li->name = inst->name, li->kind = inst->def->name, li->pos = inst->at->pos;
      li->out = L->fn->ins[x].shape;
      for (int t = before; t < L->p->ntensors; t++)
        if (L->p->tensors[t].kind == TK_PARAM)
          li->nparams += shape_numel(L->p->tensors[t].shape, 1);
      L->p->nparams += li->nparams;
    }
  }
  return x;
}

// ---------------------------------------------------------------------------------------------
// The network's layer lines: `layer dense 256 relu batchnorm dropout 0.3`

static void collect_instances(Lower *L, Node *net) {
  L->inst = arena_alloc(sizeof(Instance) * 1024);
  struct { const char *kind; int count; } counts[256];
  int nkinds = 0;
  for (Node *line = net->body; line; line = line->next) {
    if (strcmp(line->name, "layer"))
      continue;
    if (!line->args)
      error_at(line->pos, "'layer' needs at least one layer name, e.g. 'layer dense 128 relu'");
    Node *items[64];
    int nitems = 0;
    Node *head = NULL;
    for (Node *it = line->args;; it = it->next) {
      bool starts = it && it->kind == ND_IDENT && find_def(L, ND_LAYERDEF, it->name);
      if (it && it->kind == ND_IDENT && !starts && !head)
        error_at(it->pos, "unknown layer '%s'%s", it->name, suggest(L, ND_LAYERDEF, it->name));
      if (it && it->kind == ND_IDENT && !starts) {
        // a bare word after a layer's arguments: an unknown layer, not a value
        error_at(it->pos, "unknown layer '%s'%s", it->name, suggest(L, ND_LAYERDEF, it->name));
      }
      if (!it || starts) {
        if (head) {
          if (L->ninst == 1024)
            error_at(head->pos, "too many layers (the limit is 1024)");
          Node *def = find_def(L, ND_LAYERDEF, head->name);
          int k;
          for (k = 0; k < nkinds && strcmp(counts[k].kind, def->name); k++)
            ;
          if (k == nkinds) {
            if (nkinds == 256)
              error_at(head->pos, "too many kinds of layers");
            counts[nkinds].kind = def->name, counts[nkinds++].count = 0;
          }
          Instance *inst = &L->inst[L->ninst++];
          inst->def = def;
          inst->at = head;
          inst->name = str_fmt("%s%d", def->name, ++counts[k].count);
          inst->args = bind_args(NULL, def, 0, items, nitems, head->pos,
                                 str_fmt("layer '%s'", def->name));
        }
        if (!it)
          break;
        head = it, nitems = 0;
        continue;
      }
      if (it->kind == ND_THEN)
        error_at(it->pos, "'then' belongs in a schedule line");
      if (!head)
        error_at(it->pos, "expected a layer name here, e.g. 'layer dense 128 relu'");
      if (nitems == 64)
        error_at(it->pos, "too many arguments");
      items[nitems++] = it;
    }
  }
  if (L->ninst == 0)
    error_at(net->pos, "network '%s' has no layers; add lines like 'layer dense 10'", net->name);
}

static Shape input_shape(Node *net) {
  Node *input = NULL;
  for (Node *line = net->body; line; line = line->next) {
    if (!strcmp(line->name, "input")) {
      if (input)
        error_at(line->pos, "the network's input is given twice");
      input = line;
    } else if (strcmp(line->name, "layer")) {
      error_at(line->pos, "unknown line '%s' in a network (expected 'input' or 'layer')",
               line->name);
    }
  }
  if (!input)
    error_at(net->pos, "network '%s' has no 'input' line, e.g. 'input 784'", net->name);
  Node *v = input->args;
  if (!v || v->next)
    error_at(input->pos, "'input' takes one size, e.g. 'input 784' or 'input 1x28x28'");
  Shape s = {.rank = 1, .dim = {DIM_N}};
  if (v->kind == ND_DIMS) {
    for (const char *p = v->name; *p;) {
      if (s.rank == MAX_RANK)
        error_at(v->pos, "an input has at most %d dimensions", MAX_RANK - 1);
      char *end;
      long long d = strtoll(p, &end, 10);
      if (d <= 0)
        error_at(v->pos, "every size in the input shape must be above 0");
      s.dim[s.rank++] = d;
      p = *end == 'x' ? end + 1 : end;
    }
    return s;
  }
  s.dim[s.rank++] = const_int(NULL, v, "the input size", 1);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Data, settings

static const char *string_arg(Node *a, const char *what) {
  if (!a || a->kind != ND_STR)
    error_at(a ? a->pos : (Pos){0}, "%s must be a string in quotes", what);
  return a->name;
}

static char *script_dir(const char *script) {
  const char *slash = strrchr(script, '/');
  return slash ? str_ndup(script, (size_t)(slash - script)) : str_dup(".");
}

static const char *resolve_data(Prog *p, Node *a) {
  char *found = krt_find_data(a->name, script_dir(p->script));
  if (!found)
    error_at(a->pos, "cannot find data file '%s' (looked next to the script, in "
                     "$KEEL_DATA_PATH and in /usr/share/datasets)", a->name);
  char *r = str_dup(found);
  free(found);
  return r;
}

static void lower_source(Prog *p, Node *line, DataSource *src) {
  Node *call = line->args;
  if (!call || call->next || call->kind != ND_CALL ||
      (strcmp(call->name, "idx") && strcmp(call->name, "csv")))
    error_at(call ? call->pos : line->pos,
             "'%s' takes one source: idx(\"images\", \"labels\") or csv(\"file\")", line->name);
  src->pos = call->pos;
  Node *a = call->args;
  if (!strcmp(call->name, "idx")) {
    src->kind = SRC_IDX;
    if (!a || !a->next || a->next->next)
      error_at(call->pos, "idx takes two files: idx(\"images\", \"labels\")");
    string_arg(a, "the images file"), string_arg(a->next, "the labels file");
    src->path = resolve_data(p, a), src->path2 = resolve_data(p, a->next);
    return;
  }
  src->kind = SRC_CSV;
  if (!a || a->kind == ND_NAMED)
    error_at(call->pos, "csv takes a file: csv(\"data.csv\", label=\"y\")");
  string_arg(a, "the CSV file");
  src->path = resolve_data(p, a);
  for (Node *o = a->next; o; o = o->next) {
    if (o->kind != ND_NAMED || strcmp(o->name, "label"))
      error_at(o->pos, "csv takes a file and label=\"column\"");
    src->label = string_arg(o->lhs, "label");
  }
}

static void lower_data(Prog *p, Node *data) {
  p->scale = 0, p->holdout = 0;
  for (Node *l = data->body; l; l = l->next) {
    if (!strcmp(l->name, "train") || !strcmp(l->name, "test") || !strcmp(l->name, "val")) {
      DataSource *src = l->name[0] == 't' ? (l->name[1] == 'r' ? &p->train_src : &p->test_src)
                                          : &p->val_src;
      bool *has = l->name[0] == 't' ? (l->name[1] == 'r' ? &p->has_train : &p->has_test)
                                    : &p->has_val;
      if (*has)
        error_at(l->pos, "'%s' is given twice", l->name);
      lower_source(p, l, src);
      *has = true;
    } else if (!strcmp(l->name, "scale") || !strcmp(l->name, "holdout")) {
      if (!l->args || l->args->next)
        error_at(l->pos, "'%s' takes one number", l->name);
      double v = const_eval(NULL, l->args);
      if (l->name[0] == 's')
        p->scale = v;
      else if (!(v > 0 && v < 1))
        error_at(l->args->pos, "holdout is a fraction between 0 and 1, got %g", v);
      else
        p->holdout = v;
    } else {
      error_at(l->pos, "unknown line '%s' in a data block (expected train, val, test, scale "
                       "or holdout)", l->name);
    }
  }
  if (!p->has_train)
    error_at(data->pos, "data '%s' has no 'train' source", data->name);
  if (p->has_val && p->holdout > 0)
    error_at(data->pos, "data '%s' has both a 'val' source and 'holdout'; keep one", data->name);
}

// A setting line with one word: `loss cross_entropy lr=...` → the definition and its items.
static Node *setting_def(Lower *L, Node *line, NodeKind kind, Node **items, int *nitems) {
  Node *name = line->args;
  if (!name || name->kind != ND_IDENT)
    error_at(name ? name->pos : line->pos, "'%s' needs the name of a %s", line->name,
             kind_word(kind));
  Node *def = find_def(L, kind, name->name);
  if (!def)
    error_at(name->pos, "unknown %s '%s'%s", kind_word(kind), name->name,
             suggest(L, kind, name->name));
  *nitems = 0;
  for (Node *it = name->next; it; it = it->next) {
    if (it->kind == ND_THEN)
      error_at(it->pos, "schedule composition with 'then' is not supported yet");
    if (*nitems == 64)
      error_at(it->pos, "too many arguments");
    items[(*nitems)++] = it;
  }
  return def;
}

// Does the expression use `labels` as pick's second argument (class indices)?
static bool picks_labels(Node *e, const char *labels) {
  if (!e)
    return false;
  if (e->kind == ND_CALL && !strcmp(e->name, "pick") && e->args && e->args->next &&
      e->args->next->kind == ND_IDENT && !strcmp(e->args->next->name, labels))
    return true;
  if (picks_labels(e->lhs, labels) || picks_labels(e->rhs, labels) ||
      picks_labels(e->cond, labels))
    return true;
  for (Node *a = e->args; a; a = a->next)
    if (picks_labels(a, labels))
      return true;
  return false;
}

// ---------------------------------------------------------------------------------------------
// The program

static int lower_loss(Lower *L, Node *lossdef, Env *largs, Node *at, int out) {
  Fn *fn = L->fn;
  Node *p1 = lossdef->args, *p2 = p1 ? p1->next : NULL;
  int y = ir_input(fn, IN_Y, L->p->y_shape);
  Env *env = largs;
  env = bind(env, p1->name, B_VAL, out, 0, -1);
  env = bind(env, p2->name, B_VAL, y, 0, -1);
  env = bind(env, "n", B_VAL, ir_input(fn, IN_N, shape_scalar()), 0, -1);
  error_context(at->pos, str_fmt("in loss '%s' (network output %s, labels %s): ", lossdef->name,
                                 shape_str(fn->ins[out].shape), shape_str(L->p->y_shape)));
  fn->cur_layer = lossdef->name;
  int loss = lower_expr(L, env, lossdef->lhs);
  fn->cur_layer = NULL;
  if (fn->ins[loss].shape.rank != 0)
    error_at(lossdef->pos, "the loss must be a single number, but it has shape %s",
             shape_str(fn->ins[loss].shape));
  error_context_clear();
  return loss;
}

Prog *lower_program(const char *script_path, Node *user, Node *stdlib, Overrides ov) {
  Lower *L = calloc(1, sizeof *L);
  Prog *p = L->p = arena_alloc(sizeof *p);
  p->script = script_path;
  int cap = 0;
  for (Node *d = user; d; d = d->next)
    cap++;
  for (Node *d = stdlib; d; d = d->next)
    cap++;
  L->defs = arena_alloc(sizeof(Node *) * (size_t)(cap + 1));
  Node *train = NULL;
  for (int pass = 0; pass < 2; pass++)
    for (Node *d = pass ? stdlib : user; d; d = d->next) {
      if (d->kind == ND_TRAIN) {
        if (train)
          error_at(d->pos, "a second 'train' block; a script trains one network");
        train = d;
        continue;
      }
      if (pass == 0)
        for (int i = 0; i < L->ndefs; i++)
          if (L->defs[i]->kind == d->kind && !strcmp(L->defs[i]->name, d->name))
            error_at(d->pos, "%s '%s' is defined twice", kind_word(d->kind) , d->name);
      L->defs[L->ndefs++] = d;
    }
  if (!train) {
    Pos at = user ? user->pos : (Pos){.file = script_path, .line = 1, .col = 1};
    at.line = 1, at.col = 1;
    error_at(at, "no 'train' block: add one, e.g. 'train mynet on mydata { loss cross_entropy "
                 "... }'");
  }
  Node *net = find_def(L, ND_NETWORK, train->name);
  if (!net)
    error_at(train->pos, "unknown network '%s'", train->name);
  Node *data = find_def(L, ND_DATA, train->name2);
  if (!data)
    error_at(train->pos, "unknown data '%s'", train->name2);
  p->model_name = net->name;

  // settings
  p->batch = 32, p->epochs = 1, p->steps = 0, p->seed = 0;
  Node *loss_line = NULL, *opt_line = NULL, *sched_line = NULL;
  for (Node *l = train->body; l; l = l->next) {
    const char *w = l->name;
    if (!strcmp(w, "loss") || !strcmp(w, "optimizer") || !strcmp(w, "schedule")) {
      Node **slot = w[0] == 'l' ? &loss_line : w[0] == 'o' ? &opt_line : &sched_line;
      if (*slot)
        error_at(l->pos, "'%s' is given twice", w);
      *slot = l;
    } else if (!strcmp(w, "batch") || !strcmp(w, "epochs") || !strcmp(w, "steps") ||
               !strcmp(w, "seed")) {
      if (!l->args || l->args->next)
        error_at(l->pos, "'%s' takes one number", w);
      int64_t v = const_int(NULL, l->args, w, w[0] == 'b' ? 1 : 0);
      if (w[0] == 'b') p->batch = v;
      else if (w[1] == 'p') p->epochs = v;
      else if (w[1] == 't') p->steps = v;
      else p->seed = (uint64_t)v;
    } else {
      error_at(l->pos, "unknown setting '%s' in a train block (expected loss, optimizer, "
                       "schedule, batch, epochs, steps or seed)", w);
    }
  }
  if (!loss_line)
    error_at(train->pos, "the train block has no 'loss' line, e.g. 'loss cross_entropy'");
  if (!opt_line)
    error_at(train->pos, "the train block has no 'optimizer' line, e.g. 'optimizer sgd lr=0.1'");
  if (ov.batch > 0) p->batch = ov.batch;
  if (ov.epochs >= 0) p->epochs = ov.epochs;
  if (ov.steps >= 0) p->steps = ov.steps;
  if (ov.seed >= 0) p->seed = (uint64_t)ov.seed;

  lower_data(p, data);

  // the network
  p->in_shape = input_shape(net);
  collect_instances(L, net);
  p->layers = arena_alloc(sizeof(LayerInfo) * (size_t)L->ninst);
  p->nlayers = L->ninst;

  Node *items[64];
  int nitems;
  Node *lossdef = setting_def(L, loss_line, ND_LOSSDEF, items, &nitems);
  if (!lossdef->args || !lossdef->args->next || lossdef->args->kind != ND_IDENT ||
      lossdef->args->next->kind != ND_IDENT)
    error_at(lossdef->pos, "a loss takes the network's output and the labels first, e.g. "
                           "'loss mse(pred, target) = ...'");
  Env *largs = bind_args(NULL, lossdef, 2, items, nitems, loss_line->args->pos,
                         str_fmt("loss '%s'", lossdef->name));
  p->classify = picks_labels(lossdef->lhs, lossdef->args->next->name);

  Node *optdef = setting_def(L, opt_line, ND_OPTDEF, items, &nitems);
  Env *oargs = bind_args(NULL, optdef, 0, items, nitems, opt_line->args->pos,
                         str_fmt("optimizer '%s'", optdef->name));
  Env *lr = find(oargs, "lr");
  if (!lr)
    error_at(optdef->pos, "optimizer '%s' has no 'lr' parameter", optdef->name);
  p->base_lr = lr->c;

  Node *scheddef;
  Env *sargs;
  if (sched_line) {
    scheddef = setting_def(L, sched_line, ND_SCHEDDEF, items, &nitems);
    sargs = bind_args(NULL, scheddef, 0, items, nitems, sched_line->args->pos,
                      str_fmt("schedule '%s'", scheddef->name));
  } else {
    scheddef = find_def(L, ND_SCHEDDEF, "constant");
    if (!scheddef)
      die("the stdlib has no constant schedule");
    sargs = NULL;
  }

  // train: forward (training mode), loss, backward, optimizer, stores
  p->train = ir_new_fn("train_step");
  begin_fn(L, p->train);
  L->train = true;
  int x = ir_input(p->train, IN_X, p->in_shape);
  int out = lower_forward(L, x, true);
  p->out_shape = p->train->ins[out].shape;
  if (p->out_shape.rank != 2 || p->out_shape.dim[0] != DIM_N)
    error_at(net->pos, "the network's output has shape %s; a loss needs [n, outputs]",
             shape_str(p->out_shape));
  p->y_shape = p->classify ? shape_make(1, DIM_N) : p->out_shape;
  int loss = lower_loss(L, lossdef, largs, loss_line, out);
  p->train_out = out, p->train_loss = loss;

  int nparams = 0, *wrt = arena_alloc(sizeof(int) * (size_t)(p->ntensors + 1));
  int *ptensor = arena_alloc(sizeof(int) * (size_t)(p->ntensors + 1));
  for (int t = 0; t < p->ntensors; t++)
    if (p->tensors[t].kind == TK_PARAM)
      ptensor[nparams] = t, wrt[nparams++] = tensor_val(L, t);
  int *grads = arena_alloc(sizeof(int) * (size_t)(nparams + 1));
  p->train->nfwd = p->train->len;
  ad_grad(p->train, loss, wrt, nparams, grads);

  // the optimizer, inlined once per parameter
  Fn *fn = p->train;
  int in_lr = ir_input(fn, IN_LR, shape_scalar()), in_t = ir_input(fn, IN_T, shape_scalar());
  for (int k = 0; k < nparams; k++) {
    int t = ptensor[k];
    const char *pname = p->tensors[t].name;
    fn->cur_layer = pname;
    Env *env = oargs;
    env = bind(env, "lr", B_VAL, in_lr, 0, -1);
    env = bind(env, "t", B_VAL, in_t, 0, -1);
    env = bind(env, "g", B_VAL, grads[k], 0, -1);
    env = bind(env, "w", B_TENSOR, -1, 0, t);
    error_context(opt_line->pos, str_fmt("in optimizer '%s' (updating %s): ", optdef->name, pname));
    for (Node *s = optdef->body; s; s = s->next) {
      fn->cur_pos = s->pos;
      if (s->kind == ND_STATE) {
        Node fake = *s;
        const char *sname = str_fmt("%s.%s", pname, s->name);
        int st = declare_tensor(L, oargs, &fake, sname, TK_STATE, p->tensors[t].shape, t);
        env = bind(env, s->name, B_TENSOR, -1, 0, st);
      } else if (s->kind == ND_ASSIGN) {
        int v = lower_expr(L, env, s->lhs);
        Env *b = find_tensor_binding(env, s->name);
        if (b)
          defer_store(L, b->tensor, v, s->pos);
        env = bind(env, s->name, B_VAL, v, 0, -1);
      } else {
        error_at(s->pos, "an optimizer body holds 'state' lines and assignments");
      }
    }
    error_context_clear();
  }
  fn->cur_layer = NULL;
  emit_stores(L);
  ir_simplify(p->train, (int *[]){&p->train_loss, &p->train_out}, 2);
  ir_verify(p->train);

  // eval: forward (evaluation mode) and loss
  p->eval = ir_new_fn("eval_step");
  begin_fn(L, p->eval);
  L->train = false;
  L->rand_seq = 1000;  // eval streams never collide with training's
  x = ir_input(p->eval, IN_X, p->in_shape);
  out = lower_forward(L, x, false);
  p->eval_out = out;
  p->eval_loss = lower_loss(L, lossdef, largs, loss_line, out);
  emit_stores(L);
  ir_simplify(p->eval, (int *[]){&p->eval_loss, &p->eval_out}, 2);
  ir_verify(p->eval);

  // the schedule: a scalar function of step, steps, epoch and base
  p->sched = ir_new_fn("schedule");
  begin_fn(L, p->sched);
  Fn *sf = p->sched;
  Env *env = sargs;
  env = bind(env, "step", B_VAL, ir_input(sf, IN_STEP, shape_scalar()), 0, -1);
  env = bind(env, "steps", B_VAL, ir_input(sf, IN_STEPS, shape_scalar()), 0, -1);
  env = bind(env, "epoch", B_VAL, ir_input(sf, IN_EPOCH, shape_scalar()), 0, -1);
  env = bind(env, "base", B_VAL, ir_input(sf, IN_BASE, shape_scalar()), 0, -1);
  if (sched_line)
    error_context(sched_line->pos, str_fmt("in schedule '%s': ", scheddef->name));
  int r = lower_expr(L, env, scheddef->lhs);
  error_context_clear();
  if (sf->ins[r].shape.rank != 0)
    error_at(scheddef->pos, "a schedule must give a single number");
  p->sched_out = r;
  ir_simplify(sf, (int *[]){&p->sched_out}, 1);
  ir_verify(sf);
  free(L);
  return p;
}
