// ir.c — the tensor IR: op tables, the builder with its shape rules, the verifier, the printer.
//
// A function (Fn) is an array of instructions in SSA form; a value is the index of the
// instruction that defines it, so cloning, autodiff and verification are plain loops. Every
// instruction has a static shape; any dimension may be DIM_N, the batch size, which only the
// running program knows. The builder computes each shape from the op's class (ops.def column
// 4), folds operations on scalar constants, and drops identities (x + 0, x * 1), which keeps
// the backward pass autodiff writes short.

#include "keel.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

const char *op_names[OP_COUNT] = {
#define OP(id, name, nargs, cls) name,
#include "ops.def"
#undef OP
};
const int op_nargs[OP_COUNT] = {
#define OP(id, name, nargs, cls) nargs,
#include "ops.def"
#undef OP
};
const OpClass op_class[OP_COUNT] = {
#define OP(id, name, nargs, cls) cls,
#include "ops.def"
#undef OP
};

// ---------------------------------------------------------------------------------------------
// Shapes

Shape shape_scalar(void) { return (Shape){0}; }

Shape shape_make_dims(int rank, const int64_t *dims) {
  Shape s = {.rank = rank};
  for (int i = 0; i < rank; i++)
    s.dim[i] = dims[i];
  return s;
}

bool shape_eq(Shape a, Shape b) {
  if (a.rank != b.rank)
    return false;
  for (int i = 0; i < a.rank; i++)
    if (a.dim[i] != b.dim[i])
      return false;
  return true;
}

int64_t shape_numel(Shape s, int64_t n) {
  int64_t c = 1;
  for (int i = 0; i < s.rank; i++)
    c *= s.dim[i] == DIM_N ? n : s.dim[i];
  return c;
}

char *shape_str(Shape s) {
  char buf[128];
  int len = snprintf(buf, sizeof buf, "[");
  for (int i = 0; i < s.rank; i++) {
    if (s.dim[i] == DIM_N)
      len += snprintf(buf + len, sizeof buf - len, "%sn", i ? ", " : "");
    else
      len += snprintf(buf + len, sizeof buf - len, "%s%lld", i ? ", " : "", (long long)s.dim[i]);
  }
  snprintf(buf + len, sizeof buf - len, "]");
  return str_dup(buf);
}

// NumPy broadcasting, aligned on the right: equal sizes, or one of them is 1.
bool shape_broadcast(Shape a, Shape b, Shape *out) {
  Shape r = {.rank = a.rank > b.rank ? a.rank : b.rank};
  for (int i = 0; i < r.rank; i++) {
    int ia = a.rank - r.rank + i, ib = b.rank - r.rank + i;
    int64_t da = ia >= 0 ? a.dim[ia] : 1, db = ib >= 0 ? b.dim[ib] : 1;
    if (da == db || db == 1)
      r.dim[i] = da;
    else if (da == 1)
      r.dim[i] = db;
    else
      return false;
  }
  *out = r;
  return true;
}

// Element counts are equal for every batch size: the same number of n dimensions and the
// same product of the fixed ones.
static bool same_numel(Shape a, Shape b) {
  int na = 0, nb = 0;
  int64_t pa = 1, pb = 1;
  for (int i = 0; i < a.rank; i++)
    a.dim[i] == DIM_N ? na++ : (pa *= a.dim[i]);
  for (int i = 0; i < b.rank; i++)
    b.dim[i] == DIM_N ? nb++ : (pb *= b.dim[i]);
  return na == nb && pa == pb;
}

// ---------------------------------------------------------------------------------------------
// Scalar semantics of elementwise ops: the constant folder and the interpreter share them.

