// conv.c — convolution and pooling kernels for images in NCHW layout, as PyTorch stores them.
//
// A convolution is im2col + GEMM: for each sample, every window the kernel visits becomes a
// column of `col` (c·kh·kw rows, oh·ow columns, zeros where the window hangs over the
// padding), and one cblas_sgemm multiplies the weight (o × c·kh·kw) by it. The input gradient
// runs the same in reverse (Wᵀ · dy, then col2im adds the columns back), the weight
// gradient accumulates dy · colᵀ over the samples. The samples are shared among the threads of the pool (threads.c) in fixed chunks, each with
// its own scratch; the weight gradient keeps one partial sum per chunk and adds them in chunk
// order, so results do not depend on timing. Pooling is a direct loop over windows, its planes shared the same way.

#include "keelrt.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

// The output columns q whose input column q·s + off lies inside [0, w): [*q0, *q1).
static void inside(int64_t w, int64_t ow, int64_t s, int64_t off, int64_t *q0, int64_t *q1) {
  // q·s + off ≥ 0  ⇔  q ≥ ceil(-off / s);   q·s + off < w  ⇔  q < ceil((w - off) / s)
  int64_t lo = off >= 0 ? 0 : (-off + s - 1) / s, hi = w - off <= 0 ? 0 : (w - off + s - 1) / s;
  *q0 = lo < ow ? lo : ow;
  *q1 = hi < ow ? hi : ow;
  if (*q1 < *q0)
    *q1 = *q0;
}

// im2col of one sample x (c, h, w) into col (c·kh·kw rows, ld apart; oh·ow columns). Each row of the output is a
// run of zeros, a (strided) copy of an input row and zeros: the bounds are worked out once per
// row, not per element.
static void im2col(const float *x, float *col, int64_t ld, int64_t c, int64_t h, int64_t w,
                   int64_t kh, int64_t kw, int64_t s, int64_t p, int64_t d, int64_t oh, int64_t ow) {
  for (int64_t ci = 0; ci < c; ci++)
    for (int64_t i = 0; i < kh; i++)
      for (int64_t j = 0; j < kw; j++) {
        float *row = col + ((ci * kh + i) * kw + j) * ld;
        int64_t off = j * d - p, q0, q1;
        inside(w, ow, s, off, &q0, &q1);
        for (int64_t r = 0; r < oh; r++) {
          int64_t yy = r * s - p + i * d;
          float *o = row + r * ow;
          if (yy < 0 || yy >= h) {
            memset(o, 0, sizeof(float) * (size_t)ow);
            continue;
          }
          const float *in = x + (ci * h + yy) * w;
          for (int64_t q = 0; q < q0; q++)  // (a column or two: loops, not library calls)
            o[q] = 0;
          if (s == 1)
            memcpy(o + q0, in + q0 + off, sizeof(float) * (size_t)(q1 - q0));
          else
            for (int64_t q = q0; q < q1; q++)
              o[q] = in[q * s + off];
          for (int64_t q = q1; q < ow; q++)
            o[q] = 0;
        }
      }
}

// The reverse: adds each column entry back into dx (c, h, w), which the caller zeroed.
static void col2im(const float *col, int64_t ld, float *dx, int64_t c, int64_t h, int64_t w,
                   int64_t kh, int64_t kw, int64_t s, int64_t p, int64_t d, int64_t oh, int64_t ow) {
  for (int64_t ci = 0; ci < c; ci++)
    for (int64_t i = 0; i < kh; i++)
      for (int64_t j = 0; j < kw; j++) {
        const float *row = col + ((ci * kh + i) * kw + j) * ld;
        int64_t off = j * d - p, q0, q1;
        inside(w, ow, s, off, &q0, &q1);
        for (int64_t r = 0; r < oh; r++) {
          int64_t yy = r * s - p + i * d;
          if (yy < 0 || yy >= h)
            continue;
          float *out = dx + (ci * h + yy) * w;
          const float *in = row + r * ow;
          for (int64_t q = q0; q < q1; q++)
            out[q * s + off] += in[q];
        }
      }
}

static int64_t out_size(int64_t size, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (size + 2 * p - d * (k - 1) - 1) / s + 1;
}

// The arguments of a convolution kernel, for the chunks of the pool.
typedef struct {
  const float *x, *wt, *dy;
  float *y, *dx, *dw;
  int64_t c, h, w, o, kh, kw, s, p, d, oh, ow, ckk;
  bool ran[KRT_MAX_THREADS];  // conv2d_dw: the chunks that wrote a partial sum
} Conv;

