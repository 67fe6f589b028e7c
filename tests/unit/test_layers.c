// test_layers.c — stdlib layers through the whole front end, run by the reference interpreter.
//
// What: dropout (stdlib/layers.nn), statistically. A script with `layer dense 50 dropout 0.3`
// is parsed together with the embedded stdlib and lowered (lower_program); its training-mode
// and evaluation-mode forward passes then run in double precision (interp_run) on one batch of
// 400 samples, 20000 dropout elements:
//   - in training, the fraction of zeroed outputs is 0.3 ± 0.02 (six standard deviations:
//     √(0.3 · 0.7 / 20000) ≈ 0.0032), and every kept element is exactly the dense layer's
//     output × 1/(1 - 0.3), the inverted-dropout scale;
//   - the mask depends on the step: the same seed and step give the same mask, another step
//     (or another seed) a different one;
//   - in evaluation dropout is the identity: the output equals the dense output exactly, and
//     the evaluation pass draws no random numbers at all.
// The dense output is the last [n, 50] instruction of layer dense1 in the forward pass; the
// dropout output is the network's output (p->train_out), the last instruction of dropout1.
//
// Run from the repository root (tests/run.sh does): the script's data file is
// tests/data/small.csv, which lowering must find. Ends with "N passed, N failed".

#include "keel.h"
#include "keelrt.h"

#include "check.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define N 400      // batch size
#define UNITS 50   // dropout elements per sample
#define P 0.3      // drop probability
#define SEED 42

static const char script[] =
    "data d {\n"
    "  train csv(\"small.csv\", label=\"label\")\n"
    "}\n"
    "network net {\n"
    "  input 2\n"
    "  layer dense 50 dropout 0.3\n"
    "}\n"
    "train net on d {\n"
    "  loss      cross_entropy\n"
    "  optimizer sgd lr=0.1\n"
    "  batch     400\n"
    "}\n";

// xorshift64*: fixed seed, the test is deterministic
static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static double urand(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (double)((rng_state * 0x2545f4914f6cdd1du) >> 11) * 0x1p-53;
}

// The last instruction of the forward pass (before autodiff's part) that belongs to `layer`,
// has opcode `op` (or any when op == OP_COUNT) and the shape [n, UNITS]; -1 when none.
static int last_of(Fn *fn, int nfwd, const char *layer, Op op) {
  int found = -1;
  for (int i = 0; i < nfwd; i++) {
    Ins *ins = &fn->ins[i];
    if (ins->layer && !strcmp(ins->layer, layer) && (op == OP_COUNT || ins->op == op) &&
        ins->shape.rank == 2 && ins->shape.dim[0] == DIM_N && ins->shape.dim[1] == UNITS)
      found = i;
  }
  return found;
}

static bool has_op(Fn *fn, Op op) {
  for (int i = 0; i < fn->len; i++)
    if (fn->ins[i].op == op)
      return true;
  return false;
}

