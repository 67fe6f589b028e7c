// test_grad.c — every gradient rule of autodiff.c against central finite differences.
//
// What: for each op of ops.def that carries a gradient, small IR functions apply the op and
// reduce its output to a scalar loss; ad_grad's backward pass must agree, element by element,
// with finite differences of that loss. Ops without a gradient (floor, the comparisons, rand,
// store) and the leaves (input, const, tensor) must instead give the zero constant through
// them. Broadcasting in both directions, every matmul transpose combination, the batch
// dimension n (DIM_N, a run-time value), the max(x, 0) kink, and two composite expressions
// (cross-entropy over a linear layer, batch normalization) are covered. At the end every row
// of ops.def must have appeared in some checked function, so a new op needs a case here.
//
// How: a case's inputs are persistent tensors (OP_TENSOR) or batch inputs (OP_INPUT with DIM_N
// shapes) filled with seeded random values from a domain where the op is smooth: positive for
// log, sqrt and a pow base; away from 0 for abs and denominators; on two disjoint grids
// (multiples of 0.1, and those plus 0.05) for max, min and comparisons, so no compared pair
// ties; distinct for rmax. The loss is sum(out * W) with W another tensor of random weights, so
// every output element counts differently; most structural cases also run with the plain
// sum(out), whose adjoint is a broadcast scalar (autodiff's full() and accumulate() paths).
// check_grad(name, fn, loss, wrt, nwrt, n):
//   1. ad_grad(fn, loss, wrt, nwrt, grads), then ir_verify(fn);
//   2. one interp_run of the whole function (interp.c, double precision): the analytic
//      gradient is the value of grads[k], which must have wrt[k]'s shape (or be the zero
//      constant);
//   3. each element of each wrt[k] is set to x ± h (h = 1e-6) and the forward part alone
//      (fn->nfwd instructions) is rerun; numeric = (L(x+h) - L(x-h)) / 2h, and
//      |analytic - numeric| <= tol * max(1, |numeric|) with tol = 1e-6 unless a case says why.
// check_zero does steps 1-2 and wants the zero constant for every wrt[k]. The kink and the
// batch size are checked against exact expected values, not finite differences.
//
// Prints nothing for a passing check; a failure names the case, the input, the element, and
// the analytic and numeric values. Ends with "N passed, N failed".

#include "keel.h"
#include "keelrt.h"

#include "check.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define H 1e-6      // finite-difference step
#define TOL 1e-6    // relative tolerance, scaled by max(1, |numeric|)
#define MAXT 16     // tensors in one case
#define MAXW 8      // values differentiated in one case
#define SEED 1234   // interp_run's seed and step, for OP_RAND
#define STEP 7

// Shapes without shape_make: its variadic int64_t dims would read plain int arguments
// (DIM_N is an int) as garbage.
#define S0 ((Shape){0})
#define S1(a) ((Shape){1, {a}})
#define S2(a, b) ((Shape){2, {a, b}})
#define S3(a, b, c) ((Shape){3, {a, b, c}})
#define N_ DIM_N

// wrt list and its length: check_grad(C.name, C.fn, loss, WRT(x, w), C.n)
#define WRT(...) (int[]){__VA_ARGS__}, (int)(sizeof((int[]){__VA_ARGS__}) / sizeof(int))
#define LEN(a) (int)(sizeof(a) / sizeof *(a))

// How a leaf's values are drawn.
typedef enum {
  G_ANY,       // [-2, 2)
  G_POS,       // [0.5, 2.5): log, sqrt, a pow base, batchnorm's gamma
  G_AWAY,      // ±[0.5, 2): abs, denominators
  G_GRID_A,    // 0.1 k + 0.05: max, min and comparisons against G_GRID_B never tie
  G_GRID_B,    // 0.1 k
  G_DISTINCT,  // all different, at least 0.05 apart, shuffled: rmax
  G_FRAC,      // k + [0.1, 0.9): floor away from its jumps
  G_BIG,       // [700, 705): exp() of these overflows
  G_LABEL,     // integers in [0, k): class labels
} Gen;

// The case being built and checked.
static struct {
  const char *name;
  Fn *fn;
  int64_t n;                    // the batch size it runs with
  double tol;
  double *tens[MAXT];           // OP_TENSOR data, by .tensor
  int ntens;
  double *inputs[IN_COUNT];     // OP_INPUT data, by .input
  int w;                        // .tensor of the weights the last loss_of made
  bool plain;                   // loss_of sums without weights
  double *grad[MAXW];           // the analytic gradients of the last check, wrt[k]'s shape
} C;

static bool covered[OP_COUNT];  // ops that appeared in a checked function

// ---------------------------------------------------------------------------------------------
// Random values (xorshift64*, fixed seed: the test is deterministic)

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static double urand(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (double)((rng_state * 0x2545f4914f6cdd1du) >> 11) * 0x1p-53;
}

static double unif(double lo, double hi) { return lo + (hi - lo) * urand(); }

static void fill(double *p, int64_t cnt, Gen g, int k) {
  for (int64_t i = 0; i < cnt; i++) {
    switch (g) {
    case G_ANY: p[i] = unif(-2, 2); break;
    case G_POS: p[i] = unif(0.5, 2.5); break;
    case G_AWAY: p[i] = (urand() < 0.5 ? -1 : 1) * unif(0.5, 2); break;
    case G_GRID_A: p[i] = 0.1 * floor(unif(-15, 15)) + 0.05; break;
    case G_GRID_B: p[i] = 0.1 * floor(unif(-15, 15)); break;
    case G_DISTINCT: p[i] = 0.1 * (double)(i - cnt / 2) + unif(0, 0.05); break;
    case G_FRAC: p[i] = floor(unif(-3, 3)) + unif(0.1, 0.9); break;
    case G_BIG: p[i] = unif(700, 705); break;
    case G_LABEL: p[i] = floor(urand() * k); break;
    }
  }
  if (g == G_DISTINCT)
    for (int64_t i = cnt - 1; i > 0; i--) {
      int64_t j = (int64_t)(urand() * (double)(i + 1));
      double t = p[i];
      p[i] = p[j], p[j] = t;
    }
}