double ir_scalar_op(Op op, double a, double b, double c) {
  switch (op) {
  case OP_NEG: return -a;
  case OP_EXP: return exp(a);
  case OP_LOG: return log(a);
  case OP_SQRT: return sqrt(a);
  case OP_TANH: return tanh(a);
  case OP_SIGMOID: return 1 / (1 + exp(-a));
  case OP_ABS: return fabs(a);
  case OP_SIN: return sin(a);
  case OP_COS: return cos(a);
  case OP_FLOOR: return floor(a);
  case OP_ADD: return a + b;
  case OP_SUB: return a - b;
  case OP_MUL: return a * b;
  case OP_DIV: return a / b;
  case OP_POW: return pow(a, b);
  case OP_MAX: return a > b ? a : b;
  case OP_MIN: return a < b ? a : b;
  case OP_LT: return a < b;
  case OP_LE: return a <= b;
  case OP_GT: return a > b;
  case OP_GE: return a >= b;
  case OP_EQ: return a == b;
  case OP_NE: return a != b;
  case OP_SELECT: return a != 0 ? b : c;
  default: die("ir_scalar_op: %s is not elementwise", op_names[op]);
  }
}

// ---------------------------------------------------------------------------------------------
// The builder

Fn *ir_new_fn(const char *name) {
  Fn *fn = arena_alloc(sizeof *fn);
  fn->name = name;
  return fn;
}

bool ir_is_const(Fn *fn, int v, double *value) {
  if (fn->ins[v].op != OP_CONST)
    return false;
  if (value)
    *value = fn->ins[v].imm;
  return true;
}

static bool is_const_val(Fn *fn, int v, double want) {
  double x;
  return ir_is_const(fn, v, &x) && x == want;
}

// "a" or "an" before a number as it is read aloud: an 8x8 image, an 11x11 kernel.
static const char *article(int64_t n) {
  char d[24];
  snprintf(d, sizeof d, "%lld", (long long)n);
  size_t len = strlen(d);
  bool eleven = (d[0] == '1' && (d[1] == '1' || d[1] == '8') && (len == 2 || len == 5));
  return d[0] == '8' || eleven ? "an" : "a";
}

