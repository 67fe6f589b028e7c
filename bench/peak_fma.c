// bench/peak_fma.c — the machine's FP32 FMA peak, measured: GFLOP/s on 1 core and on all cores.
//
//   cc -O2 -mavx2 -mfma -pthread -o build/bench/peak_fma bench/peak_fma.c
//   build/bench/peak_fma            # human-readable lines
//   build/bench/peak_fma --json     # {"ghz_1": …, "gflops_1": …, "gflops_all": …, "threads": …}
//
// Each thread runs 12 independent chains of `vfmadd231ps ymm` (8 lanes × 2 FLOP each): with an
// FMA latency of 4 cycles and 2 FMA pipes, at least 8 chains in flight are needed to keep both
// pipes busy, so 12 leaves slack. The chains are kept in registers (the asm barrier stops the
// compiler from folding or vectorising them away) and their sum is printed so the work is live.
// The clock is estimated separately with a chain of dependent integer adds (1 add per cycle).
// Each measurement is the best of 10 repetitions of about 0.07 s, which is what a peak is.

#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { CHAINS = 12, LANES = 8 };

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// iters × CHAINS FMAs of 8 lanes; returns a value that depends on every chain. The chains are
// 12 named variables, not an array, so that they live in registers (an array would be stored
// back to the stack every iteration).
static float fma_chains(int64_t iters) {
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  __m256 c0 = _mm256_set1_ps(0), c1 = _mm256_set1_ps(1), c2 = _mm256_set1_ps(2),
         c3 = _mm256_set1_ps(3), c4 = _mm256_set1_ps(4), c5 = _mm256_set1_ps(5),
         c6 = _mm256_set1_ps(6), c7 = _mm256_set1_ps(7), c8 = _mm256_set1_ps(8),
         c9 = _mm256_set1_ps(9), c10 = _mm256_set1_ps(10), c11 = _mm256_set1_ps(11);
  for (int64_t i = 0; i < iters; i++) {
    c0 = _mm256_fmadd_ps(c0, a, b), c1 = _mm256_fmadd_ps(c1, a, b);
    c2 = _mm256_fmadd_ps(c2, a, b), c3 = _mm256_fmadd_ps(c3, a, b);
    c4 = _mm256_fmadd_ps(c4, a, b), c5 = _mm256_fmadd_ps(c5, a, b);
    c6 = _mm256_fmadd_ps(c6, a, b), c7 = _mm256_fmadd_ps(c7, a, b);
    c8 = _mm256_fmadd_ps(c8, a, b), c9 = _mm256_fmadd_ps(c9, a, b);
    c10 = _mm256_fmadd_ps(c10, a, b), c11 = _mm256_fmadd_ps(c11, a, b);
    // an empty asm that "changes" the chains: the compiler can neither fold nor reorder them
    __asm__ volatile("" : "+x"(c0), "+x"(c1), "+x"(c2), "+x"(c3), "+x"(c4), "+x"(c5));
    __asm__ volatile("" : "+x"(c6), "+x"(c7), "+x"(c8), "+x"(c9), "+x"(c10), "+x"(c11));
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)),
                           _mm256_add_ps(_mm256_add_ps(c4, c5), _mm256_add_ps(c6, c7)));
  s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(c8, c9), _mm256_add_ps(c10, c11)));
  float out[LANES];
  _mm256_storeu_ps(out, s);
  return out[0] + out[7];
}

// A chain of dependent integer adds: one per cycle, so adds / second ≈ the clock.
static double clock_ghz(void) {
  const int64_t n = 200000000;
  double best = 0;
  for (int rep = 0; rep < 3; rep++) {
    uint64_t x = 0;
    double t0 = now();
    for (int64_t i = 0; i < n; i += 8)  // unrolled: the loop's own branch is not the limit
      __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                       "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0"
                       : "+r"(x));
    double t = now() - t0;
    if (x != (uint64_t)n)
      abort();
    if ((double)n / t / 1e9 > best)
      best = (double)n / t / 1e9;
  }
  return best;
}

typedef struct {
  int64_t iters;
  pthread_barrier_t *start;
  double seconds;
  float sink;
} Job;

static void *worker(void *arg) {
  Job *j = arg;
  pthread_barrier_wait(j->start);
  double t0 = now();
  j->sink = fma_chains(j->iters);
  j->seconds = now() - t0;
  return NULL;
}

// GFLOP/s of `threads` threads each running iters iterations; the slowest thread's time counts.
static double run_threads(int threads, int64_t iters, float *sink) {
  pthread_t tid[256];
  Job job[256];
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, (unsigned)threads);
  for (int t = 0; t < threads; t++) {
    job[t] = (Job){.iters = iters, .start = &start};
    if (pthread_create(&tid[t], NULL, worker, &job[t]) != 0) {
      perror("pthread_create");
      exit(1);
    }
  }
  double slowest = 0;
  for (int t = 0; t < threads; t++) {
    pthread_join(tid[t], NULL);
    slowest = job[t].seconds > slowest ? job[t].seconds : slowest;
    *sink += job[t].sink;
  }
  pthread_barrier_destroy(&start);
  double flops = (double)threads * (double)iters * CHAINS * LANES * 2;
  return flops / slowest / 1e9;
}

static double best_of(int threads, int64_t iters, int reps, float *sink) {
  double best = 0;
  for (int r = 0; r < reps; r++) {
    double g = run_threads(threads, iters, sink);
    best = g > best ? g : best;
  }
  return best;
}

int main(int argc, char **argv) {
  int json = argc > 1 && !strcmp(argv[1], "--json");
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  int threads = ncpu < 1 ? 1 : ncpu > 256 ? 256 : (int)ncpu;
  float sink = 0;
  // about 0.07 s per repetition at ~3.5 GHz: 40M iterations × 12 FMAs / 2 per cycle = 240M
  // cycles; the best of 10 repetitions, so that a repetition that ran alone on its cores counts
  const int64_t iters = 40000000;
  best_of(1, iters / 8, 1, &sink);  // warm up the clock
  double ghz = clock_ghz();
  double g1 = best_of(1, iters, 10, &sink);
  double gall = best_of(threads, iters, 10, &sink);
  if (json) {
    printf("{\"ghz_1\": %.3f, \"gflops_1\": %.1f, \"gflops_all\": %.1f, \"threads\": %d, "
           "\"flop_per_cycle_1\": %.2f, \"sink\": %g}\n",
           ghz, g1, gall, threads, g1 / ghz, (double)sink);
  } else {
    printf("clock (dependent integer adds, 1 core): %.2f GHz\n", ghz);
    printf("FP32 FMA peak, 1 core:  %.1f GFLOP/s (%.1f FLOP/cycle)\n", g1, g1 / ghz);
    printf("FP32 FMA peak, %d cores: %.1f GFLOP/s\n", threads, gall);
    printf("(checksum %g)\n", (double)sink);
  }
  return 0;
}