static Conv conv_args(int64_t c, int64_t h, int64_t w, int64_t o, int64_t kh, int64_t kw,
                      int64_t s, int64_t p, int64_t d) {
  int64_t oh = out_size(h, kh, s, p, d), ow = out_size(w, kw, s, p, d);
  return (Conv){.c = c, .h = h, .w = w, .o = o, .kh = kh, .kw = kw, .s = s, .p = p, .d = d,
                .oh = oh, .ow = ow, .ckk = c * kh * kw};
}

// Chunk t's scratch: one sample's columns (ckk × oh·ow), then, for the weight gradient, the
// chunk's partial sum (o × ckk). (Products of several samples' columns side by side were
// tried: OpenBLAS runs 64 × 288 by 288 × 196 as fast as by 288 × 1568, and the copies cost.)
static float *scratch_of(const Conv *a, int t, float **dw) {
  float *col = krt_scratch(t, a->ckk * a->oh * a->ow + (dw ? a->o * a->ckk : 0));
  if (dw)
    *dw = col + a->ckk * a->oh * a->ow;
  return col;
}

static void conv_chunk(void *ctx, int64_t lo, int64_t hi, int t) {
  const Conv *a = ctx;
  float *col = scratch_of(a, t, NULL);
  int64_t ohw = a->oh * a->ow;
  for (int64_t i = lo; i < hi; i++) {
    im2col(a->x + i * a->c * a->h * a->w, col, ohw, a->c, a->h, a->w, a->kh, a->kw, a->s, a->p,
           a->d, a->oh, a->ow);
    krt_sgemm_serial(0, 0, (int)a->o, (int)ohw, (int)a->ckk, 1, a->wt, (int)a->ckk, col,
                     (int)ohw, 0, a->y + i * a->o * ohw, (int)ohw);
  }
}

void krt_conv2d(const float *x, const float *wt, float *y, int64_t n, int64_t c, int64_t h,
                int64_t w, int64_t o, int64_t kh, int64_t kw, int64_t s, int64_t p, int64_t d) {
  Conv a = conv_args(c, h, w, o, kh, kw, s, p, d);
  a.x = x, a.wt = wt, a.y = y;
  krt_parallel(conv_chunk, &a, n, 1, 1);
}

static void conv_dx_chunk(void *ctx, int64_t lo, int64_t hi, int t) {
  const Conv *a = ctx;
  float *col = scratch_of(a, t, NULL);
  int64_t ohw = a->oh * a->ow, chw = a->c * a->h * a->w;
  memset(a->dx + lo * chw, 0, sizeof(float) * (size_t)((hi - lo) * chw));
  for (int64_t i = lo; i < hi; i++) {
    krt_sgemm_serial(1, 0, (int)a->ckk, (int)ohw, (int)a->o, 1, a->wt, (int)a->ckk,
                     a->dy + i * a->o * ohw, (int)ohw, 0, col, (int)ohw);
    col2im(col, ohw, a->dx + i * chw, a->c, a->h, a->w, a->kh, a->kw, a->s, a->p, a->d, a->oh,
           a->ow);
  }
}

void krt_conv2d_dx(const float *dy, const float *wt, float *dx, int64_t n, int64_t c,
                   int64_t h, int64_t w, int64_t o, int64_t kh, int64_t kw, int64_t s,
                   int64_t p, int64_t d) {
  Conv a = conv_args(c, h, w, o, kh, kw, s, p, d);
  a.dy = dy, a.wt = wt, a.dx = dx;
  krt_parallel(conv_dx_chunk, &a, n, 1, 1);
}

// Chunk t sums its samples' dy · colᵀ into dw (t = 0) or into its partial sum (t > 0).
static void conv_dw_chunk(void *ctx, int64_t lo, int64_t hi, int t) {
  Conv *a = ctx;
  float *part, *col = scratch_of(a, t, &part), *dw = t == 0 ? a->dw : part;
  int64_t ohw = a->oh * a->ow;
  memset(dw, 0, sizeof(float) * (size_t)(a->o * a->ckk));
  for (int64_t i = lo; i < hi; i++) {
    im2col(a->x + i * a->c * a->h * a->w, col, ohw, a->c, a->h, a->w, a->kh, a->kw, a->s, a->p,
           a->d, a->oh, a->ow);
    krt_sgemm_serial(0, 1, (int)a->o, (int)a->ckk, (int)ohw, 1, a->dy + i * a->o * ohw,
                     (int)ohw, col, (int)ohw, 1, dw, (int)a->ckk);
  }
  a->ran[t] = true;
}

