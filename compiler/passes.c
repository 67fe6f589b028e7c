// passes.c — IR → IR clean-up after lowering and autodiff: common subexpressions and dead code.
//
// Lowering inlines every layer and optimizer body, so the same `input n`, tensors and
// constants are asked for many times, and a ternary on a constant (`nesterov ? a : b`) leaves
// the untaken branch behind; matmul(a, transpose(b)) leaves the transpose unused. ir_simplify
// merges identical pure instructions (CSE) and drops what no root needs (DCE), renumbering
// the function. Roots are the values the caller keeps (loss, output) and every STORE.

#include "keel.h"

#include <stdlib.h>
#include <string.h>

static bool same_ins(const Ins *a, const Ins *b) {
  if (a->op != b->op || a->op == OP_RAND || a->op == OP_STORE || !shape_eq(a->shape, b->shape))
    return false;
  for (int k = 0; k < 3; k++)
    if (a->arg[k] != b->arg[k])
      return false;
  return a->imm == b->imm && a->axis == b->axis && a->ta == b->ta && a->tb == b->tb &&
         a->input == b->input && a->tensor == b->tensor && !memcmp(a->attr, b->attr, sizeof a->attr);
}

static bool is_zero(Fn *fn, int v) { return fn->ins[v].op == OP_CONST && fn->ins[v].imm == 0; }

// relu then max pooling, backward: select(x > 0, maxpool_dx(max(x, 0), g), 0) is
// maxpool_dx(max(x, 0), g) that keeps each window's gradient only where its maximum is above 0
// (max(x, 0) > 0 exactly where x > 0): one pass over the image instead of three, and x (the
// relu's input) no longer kept for the backward pass. The select becomes that MAXPOOL_DX;
// ir_simplify then drops the unmasked one and the comparison. After autodiff only: the folded
// op has no adjoint of its own.
void ir_fold_relu_pool(Fn *fn) {
  for (int i = 0; i < fn->len; i++) {
    Ins *s = &fn->ins[i];
    if (s->op != OP_SELECT || !is_zero(fn, s->arg[2]))
      continue;
    Ins *gt = &fn->ins[s->arg[0]], *dx = &fn->ins[s->arg[1]];
    if (gt->op != OP_GT || !is_zero(fn, gt->arg[1]) || dx->op != OP_MAXPOOL_DX || dx->attr[3])
      continue;
    Ins *relu = &fn->ins[dx->arg[0]];
    if (relu->op != OP_MAX || relu->arg[0] != gt->arg[0] || !is_zero(fn, relu->arg[1]))
      continue;
    Ins folded = *dx;
    folded.attr[3] = 1;
    folded.pos = s->pos, folded.layer = dx->layer;
    *s = folded;
  }
}

// A mean's gradient is its operand's gradient repeated along the reduced axes and divided by
// their sizes: for batchnorm over [n, c, h, w], expand to [n, c], divide by n, expand to
// [n, c, h], divide by h, expand, divide by w, a loop over the whole image at each step. Two
// rewrites make it a per-channel value that the loops using it read as a broadcast operand:
//  - sink: op(expand(x), s) with s a scalar is expand(op(x, s)), so the divisions run on the
//    c values (the same operations in the same order: the same bits);
//  - broadcast: an elementwise op whose result has the shape of another operand reads an
//    operand expand(…expand(x)) as x seen with 1s where the axes were added, [c, 1, 1]
//    against [n, c, h, w], [c] against [n, c] (a reshape of x, or x itself).
// The expands left unused go in ir_simplify's dead code. Rewrites happen in place (the
// instruction of the expand takes the op, the op's the expand), on expands with one use.
// How many live instructions (and roots) use each value: a rewrite leaves dead ones behind.
static int *use_counts(Fn *fn, int **roots, int nroots) {
  int *uses = calloc((size_t)fn->len, sizeof(int));
  bool *live = calloc((size_t)fn->len, sizeof(bool));
  for (int r = 0; r < nroots; r++)
    uses[*roots[r]]++, live[*roots[r]] = true;
  for (int i = fn->len - 1; i >= 0; i--)
    if (live[i] || fn->ins[i].op == OP_STORE)
      for (int k = 0; k < op_nargs[fn->ins[i].op]; k++)
        uses[fn->ins[i].arg[k]]++, live[fn->ins[i].arg[k]] = true;
  free(live);
  return uses;
}

static bool elementwise_op(Op op) {
  OpClass c = op_class[op];
  return c == OC_UNARY || c == OC_BINARY || c == OC_SELECT;
}