int main(void) {
  Node *user = parse_file("tests/data/dropout_test.nn", script);
  Prog *p = lower_program("tests/data/dropout_test.nn", user, parse_stdlib(),
                          (Overrides){-1, -1, -1, -1});

  // persistent tensors: dense1.weight [50, 2], dense1.bias [50], and sgd's state
  double **tensors = calloc((size_t)p->ntensors, sizeof *tensors);
  for (int t = 0; t < p->ntensors; t++) {
    int64_t cnt = shape_numel(p->tensors[t].shape, 1);
    tensors[t] = calloc((size_t)cnt, sizeof(double));
    for (int64_t e = 0; e < cnt; e++)
      tensors[t][e] = urand() * 2 - 1;
  }
  // inputs: x [n, 2], labels [n] (class 0: the loss is not what is checked), lr, t
  double *inputs[IN_COUNT] = {0};
  double x[N * 2], y[N] = {0}, lr = 0.1, step = 1;
  for (int i = 0; i < N * 2; i++)
    x[i] = urand() * 4 - 2;
  inputs[IN_X] = x, inputs[IN_Y] = y, inputs[IN_LR] = &lr, inputs[IN_T] = &step;

  // the instructions: the dense output and the dropout output in training mode
  Fn *tr = p->train;
  int dense = last_of(tr, tr->nfwd, "dense1", OP_COUNT);
  int drop = last_of(tr, tr->nfwd, "dropout1", OP_COUNT);
  CHECK(dense >= 0, "no [n, 50] instruction of layer dense1 in the training forward pass");
  CHECK(drop >= 0 && drop == p->train_out,
        "the network's output (%%%d) is not the last instruction of dropout1 (%%%d)",
        p->train_out, drop);
  CHECK(drop >= 0 && (tr->ins[drop].op == OP_MUL || tr->ins[drop].op == OP_DIV),
        "dropout1 ends with %s, expected mul or div", drop >= 0 ? op_names[tr->ins[drop].op] : "?");
  CHECK(has_op(tr, OP_RAND), "the training pass draws no random numbers");
  if (dense < 0 || drop < 0)
    return check_summary();

  // training mode, step 1: the fraction dropped, and the scale of the kept elements
  double **v1 = interp_run(tr, N, inputs, tensors, SEED, 1);
  const double scale = 1 / (1 - P);
  int64_t zeros = 0, bad_keep = 0, zero_in = 0;
  for (int64_t e = 0; e < N * UNITS; e++) {
    double d = v1[dense][e], o = v1[drop][e];
    if (d == 0)
      zero_in++;
    if (o == 0)
      zeros++;
    else if (o != d * scale)
      bad_keep++;
  }
  double frac = (double)zeros / (N * UNITS);
  CHECK(zero_in == 0, "%lld dense outputs are exactly 0 (the count of drops would be off)",
        (long long)zero_in);
  CHECK(fabs(frac - P) <= 0.02, "train mode drops a fraction %.4f of the elements, want 0.3 ± 0.02",
        frac);
  CHECK(bad_keep == 0, "%lld kept elements differ from the dense output × 1/(1 - 0.3)",
        (long long)bad_keep);
  // every sample and every unit is dropped sometimes and kept sometimes (the mask is not a
  // pattern repeated along one axis); per unit the fraction is 0.3 ± 0.12 (5 standard
  // deviations of 400 draws)
  int64_t rows_all = 0, cols_off = 0;
  for (int i = 0; i < N; i++) {
    int z = 0;
    for (int j = 0; j < UNITS; j++)
      z += v1[drop][i * UNITS + j] == 0;
    rows_all += z == 0 || z == UNITS;
  }
  for (int j = 0; j < UNITS; j++) {
    int z = 0;
    for (int i = 0; i < N; i++)
      z += v1[drop][i * UNITS + j] == 0;
    if (fabs((double)z / N - P) > 0.12) {
      cols_off++;
      printf("unit %d is dropped in a fraction %.3f of the samples\n", j, (double)z / N);
    }
  }
  CHECK(rows_all == 0, "%lld samples have every unit kept or every unit dropped",
        (long long)rows_all);
  CHECK(cols_off == 0, "%lld units are dropped at a rate far from 0.3", (long long)cols_off);

  // the same step again: the same mask; another step or another seed: another mask
  double **v1b = interp_run(tr, N, inputs, tensors, SEED, 1);
  double **v2 = interp_run(tr, N, inputs, tensors, SEED, 2);
  double **v3 = interp_run(tr, N, inputs, tensors, SEED + 1, 1);
  int64_t same_diff = 0, step_diff = 0, seed_diff = 0;
  for (int64_t e = 0; e < N * UNITS; e++) {
    bool m1 = v1[drop][e] == 0;
    same_diff += m1 != (v1b[drop][e] == 0) || v1[drop][e] != v1b[drop][e];
    step_diff += m1 != (v2[drop][e] == 0);
    seed_diff += m1 != (v3[drop][e] == 0);
  }
  CHECK(same_diff == 0, "the same seed and step give different outputs in %lld elements",
        (long long)same_diff);
  // independent masks differ in 2 · 0.3 · 0.7 = 42% of the elements
  CHECK(step_diff > N * UNITS / 4, "steps 1 and 2 give masks that differ in only %lld of %d "
        "elements", (long long)step_diff, N * UNITS);
  CHECK(seed_diff > N * UNITS / 4, "seeds %d and %d give masks that differ in only %lld of %d "
        "elements", SEED, SEED + 1, (long long)seed_diff, N * UNITS);

  // evaluation mode: the identity, with no random numbers
  Fn *ev = p->eval;
  CHECK(!has_op(ev, OP_RAND), "the evaluation pass draws random numbers");
  CHECK(!strcmp(ev->ins[p->eval_out].layer ? ev->ins[p->eval_out].layer : "", "dense1"),
        "in eval mode the network's output comes from layer %s, not dense1 (dropout should "
        "add nothing)", ev->ins[p->eval_out].layer ? ev->ins[p->eval_out].layer : "(none)");
  double **ve = interp_run(ev, N, inputs, tensors, SEED, 1);
  int64_t eval_diff = 0;
  for (int64_t e = 0; e < N * UNITS; e++)
    eval_diff += ve[p->eval_out][e] != v1[dense][e];
  CHECK(eval_diff == 0, "eval mode changes %lld of %d elements of the dense output",
        (long long)eval_diff, N * UNITS);

  interp_free(tr, v1), interp_free(tr, v1b), interp_free(tr, v2), interp_free(tr, v3);
  interp_free(ev, ve);
  for (int t = 0; t < p->ntensors; t++)
    free(tensors[t]);
  free(tensors);
  return check_summary();
}
