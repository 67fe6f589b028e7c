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
