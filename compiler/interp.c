// interp.c — a reference interpreter for the IR, in double precision.
//
// Slow and simple on purpose: every op is a loop over output elements with broadcasting by
// index arithmetic. It is the oracle for the gradient checks (tests/unit/test_grad.c), which
// compare autodiff's backward pass with central finite differences, and for checking the
// generated code. Its random numbers are the runtime's (krt_uniform), keyed exactly as
// krt_rand_fill keys them.

#include "keel.h"
#include "keelrt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// The offset into a tensor of shape `in` that broadcasts to element `idx` of shape `out`.
static int64_t bcast_offset(Shape in, Shape out, int64_t idx, int64_t n) {
  int64_t off = 0, stride = 1;
  for (int i = out.rank - 1, j = in.rank - 1; i >= 0; i--, j--) {
    int64_t od = out.dim[i] == DIM_N ? n : out.dim[i];
    int64_t k = idx % od;
    idx /= od;
    if (j >= 0) {
      int64_t id = in.dim[j] == DIM_N ? n : in.dim[j];
      if (id != 1)
        off += k * stride;
      stride *= id;
    }
  }
  return off;
}

static int64_t dimv(int64_t d, int64_t n) { return d == DIM_N ? n : d; }

// Images, by direct loops over every window (the generated code uses im2col and GEMM
// instead, so this is an independent check of it). d is {n, c, h, w} of the input, o the
// output channels, k {kh, kw}, at = {stride, pad, dilation}.
typedef enum { IM_CONV, IM_CONV_DX, IM_CONV_DW } ImOp;

static void conv_loops(ImOp op, double *x, double *w, double *y, const int64_t *d, int64_t o,
                       const int64_t *k, const int *at) {
  int64_t oh = conv_out_size(d[2], k[0], at[0], at[1], at[2]);
  int64_t ow = conv_out_size(d[3], k[1], at[0], at[1], at[2]);
  for (int64_t n = 0; n < d[0]; n++)
    for (int64_t m = 0; m < o; m++)
      for (int64_t r = 0; r < oh; r++)
        for (int64_t q = 0; q < ow; q++) {
          double *out = &y[((n * o + m) * oh + r) * ow + q];
          for (int64_t c = 0; c < d[1]; c++)
            for (int64_t i = 0; i < k[0]; i++)
              for (int64_t j = 0; j < k[1]; j++) {
                int64_t yy = r * at[0] - at[1] + i * at[2], xx = q * at[0] - at[1] + j * at[2];
                if (yy < 0 || yy >= d[2] || xx < 0 || xx >= d[3])
                  continue;
                double *xv = &x[((n * d[1] + c) * d[2] + yy) * d[3] + xx];
                double *wv = &w[((m * d[1] + c) * k[0] + i) * k[1] + j];
                if (op == IM_CONV)
                  *out += *xv * *wv;
                else if (op == IM_CONV_DX)  // x is dx, y is dy
                  *xv += *out * *wv;
                else                         // w is dw
                  *wv += *xv * *out;
              }
        }
}

// Pooling: at = {kernel, stride, pad}; y (n, c, oh, ow). For MAXPOOL_DX, dy is y and the
// gradient goes to dx; for AVGPOOL_DX likewise.
static void pool_loops(Op op, double *x, double *y, double *dx, const int64_t *d, const int *at) {
  int64_t oh = conv_out_size(d[2], at[0], at[1], at[2], 1);
  int64_t ow = conv_out_size(d[3], at[0], at[1], at[2], 1);
  for (int64_t nc = 0; nc < d[0] * d[1]; nc++)
    for (int64_t r = 0; r < oh; r++)
      for (int64_t q = 0; q < ow; q++) {
        double *out = &y[(nc * oh + r) * ow + q], best = -INFINITY, sum = 0;
        int64_t arg = -1;
        for (int i = 0; i < at[0]; i++)
          for (int j = 0; j < at[0]; j++) {
            int64_t yy = r * at[1] - at[2] + i, xx = q * at[1] - at[2] + j;
            if (yy < 0 || yy >= d[2] || xx < 0 || xx >= d[3])
              continue;
            int64_t e = (nc * d[2] + yy) * d[3] + xx;
            if (op == OP_AVGPOOL_DX)
              dx[e] += *out / (at[0] * at[0]);
            else if (op != OP_AVGPOOL && (arg < 0 || x[e] > best))
              best = x[e], arg = e;
            else if (op == OP_AVGPOOL)
              sum += x[e];
          }
        if (op == OP_MAXPOOL)
          *out = best;
        else if (op == OP_AVGPOOL)
          *out = sum / (at[0] * at[0]);
        else if (op == OP_MAXPOOL_DX && arg >= 0 && (!at[3] || best > 0))
          dx[arg] += *out;
        else if (op == OP_MAXPOOL_GATHER)  // dx holds g here; *out receives g at the max
          *out = arg >= 0 ? dx[arg] : 0;
      }
}

