// autodiff.c — reverse-mode automatic differentiation as an IR → IR pass.
//
// ad_grad walks the function backwards from the loss and appends, through the same builder
// the forward pass used, the instructions that compute each adjoint (d loss / d value). Each
// op's vector-Jacobian product is one `case` below (ORDER OPS: one per row of ops.def that
// carries a gradient). An adjoint may have a smaller, broadcastable shape than its value
// (the seed is a scalar 1); accumulate() sums broadcast contributions down to the argument's
// shape, and full() materializes a broadcast where an op needs the exact shape.
//
// Every rule is checked against central finite differences in double precision by
// tests/unit/test_grad.c.

#include "keel.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
  Fn *fn;
  int *adj;      // adjoint of each forward value, -1 = none yet
  bool *needs;   // the value depends on something we differentiate with respect to
} Ad;

// Makes v the full shape of the forward value `of`.
static int full(Ad *ad, int v, int of) { return ir_broadcast_to(ad->fn, v, ad->fn->ins[of].shape); }

// adj[arg] += contribution, summed down to arg's shape.
static void accumulate(Ad *ad, int arg, int c) {
  if (!ad->needs[arg])
    return;
  Fn *fn = ad->fn;
  Shape want = fn->ins[arg].shape, both;
  if (!shape_broadcast(fn->ins[c].shape, want, &both))
    die("autodiff: adjoint %s does not fit %s", shape_str(fn->ins[c].shape), shape_str(want));
  c = ir_broadcast_to(fn, c, both);
  c = ir_sumto(fn, c, want);
  ad->adj[arg] = ad->adj[arg] < 0 ? c : ir_op2(fn, OP_ADD, ad->adj[arg], c);
}

// The number of elements along `axis` (or of everything, axis -1) as an IR scalar; n is a
// run-time input.
static int count_of(Fn *fn, Shape s, int axis) {
  double fixed = 1;
  int nn = 0;
  for (int i = 0; i < s.rank; i++)
    if (axis < 0 || axis == i)
      s.dim[i] == DIM_N ? nn++ : (fixed *= (double)s.dim[i]);
  int c = ir_const(fn, fixed);
  for (int i = 0; i < nn; i++)
    c = ir_op2(fn, OP_MUL, c, ir_input(fn, IN_N, shape_scalar()));
  return c;
}

// Re-inserts a reduced axis so g lines up with the reduction's input a.
static int unreduce(Ad *ad, int g, int i) {
  Fn *fn = ad->fn;
  Ins ins = fn->ins[i];
  g = full(ad, g, i);
  if (ins.axis < 0)
    return ir_broadcast_to(fn, g, fn->ins[ins.arg[0]].shape);
  return ir_expand(fn, g, ins.axis, fn->ins[ins.arg[0]].shape.dim[ins.axis]);
}

// An image op whose shape is given (the gradient ops), with the forward op's attributes.
static int image_op(Fn *fn, Op op, int a, int b, Shape shape, const int *attr) {
  Ins ins = {.op = op, .arg = {a, b, -1}, .shape = shape};
  memcpy(ins.attr, attr, sizeof ins.attr);
  return ir_emit(fn, ins);
}