// ---------------------------------------------------------------------------------------------
// Building a case

static void begin(const char *name, int64_t n) {
  for (int i = 0; i < C.ntens; i++)
    free(C.tens[i]), C.tens[i] = NULL;
  for (int i = 0; i < IN_COUNT; i++)
    free(C.inputs[i]), C.inputs[i] = NULL;
  for (int i = 0; i < MAXW; i++)
    free(C.grad[i]), C.grad[i] = NULL;
  C.name = name;
  C.fn = ir_new_fn(name);
  C.n = n;
  C.tol = TOL;
  C.ntens = 0;
  C.w = -1;
  C.plain = false;
}

static double *new_data(Shape s, Gen g, int k) {
  int64_t cnt = shape_numel(s, C.n);
  double *p = calloc((size_t)(cnt ? cnt : 1), sizeof *p);
  fill(p, cnt, g, k);
  return p;
}

// A persistent tensor of shape s (which may use DIM_N: the interpreter only needs the data).
static int tensor_k(Shape s, Gen g, int k) {
  if (C.ntens == MAXT)
    die("test_grad: more than %d tensors", MAXT);
  C.tens[C.ntens] = new_data(s, g, k);
  Ins t = {.op = OP_TENSOR, .tensor = C.ntens++, .shape = s, .arg = {-1, -1, -1}};
  return ir_emit(C.fn, t);
}

static int tensor(Shape s, Gen g) { return tensor_k(s, g, 0); }

static int tensor_vals(Shape s, const double *vals) {
  int v = tensor(s, G_ANY);
  memcpy(C.tens[C.ntens - 1], vals, sizeof(double) * (size_t)shape_numel(s, C.n));
  return v;
}

static int input(InputKind kind, Shape s, Gen g, int k) {
  free(C.inputs[kind]);
  C.inputs[kind] = new_data(s, g, k);
  return ir_input(C.fn, kind, s);
}

// The scalar loss: sum(out * W) with random weights W (or sum(out) when C.plain).
static int loss_of(int out) {
  if (!C.plain) {
    C.w = C.ntens;
    out = ir_op2(C.fn, OP_MUL, out, tensor(C.fn->ins[out].shape, G_ANY));
  }
  return ir_reduce(C.fn, OP_SUM, out, -1);
}

static int op1(Op op, int a) { return ir_op1(C.fn, op, a); }
static int op2(Op op, int a, int b) { return ir_op2(C.fn, op, a, b); }
static int konst(double v) { return ir_const(C.fn, v); }

static int transpose(int a) {
  return ir_emit(C.fn, (Ins){.op = OP_TRANSPOSE, .arg = {a, -1, -1}});
}

static int pick(int z, int labels) {
  return ir_emit(C.fn, (Ins){.op = OP_PICK, .arg = {z, labels, -1}});
}

static int pickgrad(int g, int labels, Shape to) {
  return ir_emit(C.fn, (Ins){.op = OP_PICKGRAD, .arg = {g, labels, -1}, .shape = to});
}

// ---------------------------------------------------------------------------------------------
// Checking

static double *leaf_data(Fn *fn, int v) {
  Ins *ins = &fn->ins[v];
  if (ins->op == OP_TENSOR)
    return C.tens[ins->tensor];
  if (ins->op == OP_INPUT && ins->input != IN_N)
    return C.inputs[ins->input];
  die("test_grad: %%%d (%s) is not a leaf with data", v, op_names[ins->op]);
}

static const char *leaf_name(Fn *fn, int v) {
  Ins *ins = &fn->ins[v];
  if (ins->op == OP_TENSOR)
    return str_fmt("tensor#%d", ins->tensor);
  if (ins->op == OP_INPUT)
    return ins->input == IN_X ? "input x" : ins->input == IN_Y ? "input y" : "input";
  return str_fmt("%%%d", v);
}

static bool fold_relu_pool;  // also run ir_fold_relu_pool on the backward pass, as lower.c does

// ad_grad + ir_verify + one interpreter run; C.grad[k] gets the gradient of wrt[k], with
// wrt[k]'s shape (a zero-constant gradient is spread over it).
static void analytic(const char *name, Fn *fn, int loss, const int *wrt, int nwrt, int64_t n,
                     int *grads) {
  if (nwrt > MAXW)
    die("test_grad: more than %d wrt", MAXW);
  ad_grad(fn, loss, wrt, nwrt, grads);
  if (fold_relu_pool) {
    ir_fold_relu_pool(fn);
    bool folded = false;
    for (int i = fn->nfwd; i < fn->len; i++)
      folded |= fn->ins[i].op == OP_MAXPOOL_DX && fn->ins[i].attr[3];
    CHECK(folded, "%s: ir_fold_relu_pool folded no relu into a maxpool_dx", name);
  }
  ir_verify(fn);
  for (int i = 0; i < fn->nfwd; i++)
    covered[fn->ins[i].op] = true;
  double **v = interp_run(fn, n, C.inputs, C.tens, SEED, STEP);
  for (int k = 0; k < nwrt; k++) {
    Shape ws = fn->ins[wrt[k]].shape, gs = fn->ins[grads[k]].shape;
    bool same = shape_eq(ws, gs), zero = gs.rank == 0 && ir_is_const(fn, grads[k], NULL);
    CHECK(same || zero, "%s: the gradient for %s has shape %s, the value %s", name,
          leaf_name(fn, wrt[k]), shape_str(gs), shape_str(ws));
    int64_t cnt = shape_numel(ws, n);
    free(C.grad[k]);
    C.grad[k] = calloc((size_t)(cnt ? cnt : 1), sizeof(double));
    for (int64_t e = 0; e < cnt; e++)
      C.grad[k][e] = same ? v[grads[k]][e] : zero ? v[grads[k]][0] : NAN;
  }
  interp_free(fn, v);
}

static double loss_at(Fn *fwd, int loss, int64_t n) {
  double **v = interp_run(fwd, n, C.inputs, C.tens, SEED, STEP);
  double l = v[loss][0];
  interp_free(fwd, v);
  return l;
}

