// test_ir.c — shapes, the IR builder (shape rules, folding), the verifier, CSE/DCE and the
// printer.

#include "keel.h"
#include "check.h"

static int tensor(Fn *fn, int t, Shape s) {
  return ir_emit(fn, (Ins){.op = OP_TENSOR, .tensor = t, .shape = s, .arg = {-1, -1, -1}});
}

static void test_shapes(void) {
  Shape out;
  CHECK(shape_broadcast(shape_make(2, DIM_N, 4), shape_make(1, 4), &out) &&
            shape_eq(out, shape_make(2, DIM_N, 4)), "[n,4] + [4]");
  CHECK(shape_broadcast(shape_make(2, 3, 1), shape_make(2, 1, 4), &out) &&
            shape_eq(out, shape_make(2, 3, 4)), "[3,1] + [1,4]");
  CHECK(shape_broadcast(shape_scalar(), shape_make(2, DIM_N, 2), &out) &&
            shape_eq(out, shape_make(2, DIM_N, 2)), "[] + [n,2]");
  CHECK(!shape_broadcast(shape_make(2, DIM_N, 4), shape_make(1, 3), &out), "[n,4] + [3]");
  CHECK(!shape_broadcast(shape_make(1, DIM_N), shape_make(1, 5), &out), "[n] + [5]");
  CHECK(shape_numel(shape_make(3, DIM_N, 2, 5), 7) == 70, "numel");
  CHECK(shape_numel(shape_scalar(), 7) == 1, "numel of a scalar");
  CHECK_STR(shape_str(shape_make(2, DIM_N, 784)), "[n, 784]");
  CHECK_STR(shape_str(shape_scalar()), "[]");
}

static void test_builder(void) {
  Fn *fn = ir_new_fn("t");
  int x = ir_input(fn, IN_X, shape_make(2, DIM_N, 3));
  int w = tensor(fn, 0, shape_make(2, 4, 3));
  int two = ir_const(fn, 2), three = ir_const(fn, 3);
  // constants fold, and equal constants are shared
  int six = ir_op2(fn, OP_MUL, two, three);
  double v;
  CHECK(ir_is_const(fn, six, &v) && v == 6, "2 * 3 folds to 6");
  CHECK(ir_const(fn, 2) == two, "equal constants are one value");
  // identities keep the operand
  CHECK(ir_op2(fn, OP_ADD, x, ir_const(fn, 0)) == x, "x + 0 is x");
  CHECK(ir_op2(fn, OP_MUL, ir_const(fn, 1), x) == x, "1 * x is x");
  CHECK(ir_select(fn, ir_const(fn, 0), ir_op1(fn, OP_EXP, x), x) == x, "0 ? exp(x) : x is x");
  // matmul(x, transpose(w)) becomes one matmul with the transpose flag
  int t = ir_emit(fn, (Ins){.op = OP_TRANSPOSE, .arg = {w, -1, -1}});
  int y = ir_matmul(fn, x, t, 0, 0);
  CHECK(fn->ins[y].op == OP_MATMUL && fn->ins[y].arg[1] == w && fn->ins[y].tb == 1,
        "transpose folded into the matmul");
  CHECK(shape_eq(fn->ins[y].shape, shape_make(2, DIM_N, 4)), "matmul shape %s",
        shape_str(fn->ins[y].shape));
  // reductions drop the axis; axis -1 reduces everything
  int s0 = ir_reduce(fn, OP_SUM, y, 0), s1 = ir_reduce(fn, OP_MEAN, y, 1);
  int s = ir_reduce(fn, OP_LSE, y, -1);
  CHECK(shape_eq(fn->ins[s0].shape, shape_make(1, 4)), "sum axis 0");
  CHECK(shape_eq(fn->ins[s1].shape, shape_make(1, DIM_N)), "mean axis 1");
  CHECK(fn->ins[s].shape.rank == 0, "logsumexp of everything");
  // broadcast_to materializes [4] → [n, 4] and [n, 1] → [n, 4]
  int b = ir_broadcast_to(fn, s0, shape_make(2, DIM_N, 4));
  CHECK(shape_eq(fn->ins[b].shape, shape_make(2, DIM_N, 4)), "broadcast_to [n,4]");
  int col = ir_reshape(fn, s1, shape_make(2, DIM_N, 1));
  int c = ir_broadcast_to(fn, col, shape_make(2, DIM_N, 4));
  CHECK(fn->ins[c].op == OP_EXPAND && fn->ins[c].axis == 1, "[n, 1] expands on axis 1");
  ir_verify(fn);

  // CSE merges equal instructions, DCE drops what no root uses
  Fn *g = ir_new_fn("g");
  int a = ir_input(g, IN_X, shape_make(2, DIM_N, 3));
  int e1 = ir_op1(g, OP_EXP, a), e2 = ir_op1(g, OP_EXP, a);
  ir_op1(g, OP_LOG, a);  // dead
  int r = ir_op2(g, OP_ADD, e1, e2);
  ir_simplify(g, (int *[]){&r}, 1);
  CHECK(g->len == 3, "after CSE and DCE: input, exp, add (got %d instructions)", g->len);
  CHECK(g->ins[r].op == OP_ADD && g->ins[r].arg[0] == g->ins[r].arg[1], "exp shared");
  ir_verify(g);
}