static void dims_of(Shape s, int64_t n, int64_t *d) {
  for (int i = 0; i < s.rank; i++)
    d[i] = s.dim[i] == DIM_N ? n : s.dim[i];
}

double **interp_run(Fn *fn, int64_t n, double **inputs, double **tensors, uint64_t seed,
                    uint64_t step) {
  double **v = calloc((size_t)fn->len, sizeof *v);
  for (int i = 0; i < fn->len; i++) {
    Ins *ins = &fn->ins[i];
    int64_t cnt = shape_numel(ins->shape, n);
    double *o = v[i] = calloc((size_t)(cnt ? cnt : 1), sizeof(double));
    double *a = ins->arg[0] >= 0 ? v[ins->arg[0]] : NULL;
    double *b = ins->arg[1] >= 0 ? v[ins->arg[1]] : NULL;
    Shape as = ins->arg[0] >= 0 ? fn->ins[ins->arg[0]].shape : (Shape){0};
    Shape bs = ins->arg[1] >= 0 ? fn->ins[ins->arg[1]].shape : (Shape){0};
    switch (op_class[ins->op]) {
    case OC_UNARY:
      for (int64_t e = 0; e < cnt; e++)
        o[e] = ir_scalar_op(ins->op, a[e], 0, 0);
      continue;
    case OC_BINARY:
      for (int64_t e = 0; e < cnt; e++)
        o[e] = ir_scalar_op(ins->op, a[bcast_offset(as, ins->shape, e, n)],
                            b[bcast_offset(bs, ins->shape, e, n)], 0);
      continue;
    case OC_SELECT: {
      Shape cs = fn->ins[ins->arg[2]].shape;
      double *c = v[ins->arg[2]];
      for (int64_t e = 0; e < cnt; e++)
        o[e] = ir_scalar_op(OP_SELECT, a[bcast_offset(as, ins->shape, e, n)],
                            b[bcast_offset(bs, ins->shape, e, n)],
                            c[bcast_offset(cs, ins->shape, e, n)]);
      continue;
    }
    case OC_REDUCE: {
      // Element e of a maps to output element (outer, inner) with the axis removed.
      int64_t acnt = shape_numel(as, n), len = ins->axis < 0 ? acnt : dimv(as.dim[ins->axis], n);
      int64_t inner = 1;
      if (ins->axis >= 0)
        for (int k = ins->axis + 1; k < as.rank; k++)
          inner *= dimv(as.dim[k], n);
      else
        inner = 1;
      for (int64_t e = 0; e < cnt; e++)
        o[e] = ins->op == OP_RMAX || ins->op == OP_LSE ? -INFINITY : 0;
      for (int64_t e = 0; e < acnt; e++) {
        int64_t oe = ins->axis < 0 ? 0 : (e / (inner * len)) * inner + e % inner;
        if (ins->op == OP_RMAX || ins->op == OP_LSE)
          o[oe] = fmax(o[oe], a[e]);
        else
          o[oe] += a[e];
      }
      if (ins->op == OP_LSE) {
        double *s = calloc((size_t)(cnt ? cnt : 1), sizeof(double));
        for (int64_t e = 0; e < acnt; e++) {
          int64_t oe = ins->axis < 0 ? 0 : (e / (inner * len)) * inner + e % inner;
          s[oe] += exp(a[e] - o[oe]);
        }
        for (int64_t e = 0; e < cnt; e++)
          o[e] += log(s[e]);
        free(s);
      }
      if (ins->op == OP_MEAN)
        for (int64_t e = 0; e < cnt; e++)
          o[e] /= (double)len;
      continue;
    }
    case OC_LEAF:
    case OC_OTHER:
      break;
    }
    switch (ins->op) {
    case OP_INPUT:
      if (ins->input == IN_N)
        o[0] = (double)n;
      else
        memcpy(o, inputs[ins->input], sizeof(double) * (size_t)cnt);
      break;
    case OP_CONST: o[0] = ins->imm; break;
    case OP_TENSOR: memcpy(o, tensors[ins->tensor], sizeof(double) * (size_t)cnt); break;
    case OP_RAND: {
      uint64_t key = krt_rand_key(seed, (uint64_t)ins->seq, step);
      for (int64_t e = 0; e < cnt; e++)
        o[e] = krt_uniform(key, (uint64_t)e);
      break;
    }
    case OP_MATMUL: {
      int64_t M = dimv(ins->shape.dim[0], n), N = dimv(ins->shape.dim[1], n);
      int64_t K = dimv(ins->ta ? as.dim[0] : as.dim[1], n);
      int64_t lda = dimv(as.dim[1], n), ldb = dimv(bs.dim[1], n);
      for (int64_t r = 0; r < M; r++)
        for (int64_t c = 0; c < N; c++) {
          double s = 0;
          for (int64_t k = 0; k < K; k++)
            s += (ins->ta ? a[k * lda + r] : a[r * lda + k]) *
                 (ins->tb ? b[c * ldb + k] : b[k * ldb + c]);
          o[r * N + c] = s;
        }
      break;
    }
    case OP_TRANSPOSE: {
      int64_t R = dimv(as.dim[0], n), C = dimv(as.dim[1], n);
      for (int64_t r = 0; r < R; r++)
        for (int64_t c = 0; c < C; c++)
          o[c * R + r] = a[r * C + c];
      break;
    }
    case OP_RESHAPE: memcpy(o, a, sizeof(double) * (size_t)cnt); break;
    case OP_EXPAND: {
      int64_t inner = 1, len = dimv(ins->shape.dim[ins->axis], n);
      for (int k = ins->axis + 1; k < ins->shape.rank; k++)
        inner *= dimv(ins->shape.dim[k], n);
      for (int64_t e = 0; e < cnt; e++)
        o[e] = a[(e / (inner * len)) * inner + e % inner];
      break;
    }
    case OP_SUMTO: {
      int64_t acnt = shape_numel(as, n);
      for (int64_t e = 0; e < acnt; e++)
        o[bcast_offset(ins->shape, as, e, n)] += a[e];
      break;
    }
    case OP_PICK: {
      int64_t R = dimv(as.dim[0], n), K = dimv(as.dim[1], n);
      for (int64_t r = 0; r < R; r++) {
        int64_t k = (int64_t)b[r];
        if (k < 0 || k >= K)
          die("interp: label %lld out of range", (long long)k);
        o[r] = a[r * K + k];
      }
      break;
    }
    case OP_PICKGRAD: {
      int64_t R = dimv(ins->shape.dim[0], n), K = dimv(ins->shape.dim[1], n);
      for (int64_t r = 0; r < R; r++) {
        int64_t k = (int64_t)b[r];
        if (k < 0 || k >= K)
          die("interp: label %lld out of range", (long long)k);
        o[r * K + k] = a[r];
      }
      break;
    }
    case OP_STORE:
      for (int64_t e = 0; e < cnt; e++)
        o[e] = a[bcast_offset(as, ins->shape, e, n)];
      break;
    case OP_CONV2D:
    case OP_CONV2D_DX:
    case OP_CONV2D_DW: {
      Shape xs = ins->op == OP_CONV2D ? as : ins->op == OP_CONV2D_DX ? ins->shape : as;
      Shape ws = ins->op == OP_CONV2D ? bs : ins->op == OP_CONV2D_DX ? bs : ins->shape;
      int64_t d[4], wd[4];
      dims_of(xs, n, d), dims_of(ws, n, wd);
      double *x = ins->op == OP_CONV2D_DX ? o : a, *w = ins->op == OP_CONV2D_DW ? o : b;
      double *y = ins->op == OP_CONV2D ? o : ins->op == OP_CONV2D_DX ? a : b;
      conv_loops(ins->op == OP_CONV2D ? IM_CONV : ins->op == OP_CONV2D_DX ? IM_CONV_DX : IM_CONV_DW,
                 x, w, y, d, wd[0], wd + 2, ins->attr);
      break;
    }
    case OP_MAXPOOL:
    case OP_AVGPOOL: {
      int64_t d[4];
      dims_of(as, n, d);
      pool_loops(ins->op, a, o, NULL, d, ins->attr);
      break;
    }
    case OP_MAXPOOL_DX: {
      int64_t d[4];
      dims_of(as, n, d);
      pool_loops(OP_MAXPOOL_DX, a, b, o, d, ins->attr);
      break;
    }
    case OP_MAXPOOL_GATHER: {
      int64_t d[4];
      dims_of(as, n, d);
      pool_loops(OP_MAXPOOL_GATHER, a, o, b, d, ins->attr);
      break;
    }
    case OP_AVGPOOL_DX: {
      int64_t d[4];
      dims_of(ins->shape, n, d);
      pool_loops(OP_AVGPOOL_DX, NULL, a, o, d, ins->attr);
      break;
    }
    default: unreachable();
    }
  }
  return v;
}

void interp_free(Fn *fn, double **vals) {
  for (int i = 0; i < fn->len; i++)
    free(vals[i]);
  free(vals);
}
