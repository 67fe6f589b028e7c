// rng.c — Keel's random numbers: a counter-based generator.
//
// Key idea: there is no generator state. Every number is a pure function of a 64-bit key and
// a counter (the splitmix64 finalizer applied to key + (counter + 1)·φ), so initialization,
// dropout masks and shuffles give the same numbers for the same seed in any order, on any
// thread, in the JIT and in a built trainer. Streams are separated by hashing the seed with a
// stream number into a new key (krt_hash(seed, 1000 + i) for tensor i, and so on).

#include "keelrt.h"

#include <math.h>

// The mix (keelrt.h), inlined into the loops below.
#define mix krt_mix

uint64_t krt_hash(uint64_t key, uint64_t counter) { return mix(key, counter); }

float krt_uniform(uint64_t key, uint64_t counter) {
  // The top 24 bits: every value k·2^-24 is exactly a float, and 1 is never reached.
  return (float)(mix(key, counter) >> 40) * (1.0f / 16777216.0f);
}

float krt_normal(uint64_t key, uint64_t counter) {
  // Box–Muller. u1 is in (0, 1] so the logarithm is finite; double precision keeps the tails.
  double u1 = 1.0 - (double)krt_uniform(key, 2 * counter);
  double u2 = (double)krt_uniform(key, 2 * counter + 1);
  return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

// A dropout mask's numbers, on the thread pool: number i depends on i alone. The 64-bit
// multiplies vectorize only with AVX-512 (vpmullq), so the loop is also compiled for
// x86-64-v4 and picked at load time where the CPU has it (the same integers either way), and
// vectorized although the runtime is built with -O2 (3-4x faster on Zen 4).
typedef struct {
  float *out;
  uint64_t key;
} Fill;

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("default", "arch=x86-64-v4"), optimize("tree-vectorize")))
#endif
static void fill_chunk(void *ctx, int64_t lo, int64_t hi, int t) {
  const Fill *f = ctx;
  float *out = f->out;
  uint64_t key = f->key;
  for (int64_t i = lo; i < hi; i++)
    out[i] = (float)(mix(key, (uint64_t)i) >> 40) * (1.0f / 16777216.0f);
}

uint64_t krt_rand_key(uint64_t seed, uint64_t stream, uint64_t step) {
  return krt_hash(krt_hash(seed, stream), step);
}

void krt_rand_fill(float *out, int64_t count, uint64_t seed, uint64_t stream, uint64_t step) {
  Fill f = {out, krt_rand_key(seed, stream, step)};
  krt_parallel(fill_chunk, &f, count, 16, 8192);
}

void krt_permutation(int64_t *perm, int64_t n, uint64_t key) {
  for (int64_t i = 0; i < n; i++)
    perm[i] = i;
  // Fisher–Yates from the end; the modulo bias is below 2^-40 for any n we can hold.
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = (int64_t)(krt_hash(key, (uint64_t)i) % (uint64_t)(i + 1));
    int64_t t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
}