void krt_conv2d_dw(const float *x, const float *dy, float *dw, int64_t n, int64_t c,
                   int64_t h, int64_t w, int64_t o, int64_t kh, int64_t kw, int64_t s,
                   int64_t p, int64_t d) {
  Conv a = conv_args(c, h, w, o, kh, kw, s, p, d);
  a.x = x, a.dy = dy, a.dw = dw;
  memset(dw, 0, sizeof(float) * (size_t)(o * a.ckk));  // n = 0 runs no chunk
  krt_parallel(conv_dw_chunk, &a, n, 1, 1);
  for (int t = 1; t < KRT_MAX_THREADS; t++)  // the partial sums, in chunk order
    if (a.ran[t]) {
      float *part;
      scratch_of(&a, t, &part);
      for (int64_t e = 0; e < o * a.ckk; e++)
        dw[e] += part[e];
    }
}

// Pooling over k × k windows with stride s and padding p. Max pooling treats the padding as
// -inf and sends each window's gradient to its first maximum (as PyTorch does); average
// pooling counts the padding as zeros (PyTorch's count_include_pad=True).
// The index in x of the first maximum of window (r, q) of plane m, or -1 when the window
// lies wholly in the padding. A NaN wins, so that it propagates as in PyTorch.
static inline int64_t window_argmax(const float *x, int64_t m, int64_t r, int64_t q, int64_t h,
                                    int64_t w, int64_t k, int64_t s, int64_t p) {
  if (p == 0) {  // every window lies inside the image: no bounds to check
    int64_t base = (m * h + r * s) * w + q * s, arg = base;
    for (int64_t i = 0; i < k; i++)
      for (int64_t j = 0; j < k; j++) {
        int64_t e = base + i * w + j;
        if (x[e] > x[arg] || (isnan(x[e]) && !isnan(x[arg])))
          arg = e;
      }
    return arg;
  }
  int64_t arg = -1;
  for (int64_t i = 0; i < k; i++)
    for (int64_t j = 0; j < k; j++) {
      int64_t yy = r * s - p + i, xx = q * s - p + j;
      if (yy < 0 || yy >= h || xx < 0 || xx >= w)
        continue;
      int64_t e = (m * h + yy) * w + xx;
      if (arg < 0 || x[e] > x[arg] || (isnan(x[e]) && !isnan(x[arg])))
        arg = e;
    }
  return arg;
}

// 2×2 windows with stride 2 and no padding, the common case, without the general search and
// without unpredictable branches (on real data every comparison is a coin toss for the branch
// predictor): the window u v / t z's maximum by `a > b ? a : b` (one maxss each), and its first
// position as arithmetic on comparisons. A NaN (rare: the branch is predicted) takes the
// general rule: the first NaN wins.
static inline float max2(float a, float b) { return b > a ? b : a; }

// one[k] = 1 for the first maximum k of u v t z, 0 for the others; returns the maximum.
static inline float argmax4(float u, float v, float t, float z, int one[4]) {
  if (__builtin_expect((u != u) | (v != v) | (t != t) | (z != z), 0)) {
    int first = u != u ? 0 : v != v ? 1 : t != t ? 2 : 3;
    for (int k = 0; k < 4; k++)
      one[k] = k == first;
    return (float[]){u, v, t, z}[first];
  }
  float m = max2(max2(u, v), max2(t, z));
  one[0] = u == m;
  one[1] = (v == m) & !one[0];
  one[2] = (t == m) & !(one[0] | one[1]);
  one[3] = !(one[0] | one[1] | one[2]);
  return m;
}

// The bits of g where on is 1, of +0 where it is 0 (masks: no branch, and no 0 · inf).
static inline uint32_t keep_bits(float g, int on) {
  uint32_t bits;
  memcpy(&bits, &g, sizeof bits);
  return bits & -(uint32_t)on;
}

static inline float keep(float g, int on) {
  uint32_t bits = keep_bits(g, on);
  memcpy(&g, &bits, sizeof g);
  return g;
}

static bool two_by_two(int64_t k, int64_t s, int64_t p) { return k == 2 && s == 2 && p == 0; }