// The finite-difference check of d loss / d wrt[k] for every element of every wrt[k].
static void check_grad(const char *name, Fn *fn, int loss, const int *wrt, int nwrt, int64_t n) {
  int grads[MAXW];
  analytic(name, fn, loss, wrt, nwrt, n, grads);
  Fn fwd = *fn;  // the forward pass alone: the loss is computed before the backward pass
  fwd.len = fn->nfwd;
  for (int k = 0; k < nwrt; k++) {
    double *x = leaf_data(fn, wrt[k]);
    int64_t cnt = shape_numel(fn->ins[wrt[k]].shape, n);
    for (int64_t e = 0; e < cnt; e++) {
      double save = x[e], hi = save + H, lo = save - H;
      x[e] = hi;
      double lp = loss_at(&fwd, loss, n);
      x[e] = lo;
      double lm = loss_at(&fwd, loss, n);
      x[e] = save;
      double num = (lp - lm) / (hi - lo), ana = C.grad[k][e];
      CHECK(fabs(ana - num) <= C.tol * fmax(1, fabs(num)),
            "%s: d loss / d %s[%lld]: analytic %.12g, numeric %.12g", name,
            leaf_name(fn, wrt[k]), (long long)e, ana, num);
    }
  }
}

// The gradient for every wrt[k] must be the zero constant (ad_grad's contract for values the
// loss does not depend on through differentiable ops).
static void check_zero(const char *name, Fn *fn, int loss, const int *wrt, int nwrt, int64_t n) {
  int grads[MAXW];
  analytic(name, fn, loss, wrt, nwrt, n, grads);
  for (int k = 0; k < nwrt; k++) {
    double c = 1;
    CHECK(ir_is_const(fn, grads[k], &c) && c == 0,
          "%s: the gradient for %s is %%%d = %s, not the zero constant", name,
          leaf_name(fn, wrt[k]), grads[k], op_names[fn->ins[grads[k]].op]);
  }
}

// ---------------------------------------------------------------------------------------------
// Elementwise ops

static void test_unary(void) {
  const struct { Op op; Gen g; } t[] = {
      {OP_NEG, G_ANY},  {OP_EXP, G_ANY},     {OP_LOG, G_POS},  {OP_SQRT, G_POS}, {OP_TANH, G_ANY},
      {OP_SIGMOID, G_ANY}, {OP_ABS, G_AWAY}, {OP_SIN, G_ANY}, {OP_COS, G_ANY},
  };
  for (int plain = 0; plain < 2; plain++)
    for (int i = 0; i < LEN(t); i++) {
      begin(str_fmt("%s [3,4]%s", op_names[t[i].op], plain ? ", plain sum" : ""), 1);
      C.plain = plain;
      int x = tensor(S2(3, 4), t[i].g);
      int loss = loss_of(op1(t[i].op, x));
      check_grad(C.name, C.fn, loss, WRT(x), C.n);
    }
  begin("tanh(exp(sin(x)) * log(sqrt(x)))", 1);  // a chain: adjoints of adjoints
  int x = tensor(S2(3, 4), G_POS);
  int chain = op2(OP_MUL, op1(OP_EXP, op1(OP_SIN, x)), op1(OP_LOG, op1(OP_SQRT, x)));
  int loss = loss_of(op1(OP_TANH, chain));
  check_grad(C.name, C.fn, loss, WRT(x), C.n);
}

static void test_binary(void) {
  // ca, cb: the constant used when the left / right operand is a scalar constant.
  const struct { Op op; Gen ga, gb; double ca, cb; } ops[] = {
      {OP_ADD, G_ANY, G_ANY, 0.7, -1.3},
      {OP_SUB, G_ANY, G_ANY, 0.7, -1.3},
      {OP_MUL, G_ANY, G_ANY, 0.7, -1.3},
      {OP_DIV, G_ANY, G_AWAY, 0.7, -1.3},
      {OP_POW, G_POS, G_ANY, 1.7, 2.5},          // positive base; the exponent a tensor too
      {OP_MAX, G_GRID_A, G_GRID_B, 0.02, 0.02},  // 0.02 is on neither grid: no ties
      {OP_MIN, G_GRID_A, G_GRID_B, 0.02, 0.02},
  };
  enum { TT, KA, KB, SAME };  // tensor op tensor, const op tensor, tensor op const, x op x
  const struct { const char *desc; Shape a, b; int kind; } sh[] = {
      {"[3,4] op [3,4]", S2(3, 4), S2(3, 4), TT},
      {"[3,4] op [4]", S2(3, 4), S1(4), TT},
      {"[4] op [3,4]", S1(4), S2(3, 4), TT},
      {"[3,1] op [1,4]", S2(3, 1), S2(1, 4), TT},
      {"[1,4] op [3,1]", S2(1, 4), S2(3, 1), TT},
      {"[2,3,4] op [3,1]", S3(2, 3, 4), S2(3, 1), TT},
      {"[3,4] op scalar tensor", S2(3, 4), S0, TT},
      {"scalar tensor op [3,4]", S0, S2(3, 4), TT},
      {"[3,4] op constant", S2(3, 4), S0, KB},
      {"constant op [3,4]", S0, S2(3, 4), KA},
      {"x op x", S2(3, 4), S2(3, 4), SAME},  // one value, two adjoint contributions
  };
  for (int i = 0; i < LEN(ops); i++)
    for (int j = 0; j < LEN(sh); j++) {
      Op op = ops[i].op;
      if (sh[j].kind == SAME && (op == OP_MAX || op == OP_MIN))
        continue;  // max(x, x) ties everywhere
      begin(str_fmt("%s, %s", op_names[op], sh[j].desc), 1);
      int wrt[2], nw = 0, a, b;
      switch (sh[j].kind) {
      case KA: a = konst(ops[i].ca), b = wrt[nw++] = tensor(sh[j].b, ops[i].gb); break;
      case KB: a = wrt[nw++] = tensor(sh[j].a, ops[i].ga), b = konst(ops[i].cb); break;
      case SAME: a = b = wrt[nw++] = tensor(sh[j].a, op == OP_POW ? ops[i].ga : ops[i].gb); break;
      default:
        a = wrt[nw++] = tensor(sh[j].a, ops[i].ga);
        b = wrt[nw++] = tensor(sh[j].b, ops[i].gb);
      }
      int loss = loss_of(op2(op, a, b));
      check_grad(C.name, C.fn, loss, wrt, nw, C.n);
    }
}