// Computes ins->shape from the arguments; reports shape errors at ins->pos.
static void infer_shape(Fn *fn, Ins *ins) {
  Shape a = ins->arg[0] >= 0 && op_nargs[ins->op] > 0 ? fn->ins[ins->arg[0]].shape : (Shape){0};
  Shape b = op_nargs[ins->op] > 1 ? fn->ins[ins->arg[1]].shape : (Shape){0};
  switch (op_class[ins->op]) {
  case OC_LEAF:
    if (ins->op == OP_CONST)
      ins->shape = shape_scalar();
    return;
  case OC_UNARY:
    ins->shape = a;
    return;
  case OC_BINARY:
    if (!shape_broadcast(a, b, &ins->shape))
      error_at(ins->pos, "shapes %s and %s do not match (they cannot be broadcast together)",
               shape_str(a), shape_str(b));
    return;
  case OC_SELECT: {
    Shape ab, c = fn->ins[ins->arg[2]].shape;
    if (!shape_broadcast(a, b, &ab) || !shape_broadcast(ab, c, &ins->shape))
      error_at(ins->pos, "the condition and branches have shapes %s, %s and %s, which do not match",
               shape_str(a), shape_str(b), shape_str(c));
    return;
  }
  case OC_REDUCE:
    if (ins->axis == -1) {
      ins->shape = shape_scalar();
      return;
    }
    if (ins->axis < 0 || ins->axis >= a.rank)
      error_at(ins->pos, "axis=%d is out of range for a tensor of shape %s", ins->axis,
               shape_str(a));
    ins->shape = (Shape){.rank = a.rank - 1};
    for (int i = 0, j = 0; i < a.rank; i++)
      if (i != ins->axis)
        ins->shape.dim[j++] = a.dim[i];
    return;
  case OC_OTHER:
    break;
  }
  switch (ins->op) {
  case OP_MATMUL: {
    if (a.rank != 2 || b.rank != 2)
      error_at(ins->pos, "@ needs two matrices, got shapes %s%s and %s%s%s", shape_str(a),
               ins->ta ? "ᵀ" : "", shape_str(b), ins->tb ? "ᵀ" : "",
               a.rank > 2 ? " (a 'flatten' layer turns images into rows of values)" : "");
    int64_t m = ins->ta ? a.dim[1] : a.dim[0], ka = ins->ta ? a.dim[0] : a.dim[1];
    int64_t kb = ins->tb ? b.dim[1] : b.dim[0], nn = ins->tb ? b.dim[0] : b.dim[1];
    if (ka != kb)
      error_at(ins->pos, "@ of shapes %s%s and %s%s: the inner sizes %s and %s differ",
               shape_str(a), ins->ta ? "ᵀ" : "", shape_str(b), ins->tb ? "ᵀ" : "",
               ka == DIM_N ? "n" : str_fmt("%lld", (long long)ka),
               kb == DIM_N ? "n" : str_fmt("%lld", (long long)kb));
    ins->shape = shape_make(2, m, nn);
    return;
  }
  case OP_TRANSPOSE:
    if (a.rank != 2)
      error_at(ins->pos, "transpose needs a matrix, got shape %s", shape_str(a));
    ins->shape = shape_make(2, a.dim[1], a.dim[0]);
    return;
  case OP_RESHAPE:
    if (!same_numel(a, ins->shape))
      error_at(ins->pos, "cannot reshape %s to %s: the element counts differ", shape_str(a),
               shape_str(ins->shape));
    return;
  case OP_EXPAND: {
    int64_t size = ins->shape.dim[ins->axis];
    if (ins->axis < 0 || ins->axis > a.rank || a.rank + 1 > MAX_RANK)
      die("expand: bad axis %d for %s", ins->axis, shape_str(a));
    Shape r = {.rank = a.rank + 1};
    for (int i = 0, j = 0; i < r.rank; i++)
      r.dim[i] = i == ins->axis ? size : a.dim[j++];
    ins->shape = r;
    return;
  }
  case OP_SUMTO: {
    Shape r;
    if (!shape_broadcast(a, ins->shape, &r) || !shape_eq(r, a))
      die("sumto: %s does not broadcast from %s", shape_str(a), shape_str(ins->shape));
    return;
  }
  case OP_PICK:
    if (a.rank != 2 || b.rank != 1 || a.dim[0] != b.dim[0])
      error_at(ins->pos, "pick needs scores of shape [n, k] and labels of shape [n], got %s and %s",
               shape_str(a), shape_str(b));
    ins->shape = shape_make(1, a.dim[0]);
    return;
  case OP_PICKGRAD:
    if (a.rank != 1 || ins->shape.rank != 2 || ins->shape.dim[0] != a.dim[0])
      die("pickgrad: bad shapes %s → %s", shape_str(a), shape_str(ins->shape));
    return;
  case OP_CONV2D: {
    if (a.rank == 2 && b.rank == 4)
      error_at(ins->pos, "conv2d needs images [n, channels, height, width], got %s; declare "
                         "the network's input as an image, e.g. 'input 1x28x28' (channels x "
                         "height x width), or put conv before any flatten or dense layer",
               shape_str(a));
    if (a.rank != 4 || b.rank != 4)
      error_at(ins->pos, "conv2d needs images [n, channels, height, width] and a weight "
                         "[out, in, kh, kw], got %s and %s", shape_str(a), shape_str(b));
    if (a.dim[1] != b.dim[1])
      error_at(ins->pos, "conv2d: the input has %lld channel%s but the weight %s expects %lld "
               "(its second dimension; writing it as 'in' makes it follow the input)",
               (long long)a.dim[1], a.dim[1] == 1 ? "" : "s", shape_str(b), (long long)b.dim[1]);
    int64_t oh = conv_out_size(a.dim[2], b.dim[2], ins->attr[0], ins->attr[1], ins->attr[2]);
    int64_t ow = conv_out_size(a.dim[3], b.dim[3], ins->attr[0], ins->attr[1], ins->attr[2]);
    if (oh < 1 || ow < 1)
      error_at(ins->pos, "conv2d: %s %lldx%lld kernel%s does not fit %s %lldx%lld image with "
               "padding %d; use a smaller kernel or more padding", article(b.dim[2]),
               (long long)b.dim[2],
               (long long)b.dim[3], ins->attr[2] > 1 ? str_fmt(" with dilation %d", ins->attr[2]) : "",
               article(a.dim[2]), (long long)a.dim[2], (long long)a.dim[3], ins->attr[1]);
    ins->shape = shape_make(4, a.dim[0], b.dim[0], oh, ow);
    return;
  }
  case OP_CONV2D_DX:
  case OP_CONV2D_DW: {
    // the shape is given; check it against the forward rule
    Shape x = ins->op == OP_CONV2D_DX ? ins->shape : a;
    Shape w = ins->op == OP_CONV2D_DX ? b : ins->shape, dy = ins->op == OP_CONV2D_DX ? a : b;
    if (x.rank != 4 || w.rank != 4 || dy.rank != 4 || dy.dim[1] != w.dim[0] ||
        dy.dim[2] != conv_out_size(x.dim[2], w.dim[2], ins->attr[0], ins->attr[1], ins->attr[2]) ||
        dy.dim[3] != conv_out_size(x.dim[3], w.dim[3], ins->attr[0], ins->attr[1], ins->attr[2]))
      die("%s: shapes %s %s %s", op_names[ins->op], shape_str(x), shape_str(w), shape_str(dy));
    return;
  }
  case OP_MAXPOOL:
  case OP_AVGPOOL: {
    if (a.rank != 4)
      error_at(ins->pos, "pooling needs images [n, channels, height, width], got %s",
               shape_str(a));
    if (ins->attr[2] * 2 > ins->attr[0])
      error_at(ins->pos, "pooling: padding %d is more than half the window %d", ins->attr[2],
               ins->attr[0]);
    int64_t oh = conv_out_size(a.dim[2], ins->attr[0], ins->attr[1], ins->attr[2], 1);
    int64_t ow = conv_out_size(a.dim[3], ins->attr[0], ins->attr[1], ins->attr[2], 1);
    if (oh < 1 || ow < 1)
      error_at(ins->pos, "pooling: a window of %d does not fit %s %lldx%lld image; use a "
               "window of at most %lld", ins->attr[0],
               article(a.dim[2]), (long long)a.dim[2], (long long)a.dim[3],
               (long long)(a.dim[2] < a.dim[3] ? a.dim[2] : a.dim[3]) + 2 * ins->attr[2]);
    ins->shape = shape_make(4, a.dim[0], a.dim[1], oh, ow);
    return;
  }
  case OP_MAXPOOL_GATHER:
    if (!shape_eq(a, b) || ins->shape.rank != 4)
      die("maxpool_gather: %s %s → %s", shape_str(a), shape_str(b), shape_str(ins->shape));
    return;
  case OP_MAXPOOL_DX:
    if (!shape_eq(ins->shape, a))
      die("maxpool_dx: %s vs %s", shape_str(ins->shape), shape_str(a));
    return;
  case OP_AVGPOOL_DX:
    if (ins->shape.rank != 4 || a.rank != 4)
      die("avgpool_dx: %s from %s", shape_str(ins->shape), shape_str(a));
    return;
  case OP_STORE: {
    Shape r;
    if (!shape_broadcast(a, ins->shape, &r) || !shape_eq(r, ins->shape))
      error_at(ins->pos, "cannot store a value of shape %s into a tensor of shape %s",
               shape_str(a), shape_str(ins->shape));
    return;
  }
  default: unreachable();
  }
}