// The same, N windows at a time (GCC's vector extensions; AVX2 where the CPU has it, through
// the target_clones of the callers): the four entries of each window deinterleaved from the
// two rows, the maximum and the first maximum's position lane by lane with exactly the rules
// of argmax4, the gradient's four entries interleaved back. A window with a NaN gives a lane
// in the returned mask, and the caller redoes the row with argmax4.
// (always inlined into the clones, so the ABI of a vector argument never matters: -Wpsabi off)
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float F8 __attribute__((vector_size(32)));
typedef int32_t I8 __attribute__((vector_size(32)));
typedef float F4 __attribute__((vector_size(16)));
typedef int32_t I4 __attribute__((vector_size(16)));

#define POOL2(NAME, F, I, N, EVEN, ODD, ILO, IHI)                                               \
  static inline __attribute__((always_inline)) I NAME(const float *u, const float *b, int64_t q,  \
                       float *o, const float *g, float *du, float *db, bool relu) {             \
    F u0, u1, b0, b1;                                                                            \
    memcpy(&u0, u + 2 * q, sizeof u0), memcpy(&u1, u + 2 * q + N, sizeof u1);                    \
    memcpy(&b0, b + 2 * q, sizeof b0), memcpy(&b1, b + 2 * q + N, sizeof b1);                    \
    F a0 = __builtin_shuffle(u0, u1, EVEN), a1 = __builtin_shuffle(u0, u1, ODD);                \
    F a2 = __builtin_shuffle(b0, b1, EVEN), a3 = __builtin_shuffle(b0, b1, ODD);                \
    I gt01 = a1 > a0, gt23 = a3 > a2; /* max2(a, b) = b > a ? b : a */                          \
    F m01 = (F)((gt01 & (I)a1) | (~gt01 & (I)a0)), m23 = (F)((gt23 & (I)a3) | (~gt23 & (I)a2)); \
    I gt = m23 > m01;                                                                            \
    F m = (F)((gt & (I)m23) | (~gt & (I)m01));                                                   \
    if (o) {                                                                                     \
      memcpy(o + q, &m, sizeof m);                                                               \
    } else {                                                                                     \
      I e0 = a0 == m, e1 = (a1 == m) & ~e0, e2 = (a2 == m) & ~(e0 | e1), e3 = ~(e0 | e1 | e2);   \
      if (relu) {                                                                                \
        I on = m > 0;                                                                            \
        e0 &= on, e1 &= on, e2 &= on, e3 &= on;                                                  \
      }                                                                                          \
      I gv;                                                                                      \
      memcpy(&gv, g + q, sizeof gv);                                                             \
      I d0 = gv & e0, d1 = gv & e1, d2 = gv & e2, d3 = gv & e3;                                  \
      I t0 = __builtin_shuffle(d0, d1, ILO), t1 = __builtin_shuffle(d0, d1, IHI);                \
      I t2 = __builtin_shuffle(d2, d3, ILO), t3 = __builtin_shuffle(d2, d3, IHI);                \
      memcpy(du + 2 * q, &t0, sizeof t0), memcpy(du + 2 * q + N, &t1, sizeof t1);                \
      memcpy(db + 2 * q, &t2, sizeof t2), memcpy(db + 2 * q + N, &t3, sizeof t3);                \
    }                                                                                            \
    return (u0 != u0) | (u1 != u1) | (b0 != b0) | (b1 != b1);                                    \
  }
POOL2(pool2_8, F8, I8, 8, ((I8){0, 2, 4, 6, 8, 10, 12, 14}), ((I8){1, 3, 5, 7, 9, 11, 13, 15}),
      ((I8){0, 8, 1, 9, 2, 10, 3, 11}), ((I8){4, 12, 5, 13, 6, 14, 7, 15}))
POOL2(pool2_4, F4, I4, 4, ((I4){0, 2, 4, 6}), ((I4){1, 3, 5, 7}), ((I4){0, 4, 1, 5}),
      ((I4){2, 6, 3, 7}))

