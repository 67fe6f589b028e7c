// threads.c — the runtime's one thread pool, shared by the matrix products, the convolutions,
// the pooling kernels and the generated elementwise loops.
//
// `--threads T` starts T - 1 workers; the calling thread is the T-th. OpenBLAS is kept
// single-threaded: each chunk of a matrix product is one single-threaded sgemm on its own
// rows or columns, so exactly one pool ever runs, and no OpenBLAS worker spins on a core that
// one of ours needs (the trap of perf-anchors.md: two pools on two cores).
//
// Determinism. krt_parallel cuts [0, n) into T chunks at fixed places (they depend only on n,
// T and the alignment), and chunk t is always computed by the same code on the same data,
// whichever thread runs it. Nothing is ever summed across chunks in an order that depends on
// timing: a kernel that reduces (a weight gradient over the samples) keeps one partial result
// per chunk and adds them in chunk order. The same T therefore gives the same bits.
//
// Waking is a generation counter: a worker spins on it briefly after each job (the kernels of
// one training step follow each other within microseconds), then sleeps on a futex.

#include "keelrt.h"

#include <cblas.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <stdlib.h>
#include <strings.h>
#include <unistd.h>

enum { SPIN = 1 << 15 };

static struct {
  int threads;                 // T, counting the caller
  KrtTask *fn;                 // the job
  void *ctx;
  int64_t n, align;
  _Atomic uint32_t generation; // bumped once per job
  _Atomic int claimed[KRT_MAX_THREADS];  // chunk c of the current job is taken
  _Atomic int done;            // chunks finished
  _Atomic int sleeping;        // workers in futex_wait
} pool = {.threads = 1};

static void futex(_Atomic uint32_t *addr, int op, uint32_t val) {
  syscall(SYS_futex, (uint32_t *)addr, op | FUTEX_PRIVATE_FLAG, val, NULL, NULL, 0);
}

// The bounds of chunk t of T over [0, n): equal shares, cut at multiples of align.
static void chunk(int64_t n, int64_t align, int t, int T, int64_t *lo, int64_t *hi) {
  int64_t blocks = (n + align - 1) / align;
  *lo = blocks * t / T * align;
  *hi = blocks * (t + 1) / T * align;
  if (*lo > n)
    *lo = n;
  if (*hi > n)
    *hi = n;
}

// Claims chunks of the current job until none is left: thread `self` its own chunk first (so
// that consecutive jobs find their data in the cache of the core that wrote it), then any other
// still free, so a worker that the system has not scheduled holds nothing up; what a chunk
// computes does not depend on who runs it.
static void run_chunks(int self) {
  for (int k = 0; k < pool.threads; k++) {
    int c = (self + k) % pool.threads;
    if (atomic_exchange_explicit(&pool.claimed[c], 1, memory_order_acq_rel))
      continue;
    int64_t lo, hi;
    chunk(pool.n, pool.align, c, pool.threads, &lo, &hi);
    if (lo < hi)
      pool.fn(pool.ctx, lo, hi, c);
    atomic_fetch_add_explicit(&pool.done, 1, memory_order_release);
  }
}

static void *worker(void *arg) {
  int self = (int)(intptr_t)arg;
  uint32_t seen = 0;
  for (;;) {
    uint32_t g;
    int spins = 0;
    while ((g = atomic_load_explicit(&pool.generation, memory_order_acquire)) == seen) {
      if (++spins < SPIN) {
        __builtin_ia32_pause();
        continue;
      }
      atomic_fetch_add(&pool.sleeping, 1);
      if (atomic_load(&pool.generation) == seen)
        futex(&pool.generation, FUTEX_WAIT, seen);
      atomic_fetch_sub(&pool.sleeping, 1);
      spins = 0;
    }
    seen = g;
    run_chunks(self);
  }
  return NULL;
}