static int append(Fn *fn, Ins ins) {
  if (fn->len == fn->cap) {
    fn->cap = fn->cap ? fn->cap * 2 : 64;
    Ins *p = arena_alloc(sizeof(Ins) * fn->cap);
    if (fn->len)
      memcpy(p, fn->ins, sizeof(Ins) * fn->len);
    fn->ins = p;
  }
  fn->ins[fn->len] = ins;
  return fn->len++;
}

int ir_emit(Fn *fn, Ins ins) {
  if (!ins.pos.file)
    ins.pos = fn->cur_pos;
  if (!ins.layer)
    ins.layer = fn->cur_layer;
  int na = op_nargs[ins.op];
  for (int i = 0; i < na; i++)
    if (ins.arg[i] < 0 || ins.arg[i] >= fn->len)
      die("ir_emit: %s argument %d is %%%d", op_names[ins.op], i, ins.arg[i]);
  for (int i = na; i < 3; i++)
    ins.arg[i] = -1;
  infer_shape(fn, &ins);
  OpClass cls = op_class[ins.op];

  // Fold elementwise ops whose arguments are all constants.
  if (cls == OC_UNARY || cls == OC_BINARY || cls == OC_SELECT) {
    double v[3] = {0};
    bool all = true;
    for (int i = 0; i < na; i++)
      all = all && ir_is_const(fn, ins.arg[i], &v[i]);
    if (all) {
      Ins c = {.op = OP_CONST, .imm = ir_scalar_op(ins.op, v[0], v[1], v[2]), .pos = ins.pos,
               .layer = ins.layer, .arg = {-1, -1, -1}};
      return append(fn, c);
    }
  }
  // Identities that keep the shape: x + 0, 0 + x, x - 0, x * 1, 1 * x, x / 1, x ^ 1,
  // and a select on a constant condition.
  if (cls == OC_BINARY || cls == OC_SELECT) {
    int a = ins.arg[0], b = ins.arg[1], keep = -1;
    switch (ins.op) {
    case OP_ADD: keep = is_const_val(fn, b, 0) ? a : is_const_val(fn, a, 0) ? b : -1; break;
    case OP_SUB: keep = is_const_val(fn, b, 0) ? a : -1; break;
    case OP_MUL: keep = is_const_val(fn, b, 1) ? a : is_const_val(fn, a, 1) ? b : -1; break;
    case OP_DIV: keep = is_const_val(fn, b, 1) ? a : -1; break;
    case OP_POW: keep = is_const_val(fn, b, 1) ? a : -1; break;
    case OP_SELECT: {
      double c;
      if (ir_is_const(fn, a, &c))
        keep = c != 0 ? b : ins.arg[2];
      break;
    }
    default: break;
    }
    if (keep >= 0 && shape_eq(fn->ins[keep].shape, ins.shape))
      return keep;
  }
  return append(fn, ins);
}