// A mean's gradient over [n, c, h]: v [c] expanded to [n, c], divided by n, expanded to
// [n, c, h], divided by h, times x. ir_sink_expands divides the c values and reads them as a
// [c, 1] operand: the same values (the interpreter, exactly). And exp(e) + e for e an expand
// of -v: e is read as -v by the add, then exp is taken of the c values: one expand left.
static int sink_case(Fn *fn, int *kept) {
  int x = ir_input(fn, IN_X, shape_make(3, DIM_N, 2, 3)), n = ir_input(fn, IN_N, shape_scalar());
  int v = tensor(fn, 0, shape_make(1, 2)), three = ir_const(fn, 3);
  int d0 = ir_op2(fn, OP_DIV, ir_expand(fn, v, 0, DIM_N), n);
  int d1 = ir_op2(fn, OP_DIV, ir_expand(fn, d0, 2, 3), three);
  int twice = ir_expand(fn, ir_op1(fn, OP_NEG, v), 0, DIM_N);  // used by two ops
  *kept = ir_op2(fn, OP_ADD, ir_op1(fn, OP_EXP, twice), twice);
  return ir_op2(fn, OP_MUL, d1, x);
}

static void test_sink_expands(void) {
  Fn *before = ir_new_fn("before"), *after = ir_new_fn("after");
  int k0, k1, r0 = sink_case(before, &k0), r1 = sink_case(after, &k1);
  int *roots[] = {&r1, &k1};
  ir_simplify(after, roots, 2);
  ir_sink_expands(after, roots, 2);
  ir_simplify(after, roots, 2);
  ir_verify(after);
  int expands = 0, small_divs = 0;
  for (int i = 0; i < after->len; i++) {
    expands += after->ins[i].op == OP_EXPAND;
    small_divs += after->ins[i].op == OP_DIV && shape_eq(after->ins[i].shape, shape_make(1, 2));
  }
  CHECK(expands == 1 && small_divs == 2, "expands left %d (want 1), divisions on [2] %d (want 2)",
        expands, small_divs);
  double xs[4 * 2 * 3], vs[2] = {0.75, -1.5}, *inputs[IN_COUNT] = {0}, *tensors[] = {vs};
  for (int i = 0; i < 24; i++)
    xs[i] = i * 0.25 - 2;
  inputs[IN_X] = xs;
  double **a = interp_run(before, 4, inputs, tensors, 1, 1), **b = interp_run(after, 4, inputs, tensors, 1, 1);
  bool same = true;
  for (int i = 0; i < 24; i++)
    same &= a[r0][i] == b[r1][i];
  for (int i = 0; i < 8; i++)
    same &= a[k0][i] == b[k1][i];
  CHECK(same, "the rewritten graph computes other values");
  interp_free(before, a), interp_free(after, b);
}