// The shape that x broadcasts from to give the chain of expands ending at e (x: *from).
static void broadcast_source(Fn *fn, int e, int *from, Shape *b) {
  Shape full = fn->ins[e].shape;
  int map[MAX_RANK], rank = full.rank;  // the axis of `full` for each axis of the current value
  bool added[MAX_RANK] = {false};
  for (int d = 0; d < rank; d++)
    map[d] = d;
  int v = e;
  while (fn->ins[v].op == OP_EXPAND) {
    int a = fn->ins[v].axis;
    added[map[a]] = true;
    for (int d = a; d + 1 < rank; d++)
      map[d] = map[d + 1];
    rank--;
    v = fn->ins[v].arg[0];
  }
  int lead = 0;  // added axes in front are left out (broadcasting adds them back)
  while (lead < full.rank && added[lead])
    lead++;
  *b = (Shape){.rank = full.rank - lead};
  for (int d = lead; d < full.rank; d++)
    b->dim[d - lead] = added[d] ? 1 : full.dim[d];
  *from = v;
}

static bool sink_expand(Fn *fn, int o, const int *uses) {
  Ins *op = &fn->ins[o];
  if (op_class[op->op] != OC_UNARY && op_class[op->op] != OC_BINARY)
    return false;
  int k = fn->ins[op->arg[0]].op == OP_EXPAND ? 0 : 1;
  if (k >= op_nargs[op->op])
    return false;
  int e = op->arg[k];
  Ins *ex = &fn->ins[e];
  if (ex->op != OP_EXPAND || uses[e] != 1)
    return false;
  int other = op_nargs[op->op] == 2 ? op->arg[1 - k] : -1;
  if (other >= 0 && (fn->ins[other].shape.rank != 0 || other > e))
    return false;
  Ins expand = *ex, moved = *op;
  moved.arg[k] = ex->arg[0];
  moved.shape = fn->ins[ex->arg[0]].shape;
  expand.arg[0] = e;
  expand.shape = op->shape;
  *ex = moved;
  *op = expand;
  return true;
}

static bool broadcast_expand(Fn *fn, int o, const int *uses) {
  Ins *op = &fn->ins[o];
  if (!elementwise_op(op->op))
    return false;
  bool full = false;  // another operand has the result's shape
  for (int k = 0; k < op_nargs[op->op]; k++)
    full |= fn->ins[op->arg[k]].op != OP_EXPAND && shape_eq(fn->ins[op->arg[k]].shape, op->shape);
  if (!full)
    return false;
  for (int k = 0; k < op_nargs[op->op]; k++) {
    int e = op->arg[k], x;
    Shape b;
    if (fn->ins[e].op != OP_EXPAND)
      continue;
    broadcast_source(fn, e, &x, &b);
    if (shape_eq(b, fn->ins[x].shape)) {
      op->arg[k] = x;
      return true;
    }
    if (uses[e] == 1) {  // the expand becomes the reshape
      Ins *ex = &fn->ins[e];
      ex->op = OP_RESHAPE;
      ex->arg[0] = x, ex->arg[1] = ex->arg[2] = -1;
      ex->shape = b;
      ex->axis = 0;
      return true;
    }
  }
  return false;
}

void ir_sink_expands(Fn *fn, int **roots, int nroots) {
  for (bool changed = true; changed;) {
    changed = false;
    int *uses = use_counts(fn, roots, nroots);
    for (int i = 0; i < fn->len && !changed; i++)
      changed = sink_expand(fn, i, uses) || broadcast_expand(fn, i, uses);
    free(uses);
  }
}

void ir_simplify(Fn *fn, int **roots, int nroots) {
  int n = fn->len;
  int *repl = malloc(sizeof(int) * (size_t)n);
  // CSE: an instruction equal to an earlier one (after replacing its arguments) is replaced
  for (int i = 0; i < n; i++) {
    Ins *ins = &fn->ins[i];
    for (int k = 0; k < op_nargs[ins->op]; k++)
      ins->arg[k] = repl[ins->arg[k]];
    repl[i] = i;
    for (int j = 0; j < i; j++)
      if (repl[j] == j && same_ins(&fn->ins[j], ins)) {
        repl[i] = j;
        break;
      }
  }
  // DCE: mark from the roots and stores, backwards
  bool *live = calloc((size_t)n, sizeof(bool));
  for (int r = 0; r < nroots; r++)
    live[repl[*roots[r]]] = true;
  for (int i = n - 1; i >= 0; i--) {
    if (fn->ins[i].op == OP_STORE)
      live[i] = true;
    if (live[i] && repl[i] == i)
      for (int k = 0; k < op_nargs[fn->ins[i].op]; k++)
        live[fn->ins[i].arg[k]] = true;
  }
  // compact and renumber
  int *newidx = malloc(sizeof(int) * (size_t)n), m = 0, nfwd = 0;
  for (int i = 0; i < n; i++) {
    if (!live[i] || repl[i] != i)
      continue;
    Ins ins = fn->ins[i];
    for (int k = 0; k < op_nargs[ins.op]; k++)
      ins.arg[k] = newidx[ins.arg[k]];
    newidx[i] = m;
    fn->ins[m++] = ins;
    if (i < fn->nfwd)
      nfwd = m;
  }
  for (int r = 0; r < nroots; r++)
    *roots[r] = newidx[repl[*roots[r]]];
  fn->len = m;
  if (fn->nfwd)
    fn->nfwd = nfwd;
  free(repl), free(live), free(newidx);
}
