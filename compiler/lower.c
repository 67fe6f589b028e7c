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

#include <errno.h>
#include <limits.h>
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
  Pos pos;       // arguments: where the value was given (file NULL for a default)
  Env *next;
};

static Env *bind(Env *env, const char *name, BindKind kind, int val, double c, int tensor) {
  Env *e = arena_alloc(sizeof *e);
  *e = (Env){.name = name, .kind = kind, .val = val, .c = c, .tensor = tensor, .next = env};
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
  int seg_duration;    // lower_segment: the segment's `duration` parameter, or -1
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
  if (p->ntensors == p->tensor_cap) {
    p->tensor_cap = p->tensor_cap ? p->tensor_cap * 2 : 64;
    Tensor *n = arena_alloc(sizeof(Tensor) * (size_t)p->tensor_cap);
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
  if (L->tval[tensor] == v)  // `s = setting ? new : s` with the setting off: nothing to write
    return;
  Tensor *T = &L->p->tensors[tensor];
  Shape vs = L->fn->ins[v].shape, b;
  if (!shape_broadcast(vs, T->shape, &b) || !shape_eq(b, T->shape)) {
    const char *base = strrchr(T->name, '.');
    error_at(pos, "cannot store a value of shape %s into the %s '%s' of shape %s",
             shape_str(vs), T->kind == TK_BUFFER ? "buffer" : T->kind == TK_STATE ? "state"
                                                                                 : "parameter",
             base ? base + 1 : T->name, shape_str(T->shape));
  }
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
  int bd = 3, len = (int)strlen(name);
  for (int i = 0; i < L->ndefs; i++)
    if (L->defs[i]->kind == kind) {
      int d = edit_distance(name, L->defs[i]->name);
      if (d < bd && d < len)  // 'x' is not a typo of 'd2'
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
    if (!strcmp(e->name, "same"))  // pad=same: conv pads to keep the size (images.nn)
      return -1;
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
  Pos given[64] = {0};
  int next = skip, npositional = 0;
  for (int i = 0; i < nitems; i++)
    npositional += items[i]->kind != ND_NAMED;
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
        if (want == 0)
          error_at(it->pos, "%s takes no arguments, got %d", what, npositional);
        error_at(it->pos, "%s takes %d argument%s, got %d", what, want, want == 1 ? "" : "s",
                 npositional);
      }
      k = next;
    }
    Node *v = it->kind == ND_NAMED ? it->lhs : it;
    given[k] = v->pos;
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
    out->pos = given[k];
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

// The definition's parameters (from the `skip`-th) with their bound values, in order.
static Arg *args_of(Node *def, int skip, Env *env, int *nargs) {
  int n = 0;
  for (Node *p = def->args; p; p = p->next)
    n++;
  Arg *a = arena_alloc(sizeof(Arg) * (size_t)(n + 1));
  *nargs = 0;
  int k = 0;
  for (Node *p = def->args; p; p = p->next, k++) {
    if (k < skip)
      continue;
    Env *b = find(env, p->name);
    a[(*nargs)++] = (Arg){p->name, b && b->kind == B_CONST ? b->c : 0, false};
  }
  return a;
}

// ---------------------------------------------------------------------------------------------
// Expressions

static int lower_expr(Lower *L, Env *env, Node *e);

static int axis_arg(Lower *L, Env *env, Node *call, Node *named, int rank) {
  double v = const_eval(env, named->lhs);
  if (v != floor(v))
    error_at(named->lhs->pos, "axis must be a whole number, got %g", v);
  int64_t a = (int64_t)v;
  if (a < 0)
    a += rank;
  if (a < 0 || a >= rank || const_eval(env, named->lhs) != floor(const_eval(env, named->lhs)))
    error_at(named->pos, "axis=%g is out of range for a tensor of rank %d",
             const_eval(env, named->lhs), rank);
  return (int)a;
}

// conv2d(x, w, stride=1, pad=0, dilation=1); maxpool(x, k, stride=k, pad=0); avgpool likewise
static int lower_image_call(Lower *L, Env *env, Node *e) {
  Fn *fn = L->fn;
  bool conv = !strcmp(e->name, "conv2d");
  Node *pos[2] = {0};
  int np = 0, attr[3] = {1, 0, 1};  // stride, pad, dilation
  bool has_stride = false;
  for (Node *a = e->args; a; a = a->next) {
    if (a->kind != ND_NAMED) {
      if (np == 2)
        error_at(a->pos, "'%s' takes 2 arguments", e->name);
      pos[np++] = a;
      continue;
    }
    int k = !strcmp(a->name, "stride") ? 0 : !strcmp(a->name, "pad") ? 1
            : conv && !strcmp(a->name, "dilation") ? 2 : -1;
    if (k < 0)
      error_at(a->pos, "'%s' has no argument '%s'", e->name, a->name);
    attr[k] = (int)const_int(env, a->lhs, a->name, k == 1 ? 0 : 1);
    has_stride |= k == 0;
  }
  if (np != 2)
    error_at(e->pos, "'%s' takes 2 arguments: %s", e->name,
             conv ? "the input and the weight" : "the input and the window size");
  int x = lower_expr(L, env, pos[0]);
  if (conv) {
    int w = lower_expr(L, env, pos[1]);
    fn->cur_pos = e->pos;
    return ir_conv2d(fn, x, w, attr[0], attr[1], attr[2]);
  }
  int k = (int)const_int(env, pos[1], "the window size", 1);
  fn->cur_pos = e->pos;
  return ir_pool(fn, e->name[0] == 'm' ? OP_MAXPOOL : OP_AVGPOOL, x, k,
                 has_stride ? attr[0] : k, attr[1]);
}

static int lower_call(Lower *L, Env *env, Node *e) {
  Fn *fn = L->fn;
  if (!strcmp(e->name, "conv2d") || !strcmp(e->name, "maxpool") || !strcmp(e->name, "avgpool"))
    return lower_image_call(L, env, e);
  Node *pos[4], *axis = NULL, *keep = NULL;
  int np = 0;
  for (Node *a = e->args; a; a = a->next) {
    if (a->kind == ND_NAMED) {
      if (strcmp(a->name, "axis") && strcmp(a->name, "keep"))
        error_at(a->pos, "'%s' has no argument '%s'", e->name, a->name);
      if (a->name[0] == 'k')
        keep = a;
      else
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
  Op red = is_max || is_min ? OP_RMAX : !strcmp(f, "sum") ? OP_SUM : !strcmp(f, "mean") ? OP_MEAN
           : !strcmp(f, "logsumexp") ? OP_LSE : OP_COUNT;
  if (red != OP_COUNT) {
    WANT(1);
    int a = lower_expr(L, env, pos[0]);
    fn->cur_pos = e->pos;
    Shape as = fn->ins[a].shape;
    int ax = axis ? axis_arg(L, env, e, axis, as.rank) : -1;
    int r = is_min ? ir_op1(fn, OP_NEG, ir_reduce(fn, red, ir_op1(fn, OP_NEG, a), ax))  // -max(-a)
                   : ir_reduce(fn, red, a, ax);
    if (keep && const_eval(env, keep->lhs) != 0) {  // keep=1: the axis stays, with size 1
      Shape k = as;
      for (int i = 0; i < k.rank; i++)
        if (ax < 0 || i == ax)
          k.dim[i] = 1;
      r = ir_reshape(fn, r, k);
    }
    return r;
  }
  if (keep)
    error_at(keep->pos, "'%s' has no argument 'keep'", f);
  if (axis)
    error_at(axis->pos, "'%s' has no argument 'axis'", f);
  // per-feature statistics: axis 1 holds the features of [n, f] or the channels of
  // [n, c, h, w]; batchnorm is written with these
  if (!strcmp(f, "feature_mean") || !strcmp(f, "feature_count")) {
    WANT(1);
    int a = lower_expr(L, env, pos[0]);
    Shape s = fn->ins[a].shape;
    fn->cur_pos = e->pos;
    if (s.rank < 2)
      error_at(e->pos, "'%s' needs a batch of samples [n, features, ...], got %s", f, shape_str(s));
    if (f[8] == 'c') {  // the number of values averaged per feature: numel / features
      if (L->train)  // an unbiased variance from a batch of 1 divides by 0: batches of 2+
        L->p->min_batch = 2;
      int c = ir_const(fn, 1);
      for (int i = 0; i < s.rank; i++)
        if (i != 1)
          c = ir_op2(fn, OP_MUL, c, s.dim[i] == DIM_N ? ir_input(fn, IN_N, shape_scalar())
                                                      : ir_const(fn, (double)s.dim[i]));
      return c;
    }
    for (int i = s.rank - 1; i >= 2; i--)  // equal-sized groups: the mean of means is exact
      a = ir_reduce(fn, OP_MEAN, a, i);
    return ir_reduce(fn, OP_MEAN, a, 0);
  }
  if (!strcmp(f, "per_feature")) {
    WANT(2);
    int v = lower_expr(L, env, pos[0]), a = lower_expr(L, env, pos[1]);
    Shape vs = fn->ins[v].shape, s = fn->ins[a].shape;
    fn->cur_pos = e->pos;
    if (s.rank < 2 || vs.rank != 1 || vs.dim[0] != s.dim[1])
      error_at(e->pos, "per_feature(v, x) needs v of shape [features] and x of shape "
                       "[n, features, ...], got %s and %s", shape_str(vs), shape_str(s));
    Shape to = {.rank = s.rank - 1, .dim = {vs.dim[0], 1, 1}};
    return ir_reshape(fn, v, to);
  }
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
    double cv;
    if (ir_is_const(fn, c, &cv))  // decided now: only the branch taken is built
      return lower_expr(L, env, cv != 0 ? e->lhs : e->rhs);
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
      double count = 1;
      for (Node *d = s->args; d; d = d->next) {
        if (shape.rank == MAX_RANK)
          error_at(d->pos, "tensors have at most %d dimensions", MAX_RANK);
        // a size that comes straight from an argument: blame the argument the user wrote
        Env *arg = d->kind == ND_IDENT ? find(*env, d->name) : NULL;
        double v = const_eval(*env, d);
        if (arg && arg->kind == B_CONST && arg->pos.file && !(v >= 1 && v == floor(v) && v < 1e12)) {
          error_context_clear();
          if (v >= 1e12 && v == floor(v))
            error_at(arg->pos, "layer '%s': '%s' is too large (%g)", inst->def->name, d->name, v);
          error_at(arg->pos, "layer '%s': '%s' must be a whole number above 0, got %g",
                   inst->def->name, d->name, v);
        }
        shape.dim[shape.rank++] = const_int(*env, d, str_fmt("a size of '%s'", s->name), 1);
        count *= (double)shape.dim[shape.rank - 1];
      }
      if (count > (double)(1LL << 34))
        error_at(s->pos, "'%s' would hold %.3g values, more than this machine can train",
                 s->name, count);
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
    if (record)
      L->p->layers[i].in = L->fn->ins[x].shape;
    x = lower_layer(L, inst, x);
    if (record) {
      LayerInfo *li = &L->p->layers[i];
      li->name = inst->name, li->kind = inst->def->name, li->pos = inst->at->pos;
      li->out = L->fn->ins[x].shape;
      // For the guard's "first non-finite value", a scalar instead of the output itself: a
      // kept output would hold its memory to the end of the step (the CNN's activations:
      // 45 MB at batch 128); this sum reads it once, right here, in one vectorized loop.
      // (untagged: a layer's last instruction of its own is its output)
      int zero = ir_const(L->fn, 0);
      li->train_probe = L->fn->ins[x].shape.rank == 0
                            ? x : ir_reduce(L->fn, OP_SUM, ir_op2(L->fn, OP_MUL, x, zero), -1);
      li->args = args_of(inst->def, 0, inst->args, &li->nargs);

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
          // dense1, dense2, ...; a kind ending in a digit gets an underscore (conv3d_1)
          size_t len = strlen(def->name);
          bool digit = len && def->name[len - 1] >= '0' && def->name[len - 1] <= '9';
          inst->name = str_fmt("%s%s%d", def->name, digit ? "_" : "", ++counts[k].count);
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
      errno = 0;
      long long d = strtoll(p, &end, 10);
      if (d <= 0)
        error_at(v->pos, "every size in the input shape must be above 0");
      if (errno || d > (1LL << 30) || (double)shape_numel(s, 1) * (double)d > (double)(1LL << 30))
        error_at(v->pos, "the input shape %s is too large", v->name);
      s.dim[s.rank++] = d;
      p = *end == 'x' ? end + 1 : end;
    }
    return s;
  }
  s.dim[s.rank++] = const_int(NULL, v, "the input size", 1);
  if (s.dim[1] > (1LL << 30))
    error_at(v->pos, "the input size %lld is too large", (long long)s.dim[1]);
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
  // absolute, so that a built trainer finds the file from any folder on this machine
  char *abs = realpath(found, NULL);
  char *r = str_dup(abs ? abs : found);
  free(found), free(abs);
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
      for (Node *o = data->body; o != l; o = o->next)
        if (!strcmp(o->name, l->name))
          error_at(l->pos, "'%s' is given twice", l->name);
      if (!l->args || l->args->next)
        error_at(l->pos, "'%s' takes one number", l->name);
      double v = const_eval(NULL, l->args);
      if (l->name[0] == 's' && !(v > 0 && isfinite(v)))
        error_at(l->args->pos, "scale must be a number above 0, got %g", v);
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
    error_at(name ? name->pos : line->pos, "'%s' needs the name of %s %s, e.g. '%s'",
             line->name, kind == ND_OPTDEF ? "an" : "a", kind_word(kind),
             kind == ND_OPTDEF ? "optimizer sgd lr=0.1" : kind == ND_LOSSDEF ? "loss cross_entropy"
                                                                           : "schedule cosine");
  Node *def = find_def(L, kind, name->name);
  if (!def)
    error_at(name->pos, "unknown %s '%s'%s", kind_word(kind), name->name,
             suggest(L, kind, name->name));
  *nitems = 0;
  for (Node *it = name->next; it; it = it->next) {
    if (it->kind == ND_THEN)
      error_at(it->pos, "'then' joins schedules ('schedule warmup 500 then cosine'); it has "
                        "no meaning on a %s line", kind_word(kind));
    if (*nitems == 64)
      error_at(it->pos, "too many arguments");
    items[(*nitems)++] = it;
  }
  return def;
}

// A setting line of name=value items: `clip norm=1.0`, `early_stop patience=3`. Each value
// is a number except where names[i] ends in '$' (a word, as in monitor=val_loss): its
// text goes to words[i].
static void named_settings(Node *line, const char **names, int count, double *vals,
                           bool *have, const char **words) {
  for (Node *it = line->args; it; it = it->next) {
    if (it->kind != ND_NAMED) {
      char list[256] = "";
      for (int i = 0; i < count; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%.*s=", i ? ", " : "",
                 (int)strcspn(names[i], "$"), names[i]);
      error_at(it->pos, "'%s' takes name=value settings (%s)", line->name, list);
    }
    int k;
    for (k = 0; k < count && strncmp(names[k], it->name, strcspn(names[k], "$")) |
                                 (strlen(it->name) != strcspn(names[k], "$"));
         k++)
      ;
    if (k == count)
      error_at(it->pos, "'%s' has no setting '%s'", line->name, it->name);
    if (have[k])
      error_at(it->pos, "'%s' is given twice", it->name);
    have[k] = true;
    if (names[k][strlen(names[k]) - 1] == '$') {
      if (it->lhs->kind != ND_IDENT)
        error_at(it->lhs->pos, "%s= takes a word", it->name);
      words[k] = it->lhs->name;
    } else {
      vals[k] = const_eval(NULL, it->lhs);
    }
  }
}

static void lower_setting(Prog *p, Node *l) {
  const char *w = l->name;
  double v[4] = {0};
  bool have[4] = {0};
  const char *word[4] = {0};
  if (!strcmp(w, "clip")) {
    named_settings(l, (const char *[]){"norm", "value"}, 2, v, have, word);
    if (!have[0] && !have[1])
      error_at(l->pos, "'clip' needs norm=... (the gradients' global L2 norm) or value=...");
    for (int i = 0; i < 2; i++)
      if (have[i] && !(v[i] > 0))
        error_at(l->pos, "clip %s= must be above 0, got %g", i ? "value" : "norm", v[i]);
    p->clip_norm = v[0], p->clip_value = v[1], p->clip_pos = l->pos;
  } else if (!strcmp(w, "early_stop")) {
    named_settings(l, (const char *[]){"patience", "min_delta", "monitor$"}, 3, v, have, word);
    p->early_patience = have[0] ? (int)v[0] : 5;
    if (have[0] && (v[0] != (int)v[0] || v[0] < 1))
      error_at(l->pos, "early_stop patience= must be a whole number of epochs above 0");
    p->early_min_delta = v[1];
    if (v[1] < 0)
      error_at(l->pos, "early_stop min_delta= is the smallest improvement that counts, 0 or "
                       "more, got %g", v[1]);
    if (word[2] && strcmp(word[2], "val_loss") && strcmp(word[2], "val_accuracy"))
      error_at(l->pos, "early_stop monitor= is val_loss or val_accuracy, not '%s'", word[2]);
    p->early_monitor_accuracy = word[2] && !strcmp(word[2], "val_accuracy");
    p->early_pos = l->pos;
  } else if (!strcmp(w, "on_plateau")) {
    named_settings(l, (const char *[]){"factor", "patience"}, 2, v, have, word);
    p->plateau_factor = have[0] ? v[0] : 0.1;
    if (have[1] && v[1] != floor(v[1]))
      error_at(l->pos, "on_plateau patience= must be a whole number of epochs, got %g", v[1]);
    p->plateau_patience = have[1] ? (int)v[1] : 10;
    if (!(p->plateau_factor > 0 && p->plateau_factor < 1))
      error_at(l->pos, "on_plateau factor= must be between 0 and 1, got %g", p->plateau_factor);
    if (p->plateau_patience < 1)
      error_at(l->pos, "on_plateau patience= must be a whole number of epochs above 0");
    p->plateau_pos = l->pos;
  } else if (!strcmp(w, "guard")) {
    named_settings(l, (const char *[]){"spike", "limit"}, 2, v, have, word);
    if (have[0]) {
      if (v[0] != 0 && !(v[0] > 1))
        error_at(l->pos, "guard spike= is a factor above 1 (or 0 to turn the spike check off)");
      p->guard_spike = v[0];
    }
    if (have[1]) {
      if (v[1] != (int)v[1] || v[1] < 1)
        error_at(l->pos, "guard limit= must be a whole number above 0");
      p->guard_limit = (int)v[1];
    }
  } else if (!strcmp(w, "drop_last")) {
    if (l->args)
      error_at(l->args->pos, "'drop_last' takes no value");
    p->drop_last = true;
  } else {
    error_at(l->pos, "unknown setting '%s' in a train block (expected loss, optimizer, "
                     "schedule, batch, epochs, steps, seed, clip, early_stop, on_plateau, "
                     "drop_last or guard)", w);
  }
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
// Schedules: `schedule warmup 2 epochs then cosine min_lr=1e-5`

typedef struct {
  Node *def, *name;
  Node *items[64];
  int nitems;
  bool epochs[64];  // the item carries the unit `epochs` (else steps)
} Segment;

// One segment's rate at `step` (relative to its start) over `steps`, as an IR scalar.
static int lower_segment(Lower *L, Segment *sg, int step, int steps) {
  Fn *fn = L->fn;
  const char *what = str_fmt("schedule '%s'", sg->def->name);
  Env *env = bind_args(NULL, sg->def, 0, sg->items, sg->nitems, sg->name->pos, what);
  // durations in epochs become run-time values: the count times the batches per epoch
  for (int i = 0; i < sg->nitems; i++) {
    if (!sg->epochs[i])
      continue;
    Node *it = sg->items[i];
    const char *pname = NULL;
    if (it->kind == ND_NAMED) {
      pname = it->name;
    } else {  // the k-th positional item binds the k-th parameter not given by name
      int k = 0;
      for (int j = 0; j < i; j++)
        k += sg->items[j]->kind != ND_NAMED;
      for (Node *prm = sg->def->args; prm; prm = prm->next) {
        bool named = false;
        for (int j = 0; j < sg->nitems; j++)
          named |= sg->items[j]->kind == ND_NAMED && !strcmp(sg->items[j]->name, prm->name);
        if (!named && k-- == 0) {
          pname = prm->name;
          break;
        }
      }
    }
    Env *b = pname ? find(env, pname) : NULL;
    if (!b)
      unreachable();
    int spe = ir_input(fn, IN_SPE, shape_scalar());
    env = bind(env, pname, B_VAL, ir_op2(fn, OP_MUL, ir_const(fn, b->c), spe), 0, -1);
  }
  env = bind(env, "step", B_VAL, step, 0, -1);
  env = bind(env, "steps", B_VAL, steps, 0, -1);
  env = bind(env, "epoch", B_VAL, ir_input(fn, IN_EPOCH, shape_scalar()), 0, -1);
  env = bind(env, "base", B_VAL, ir_input(fn, IN_BASE, shape_scalar()), 0, -1);
  error_context(sg->name->pos, str_fmt("in schedule '%s': ", sg->def->name));
  int r = lower_expr(L, env, sg->def->lhs);
  error_context_clear();
  if (fn->ins[r].shape.rank != 0)
    error_at(sg->def->pos, "a schedule must give a single number");
  Env *d = find(env, "duration");
  L->seg_duration = d ? (d->kind == B_VAL ? d->val : ir_const(fn, d->c)) : -1;
  return r;
}

// a then b then c: a for its duration, then the rest over the remaining steps.
static int lower_chain(Lower *L, Segment *sg, int i, int nseg, int step, int steps) {
  Fn *fn = L->fn;
  int r = lower_segment(L, &sg[i], step, steps);
  if (i == nseg - 1)
    return r;
  int d = L->seg_duration;
  if (d < 0)
    error_at(sg[i].name->pos, "schedule '%s' has no duration, so nothing can follow it with "
                              "'then' (warmup and linear have one)", sg[i].def->name);
  int rest = lower_chain(L, sg, i + 1, nseg, ir_op2(fn, OP_SUB, step, d),
                         ir_op2(fn, OP_SUB, steps, d));
  return ir_select(fn, ir_op2(fn, OP_LT, step, d), r, rest);
}

static int lower_schedule(Lower *L, Node *line) {
  Fn *fn = L->fn;
  int step = ir_input(fn, IN_STEP, shape_scalar()), steps = ir_input(fn, IN_STEPS, shape_scalar());
  Segment *sg = arena_alloc(sizeof(Segment) * 16);
  int nseg = 0;
  if (!line) {
    sg[0].def = find_def(L, ND_SCHEDDEF, "constant");
    if (!sg[0].def)
      die("the stdlib has no constant schedule");
    sg[0].name = sg[0].def;
    return lower_chain(L, sg, 0, 1, step, steps);
  }
  for (Node *it = line->args; it; it = it->next) {
    Segment *cur = nseg ? &sg[nseg - 1] : NULL;
    bool unit = it->kind == ND_IDENT && cur && cur->nitems > 0 &&
                (!strcmp(it->name, "steps") || !strcmp(it->name, "step") ||
                 !strcmp(it->name, "epochs") || !strcmp(it->name, "epoch"));
    if (unit) {
      cur->epochs[cur->nitems - 1] = it->name[0] == 'e';
      continue;
    }
    if (it->kind == ND_THEN) {
      if (!cur || !it->next)
        error_at(it->pos, "'then' joins two schedules: 'schedule warmup 500 then cosine'");
      if (nseg == 16)
        error_at(it->pos, "too many schedules joined with 'then'");
      sg[nseg++] = (Segment){0};
      continue;
    }
    if (!cur || !cur->def) {
      if (!cur)
        cur = &sg[nseg++];
      if (it->kind != ND_IDENT)
        error_at(it->pos, "expected the name of a schedule here");
      cur->def = find_def(L, ND_SCHEDDEF, it->name);
      if (!cur->def)
        error_at(it->pos, "unknown schedule '%s'%s", it->name, suggest(L, ND_SCHEDDEF, it->name));
      cur->name = it;
      continue;
    }
    if (cur->nitems == 64)
      error_at(it->pos, "too many arguments");
    cur->items[cur->nitems++] = it;
  }
  if (!nseg)
    error_at(line->pos, "'schedule' needs the name of a schedule, e.g. 'schedule cosine'");
  int r = lower_chain(L, sg, 0, nseg, step, steps);
  // what lints and explain need: each segment's arguments, in steps or epochs as written
  Prog *p = L->p;
  p->segments = arena_alloc(sizeof(Use) * (size_t)nseg);
  p->nsegments = nseg;
  for (int i = 0; i < nseg; i++) {
    Use *u = &p->segments[i];
    Env *env = bind_args(NULL, sg[i].def, 0, sg[i].items, sg[i].nitems, sg[i].name->pos, "");
    u->name = sg[i].def->name, u->pos = sg[i].name->pos;
    u->args = args_of(sg[i].def, 0, env, &u->nargs);
    for (int k = 0; k < u->nargs; k++) {
      u->has_duration |= !strcmp(u->args[k].name, "duration");
      for (int j = 0; j < sg[i].nitems; j++) {
        Node *it = sg[i].items[j];
        if (sg[i].epochs[j] && it->kind == ND_NAMED && !strcmp(it->name, u->args[k].name))
          u->args[k].epochs = true;
      }
    }
    // positional items given in epochs: the k-th positional binds the k-th unnamed parameter
    for (int j = 0, pos = 0; j < sg[i].nitems; j++) {
      if (sg[i].items[j]->kind == ND_NAMED)
        continue;
      int seen = 0;
      for (int k = 0; k < u->nargs; k++) {
        bool named = false;
        for (int m = 0; m < sg[i].nitems; m++)
          named |= sg[i].items[m]->kind == ND_NAMED && !strcmp(sg[i].items[m]->name, u->args[k].name);
        if (!named && seen++ == pos) {
          u->args[k].epochs |= sg[i].epochs[j];
          break;
        }
      }
      pos++;
    }
  }
  return r;
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
    error_at(train->pos, "unknown network '%s'%s", train->name,
             suggest(L, ND_NETWORK, train->name));
  Node *data = find_def(L, ND_DATA, train->name2);
  if (!data) {
    // the data's name follows `on` on the same line
    Pos at = train->pos;
    const char *line = at.src, *q;
    for (int l = 1; l < at.line && *line; line++)
      if (*line == '\n')
        l++;
    if ((q = strstr(line + at.col - 1, " on ")))
      for (q += 4; *q == ' ' || *q == '\t'; q++)
        ;
    if (q && !strncmp(q, train->name2, strlen(train->name2)))
      at.col = (int)(q - line) + 1;
    error_at(at, "unknown data '%s'%s", train->name2, suggest(L, ND_DATA, train->name2));
  }
  p->model_name = net->name;

  // settings
  p->batch = 32, p->epochs = 1, p->steps = 0, p->seed = 0;
  p->guard_spike = 10, p->guard_limit = 3;
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
      for (Node *o = train->body; o != l; o = o->next)
        if (!strcmp(o->name, w))
          error_at(l->pos, "'%s' is given twice", w);
      if (!l->args || l->args->next)
        error_at(l->pos, "'%s' takes one number", w);
      int64_t v = const_int(NULL, l->args, w, w[0] == 'b' ? 1 : 0);
      if (w[0] == 'b') p->batch = v, p->batch_set = true, p->batch_pos = l->pos;
      else if (w[1] == 'p') p->epochs = v;
      else if (w[1] == 't') p->steps = v;
      else p->seed = (uint64_t)v;
    } else {
      for (Node *o = train->body; o != l; o = o->next)
        if (!strcmp(o->name, w))
          error_at(l->pos, "'%s' is given twice", w);
      lower_setting(p, l);
    }
  }
  if (!loss_line)
    error_at(train->pos, "the train block has no 'loss' line, e.g. 'loss cross_entropy'");
  if (!opt_line)
    error_at(train->pos, "the train block has no 'optimizer' line, e.g. 'optimizer sgd lr=0.1'");
  if (ov.batch > 0) p->batch = ov.batch, p->batch_set = true;
  if (ov.epochs >= 0) p->epochs = ov.epochs;
  if (ov.steps >= 0) p->steps = ov.steps;
  if (ov.seed >= 0) p->seed = (uint64_t)ov.seed;

  lower_data(p, data);
  p->data_pos = data->pos;

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
  p->loss = (Use){.name = lossdef->name, .pos = loss_line->args->pos};
  p->loss.args = args_of(lossdef, 2, largs, &p->loss.nargs);

  Node *optdef = setting_def(L, opt_line, ND_OPTDEF, items, &nitems);
  Env *oargs = bind_args(NULL, optdef, 0, items, nitems, opt_line->args->pos,
                         str_fmt("optimizer '%s'", optdef->name));
  Env *lr = find(oargs, "lr");
  if (!lr)
    error_at(optdef->pos, "optimizer '%s' has no 'lr' parameter", optdef->name);
  p->base_lr = lr->c;
  p->opt = (Use){.name = optdef->name, .pos = opt_line->args->pos};
  p->opt.args = args_of(optdef, 0, oargs, &p->opt.nargs);

  // train: forward (training mode), loss, backward, optimizer, stores
  p->train = ir_new_fn("train_step");
  begin_fn(L, p->train);
  L->train = true;
  int x = ir_input(p->train, IN_X, p->in_shape);
  int out = lower_forward(L, x, true);
  p->out_shape = p->train->ins[out].shape;
  if (p->out_shape.rank != 2 || p->out_shape.dim[0] != DIM_N)
    error_at(net->pos, "the network's output has shape %s; a loss needs [n, outputs]: end "
             "the network with 'layer flatten' (or 'global_avgpool') and 'layer dense OUTPUTS'",
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
  Fn *fn = p->train;

  // The guard and clip by norm need Σ g² over every gradient (before clipping, as
  // torch.nn.utils.clip_grad_norm_ measures it).
  fn->cur_layer = NULL, fn->cur_pos = train->pos;
  int gsq = ir_const(fn, 0);
  for (int k = 0; k < nparams; k++)
    gsq = ir_op2(fn, OP_ADD, gsq, ir_reduce(fn, OP_SUM, ir_op2(fn, OP_MUL, grads[k], grads[k]), -1));
  p->train_gsq = gsq;
  // The guard looks for the first non-finite value in the layers' outputs (through their
  // probes, Σ output·0), then in the gradients in the order the backward pass computes them
  // (the last layer's first).
  p->probe_val = arena_alloc(sizeof(int) * (size_t)(L->ninst + nparams + 1));
  p->probe_what = arena_alloc(sizeof(char *) * (size_t)(L->ninst + nparams + 1));
  for (int i = 0; i < L->ninst; i++) {
    p->probe_val[p->nprobes] = p->layers[i].train_probe;
    p->probe_what[p->nprobes++] = str_fmt("the output of %s", p->layers[i].name);
  }
  for (int k = nparams - 1; k >= 0; k--)
    if (!ir_is_const(fn, grads[k], NULL)) {
      p->probe_val[p->nprobes] = grads[k];
      p->probe_what[p->nprobes++] = str_fmt("the gradient of %s", p->tensors[ptensor[k]].name);
    }
  // Clipping: by value (clamp each element), then by the global norm (scale every gradient
  // by min(1, c / (‖g‖ + 1e-6)), as clip_grad_value_ and clip_grad_norm_).
  int coef = -1;  // clip by norm: the factor every gradient is scaled by
  if (p->clip_value > 0 || p->clip_norm > 0) {
    fn->cur_pos = p->clip_pos;
    if (p->clip_norm > 0) {
      int norm = ir_op1(fn, OP_SQRT, gsq);
      coef = ir_op2(fn, OP_MIN, ir_const(fn, 1),
                    ir_op2(fn, OP_DIV, ir_const(fn, p->clip_norm),
                           ir_op2(fn, OP_ADD, norm, ir_const(fn, 1e-6))));
      if (p->clip_value > 0) {  // the norm of the value-clipped gradients
        int sq = ir_const(fn, 0);
        for (int k = 0; k < nparams; k++) {
          int c = ir_op2(fn, OP_MIN, ir_op2(fn, OP_MAX, grads[k], ir_const(fn, -p->clip_value)),
                         ir_const(fn, p->clip_value));
          sq = ir_op2(fn, OP_ADD, sq, ir_reduce(fn, OP_SUM, ir_op2(fn, OP_MUL, c, c), -1));
        }
        norm = ir_op1(fn, OP_SQRT, sq);
        coef = ir_op2(fn, OP_MIN, ir_const(fn, 1),
                      ir_op2(fn, OP_DIV, ir_const(fn, p->clip_norm),
                             ir_op2(fn, OP_ADD, norm, ir_const(fn, 1e-6))));
      }
    }
  }

  // the buffers the forward pass updated (batchnorm's statistics) are written first, after
  // the guard; then the optimizer, inlined once per parameter
  emit_stores(L);
  fn->cur_layer = NULL;
  int in_lr = ir_input(fn, IN_LR, shape_scalar()), in_t = ir_input(fn, IN_T, shape_scalar());
  for (int k = 0; k < nparams; k++) {
    int t = ptensor[k];
    const char *pname = p->tensors[t].name;
    fn->cur_layer = pname;
    // clipping, applied where the update uses the gradient (so the two fuse into one loop)
    if (p->clip_value > 0 || coef >= 0)
      fn->cur_pos = p->clip_pos;
    if (p->clip_value > 0)
      grads[k] = ir_op2(fn, OP_MIN, ir_op2(fn, OP_MAX, grads[k], ir_const(fn, -p->clip_value)),
                        ir_const(fn, p->clip_value));
    if (coef >= 0)
      grads[k] = ir_op2(fn, OP_MUL, grads[k], coef);
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
    // This parameter's updates are written right after they are computed (nothing later in
    // the step reads it), so codegen can fuse the update and the writes into one loop.
    emit_stores(L);
  }
  fn->cur_layer = NULL;
  emit_stores(L);
  int **roots = arena_alloc(sizeof(int *) * (size_t)(p->nprobes + 4));
  roots[0] = &p->train_loss, roots[1] = &p->train_out, roots[2] = &p->train_gsq;
  for (int i = 0; i < p->nprobes; i++)
    roots[3 + i] = &p->probe_val[i];
  ir_fold_relu_pool(p->train);
  ir_simplify(p->train, roots, 3 + p->nprobes);
  ir_sink_expands(p->train, roots, 3 + p->nprobes);  // on the simplified graph: true use counts
  ir_simplify(p->train, roots, 3 + p->nprobes);
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

  // the schedule: a scalar function of step, steps, epoch, base (and batches per epoch)
  p->sched = ir_new_fn("schedule");
  begin_fn(L, p->sched);
  Fn *sf = p->sched;
  int r = lower_schedule(L, sched_line);
  p->sched_out = r;
  ir_simplify(sf, (int *[]){&p->sched_out}, 1);
  ir_verify(sf);
  free(L);
  return p;
}