static void test_select(void) {
  const struct { const char *desc; Op cmp; Shape c, a, b; } t[] = {
      {"[3,4], [3,4], [3,4]", OP_LT, S2(3, 4), S2(3, 4), S2(3, 4)},
      {"[3,1], [4], [3,4]", OP_GT, S2(3, 1), S1(4), S2(3, 4)},
      {"[3,4], [3,4], scalar", OP_GE, S2(3, 4), S2(3, 4), S0},
      {"[4], [3,1], [1,4]", OP_LE, S1(4), S2(3, 1), S2(1, 4)},
  };
  for (int i = 0; i < LEN(t); i++) {
    // the condition compares two tensors on disjoint grids; the comparison passes no gradient
    begin(str_fmt("select(%s(p, q), a, b), %s", op_names[t[i].cmp], t[i].desc), 1);
    int p = tensor(t[i].c, G_GRID_A), q = tensor(t[i].c, G_GRID_B);
    int a = tensor(t[i].a, G_ANY), b = tensor(t[i].b, G_ANY);
    int loss = loss_of(ir_select(C.fn, op2(t[i].cmp, p, q), a, b));
    check_grad(C.name, C.fn, loss, WRT(a, b, p, q), C.n);
  }
  begin("select(x > 0.02, x * x, -x): one value in the condition and both branches", 1);
  int x = tensor(S2(3, 4), G_GRID_A);
  int cond = op2(OP_GT, x, konst(0.02));
  int loss = loss_of(ir_select(C.fn, cond, op2(OP_MUL, x, x), op1(OP_NEG, x)));
  check_grad(C.name, C.fn, loss, WRT(x), C.n);
}

// ---------------------------------------------------------------------------------------------
// Reductions

static void test_reduce(void) {
  const struct { Op op; Gen g; } ops[] = {
      {OP_SUM, G_ANY}, {OP_MEAN, G_ANY}, {OP_RMAX, G_DISTINCT}, {OP_LSE, G_ANY}};
  const struct { Shape s; int axis; } sh[] = {
      {S2(3, 4), 0},     {S2(3, 4), 1},     {S2(3, 4), -1},     {S3(2, 3, 4), 0},
      {S3(2, 3, 4), 1},  {S3(2, 3, 4), 2},  {S3(2, 3, 4), -1},  {S1(5), 0},
  };
  for (int plain = 0; plain < 2; plain++)
    for (int i = 0; i < LEN(ops); i++)
      for (int j = 0; j < LEN(sh); j++) {
        begin(str_fmt("%s %s axis=%d%s", op_names[ops[i].op], shape_str(sh[j].s), sh[j].axis,
                      plain ? ", plain sum" : ""), 1);
        C.plain = plain;
        int x = tensor(sh[j].s, ops[i].g);
        int loss = loss_of(ir_reduce(C.fn, ops[i].op, x, sh[j].axis));
        check_grad(C.name, C.fn, loss, WRT(x), C.n);
      }
  for (int axis = -1; axis < 2; axis++) {
    // logsumexp must stay finite where exp() overflows. The loss is ~2000 here, so the
    // rounding error of the finite difference, ulp(2000) / h ~ 2e-7, is near the usual
    // tolerance: loosened to 1e-5 (the gradients, softmax weights, are below 1).
    begin(str_fmt("logsumexp of values in [700, 705), axis=%d", axis), 1);
    C.tol = 1e-5;
    int x = tensor(S2(3, 4), G_BIG);
    int loss = loss_of(ir_reduce(C.fn, OP_LSE, x, axis));
    check_grad(C.name, C.fn, loss, WRT(x), C.n);
  }
}

// ---------------------------------------------------------------------------------------------
// Structure: matmul, transpose, reshape, expand, sumto, pick, pickgrad

static void test_matmul(void) {
  for (int plain = 0; plain < 2; plain++)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        // op(A) is 3×5, op(B) 5×2
        begin(str_fmt("matmul ta=%d tb=%d, op(A) [3,5] @ op(B) [5,2]%s", ta, tb,
                      plain ? ", plain sum" : ""), 1);
        C.plain = plain;
        int a = tensor(ta ? S2(5, 3) : S2(3, 5), G_ANY);
        int b = tensor(tb ? S2(2, 5) : S2(5, 2), G_ANY);
        int loss = loss_of(ir_matmul(C.fn, a, b, ta, tb));
        check_grad(C.name, C.fn, loss, WRT(a, b), C.n);
      }
  begin("matmul transpose(A) [5,3]ᵀ @ transpose(B) [2,5]ᵀ: the builder folds the transposes", 1);
  int a = tensor(S2(5, 3), G_ANY), b = tensor(S2(2, 5), G_ANY);
  int loss = loss_of(ir_matmul(C.fn, transpose(a), transpose(b), 0, 0));
  check_grad(C.name, C.fn, loss, WRT(a, b), C.n);
  begin("matmul A @ Aᵀ, A [3,5]: both operands are one value", 1);
  a = tensor(S2(3, 5), G_ANY);
  loss = loss_of(ir_matmul(C.fn, a, a, 0, 1));
  check_grad(C.name, C.fn, loss, WRT(a), C.n);
  begin("matmul Aᵀ @ A, A [3,5]", 1);
  a = tensor(S2(3, 5), G_ANY);
  loss = loss_of(ir_matmul(C.fn, a, a, 1, 0));
  check_grad(C.name, C.fn, loss, WRT(a), C.n);
  begin("matmul (A @ B) @ C with a bias row in between", 1);
  a = tensor(S2(3, 5), G_ANY), b = tensor(S2(5, 4), G_ANY);
  int bias = tensor(S1(4), G_ANY), c = tensor(S2(4, 2), G_ANY);
  loss = loss_of(ir_matmul(C.fn, op2(OP_ADD, ir_matmul(C.fn, a, b, 0, 0), bias), c, 0, 0));
  check_grad(C.name, C.fn, loss, WRT(a, b, bias, c), C.n);
}

