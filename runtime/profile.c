// profile.c — `keel run --profile`: where the training step spends its time.
//
// With --profile the compiler brackets every kernel of the training step (one IR
// instruction, or a run of fused elementwise ones) with the CPU's cycle counter and calls
// krt_profile with the cycles it took. This file adds them up per kernel, with the
// floating-point operations each did (a fixed count plus a count per sample of the batch),
// and prints a table of each kernel's share of the step time, its calls and its GFLOP/s.
// The cycle counter is converted to seconds by timing it against the monotonic clock over
// the run. One run per process (keel and a trainer run one).

#include "keelrt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct {
  const KrtKernel *k;
  int n;
  uint64_t *cycles, *calls;
  double *flops;
  int64_t batch;          // the current batch's size, for per-sample flop counts
  double t0;              // clock and cycle counter at the start
  uint64_t c0;
} prof;

static uint64_t cycles_now(void) {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_ia32_rdtsc();
#else
  return (uint64_t)(krt_now() * 1e9);
#endif
}

void krt_profile_start(const KrtKernel *kernels, int n) {
  prof.k = kernels, prof.n = n;
  prof.cycles = krt_xmalloc(sizeof(uint64_t) * (size_t)(n + 1));
  prof.calls = krt_xmalloc(sizeof(uint64_t) * (size_t)(n + 1));
  prof.flops = krt_xmalloc(sizeof(double) * (size_t)(n + 1));
  prof.t0 = krt_now(), prof.c0 = cycles_now();
}

void krt_profile_batch(int64_t n) { prof.batch = n; }

void krt_profile(KrtRun *r, int32_t id, uint64_t cycles) {
  (void)r;
  if (id < 0 || id >= prof.n)
    return;
  prof.cycles[id] += cycles;
  prof.calls[id]++;
  prof.flops[id] += prof.k[id].flops + prof.k[id].flops_per_row * (double)prof.batch;
}

typedef struct {
  FILE *f;
  int *order;
  double hz, total;
} Table;

static void write_csv(FILE *f, void *ctx) {
  Table *t = ctx;
  fprintf(f, "kernel,calls,seconds,share,gflops\n");
  for (int j = 0; j < prof.n; j++) {
    int i = t->order[j];
    double s = (double)prof.cycles[i] / t->hz;
    fprintf(f, "\"%s\",%llu,%.6g,%.6g,%.6g\n", prof.k[i].name, (unsigned long long)prof.calls[i],
            s, prof.cycles[i] / (t->total > 0 ? t->total : 1), s > 0 ? prof.flops[i] / s / 1e9 : 0);
  }
}

static int by_cycles(const void *a, const void *b) {
  uint64_t x = prof.cycles[*(const int *)a], y = prof.cycles[*(const int *)b];
  return x < y ? 1 : x > y ? -1 : *(const int *)a - *(const int *)b;
}

void krt_profile_report(const char *out_dir) {
  if (!prof.n)
    return;
  double seconds = krt_now() - prof.t0;
  double hz = seconds > 0 ? (double)(cycles_now() - prof.c0) / seconds : 1e9;
  Table t = {.order = krt_xmalloc(sizeof(int) * (size_t)prof.n), .hz = hz};
  for (int i = 0; i < prof.n; i++)
    t.order[i] = i, t.total += (double)prof.cycles[i];
  qsort(t.order, (size_t)prof.n, sizeof(int), by_cycles);
  printf("\nprofile of the training step (%.2f s in %d kernels; the rest of the run is data,\n"
         "evaluation and the runtime):\n", t.total / hz, prof.n);
  printf("  %6s %9s %9s %8s  %s\n", "share", "seconds", "calls", "GFLOP/s", "kernel");
  double shown = 0;
  for (int j = 0; j < prof.n; j++) {
    int i = t.order[j];
    double s = (double)prof.cycles[i] / hz, share = prof.cycles[i] / (t.total > 0 ? t.total : 1);
    if (j >= 25 && share < 0.005)
      break;
    shown += share;
    printf("  %5.1f%% %9.3f %9llu %8.2f  %s\n", 100 * share, s,
           (unsigned long long)prof.calls[i], s > 0 ? prof.flops[i] / s / 1e9 : 0, prof.k[i].name);
  }
  if (shown < 0.9995)
    printf("  %5.1f%%  (the other kernels)\n", 100 * (1 - shown));
  char *path = krt_xmalloc(strlen(out_dir) + 16);
  sprintf(path, "%s/profile.csv", out_dir);
  krt_write_atomic(path, write_csv, &t);
  printf("wrote %s\n", path);
  free(path);
  free(t.order);
}
