// conv.c — convolution and pooling kernels for images in NCHW layout, as PyTorch stores them.
//
// A convolution is im2col + GEMM: for each sample, every window the kernel visits becomes a
// column of `col` (c·kh·kw rows, oh·ow columns, zeros where the window hangs over the
// padding), and one cblas_sgemm multiplies the weight (o × c·kh·kw) by it. The input gradient
// runs the same in reverse (Wᵀ · dy, then col2im adds the columns back), the weight
// gradient accumulates dy · colᵀ over the samples. Samples go one after another, so results
// do not depend on timing. Pooling is a direct loop over windows.

#include "keelrt.h"

#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

// im2col of one sample x (c, h, w) into col (c·kh·kw, oh·ow).
static void im2col(const float *x, float *col, int64_t c, int64_t h, int64_t w, int64_t kh,
                   int64_t kw, int64_t s, int64_t p, int64_t d, int64_t oh, int64_t ow) {
  for (int64_t ci = 0; ci < c; ci++)
    for (int64_t i = 0; i < kh; i++)
      for (int64_t j = 0; j < kw; j++) {
        float *row = col + ((ci * kh + i) * kw + j) * oh * ow;
        for (int64_t r = 0; r < oh; r++) {
          int64_t yy = r * s - p + i * d;
          for (int64_t q = 0; q < ow; q++) {
            int64_t xx = q * s - p + j * d;
            row[r * ow + q] = yy >= 0 && yy < h && xx >= 0 && xx < w ? x[(ci * h + yy) * w + xx] : 0;
          }
        }
      }
}

// The reverse: adds each column entry back into dx (c, h, w), which the caller zeroed.
static void col2im(const float *col, float *dx, int64_t c, int64_t h, int64_t w, int64_t kh,
                   int64_t kw, int64_t s, int64_t p, int64_t d, int64_t oh, int64_t ow) {
  for (int64_t ci = 0; ci < c; ci++)
    for (int64_t i = 0; i < kh; i++)
      for (int64_t j = 0; j < kw; j++) {
        const float *row = col + ((ci * kh + i) * kw + j) * oh * ow;
        for (int64_t r = 0; r < oh; r++) {
          int64_t yy = r * s - p + i * d;
          if (yy < 0 || yy >= h)
            continue;
          for (int64_t q = 0; q < ow; q++) {
            int64_t xx = q * s - p + j * d;
            if (xx >= 0 && xx < w)
              dx[(ci * h + yy) * w + xx] += row[r * ow + q];
          }
        }
      }
}

static int64_t out_size(int64_t size, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (size + 2 * p - d * (k - 1) - 1) / s + 1;
}

void krt_conv2d(const float *x, const float *wt, float *y, int64_t n, int64_t c, int64_t h,
                int64_t w, int64_t o, int64_t kh, int64_t kw, int64_t s, int64_t p, int64_t d,
                float *col) {
  int64_t oh = out_size(h, kh, s, p, d), ow = out_size(w, kw, s, p, d), ckk = c * kh * kw;
  for (int64_t i = 0; i < n; i++) {
    im2col(x + i * c * h * w, col, c, h, w, kh, kw, s, p, d, oh, ow);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)o, (int)(oh * ow), (int)ckk, 1,
                wt, (int)ckk, col, (int)(oh * ow), 0, y + i * o * oh * ow, (int)(oh * ow));
  }
}

void krt_conv2d_dx(const float *dy, const float *wt, float *dx, int64_t n, int64_t c,
                   int64_t h, int64_t w, int64_t o, int64_t kh, int64_t kw, int64_t s,
                   int64_t p, int64_t d, float *col) {
  int64_t oh = out_size(h, kh, s, p, d), ow = out_size(w, kw, s, p, d), ckk = c * kh * kw;
  memset(dx, 0, sizeof(float) * (size_t)(n * c * h * w));
  for (int64_t i = 0; i < n; i++) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)ckk, (int)(oh * ow), (int)o, 1,
                wt, (int)ckk, dy + i * o * oh * ow, (int)(oh * ow), 0, col, (int)(oh * ow));
    col2im(col, dx + i * c * h * w, c, h, w, kh, kw, s, p, d, oh, ow);
  }
}