// Whether OpenBLAS has its small-matrix kernels on this CPU (see the matrix products below).
static bool small_kernels(void) {
  static int known = -1;
  if (known < 0) {
    const char *core = openblas_get_corename();
    known = core && (!strcasecmp(core, "skylakex") || !strcasecmp(core, "cooperlake") ||
                     !strcasecmp(core, "sapphirerapids"));
  }
  return known;
}

void krt_threads_start(int threads) {
  openblas_set_num_threads(1);
  small_kernels();  // (decided once, before any worker runs a product)
  if (threads > KRT_MAX_THREADS)
    threads = KRT_MAX_THREADS;
  if (threads <= pool.threads)
    return;
  for (int t = pool.threads; t < threads; t++) {
    pthread_t id;
    if (pthread_create(&id, NULL, worker, (void *)(intptr_t)t) != 0)
      krt_fail("cannot start thread %d of %d", t + 1, threads);
    pthread_detach(id);
  }
  pool.threads = threads;
}

int krt_threads(void) { return pool.threads; }

void krt_parallel(KrtTask *fn, void *ctx, int64_t n, int64_t align, int64_t min_chunk) {
  int T = pool.threads;
  if (align < 1)
    align = 1;
  if (T == 1 || n < 2 * min_chunk || n < 2 * align) {
    fn(ctx, 0, n, 0);
    return;
  }
  pool.fn = fn, pool.ctx = ctx, pool.n = n, pool.align = align;
  atomic_store_explicit(&pool.done, 0, memory_order_relaxed);
  for (int c = 0; c < T; c++)  // after the fields above
    atomic_store_explicit(&pool.claimed[c], 0, memory_order_release);
  atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release);
  if (atomic_load(&pool.sleeping))
    futex(&pool.generation, FUTEX_WAKE, KRT_MAX_THREADS);
  run_chunks(0);
  // a chunk still running belongs to a worker; yield now and then in case it waits for this
  // very core (a machine busy with other work)
  for (int spins = 0; atomic_load_explicit(&pool.done, memory_order_acquire) < T; spins++)
    if (spins % 1024 == 1023)
      sched_yield();
    else
      __builtin_ia32_pause();
}

// ---------------------------------------------------------------------------------------------
// Matrix products: C (m × n) = op(A) · op(B), row-major, split so that each chunk is an
// independent single-threaded sgemm (no sums across chunks).
//
// OpenBLAS multiplies a small product (m·n·k up to about 10⁶) with kernels that do not pack
// the operands first, and at the shapes of a training step they are 10-40 % faster than its
// packed path (bench of single-threaded calls on this machine, GFLOP/s: a batch of 32 against
// a 784 × 256 layer 81 → 112; the CNN's 64 × 288 × 196 convolution 97 → 112, its input
// gradient 99 → 113). So a product is done in pieces of columns of C narrow enough for them,
// where a piece can still be 8 columns wide or more; the threads share out the pieces. The
// pieces depend on the shapes alone, so every thread count computes the same bits. A product
// too large for that is split over the longer side of C, one part per thread. Only the
// AVX-512 cores of OpenBLAS 0.3.21 have those kernels (SkylakeX, Cooperlake, SapphireRapids,
// as openblas_get_corename says); with the others (Haswell, Zen) narrow pieces run the packed
// path and are slower than one call (87 → 80 GFLOP/s for the batch of 32), so no pieces there.

enum { SMALL_MNK = 1000000, SMALL_NT_AREA = 1200 };


typedef struct {
  bool ta, tb, rows;
  int m, n, k, lda, ldb, ldc;
  float alpha, beta;
  const float *a, *b;
  float *c;
  int64_t piece;  // rows or columns per piece
  bool pieces;    // pieces small enough for OpenBLAS's small-matrix kernels
} Gemm;