static Ins mk(Op op, int a, int b, int c) { return (Ins){.op = op, .arg = {a, b, c}}; }


int ir_const(Fn *fn, double v) {
  // Reuse an earlier equal constant: autodiff asks for 0 and 1 many times.
  for (int i = fn->len - 1; i >= 0; i--)
    if (fn->ins[i].op == OP_CONST && fn->ins[i].imm == v && !signbit(fn->ins[i].imm) == !signbit(v))
      return i;
  return ir_emit(fn, (Ins){.op = OP_CONST, .imm = v, .arg = {-1, -1, -1}});
}

int ir_input(Fn *fn, InputKind k, Shape shape) {
  return ir_emit(fn, (Ins){.op = OP_INPUT, .input = k, .shape = shape, .arg = {-1, -1, -1}});
}

int ir_op1(Fn *fn, Op op, int a) { return ir_emit(fn, mk(op, a, -1, -1)); }
int ir_op2(Fn *fn, Op op, int a, int b) { return ir_emit(fn, mk(op, a, b, -1)); }
int ir_select(Fn *fn, int c, int a, int b) { return ir_emit(fn, mk(OP_SELECT, c, a, b)); }

int ir_reduce(Fn *fn, Op op, int a, int axis) {
  Ins ins = mk(op, a, -1, -1);
  ins.axis = axis;
  return ir_emit(fn, ins);
}