void krt_conv2d_dw(const float *x, const float *dy, float *dw, int64_t n, int64_t c,
                   int64_t h, int64_t w, int64_t o, int64_t kh, int64_t kw, int64_t s,
                   int64_t p, int64_t d, float *col) {
  int64_t oh = out_size(h, kh, s, p, d), ow = out_size(w, kw, s, p, d), ckk = c * kh * kw;
  memset(dw, 0, sizeof(float) * (size_t)(o * ckk));
  for (int64_t i = 0; i < n; i++) {
    im2col(x + i * c * h * w, col, c, h, w, kh, kw, s, p, d, oh, ow);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)o, (int)ckk, (int)(oh * ow), 1,
                dy + i * o * oh * ow, (int)(oh * ow), col, (int)(oh * ow), 1, dw, (int)ckk);
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

// 2×2 windows with stride 2 and no padding, the common case, without the general search:
// the index of the first maximum of x[e], x[e+1], x[e+w], x[e+w+1] (a NaN wins).
static inline int64_t argmax4(const float *x, int64_t e, int64_t w) {
  int64_t c[4] = {e, e + 1, e + w, e + w + 1}, arg = e;
  for (int i = 1; i < 4; i++)
    if (x[c[i]] > x[arg] || (x[c[i]] != x[c[i]] && x[arg] == x[arg]))
      arg = c[i];
  return arg;
}

void krt_maxpool(const float *x, float *y, int64_t nc, int64_t h, int64_t w, int64_t k,
                 int64_t s, int64_t p) {
  int64_t oh = out_size(h, k, s, p, 1), ow = out_size(w, k, s, p, 1);
  if (k == 2 && s == 2 && p == 0) {
    for (int64_t m = 0; m < nc; m++)
      for (int64_t r = 0; r < oh; r++) {
        const float *a = x + (m * h + 2 * r) * w, *b = a + w;
        float *o = y + (m * oh + r) * ow;
        for (int64_t q = 0; q < ow; q++) {
          float u = a[2 * q], v = a[2 * q + 1], t = b[2 * q], z = b[2 * q + 1];
          float uv = v > u || (v != v && u == u) ? v : u, tz = z > t || (z != z && t == t) ? z : t;
          o[q] = tz > uv || (tz != tz && uv == uv) ? tz : uv;
        }
      }
    return;
  }
  for (int64_t m = 0; m < nc; m++)
    for (int64_t r = 0; r < oh; r++)
      for (int64_t q = 0; q < ow; q++) {
        int64_t arg = window_argmax(x, m, r, q, h, w, k, s, p);
        y[(m * oh + r) * ow + q] = arg >= 0 ? x[arg] : -INFINITY;
      }
}

void krt_maxpool_dx(const float *x, const float *dy, float *dx, int64_t nc, int64_t h,
                    int64_t w, int64_t k, int64_t s, int64_t p) {
  int64_t oh = out_size(h, k, s, p, 1), ow = out_size(w, k, s, p, 1);
  memset(dx, 0, sizeof(float) * (size_t)(nc * h * w));
  bool two = k == 2 && s == 2 && p == 0;
  for (int64_t m = 0; m < nc; m++)
    for (int64_t r = 0; r < oh; r++)
      for (int64_t q = 0; q < ow; q++) {
        int64_t arg = two ? argmax4(x, (m * h + 2 * r) * w + 2 * q, w)
                          : window_argmax(x, m, r, q, h, w, k, s, p);
        if (arg >= 0)
          dx[arg] += dy[(m * oh + r) * ow + q];
      }
}

// g (x's shape) at each window's first maximum of x: the adjoint of krt_maxpool_dx.
void krt_maxpool_gather(const float *x, const float *g, float *y, int64_t nc, int64_t h,
                        int64_t w, int64_t k, int64_t s, int64_t p) {
  int64_t oh = out_size(h, k, s, p, 1), ow = out_size(w, k, s, p, 1);
  for (int64_t m = 0; m < nc; m++)
    for (int64_t r = 0; r < oh; r++)
      for (int64_t q = 0; q < ow; q++) {
        int64_t arg = k == 2 && s == 2 && p == 0 ? argmax4(x, (m * h + 2 * r) * w + 2 * q, w)
                                                 : window_argmax(x, m, r, q, h, w, k, s, p);
        y[(m * oh + r) * ow + q] = arg >= 0 ? g[arg] : 0;
      }
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