// The piece width of an m × n × k product cut along n: a multiple of 8, or n. nt: the product
// is A·Bᵀ, whose small-matrix kernel OpenBLAS permits only for pieces of C up to SMALL_NT_AREA
// floats and k ≥ 32 (a piece of 16 × 128 falls back to the packed path: 66 against 104
// GFLOP/s for 8 × 128, the batch of 128 against dense2).
static int64_t piece_width(int m, int n, int k, bool nt) {
  if (!small_kernels() || (nt && k < 32))
    return n;
  int64_t most = SMALL_MNK / ((int64_t)(m ? m : 1) * (k ? k : 1)) / 8 * 8;
  if (nt && most > SMALL_NT_AREA / (m ? m : 1) / 8 * 8)
    most = SMALL_NT_AREA / (m ? m : 1) / 8 * 8;
  if (most < 8 || most >= n)
    return n;
  // as few pieces as that allows, of equal widths (128 as 64 + 64, not 120 + 8)
  int64_t pieces = (n + most - 1) / most;
  return ((n + pieces - 1) / pieces + 7) / 8 * 8;
}

// Columns lo..hi of C (rows lo..hi when g->rows), piece by piece.
static void gemm_part(const Gemm *g, int64_t lo, int64_t hi) {
  enum CBLAS_TRANSPOSE ta = g->ta ? CblasTrans : CblasNoTrans, tb = g->tb ? CblasTrans : CblasNoTrans;
  if (g->rows) {  // rows of C: rows of op(A)
    for (int64_t r = lo; r < hi; r += g->piece) {
      int len = (int)(hi - r < g->piece ? hi - r : g->piece);
      cblas_sgemm(CblasRowMajor, ta, tb, len, g->n, g->k, g->alpha,
                  g->a + (g->ta ? r : r * g->lda), g->lda, g->b, g->ldb, g->beta,
                  g->c + r * g->ldc, g->ldc);
    }
    return;
  }
  for (int64_t q = lo; q < hi; q += g->piece) {  // columns of C: columns of op(B)
    int len = (int)(hi - q < g->piece ? hi - q : g->piece);
    cblas_sgemm(CblasRowMajor, ta, tb, g->m, len, g->k, g->alpha, g->a, g->lda,
                g->b + (g->tb ? q * g->ldb : q), g->ldb, g->beta, g->c + q, g->ldc);
  }
}

// The side cut (g->rows), its length and the pieces (g->piece along it, 0: one part per thread).
static int64_t gemm_side(const Gemm *g) { return g->rows ? g->m : g->n; }

static void gemm_chunk(void *ctx, int64_t lo, int64_t hi, int t) {
  const Gemm *g = ctx;
  int64_t len = gemm_side(g);
  if (g->pieces)  // chunks of pieces
    gemm_part(g, lo * g->piece, hi * g->piece < len ? hi * g->piece : len);
  else
    gemm_part(g, lo, hi);
}

// Rows of C (contiguous, so the elementwise loops after the product find their part of it
// where it was written) when a piece of at least 8 rows is small enough; else columns; else
// no pieces, and the longer side cut once per thread. But columns first for A·Bᵀ (a layer's
// forward pass, X·Wᵀ): each thread then reads only the rows of W that its part of the
// optimizer's update writes (see split_k below).
static Gemm gemm_of(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                    const float *b, int ldb, float beta, float *c, int ldc) {
  Gemm g = {ta != 0, tb != 0, false, m, n, k, lda, ldb, ldc, alpha, beta, a, b, c, n, false};
  bool nt = !ta && tb;
  int64_t h = piece_width(n, m, k, nt), w = piece_width(m, n, k, nt);
  if (nt && w < n)
    g.pieces = true, g.piece = w;
  else if (h < m)
    g.rows = g.pieces = true, g.piece = h;
  else if (w < n)
    g.pieces = true, g.piece = w;
  else
    g.rows = m >= n, g.piece = g.rows ? m : n;
  return g;
}