static void test_shape_ops(void) {
  for (int plain = 0; plain < 2; plain++) {
    const char *how = plain ? ", plain sum" : "";
    begin(str_fmt("transpose [3,4]%s", how), 1);
    C.plain = plain;
    int x = tensor(S2(3, 4), G_ANY);
    int loss = loss_of(transpose(x));
    check_grad(C.name, C.fn, loss, WRT(x), C.n);

    const struct { Shape from, to; } rs[] = {
        {S2(3, 4), S2(2, 6)}, {S2(3, 4), S1(12)}, {S1(12), S2(3, 4)}, {S3(2, 3, 4), S2(6, 4)}};
    for (int i = 0; i < LEN(rs); i++) {
      begin(str_fmt("reshape %s → %s%s", shape_str(rs[i].from), shape_str(rs[i].to), how), 1);
      C.plain = plain;
      x = tensor(rs[i].from, G_ANY);
      loss = loss_of(ir_reshape(C.fn, x, rs[i].to));
      check_grad(C.name, C.fn, loss, WRT(x), C.n);
    }

    const struct { Shape from; int axis; int64_t size; } ex[] = {
        {S2(3, 4), 0, 2}, {S2(3, 4), 1, 2}, {S2(3, 4), 2, 2}, {S1(4), 0, 3}, {S0, 0, 5}};
    for (int i = 0; i < LEN(ex); i++) {
      begin(str_fmt("expand %s axis=%d size=%lld%s", shape_str(ex[i].from), ex[i].axis,
                    (long long)ex[i].size, how), 1);
      C.plain = plain;
      x = tensor(ex[i].from, G_ANY);
      loss = loss_of(ir_expand(C.fn, x, ex[i].axis, ex[i].size));
      check_grad(C.name, C.fn, loss, WRT(x), C.n);
    }

    const struct { Shape from, to; } st[] = {
        {S2(3, 4), S1(4)},       {S2(3, 4), S2(3, 1)},    {S2(3, 4), S2(1, 4)},
        {S2(3, 4), S0},          {S3(2, 3, 4), S2(3, 1)}, {S3(2, 3, 4), S3(2, 1, 4)},
    };
    for (int i = 0; i < LEN(st); i++) {
      begin(str_fmt("sumto %s → %s%s", shape_str(st[i].from), shape_str(st[i].to), how), 1);
      C.plain = plain;
      x = tensor(st[i].from, G_ANY);
      loss = loss_of(ir_sumto(C.fn, x, st[i].to));
      check_grad(C.name, C.fn, loss, WRT(x), C.n);
    }

    begin(str_fmt("pick z [4,5], labels [4]%s", how), 1);
    C.plain = plain;
    int z = tensor(S2(4, 5), G_ANY), labels = tensor_vals(S1(4), (double[]){4, 0, 2, 2});
    loss = loss_of(pick(z, labels));
    check_grad(C.name, C.fn, loss, WRT(z), C.n);

    begin(str_fmt("pickgrad g [4], labels [4] → [4,5]%s", how), 1);
    C.plain = plain;
    int g = tensor(S1(4), G_ANY);
    labels = tensor_vals(S1(4), (double[]){1, 4, 0, 1});
    loss = loss_of(pickgrad(g, labels, S2(4, 5)));
    check_grad(C.name, C.fn, loss, WRT(g), C.n);
  }
  // Labels are indices: no gradient flows to them (a finite difference there is meaningless:
  // the interpreter truncates x - h to the label below).
  begin("pick: no gradient for the labels", 1);
  int z = tensor(S2(4, 5), G_ANY), labels = tensor_vals(S1(4), (double[]){3, 1, 4, 0});
  check_zero(C.name, C.fn, loss_of(pick(z, labels)), WRT(labels), C.n);
  begin("pickgrad: no gradient for the labels", 1);
  int g = tensor(S1(4), G_ANY);
  labels = tensor_vals(S1(4), (double[]){3, 1, 4, 0});
  check_zero(C.name, C.fn, loss_of(pickgrad(g, labels, S2(4, 5))), WRT(labels), C.n);
}

// ---------------------------------------------------------------------------------------------
// No gradient: floor, comparisons, rand, store, and the leaves