static void backprop(Ad *ad, int i) {
  Fn *fn = ad->fn;
  Ins ins = fn->ins[i];
  int g = ad->adj[i], a = ins.arg[0], b = ins.arg[1], out = i;
  fn->cur_pos = ins.pos, fn->cur_layer = ins.layer;
  int zero = ir_const(fn, 0), one = ir_const(fn, 1);
#define MUL(x, y) ir_op2(fn, OP_MUL, x, y)
#define DIV(x, y) ir_op2(fn, OP_DIV, x, y)
#define SUB(x, y) ir_op2(fn, OP_SUB, x, y)
#define NEG(x) ir_op1(fn, OP_NEG, x)
  switch (ins.op) {
  case OP_NEG: accumulate(ad, a, NEG(g)); break;
  case OP_EXP: accumulate(ad, a, MUL(g, out)); break;
  case OP_LOG: accumulate(ad, a, DIV(g, a)); break;
  case OP_SQRT: accumulate(ad, a, DIV(MUL(g, ir_const(fn, 0.5)), out)); break;
  case OP_TANH: accumulate(ad, a, MUL(g, SUB(one, MUL(out, out)))); break;
  case OP_SIGMOID: accumulate(ad, a, MUL(g, MUL(out, SUB(one, out)))); break;
  case OP_ABS: accumulate(ad, a, ir_select(fn, ir_op2(fn, OP_LT, a, zero), NEG(g), g)); break;
  case OP_SIN: accumulate(ad, a, MUL(g, ir_op1(fn, OP_COS, a))); break;
  case OP_COS: accumulate(ad, a, NEG(MUL(g, ir_op1(fn, OP_SIN, a)))); break;
  case OP_ADD: accumulate(ad, a, g), accumulate(ad, b, g); break;
  case OP_SUB: accumulate(ad, a, g), accumulate(ad, b, NEG(g)); break;
  case OP_MUL:
    if (ad->needs[a])
      accumulate(ad, a, MUL(g, b));
    if (ad->needs[b])
      accumulate(ad, b, MUL(g, a));
    break;
  case OP_DIV:
    if (ad->needs[a])
      accumulate(ad, a, DIV(g, b));
    if (ad->needs[b])
      accumulate(ad, b, NEG(MUL(g, DIV(out, b))));
    break;
  case OP_POW:  // d a^b = b a^(b-1) da + a^b ln a db
    if (ad->needs[a])
      accumulate(ad, a, MUL(g, MUL(b, ir_op2(fn, OP_POW, a, SUB(b, one)))));
    if (ad->needs[b])
      accumulate(ad, b, MUL(g, MUL(out, ir_op1(fn, OP_LOG, a))));
    break;
  case OP_MAX:
  case OP_MIN: {  // the gradient goes to a where a wins strictly, else to b (relu: 0 at 0)
    int wins = ir_op2(fn, ins.op == OP_MAX ? OP_GT : OP_LT, a, b);
    if (ad->needs[a])
      accumulate(ad, a, ir_select(fn, wins, g, zero));
    if (ad->needs[b])
      accumulate(ad, b, ir_select(fn, wins, zero, g));
    break;
  }
  case OP_SELECT:
    if (ad->needs[b])
      accumulate(ad, b, ir_select(fn, a, g, zero));
    if (ad->needs[ins.arg[2]])
      accumulate(ad, ins.arg[2], ir_select(fn, a, zero, g));
    break;
  case OP_SUM: accumulate(ad, a, unreduce(ad, g, i)); break;
  case OP_MEAN:
    accumulate(ad, a, DIV(unreduce(ad, g, i), count_of(fn, fn->ins[a].shape, ins.axis)));
    break;
  case OP_RMAX: {  // every maximal element gets the gradient
    int m = unreduce(ad, out, i);
    accumulate(ad, a, MUL(unreduce(ad, g, i), ir_op2(fn, OP_EQ, a, m)));
    break;
  }
  case OP_LSE: {  // softmax(a) * g
    int m = unreduce(ad, out, i);
    accumulate(ad, a, MUL(unreduce(ad, g, i), ir_op1(fn, OP_EXP, SUB(a, m))));
    break;
  }
  case OP_MATMUL: {  // C = op(A) op(B): dop(A) = dC op(B)ᵀ, dop(B) = op(A)ᵀ dC
    g = full(ad, g, i);
    int ta = ins.ta, tb = ins.tb;
    if (ad->needs[a])
      accumulate(ad, a, ta ? ir_matmul(fn, b, g, tb, 1) : ir_matmul(fn, g, b, 0, !tb));
    if (ad->needs[b])
      accumulate(ad, b, tb ? ir_matmul(fn, g, a, 1, ta) : ir_matmul(fn, a, g, !ta, 0));
    break;
  }
  case OP_TRANSPOSE: {
    Ins t = {.op = OP_TRANSPOSE, .arg = {full(ad, g, i), -1, -1}, .pos = ins.pos};
    accumulate(ad, a, ir_emit(fn, t));
    break;
  }
  case OP_RESHAPE: accumulate(ad, a, ir_reshape(fn, full(ad, g, i), fn->ins[a].shape)); break;
  case OP_EXPAND: accumulate(ad, a, ir_reduce(fn, OP_SUM, full(ad, g, i), ins.axis)); break;
  case OP_SUMTO: accumulate(ad, a, g); break;  // accumulate broadcasts it back
  case OP_PICK: {
    Ins pg = {.op = OP_PICKGRAD, .arg = {full(ad, g, i), b, -1}, .shape = fn->ins[a].shape,
              .pos = ins.pos, .layer = ins.layer};
    accumulate(ad, a, ir_emit(fn, pg));
    break;
  }
  case OP_PICKGRAD: {
    Ins pk = {.op = OP_PICK, .arg = {full(ad, g, i), b, -1}, .pos = ins.pos};
    accumulate(ad, a, ir_emit(fn, pk));
    break;
  }
  // images: the weight and input gradients of a convolution are convolutions themselves,
  // and each of the three is linear in each argument, so their adjoints close the set
  case OP_CONV2D:
    g = full(ad, g, i);
    if (ad->needs[a])
      accumulate(ad, a, image_op(fn, OP_CONV2D_DX, g, b, fn->ins[a].shape, ins.attr));
    if (ad->needs[b])
      accumulate(ad, b, image_op(fn, OP_CONV2D_DW, a, g, fn->ins[b].shape, ins.attr));
    break;
  case OP_CONV2D_DX:  // dx = convᵀ(dy, w): <g, dx> = <conv(g, w), dy>
    g = full(ad, g, i);
    if (ad->needs[a])
      accumulate(ad, a, ir_conv2d(fn, g, b, ins.attr[0], ins.attr[1], ins.attr[2]));
    if (ad->needs[b])
      accumulate(ad, b, image_op(fn, OP_CONV2D_DW, g, a, fn->ins[b].shape, ins.attr));
    break;
  case OP_CONV2D_DW:  // dw(x, dy): <g, dw> = <conv(x, g), dy>
    g = full(ad, g, i);
    if (ad->needs[a])
      accumulate(ad, a, image_op(fn, OP_CONV2D_DX, b, g, fn->ins[a].shape, ins.attr));
    if (ad->needs[b])
      accumulate(ad, b, ir_conv2d(fn, a, g, ins.attr[0], ins.attr[1], ins.attr[2]));
    break;
  case OP_MAXPOOL:
    accumulate(ad, a, image_op(fn, OP_MAXPOOL_DX, a, full(ad, g, i), fn->ins[a].shape, ins.attr));
    break;
  case OP_AVGPOOL:
    accumulate(ad, a, image_op(fn, OP_AVGPOOL_DX, full(ad, g, i), -1, fn->ins[a].shape, ins.attr));
    break;
  case OP_AVGPOOL_DX:  // linear: its adjoint is the pooling itself
    accumulate(ad, a, ir_pool(fn, OP_AVGPOOL, full(ad, g, i), ins.attr[0], ins.attr[1], ins.attr[2]));
    break;
  case OP_MAXPOOL_DX:  // linear in dy: its adjoint picks g at each window's maximum
    accumulate(ad, b, image_op(fn, OP_MAXPOOL_GATHER, a, full(ad, g, i), fn->ins[b].shape, ins.attr));
    break;
  case OP_MAXPOOL_GATHER:  // linear in g: its adjoint routes back to the maxima
    accumulate(ad, b, image_op(fn, OP_MAXPOOL_DX, a, full(ad, g, i), fn->ins[b].shape, ins.attr));
    break;
  // no gradient: comparisons and floor are piecewise constant; leaves have no arguments
  case OP_FLOOR: case OP_LT: case OP_LE: case OP_GT: case OP_GE: case OP_EQ: case OP_NE:
  case OP_INPUT: case OP_CONST: case OP_TENSOR: case OP_RAND: case OP_STORE:
    break;
  case OP_COUNT: unreachable();
  }
#undef MUL
#undef DIV
#undef SUB
#undef NEG
}