// The ow windows of the row pair u, b: the maximum into o (forward), or the gradient g into
// du, db (backward, o NULL). N at a time, the last N overlapping the ones before (a window done
// twice writes the same values). False where the row is too short (under 4 windows) or holds
// a NaN: the caller then does it with argmax4.
static inline __attribute__((always_inline)) bool pool2_row(const float *u, const float *b, int64_t ow, float *o, const float *g,
                             float *du, float *db, bool relu) {
  if (ow >= 8) {
    I8 bad = {0};
    for (int64_t q = 0;; q += 8) {
      q = q > ow - 8 ? ow - 8 : q;
      bad |= pool2_8(u, b, q, o, g, du, db, relu);
      if (q == ow - 8)
        break;
    }
    for (int k = 1; k < 8; k++)
      bad[0] |= bad[k];
    return !bad[0];
  }
  if (ow >= 4) {
    I4 bad = pool2_4(u, b, 0, o, g, du, db, relu) | pool2_4(u, b, ow - 4, o, g, du, db, relu);
    return !(bad[0] | bad[1] | bad[2] | bad[3]);
  }
  return false;
}

// The arguments of a pooling kernel; the pool shares out the planes.
typedef struct {
  const float *x, *g;
  float *y;
  int64_t h, w, k, s, p, oh, ow;
  bool relu;  // maxpool_dx: only where the maximum is above 0
} Pool;

static Pool pool_args(const float *x, const float *g, float *y, int64_t h, int64_t w, int64_t k,
                      int64_t s, int64_t p) {
  return (Pool){x, g, y, h, w, k, s, p, out_size(h, k, s, p, 1), out_size(w, k, s, p, 1), false};
}

// Shares planes among the threads, at least about 16k input floats per chunk.
static void pool_planes(KrtTask *fn, Pool *a, int64_t nc) {
  int64_t plane = a->h * a->w;
  krt_parallel(fn, a, nc, 1, plane >= 16384 ? 1 : 16384 / plane);
}

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("default", "arch=x86-64-v3")))
#endif
static void maxpool_chunk(void *ctx, int64_t lo, int64_t hi, int t) {
  const Pool *a = ctx;
  int64_t h = a->h, w = a->w, oh = a->oh, ow = a->ow;
  for (int64_t m = lo; m < hi; m++)
    for (int64_t r = 0; r < oh; r++) {
      float *o = a->y + (m * oh + r) * ow;
      if (two_by_two(a->k, a->s, a->p)) {
        const float *u = a->x + (m * h + 2 * r) * w, *b = u + w;
        if (pool2_row(u, b, ow, o, NULL, NULL, NULL, false))
          continue;
        for (int64_t q = 0; q < ow; q++) {
          int one[4];
          o[q] = argmax4(u[2 * q], u[2 * q + 1], b[2 * q], b[2 * q + 1], one);
        }
        continue;
      }
      for (int64_t q = 0; q < ow; q++) {
        int64_t arg = window_argmax(a->x, m, r, q, h, w, a->k, a->s, a->p);
        o[q] = arg >= 0 ? a->x[arg] : -INFINITY;
      }
    }
}

void krt_maxpool(const float *x, float *y, int64_t nc, int64_t h, int64_t w, int64_t k,
                 int64_t s, int64_t p) {
  Pool a = pool_args(x, NULL, y, h, w, k, s, p);
  pool_planes(maxpool_chunk, &a, nc);
}

// dx (here a.y) gets each window's gradient (a.g) at its first maximum, zeros elsewhere.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("default", "arch=x86-64-v3")))
#endif
static void maxpool_dx_chunk(void *ctx, int64_t lo, int64_t hi, int t) {
  const Pool *a = ctx;
  int64_t h = a->h, w = a->w, oh = a->oh, ow = a->ow;
  float *dx = a->y;
  bool two = two_by_two(a->k, a->s, a->p), relu = a->relu;
  if (!two || h % 2 || w % 2)  // rows or columns no window covers, or windows that overlap
    memset(dx + lo * h * w, 0, sizeof(float) * (size_t)((hi - lo) * h * w));
  for (int64_t m = lo; m < hi; m++)
    for (int64_t r = 0; r < oh; r++) {
      const float *g = a->g + (m * oh + r) * ow;
      if (two) {  // disjoint windows: each of the four entries written once
        const float *u = a->x + (m * h + 2 * r) * w, *b = u + w;
        float *du = dx + (m * h + 2 * r) * w, *db = du + w;
        if (pool2_row(u, b, ow, NULL, g, du, db, relu))
          continue;
        for (int64_t q = 0; q < ow; q++) {
          int one[4];
          float top = argmax4(u[2 * q], u[2 * q + 1], b[2 * q], b[2 * q + 1], one);
          int on = !relu | (top > 0);  // (a NaN maximum is not above 0)
          du[2 * q] = keep(g[q], one[0] & on), du[2 * q + 1] = keep(g[q], one[1] & on);
          db[2 * q] = keep(g[q], one[2] & on), db[2 * q + 1] = keep(g[q], one[3] & on);
        }
        continue;
      }
      for (int64_t q = 0; q < ow; q++) {
        int64_t arg = window_argmax(a->x, m, r, q, h, w, a->k, a->s, a->p);
        if (arg >= 0 && (!a->relu || a->x[arg] > 0))
          dx[arg] += g[q];
      }
    }
}