static void test_no_gradient(void) {
  begin("floor: zero gradient", 1);
  int x = tensor(S2(3, 4), G_FRAC);
  check_zero(C.name, C.fn, loss_of(op1(OP_FLOOR, x)), WRT(x), C.n);
  begin("x * floor(x): only the x factor", 1);
  x = tensor(S2(3, 4), G_FRAC);
  int loss = loss_of(op2(OP_MUL, x, op1(OP_FLOOR, x)));
  check_grad(C.name, C.fn, loss, WRT(x), C.n);

  const Op cmps[] = {OP_LT, OP_LE, OP_GT, OP_GE, OP_EQ, OP_NE};
  for (int i = 0; i < LEN(cmps); i++) {
    begin(str_fmt("%s: zero gradient", op_names[cmps[i]]), 1);
    x = tensor(S2(3, 4), G_GRID_A);
    int y = tensor(S1(4), G_GRID_B);
    check_zero(C.name, C.fn, loss_of(op2(cmps[i], x, y)), WRT(x, y), C.n);
    begin(str_fmt("x * %s(x, y): only the x factor", op_names[cmps[i]]), 1);
    x = tensor(S2(3, 4), G_GRID_A), y = tensor(S1(4), G_GRID_B);
    loss = loss_of(op2(OP_MUL, x, op2(cmps[i], x, y)));
    check_grad(C.name, C.fn, loss, WRT(x, y), C.n);
  }

  begin("rand: zero gradient", 1);  // rand has no argument: nothing the loss depends on
  C.plain = true;
  x = tensor(S2(3, 4), G_ANY);
  int r = ir_emit(C.fn, (Ins){.op = OP_RAND, .seq = 3, .shape = S2(3, 4), .arg = {-1, -1, -1}});
  check_zero(C.name, C.fn, loss_of(op1(OP_EXP, r)), WRT(x), C.n);
  begin("x * rand (the interpreter's rand is deterministic)", 1);
  x = tensor(S2(3, 4), G_ANY);
  r = ir_emit(C.fn, (Ins){.op = OP_RAND, .seq = 5, .shape = S2(3, 4), .arg = {-1, -1, -1}});
  loss = loss_of(op2(OP_MUL, x, r));
  check_grad(C.name, C.fn, loss, WRT(x), C.n);

  begin("store: zero gradient", 1);
  x = tensor(S2(3, 4), G_ANY);
  int st = ir_emit(C.fn, (Ins){.op = OP_STORE, .tensor = 0, .shape = S2(3, 4), .arg = {x, -1, -1}});
  check_zero(C.name, C.fn, loss_of(st), WRT(x), C.n);

  begin("input: zero gradient for a tensor the loss does not use", 3);
  int in = input(IN_X, S2(N_, 4), G_ANY, 0), unused = tensor(S2(3, 4), G_ANY);
  check_zero(C.name, C.fn, loss_of(op2(OP_MUL, in, konst(2))), WRT(unused), C.n);
  begin("const: a constant loss", 1);
  x = tensor(S2(3, 4), G_ANY);
  check_zero(C.name, C.fn, konst(2.5), WRT(x), C.n);
  begin("tensor: zero gradient for a tensor the loss does not use", 3);
  x = tensor(S1(4), G_ANY), unused = tensor(S2(3, 4), G_ANY);
  in = input(IN_X, S2(N_, 4), G_ANY, 0);
  loss = loss_of(op2(OP_ADD, x, in));
  check_zero(C.name, C.fn, loss, WRT(unused), C.n);
}