// Shape errors from the builder are user errors (exit 1) at the instruction's position.
static void bad_broadcast(void *arg) {
  (void)arg;
  Fn *fn = ir_new_fn("t");
  fn->cur_pos = (Pos){.file = "m.nn", .src = "out = x + b\n", .line = 1, .col = 9};
  int x = ir_input(fn, IN_X, shape_make(2, DIM_N, 3));
  int b = tensor(fn, 0, shape_make(1, 4));
  ir_op2(fn, OP_ADD, x, b);
}

static void bad_matmul(void *arg) {
  (void)arg;
  Fn *fn = ir_new_fn("t");
  fn->cur_pos = (Pos){.file = "m.nn", .src = "out = x @ w\n", .line = 1, .col = 9};
  int x = ir_input(fn, IN_X, shape_make(2, DIM_N, 3));
  int w = tensor(fn, 0, shape_make(2, 4, 5));
  ir_matmul(fn, x, w, 0, 0);
}

// The verifier catches malformed IR (a compiler bug: abort).
static void bad_arg(void *arg) {
  (void)arg;
  Fn *fn = ir_new_fn("t");
  int x = ir_input(fn, IN_X, shape_make(2, DIM_N, 3));
  ir_op1(fn, OP_EXP, x);
  fn->ins[1].arg[0] = 1;  // uses itself
  ir_verify(fn);
}

static void bad_shape(void *arg) {
  (void)arg;
  Fn *fn = ir_new_fn("t");
  int x = ir_input(fn, IN_X, shape_make(2, DIM_N, 3));
  int e = ir_op1(fn, OP_EXP, x);
  fn->ins[e].shape = shape_make(2, DIM_N, 4);
  ir_verify(fn);
}

static void test_errors(void) {
  char err[2048];
  int st = check_capture(bad_broadcast, NULL, err, sizeof err);
  CHECK(st == 1, "broadcast error exit %d", st);
  CHECK_STR(err, "m.nn:1:9: error: shapes [n, 3] and [4] do not match (they cannot be "
                 "broadcast together)\n  out = x + b\n          ^\n");
  st = check_capture(bad_matmul, NULL, err, sizeof err);
  CHECK(st == 1, "matmul error exit %d", st);
  CHECK_STR(err, "m.nn:1:9: error: @ of shapes [n, 3] and [4, 5]: the inner sizes 3 and 4 "
                 "differ\n  out = x @ w\n          ^\n");
  st = check_capture(bad_arg, NULL, err, sizeof err);
  CHECK(st == 128 + 6, "verifier abort %d", st);
  CHECK(strstr(err, "verify t: %1 (exp) argument 0 is %1") != NULL, "verifier message: %s", err);
  st = check_capture(bad_shape, NULL, err, sizeof err);
  CHECK(st == 128 + 6, "verifier abort %d", st);
  CHECK(strstr(err, "has shape [n, 4], its rule gives [n, 3]") != NULL, "verifier: %s", err);
}

static void test_printer(void) {
  Fn *fn = ir_new_fn("f");
  int x = ir_input(fn, IN_X, shape_make(2, DIM_N, 3));
  fn->cur_layer = "dense1";
  ir_reduce(fn, OP_SUM, ir_op1(fn, OP_TANH, x), 1);
  char *buf;
  size_t len;
  FILE *out = open_memstream(&buf, &len);
  ir_print(out, NULL, fn);
  fclose(out);
  CHECK(strstr(buf, "fn f {\n") == buf, "header: %s", buf);
  CHECK(strstr(buf, "%1 = tanh %0") && strstr(buf, "[n, 3]") && strstr(buf, "# dense1"),
        "tanh line: %s", buf);
  CHECK(strstr(buf, "%2 = sum %1 axis=1") != NULL, "sum line: %s", buf);
  free(buf);
}

int main(void) {
  test_shapes();
  test_builder();
  test_sink_expands();
  test_errors();
  test_printer();
  return check_summary();
}