void krt_maxpool_dx(const float *x, const float *dy, float *dx, int64_t nc, int64_t h,
                    int64_t w, int64_t k, int64_t s, int64_t p, int64_t relu) {
  Pool a = pool_args(x, dy, dx, h, w, k, s, p);
  a.relu = relu != 0;
  pool_planes(maxpool_dx_chunk, &a, nc);
}

// g (x's shape) at each window's first maximum of x: the adjoint of krt_maxpool_dx.
static void maxpool_gather_chunk(void *ctx, int64_t lo, int64_t hi, int t) {
  const Pool *a = ctx;
  int64_t h = a->h, w = a->w, oh = a->oh, ow = a->ow;
  for (int64_t m = lo; m < hi; m++)
    for (int64_t r = 0; r < oh; r++) {
      float *o = a->y + (m * oh + r) * ow;
      if (two_by_two(a->k, a->s, a->p)) {
        int64_t e = (m * h + 2 * r) * w;
        const float *u = a->x + e, *b = u + w;
        for (int64_t q = 0; q < ow; q++) {
          int one[4];
          argmax4(u[2 * q], u[2 * q + 1], b[2 * q], b[2 * q + 1], one);
          const float *at = a->g + e + 2 * q;
          uint32_t bits = keep_bits(at[0], one[0]) | keep_bits(at[1], one[1]) |
                          keep_bits(at[w], one[2]) | keep_bits(at[w + 1], one[3]);
          memcpy(&o[q], &bits, sizeof bits);
        }
        continue;
      }
      for (int64_t q = 0; q < ow; q++) {
        int64_t arg = window_argmax(a->x, m, r, q, h, w, a->k, a->s, a->p);
        o[q] = arg >= 0 ? a->g[arg] : 0;
      }
    }
}

void krt_maxpool_gather(const float *x, const float *g, float *y, int64_t nc, int64_t h,
                        int64_t w, int64_t k, int64_t s, int64_t p) {
  Pool a = pool_args(x, g, y, h, w, k, s, p);
  pool_planes(maxpool_gather_chunk, &a, nc);
}

void krt_avgpool(const float *x, float *y, int64_t nc, int64_t h, int64_t w, int64_t k,
                 int64_t s, int64_t p) {
  int64_t oh = out_size(h, k, s, p, 1), ow = out_size(w, k, s, p, 1);
  for (int64_t m = 0; m < nc; m++)
    for (int64_t r = 0; r < oh; r++)
      for (int64_t q = 0; q < ow; q++) {
        float sum = 0;
        for (int64_t i = 0; i < k; i++)
          for (int64_t j = 0; j < k; j++) {
            int64_t yy = r * s - p + i, xx = q * s - p + j;
            if (yy >= 0 && yy < h && xx >= 0 && xx < w)
              sum += x[(m * h + yy) * w + xx];
          }
        y[(m * oh + r) * ow + q] = sum / (float)(k * k);
      }
}

void krt_avgpool_dx(const float *dy, float *dx, int64_t nc, int64_t h, int64_t w, int64_t k,
                    int64_t s, int64_t p) {
  int64_t oh = out_size(h, k, s, p, 1), ow = out_size(w, k, s, p, 1);
  memset(dx, 0, sizeof(float) * (size_t)(nc * h * w));
  for (int64_t m = 0; m < nc; m++)
    for (int64_t r = 0; r < oh; r++)
      for (int64_t q = 0; q < ow; q++) {
        float g = dy[(m * oh + r) * ow + q] / (float)(k * k);
        for (int64_t i = 0; i < k; i++)
          for (int64_t j = 0; j < k; j++) {
            int64_t yy = r * s - p + i, xx = q * s - p + j;
            if (yy >= 0 && yy < h && xx >= 0 && xx < w)
              dx[(m * h + yy) * w + xx] += g;
          }
      }
}