int ir_expand(Fn *fn, int a, int axis, int64_t size) {
  Ins ins = mk(OP_EXPAND, a, -1, -1);
  ins.axis = axis;
  ins.shape.dim[axis] = size;
  return ir_emit(fn, ins);
}

int ir_sumto(Fn *fn, int a, Shape to) {
  if (shape_eq(fn->ins[a].shape, to))
    return a;
  Ins ins = mk(OP_SUMTO, a, -1, -1);
  ins.shape = to;
  return ir_emit(fn, ins);
}

// matmul(a, transpose(b)) becomes one matmul with the transpose flag: no copy is made.
int ir_matmul(Fn *fn, int a, int b, int ta, int tb) {
  if (fn->ins[a].op == OP_TRANSPOSE)
    a = fn->ins[a].arg[0], ta = !ta;
  if (fn->ins[b].op == OP_TRANSPOSE)
    b = fn->ins[b].arg[0], tb = !tb;
  Ins ins = mk(OP_MATMUL, a, b, -1);
  ins.ta = ta, ins.tb = tb;
  return ir_emit(fn, ins);
}

int64_t conv_out_size(int64_t size, int64_t window, int stride, int pad, int dilation) {
  int64_t span = size + 2 * pad - (int64_t)dilation * (window - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;  // 0: the window does not fit
}

int ir_conv2d(Fn *fn, int x, int w, int stride, int pad, int dilation) {
  Ins ins = mk(OP_CONV2D, x, w, -1);
  ins.attr[0] = stride, ins.attr[1] = pad, ins.attr[2] = dilation;
  return ir_emit(fn, ins);
}

int ir_pool(Fn *fn, Op op, int x, int kernel, int stride, int pad) {
  Ins ins = mk(op, x, -1, -1);
  ins.attr[0] = kernel, ins.attr[1] = stride, ins.attr[2] = pad;
  return ir_emit(fn, ins);
}

int ir_reshape(Fn *fn, int a, Shape to) {
  if (shape_eq(fn->ins[a].shape, to))
    return a;
  Ins ins = mk(OP_RESHAPE, a, -1, -1);
  ins.shape = to;
  return ir_emit(fn, ins);
}

// Materializes the broadcast of v to shape `to`: size-1 dimensions are reshaped away, then
// the missing ones are inserted by EXPAND. Autodiff needs full shapes for non-elementwise ops.
int ir_broadcast_to(Fn *fn, int v, Shape to) {
  Shape s = fn->ins[v].shape, kept = {0};
  if (shape_eq(s, to))
    return v;
  int at[MAX_RANK], off = to.rank - s.rank;
  if (off < 0)
    die("broadcast_to: %s to %s", shape_str(s), shape_str(to));
  for (int i = 0; i < s.rank; i++) {
    if (s.dim[i] == to.dim[off + i]) {
      at[kept.rank] = off + i;
      kept.dim[kept.rank++] = s.dim[i];
    } else if (s.dim[i] != 1) {
      die("broadcast_to: %s to %s", shape_str(s), shape_str(to));
    }
  }
  v = ir_reshape(fn, v, kept);
  for (int j = 0, k = 0; j < to.rank; j++) {
    if (k < kept.rank && at[k] == j)
      k++;
    else
      v = ir_expand(fn, v, j, to.dim[j]);
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// The verifier: arguments defined before use, arities right, every shape what its rule says.

void ir_verify(Fn *fn) {
  for (int i = 0; i < fn->len; i++) {
    Ins ins = fn->ins[i];
    if ((unsigned)ins.op >= OP_COUNT)
      die("verify %s: %%%d has a bad op %d", fn->name, i, ins.op);
    for (int k = 0; k < 3; k++) {
      int a = ins.arg[k];
      if (k < op_nargs[ins.op] ? (a < 0 || a >= i) : a != -1)
        die("verify %s: %%%d (%s) argument %d is %%%d", fn->name, i, op_names[ins.op], k, a);
    }
    if (ins.op == OP_INPUT && (unsigned)ins.input >= IN_COUNT)
      die("verify %s: %%%d input kind %d", fn->name, i, ins.input);
    if (ins.op == OP_STORE && op_nargs[ins.op] && fn->ins[ins.arg[0]].op == OP_STORE)
      die("verify %s: %%%d stores a store", fn->name, i);
    Ins again = ins;
    infer_shape(fn, &again);
    if (!shape_eq(again.shape, ins.shape))
      die("verify %s: %%%d (%s) has shape %s, its rule gives %s", fn->name, i,
          op_names[ins.op], shape_str(ins.shape), shape_str(again.shape));
    if (ins.shape.rank > MAX_RANK)
      die("verify %s: %%%d rank %d", fn->name, i, ins.shape.rank);
  }
}

// ---------------------------------------------------------------------------------------------
// The printer (`keel emit ir`):
//
//   %12 = matmul %3, %7ᵀ          [n, 256]   # dense1

static const char *input_names[IN_COUNT] = {"x", "y", "n", "lr", "t", "step", "steps", "epoch",
                                            "base", "steps_per_epoch"};

void ir_print(FILE *out, Prog *p, Fn *fn) {
  fprintf(out, "fn %s {\n", fn->name);
  for (int i = 0; i < fn->len; i++) {
    Ins *ins = &fn->ins[i];
    if (i == fn->nfwd && fn->nfwd > 0)
      fprintf(out, "  # backward (autodiff) and update\n");
    char buf[256];
    int len = snprintf(buf, sizeof buf, "%%%d = %s", i, op_names[ins->op]);
    switch (ins->op) {
    case OP_INPUT: len += snprintf(buf + len, sizeof buf - len, " %s", input_names[ins->input]); break;
    case OP_CONST: len += snprintf(buf + len, sizeof buf - len, " %g", ins->imm); break;
    case OP_TENSOR:
    case OP_STORE:
      len += snprintf(buf + len, sizeof buf - len, " %s", p ? p->tensors[ins->tensor].name
                                                             : str_fmt("#%d", ins->tensor));
      break;
    case OP_RAND: len += snprintf(buf + len, sizeof buf - len, " stream=%d", ins->seq); break;
    default: break;
    }
    for (int k = 0; k < op_nargs[ins->op]; k++) {
      bool t = ins->op == OP_MATMUL && (k == 0 ? ins->ta : ins->tb);
      len += snprintf(buf + len, sizeof buf - len, "%s%%%d%s", k ? ", " : " ", ins->arg[k],
                      t ? "ᵀ" : "");
    }
    if (op_class[ins->op] == OC_REDUCE || ins->op == OP_EXPAND)
      len += snprintf(buf + len, sizeof buf - len, " axis=%d", ins->axis);
    if (ins->op >= OP_CONV2D && ins->op <= OP_CONV2D_DW)
      len += snprintf(buf + len, sizeof buf - len, " stride=%d pad=%d dilation=%d",
                      ins->attr[0], ins->attr[1], ins->attr[2]);
    if (ins->op >= OP_MAXPOOL)
      len += snprintf(buf + len, sizeof buf - len, " kernel=%d stride=%d pad=%d%s", ins->attr[0],
                      ins->attr[1], ins->attr[2], ins->attr[3] ? " where max>0" : "");
    fprintf(out, "  %-40s %-14s", buf, shape_str(ins->shape));
    if (ins->layer)
      fprintf(out, " # %s", ins->layer);
    fprintf(out, "\n");
  }
  fprintf(out, "}\n");
}