// max(x, 0) at x = 0 exactly: gradient 0 (PyTorch's relu); min(x, 0) likewise. Exact values,
// not finite differences (the one-sided slopes differ there).
static void test_kink(void) {
  const double xs[12] = {-1, 0, 0.5, 0, 2, -0.3, 0, 1e-300, -0.0, 0.7, 0, -2};
  for (int m = 0; m < 2; m++) {
    Op op = m ? OP_MIN : OP_MAX;
    begin(str_fmt("%s(x, 0) at x = 0", op_names[op]), 1);
    int x = tensor_vals(S2(3, 4), xs);
    int loss = loss_of(op2(op, x, konst(0)));
    int grads[1];
    analytic(C.name, C.fn, loss, WRT(x), C.n, grads);
    const double *w = C.tens[C.w];
    for (int e = 0; e < 12; e++) {
      double want = (m ? xs[e] < 0 : xs[e] > 0) ? w[e] : 0;
      CHECK(C.grad[0][e] == want, "%s: d loss / d x[%d] at x = %g: got %.12g, want %.12g",
            C.name, e, xs[e], C.grad[0][e], want);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The batch dimension: shapes with DIM_N, run with a batch size the IR does not know

static void test_batch(void) {
  const int64_t ns[] = {3, 5};
  for (int i = 0; i < LEN(ns); i++) {
    int64_t n = ns[i];
    // d mean(x, axis 0) · W / d x[r, j] = W[j] / n, with n from the run, not the IR
    begin(str_fmt("mean over axis 0 of x [n,4], n = %lld", (long long)n), n);
    int x = input(IN_X, S2(N_, 4), G_ANY, 0);
    int loss = loss_of(ir_reduce(C.fn, OP_MEAN, x, 0));
    check_grad(C.name, C.fn, loss, WRT(x), n);
    for (int64_t e = 0; e < n * 4; e++) {
      double want = C.tens[C.w][e % 4] / (double)n;
      CHECK(fabs(C.grad[0][e] - want) <= 1e-15 * fabs(want),
            "%s: d loss / d x[%lld]: got %.17g, want W / n = %.17g", C.name, (long long)e,
            C.grad[0][e], want);
    }
    // the mean of everything divides by 4n
    begin(str_fmt("mean of all of x [n,4], n = %lld", (long long)n), n);
    x = input(IN_X, S2(N_, 4), G_ANY, 0);
    loss = loss_of(ir_reduce(C.fn, OP_MEAN, x, -1));
    check_grad(C.name, C.fn, loss, WRT(x), n);
    for (int64_t e = 0; e < n * 4; e++) {
      double want = C.tens[C.w][0] / (double)(4 * n);
      CHECK(fabs(C.grad[0][e] - want) <= 1e-15 * fabs(want),
            "%s: d loss / d x[%lld]: got %.17g, want W / 4n = %.17g", C.name, (long long)e,
            C.grad[0][e], want);
    }
  }
  const struct { Op op; int axis; Gen g; } red[] = {
      {OP_MEAN, 1, G_ANY}, {OP_SUM, 0, G_ANY}, {OP_RMAX, 0, G_DISTINCT}, {OP_RMAX, 1, G_DISTINCT},
      {OP_LSE, 0, G_ANY},  {OP_LSE, 1, G_ANY}, {OP_MEAN, -1, G_ANY},
  };
  for (int plain = 0; plain < 2; plain++)
    for (int i = 0; i < LEN(red); i++) {
      begin(str_fmt("%s axis=%d of x [n,4], n = 3%s", op_names[red[i].op], red[i].axis,
                    plain ? ", plain sum" : ""), 3);
      C.plain = plain;
      int x = input(IN_X, S2(N_, 4), red[i].g, 0);
      int loss = loss_of(ir_reduce(C.fn, red[i].op, x, red[i].axis));
      check_grad(C.name, C.fn, loss, WRT(x), C.n);
    }

  begin("x [n,4] * w [4] + b [n,1], n = 3", 3);
  int x = input(IN_X, S2(N_, 4), G_ANY, 0), w = tensor(S1(4), G_ANY), b = tensor(S2(N_, 1), G_ANY);
  int loss = loss_of(op2(OP_ADD, op2(OP_MUL, x, w), b));
  check_grad(C.name, C.fn, loss, WRT(x, w, b), C.n);
  begin("expand sum(x [n,4], axis 0) back to [n,4], n = 3", 3);
  x = input(IN_X, S2(N_, 4), G_ANY, 0);
  loss = loss_of(op2(OP_MUL, x, ir_expand(C.fn, ir_reduce(C.fn, OP_SUM, x, 0), 0, N_)));
  check_grad(C.name, C.fn, loss, WRT(x), C.n);
  begin("sumto x [n,4] → [1,4], n = 3", 3);
  x = input(IN_X, S2(N_, 4), G_ANY, 0);
  loss = loss_of(ir_sumto(C.fn, x, S2(1, 4)));
  check_grad(C.name, C.fn, loss, WRT(x), C.n);
  begin("reshape x [n,4] → [n,2,2], n = 3", 3);
  x = input(IN_X, S2(N_, 4), G_ANY, 0);
  loss = loss_of(ir_reshape(C.fn, x, S3(N_, 2, 2)));
  check_grad(C.name, C.fn, loss, WRT(x), C.n);
  begin("matmul xᵀ x and x xᵀ, x [n,4]: n is the inner and the outer size, n = 3", 3);
  x = input(IN_X, S2(N_, 4), G_ANY, 0);
  loss = op2(OP_ADD, loss_of(ir_matmul(C.fn, x, x, 1, 0)), loss_of(ir_matmul(C.fn, x, x, 0, 1)));
  check_grad(C.name, C.fn, loss, WRT(x), C.n);
  begin("transpose x [n,4], n = 3", 3);
  x = input(IN_X, S2(N_, 4), G_ANY, 0);
  loss = loss_of(transpose(x));
  check_grad(C.name, C.fn, loss, WRT(x), C.n);
  begin("pick z [n,5], labels y [n], n = 4", 4);
  int z = input(IN_X, S2(N_, 5), G_ANY, 0), y = input(IN_Y, S1(N_), G_LABEL, 5);
  loss = loss_of(pick(z, y));
  check_grad(C.name, C.fn, loss, WRT(z), C.n);
}

// ---------------------------------------------------------------------------------------------
// Composite expressions

static void test_composite(void) {
  // cross-entropy over a linear layer: z = x @ transpose(W) + b (the builder folds the
  // transpose into the matmul's tb flag)
  begin("cross-entropy mean(logsumexp(z, 1) - pick(z, y)), z = x @ transpose(W) + b, n = 4", 4);
  int x = input(IN_X, S2(N_, 6), G_ANY, 0), y = input(IN_Y, S1(N_), G_LABEL, 3);
  int w = tensor(S2(3, 6), G_ANY), b = tensor(S1(3), G_ANY);
  int z = op2(OP_ADD, ir_matmul(C.fn, x, transpose(w), 0, 0), b);
  int loss = ir_reduce(C.fn, OP_MEAN, op2(OP_SUB, ir_reduce(C.fn, OP_LSE, z, 1), pick(z, y)), -1);
  check_grad(C.name, C.fn, loss, WRT(x, w, b), C.n);

  begin("two-layer tanh network with cross-entropy, n = 5", 5);
  x = input(IN_X, S2(N_, 6), G_ANY, 0), y = input(IN_Y, S1(N_), G_LABEL, 4);
  int w1 = tensor(S2(8, 6), G_ANY), b1 = tensor(S1(8), G_ANY);
  int w2 = tensor(S2(4, 8), G_ANY), b2 = tensor(S1(4), G_ANY);
  int h = op1(OP_TANH, op2(OP_ADD, ir_matmul(C.fn, x, w1, 0, 1), b1));
  z = op2(OP_ADD, ir_matmul(C.fn, h, w2, 0, 1), b2);
  loss = ir_reduce(C.fn, OP_MEAN, op2(OP_SUB, ir_reduce(C.fn, OP_LSE, z, 1), pick(z, y)), -1);
  check_grad(C.name, C.fn, loss, WRT(x, w1, b1, w2, b2), C.n);

  // batch normalization over the batch axis
  begin("batchnorm (x - mean(x, 0)) / sqrt(mean((x - mean(x, 0))^2, 0) + 1e-5) * gamma + beta, "
        "n = 5", 5);
  x = input(IN_X, S2(N_, 4), G_ANY, 0);
  int gam = tensor(S1(4), G_POS), beta = tensor(S1(4), G_ANY);
  int d = op2(OP_SUB, x, ir_reduce(C.fn, OP_MEAN, x, 0));
  int var = ir_reduce(C.fn, OP_MEAN, op2(OP_POW, d, konst(2)), 0);
  int xhat = op2(OP_DIV, d, op1(OP_SQRT, op2(OP_ADD, var, konst(1e-5))));
  int out = op2(OP_ADD, op2(OP_MUL, xhat, gam), beta);
  loss = loss_of(out);
  check_grad(C.name, C.fn, loss, WRT(x, gam, beta), C.n);
}

// ---------------------------------------------------------------------------------------------
// Images: convolutions and pooling, NCHW

#define S4(a, b, c, d) ((Shape){4, {a, b, c, d}})

static int image_op(Op op, int a, int b, Shape shape, int s0, int s1, int s2) {
  Ins ins = {.op = op, .arg = {a, b, -1}, .shape = shape, .attr = {s0, s1, s2}};
  return ir_emit(C.fn, ins);
}

static void test_images(void) {
  // conv2d: {stride, pad, dilation}, input [2, 3, 6, 5], weight [4, 3, k, k]
  static const struct { int k, stride, pad, dil; } convs[] = {
      {3, 1, 1, 1}, {3, 2, 0, 1}, {2, 1, 0, 2}, {1, 1, 0, 1}, {3, 2, 2, 1}, {3, 1, 2, 2},
  };
  for (int i = 0; i < LEN(convs); i++) {
    int k = convs[i].k, st = convs[i].stride, pd = convs[i].pad, dl = convs[i].dil;
    begin(str_fmt("conv2d k=%d stride=%d pad=%d dilation=%d on [2,3,6,5]", k, st, pd, dl), 2);
    int x = tensor(S4(2, 3, 6, 5), G_ANY), w = tensor(S4(4, 3, k, k), G_ANY);
    int loss = loss_of(ir_conv2d(C.fn, x, w, st, pd, dl));
    check_grad(C.name, C.fn, loss, WRT(x, w), C.n);
  }
  begin("conv2d with the batch dimension n = 3, x [n,2,5,5], w [3,2,3,3], pad 1", 3);
  int x = input(IN_X, S4(N_, 2, 5, 5), G_ANY, 0), w = tensor(S4(3, 2, 3, 3), G_ANY);
  int loss = loss_of(ir_conv2d(C.fn, x, w, 1, 1, 1));
  check_grad(C.name, C.fn, loss, WRT(x, w), C.n);
  // the gradient ops themselves (their adjoints are convolutions too)
  begin("conv2d_dx(dy [2,4,3,3], w [4,3,3,3]) → [2,3,6,5], stride 2 pad 1", 2);
  int dy = tensor(S4(2, 4, 3, 3), G_ANY);
  w = tensor(S4(4, 3, 3, 3), G_ANY);
  loss = loss_of(image_op(OP_CONV2D_DX, dy, w, S4(2, 3, 6, 5), 2, 1, 1));
  check_grad(C.name, C.fn, loss, WRT(dy, w), C.n);
  begin("conv2d_dw(x [2,3,6,5], dy [2,4,6,5]) → [4,3,3,3], pad 1", 2);
  x = tensor(S4(2, 3, 6, 5), G_ANY), dy = tensor(S4(2, 4, 6, 5), G_ANY);
  loss = loss_of(image_op(OP_CONV2D_DW, x, dy, S4(4, 3, 3, 3), 1, 1, 1));
  check_grad(C.name, C.fn, loss, WRT(x, dy), C.n);

  // pooling: {kernel, stride, pad}; distinct values so that no window ties
  static const struct { int k, stride, pad; } pools[] = {{2, 2, 0}, {3, 2, 1}, {3, 1, 1}, {2, 1, 0}};
  for (int i = 0; i < LEN(pools); i++)
    for (int avg = 0; avg < 2; avg++) {
      int k = pools[i].k, st = pools[i].stride, pd = pools[i].pad;
      begin(str_fmt("%s k=%d stride=%d pad=%d on [2,2,6,5]", avg ? "avgpool" : "maxpool", k,
                    st, pd), 2);
      x = tensor(S4(2, 2, 6, 5), G_DISTINCT);
      loss = loss_of(ir_pool(C.fn, avg ? OP_AVGPOOL : OP_MAXPOOL, x, k, st, pd));
      check_grad(C.name, C.fn, loss, WRT(x), C.n);
    }
  begin("maxpool_dx(x [2,2,4,4], dy [2,2,2,2]), k 2: linear in dy; x only picks", 2);
  x = tensor(S4(2, 2, 4, 4), G_DISTINCT), dy = tensor(S4(2, 2, 2, 2), G_ANY);
  loss = loss_of(image_op(OP_MAXPOOL_DX, x, dy, S4(2, 2, 4, 4), 2, 2, 0));
  check_grad(C.name, C.fn, loss, WRT(dy), C.n);
  begin("maxpool_gather(x [2,2,4,4], g [2,2,4,4]), k 2", 2);
  x = tensor(S4(2, 2, 4, 4), G_DISTINCT);
  int g = tensor(S4(2, 2, 4, 4), G_ANY);
  loss = loss_of(image_op(OP_MAXPOOL_GATHER, x, g, S4(2, 2, 2, 2), 2, 2, 0));
  check_grad(C.name, C.fn, loss, WRT(g), C.n);
  begin("avgpool_dx(dy [2,2,3,3]) → [2,2,6,5], k 3 stride 2 pad 1", 2);
  dy = tensor(S4(2, 2, 3, 3), G_ANY);
  loss = loss_of(image_op(OP_AVGPOOL_DX, dy, -1, S4(2, 2, 6, 5), 3, 2, 1));
  check_grad(C.name, C.fn, loss, WRT(dy), C.n);
  // a small CNN: conv → relu → maxpool → mean over the image → dense; then the same with
  // the relu folded into the pooling's backward pass (maxpool_dx where max>0), for 2×2 and
  // for overlapping padded windows
  for (int fold = 0; fold < 3; fold++) {
    int k = fold == 2 ? 3 : 2, s = 2, p = fold == 2;
    begin(str_fmt("conv → relu → maxpool %d stride %d pad %d → global mean → matmul, "
                  "x [n,1,6,6], n = 2%s", k, s, p, fold ? ", relu folded" : ""), 2);
    fold_relu_pool = fold > 0;
    x = input(IN_X, S4(N_, 1, 6, 6), G_ANY, 0), w = tensor(S4(3, 1, 3, 3), G_ANY);
    int h = op2(OP_MAX, ir_conv2d(C.fn, x, w, 1, 1, 1), konst(0));
    h = ir_pool(C.fn, OP_MAXPOOL, h, k, s, p);
    h = ir_reduce(C.fn, OP_MEAN, ir_reduce(C.fn, OP_MEAN, h, 3), 2);
    int v = tensor(S2(2, 3), G_ANY);
    loss = loss_of(ir_matmul(C.fn, h, v, 0, 1));
    check_grad(C.name, C.fn, loss, WRT(x, w, v), C.n);
    fold_relu_pool = false;
  }
}

int main(void) {
  test_images();
  test_unary();
  test_binary();
  test_select();
  test_reduce();
  test_matmul();
  test_shape_ops();
  test_no_gradient();
  test_kink();
  test_batch();
  test_composite();
  begin("done", 1);  // frees the last case's data
  for (int op = 0; op < OP_COUNT; op++)
    CHECK(covered[op], "no case checks op %s (ops.def row %d)", op_names[op], op + 1);
  return check_summary();
}
