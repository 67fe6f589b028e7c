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