// A·B where B (k × n) is larger than A (a layer's input gradient dY·W, W the weight) is done
// in two halves of k: C = A[:, :k/2]·B[:k/2, :] on one thread, A[:, k/2:]·B[k/2:, :] into a
// buffer on the other, then added, row by row. Each thread so reads only the half of W's rows
// that its part of the optimizer's update (a loop over W cut in equal chunks) writes next. When
// both threads read all of W, W's lines sit in both cores' caches, and every line the update
// writes must first be taken back from the other core: dense2's update at a batch of 32 on two
// threads took 15-24 µs per step against 9 µs on one; with the halves, 7 µs, for 2 µs more in
// the product and its sum. The halves depend on the shapes alone (every thread count computes
// the same bits) and need the small-matrix kernels (pieces) to pay. Not in krt_sgemm_serial,
// which the convolutions call from several threads at once.
typedef struct {
  Gemm half[2];
  float *c, *rest;
  int n, ldc;
} SplitK;

static bool split_k(int ta, int tb, int m, int n, int k) {
  return !ta && !tb && k >= 64 && n > m && small_kernels();
}

static SplitK split_k_of(int m, int n, int k, float alpha, const float *a, int lda,
                         const float *b, int ldb, float beta, float *c, int ldc) {
  static float *rest;  // the second half's product (grown, never freed)
  static int64_t floats;
  if (floats < (int64_t)m * n) {
    free(rest);
    rest = krt_xmalloc((size_t)m * n * sizeof(float));
    floats = (int64_t)m * n;
  }
  int k0 = k / 2 / 8 * 8;
  return (SplitK){{gemm_of(0, 0, m, n, k0, alpha, a, lda, b, ldb, beta, c, ldc),
                   gemm_of(0, 0, m, n, k - k0, alpha, a + k0, lda, b + (int64_t)k0 * ldb, ldb,
                           0, rest, n)},
                  c, rest, n, ldc};
}

static void split_k_half(void *ctx, int64_t lo, int64_t hi, int t) {
  SplitK *s = ctx;
  for (int64_t h = lo; h < hi; h++)
    gemm_part(&s->half[h], 0, gemm_side(&s->half[h]));
}

static void split_k_add(void *ctx, int64_t lo, int64_t hi, int t) {
  SplitK *s = ctx;
  for (int64_t r = lo; r < hi; r++) {
    float *c = s->c + r * s->ldc;
    const float *x = s->rest + r * s->n;
    for (int q = 0; q < s->n; q++)
      c[q] += x[q];
  }
}

void krt_sgemm(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
               const float *b, int ldb, float beta, float *c, int ldc) {
  if (split_k(ta, tb, m, n, k)) {  // (a product too small to share: both halves here)
    SplitK s = split_k_of(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    krt_parallel(split_k_half, &s, 2, 1, (int64_t)m * n * k < 200000 ? 2 : 1);
    krt_parallel(split_k_add, &s, m, 1, n >= 2048 ? 1 : 2048 / n);
    return;
  }
  Gemm g = gemm_of(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  // below about 2·10⁵ multiply-adds a second thread costs more than it saves
  int64_t work = (int64_t)m * n * k, serial = (int64_t)1 << 40, len = gemm_side(&g);
  if (g.pieces)
    krt_parallel(gemm_chunk, &g, (len + g.piece - 1) / g.piece, 1, work < 200000 ? serial : 1);
  else
    krt_parallel(gemm_chunk, &g, len, 16, work < 200000 ? serial : 16);
}

void krt_sgemm_serial(int ta, int tb, int m, int n, int k, float alpha, const float *a,
                      int lda, const float *b, int ldb, float beta, float *c, int ldc) {
  Gemm g = gemm_of(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  gemm_part(&g, 0, gemm_side(&g));
}

// ---------------------------------------------------------------------------------------------
// Per-chunk scratch.

static struct {
  float *p;
  int64_t floats;
} scratch[KRT_MAX_THREADS];

float *krt_scratch(int t, int64_t floats) {
  if (scratch[t].floats < floats) {
    free(scratch[t].p);
    scratch[t].p = krt_xmalloc((size_t)floats * sizeof(float));
    scratch[t].floats = floats;
  }
  return scratch[t].p;
}