static bool has_gradient(Op op) {
  switch (op) {
  case OP_FLOOR: case OP_LT: case OP_LE: case OP_GT: case OP_GE: case OP_EQ: case OP_NE:
  case OP_RAND: case OP_STORE:
    return false;
  default:
    return true;
  }
}

void ad_grad(Fn *fn, int loss, const int *wrt, int nwrt, int *grads) {
  int n = fn->len;
  if (fn->ins[loss].shape.rank != 0)
    error_at(fn->ins[loss].pos, "the loss must be a single number, but it has shape %s",
             shape_str(fn->ins[loss].shape));
  Ad ad = {fn, malloc(sizeof(int) * n), calloc(n, sizeof(bool))};
  for (int i = 0; i < n; i++)
    ad.adj[i] = -1;
  for (int k = 0; k < nwrt; k++)
    ad.needs[wrt[k]] = true;
  for (int i = 0; i < n; i++) {
    Ins *ins = &fn->ins[i];
    if (!has_gradient(ins->op))
      continue;
    for (int k = 0; k < op_nargs[ins->op]; k++)
      if (!(ins->op == OP_SELECT && k == 0) && ad.needs[ins->arg[k]])
        ad.needs[i] = true;
  }
  if (fn->nfwd == 0)
    fn->nfwd = n;
  if (ad.needs[loss]) {
    ad.adj[loss] = ir_const(fn, 1);
    for (int i = loss; i >= 0; i--)
      if (ad.adj[i] >= 0 && ad.needs[i])
        backprop(&ad, i);
  }
  for (int k = 0; k < nwrt; k++)
    grads[k] = ad.adj[wrt[k]] >= 0 ? ad.adj[wrt[k]] : ir_const(fn, 0);
  free(ad.adj);
  free(ad.needs);
}
