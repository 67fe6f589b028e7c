// keelrt.h — Keel's runtime: what generated training code and the `keel` driver call.
//
// The only header of runtime/. Generated code (JIT or a built trainer) calls the functions
// marked [generated]; the driver (compiler/main.c, and later a built trainer's main) calls the
// rest. All symbols start with krt_.
//
// A run, in order:
//
//   KrtConfig cfg = {...};                 // data sources, batch, epochs, seed, tensors, ...
//   KrtRun *r = krt_run_new(&cfg);         // loads and checks data, allocates tensors
//   krt_init_tensors(r);                   // PyTorch-style init from the seeded RNG
//   if (init_path) krt_load_init(r, init_path);
//   keel_main(r, bufs);                    // generated: epochs, batches, steps, evaluation
//   status = krt_finish(r);                // final.safetensors, metrics.csv, report.json
//   krt_run_free(r);
//
// Errors in data or checkpoint files name the file and what is wrong, leave nothing half
// written, and end the process with exit status 1 (krt_fail).

#ifndef KEELRT_H
#define KEELRT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

// ---------------------------------------------------------------------------------------------
// util.c

// Prints "keel: error: <message>" to stderr and exits 1.
_Noreturn void krt_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void *krt_xmalloc(size_t size);  // zeroed; fails with a message when memory runs out
double krt_now(void);            // monotonic seconds
// Writes path atomically: write(f, ctx) fills a temporary file <path>.tmp.<pid> in the same
// folder, which is then flushed, fsynced and renamed over path. On any failure the temporary
// file is removed and krt_fail names path ("<path>: cannot write: <reason>").
void krt_write_atomic(const char *path, void (*write)(FILE *f, void *ctx), void *ctx);

// ---------------------------------------------------------------------------------------------
// rng.c — a counter-based generator: every random number is a pure function of
// (key, counter), so the same seed gives the same numbers in any order, on any thread,
// in the JIT and in a built trainer.

// A 64-bit mix of key and counter (the splitmix64 finalizer applied to key + counter·φ).
uint64_t krt_hash(uint64_t key, uint64_t counter);
// Uniform in [0, 1) with 24 random bits: (krt_hash(key, counter) >> 40) * 2^-24.
float krt_uniform(uint64_t key, uint64_t counter);
// Standard normal by Box–Muller from counters 2c and 2c+1.
float krt_normal(uint64_t key, uint64_t counter);
// [generated] out[i] = uniform for i < count, keyed by (seed, stream, step):
// key = krt_hash(krt_hash(seed, stream), step), counter = i.
void krt_rand_fill(float *out, int64_t count, uint64_t seed, uint64_t stream, uint64_t step);
// A uniformly random permutation of 0..n-1 (Fisher–Yates) keyed by key.
void krt_permutation(int64_t *perm, int64_t n, uint64_t key);

// ---------------------------------------------------------------------------------------------
// data.c — data sets in memory

typedef struct {
  float *x;          // n × features, row-major
  float *y;          // n × ydim (class index stored as a float when ydim == 1 and classes)
  int64_t n;         // samples
  int64_t features;  // floats per sample in x
  int64_t ydim;      // floats per sample in y
  int64_t classes;   // 1 + the largest label (classification), 0 otherwise
} KrtSet;

// IDX files (optionally gzip-compressed; zlib reads both): images of type u8 with any number
// of dimensions after the count, labels u8 of one dimension. x gets the pixel values as
// floats (0..255, unscaled); y the labels. Checks magic numbers, sizes and that the counts
// agree; any problem is krt_fail("<path>: <what is wrong>").
KrtSet krt_load_idx(const char *images, const char *labels);
// CSV with a header row and numeric columns. The label column is named by label (NULL: the
// last column); the other columns, in order, are x. ydim is 1. Classes are counted when every
// label is a non-negative integer. Errors name the file, line and column.
KrtSet krt_load_csv(const char *path, const char *label);
void krt_set_scale(KrtSet *s, float scale);          // x *= scale
// Moves a fraction frac of s into *val, chosen by a seeded shuffle (never "the last part of
// the file"); the rest stays in s in its original order.
void krt_set_holdout(KrtSet *s, KrtSet *val, double frac, uint64_t seed);
void krt_set_free(KrtSet *s);
// Finds a data file: as given (relative to the directory of script), then in each folder of
// $KEEL_DATA_PATH, then under /usr/share/datasets. Returns a malloc'd path or NULL.
char *krt_find_data(const char *name, const char *script_dir);

// ---------------------------------------------------------------------------------------------
// safetensors.c — checkpoints in the safetensors format (8-byte little-endian header length,
// a JSON header {"name": {"dtype": "F32", "shape": [...], "data_offsets": [b, e]}, ...,
// "__metadata__": {...}}, then the raw little-endian data). Written atomically: a temporary
// file in the same folder, fsync, rename.

typedef struct {
  const char *name;
  int rank;
  int64_t dim[4];
  float *data;
} KrtNamedTensor;

// Writes tensors (in the order given) and string metadata pairs (meta[2i] = key,
// meta[2i+1] = value; nmeta pairs). Returns 0, or fails with krt_fail naming the path.
void krt_st_write(const char *path, const KrtNamedTensor *t, int count, const char **meta,
                  int nmeta);
// Reads path and fills every tensor in t by name. A missing file, a malformed header, a
// missing name, a dtype other than F32 or a shape mismatch fails naming the file and tensor
// ("x.safetensors: tensor dense1.weight has shape [10, 784], the model expects [256, 784]").
void krt_st_read(const char *path, KrtNamedTensor *t, int count);

// ---------------------------------------------------------------------------------------------
// run.c — one training run: data, batches, tensors, metrics, progress, report

enum { KRT_PARAM, KRT_BUFFER, KRT_STATE };    // tensor kinds, as the compiler's TensorKind
enum { KRT_CONST, KRT_UNIFORM, KRT_NORMAL };  // init kinds, as the compiler's InitKind
enum { KRT_VAL = 1, KRT_TEST = 2 };           // evaluation sets

typedef struct {
  const char *name;  // "dense1.weight"
  int kind;          // KRT_PARAM, KRT_BUFFER, KRT_STATE
  int rank;
  int64_t dim[4];
  int init;          // KRT_CONST (value a), KRT_UNIFORM [a, b), KRT_NORMAL (mean a, std b)
  double a, b;
} KrtTensorDesc;

typedef struct {
  const char *script;     // path of the .nn script; data paths resolve relative to it
  const char *out_dir;    // where final.safetensors, metrics.csv and report.json go
  // data: kind 0 = none, 1 = IDX (path, path2), 2 = CSV (path, label)
  int train_kind, val_kind, test_kind;
  const char *train_path, *train_path2, *train_label;
  const char *val_path, *val_path2, *val_label;
  const char *test_path, *test_path2, *test_label;
  double scale;           // 0 = no scaling
  double holdout;         // 0 = none
  // what the compiled network expects
  int64_t features;       // floats per sample of x
  int64_t ydim;           // 1 for class indices, k for regression targets
  int64_t classes;        // output width for classification (labels must be < classes), 0 = regression
  // the schedule of the run
  int64_t batch, epochs, steps;  // steps 0 = no limit
  uint64_t seed;
  bool shuffle;
  int threads;
  double compile_seconds;
  // persistent tensors, in the order the generated code indexes them
  const KrtTensorDesc *tensors;
  int ntensors;
  int64_t parameters;     // trained parameters, for the report
  // batching
  bool drop_last;         // drop the last partial batch of each epoch (default: keep it)
  int64_t min_batch;      // a last partial batch smaller than this is dropped (batchnorm: 2);
                          // a training set smaller than one batch is then an error
  // early stopping (early_patience 0 = off), as Keras's EarlyStopping with
  // restore_best_weights: stop when the monitored metric has not improved by more than
  // early_min_delta for early_patience epochs; krt_train_end restores the best epoch's
  // tensors. Without a val set, train_loss is monitored.
  int early_patience;
  double early_min_delta;
  int early_monitor;      // KRT_MONITOR_VAL_LOSS or KRT_MONITOR_VAL_ACCURACY
  // reduce the rate on a plateau (plateau_patience 0 = off), as torch's ReduceLROnPlateau
  // (mode min on val_loss, or train_loss without a val set; relative threshold 1e-4):
  // multiply the rate by plateau_factor (in (0, 1)) once more than plateau_patience epochs
  // in a row failed to improve, then count again
  int plateau_patience;
  double plateau_factor;
  // the divergence guard: a step whose loss or gradient is not finite, or (once 20 good
  // steps were seen) whose loss is more than spike_factor times the median of the last 50
  // good losses, is discarded
  double spike_factor;    // 0 = no spike check
  int guard_limit;        // events in a row that stop training (exit status 3); 0 = 3
  // where to look for the first non-finite value when the guard fires, in order: the
  // forward outputs of each layer, then the gradients, as the backward pass computes them
  const struct KrtProbe *probes;
  int nprobes;
} KrtConfig;

enum { KRT_MONITOR_VAL_LOSS, KRT_MONITOR_VAL_ACCURACY };

// A buffer the guard inspects: count floats (times the batch size when per_row).
typedef struct KrtProbe {
  const char *what;       // "the output of dense2", "the gradient of dense1.weight"
  float *data;
  int64_t count;
  bool per_row;
} KrtProbe;

typedef struct KrtRun KrtRun;

KrtRun *krt_run_new(const KrtConfig *cfg);  // loads data; fails on a bad file
void krt_run_free(KrtRun *r);
// The storage of persistent tensor i (one allocation per kind holds them all).
float *krt_tensor(KrtRun *r, int i);
void krt_init_tensors(KrtRun *r);            // init from seed: key krt_hash(seed, 1000 + i)
void krt_load_init(KrtRun *r, const char *path);  // --init: every PARAM and BUFFER by name
// Ends the run: writes final.safetensors (params and buffers), metrics.csv, report.json
// (atomically), and prints the report and a summary in plain words. Returns the process
// exit status: 0, or 3 when the guard stopped training.
int krt_finish(KrtRun *r);

// [generated] The training loop calls these, in this order:
//   epochs = krt_epochs(r); total = krt_total_steps(r)
//   for epoch: nb = krt_epoch_begin(r, epoch)
//     for b < nb: n = krt_train_batch(r, b, x, y); step = krt_step(r)
//                 lr = schedule(...) * krt_lr_scale(r)
//                 train_step(...)  // commits only if krt_guard(r, loss, grad_sq, n)
//                 if (krt_train_step_end(r, loss, out, y, n, lr)) break
//     for b < krt_eval_begin(r, KRT_VAL): n = krt_eval_batch(r, KRT_VAL, b, x, y);
//                 eval_step(...); krt_eval_step_end(r, KRT_VAL, loss, out, y, n)
//     if (krt_epoch_end(r)) break
//   krt_train_end(r)
//   the same evaluation loop for KRT_TEST
int64_t krt_epochs(KrtRun *r);
int64_t krt_total_steps(KrtRun *r);   // batches per epoch × epochs, or steps when it is lower
int64_t krt_step(KrtRun *r);
int64_t krt_batches_per_epoch(KrtRun *r);  // training batches (steps) in one epoch          // global step from 0
int64_t krt_epoch_begin(KrtRun *r, int64_t epoch);  // shuffles (unless no shuffle); batches
                                                    // (full ones only with drop_last)
int64_t krt_train_batch(KrtRun *r, int64_t b, float *x, float *y);  // copies batch b; rows
// Accumulates loss and accuracy (argmax of out (n × classes) against y) and advances the step;
// a step the guard discarded advances the step only (and its guard line is printed here).
// Returns 1 when the step limit is reached or the guard stopped training.
int krt_train_step_end(KrtRun *r, float loss, const float *out, const float *y, int64_t n,
                       float lr);
int64_t krt_eval_begin(KrtRun *r, int which);        // batches of that set, 0 if it has none
int64_t krt_eval_batch(KrtRun *r, int which, int64_t b, float *x, float *y);
// (For the test set, or the val set when there is no test set, it also counts the
// confusion matrix of the report.)
void krt_eval_step_end(KrtRun *r, int which, float loss, const float *out, const float *y,
                       int64_t n);
// Closes the epoch: a metrics row, the progress line, the best epoch, early stopping and
// on_plateau. Returns 1 when training should stop (the epochs are done, the step limit was
// reached, early stopping fired or the guard stopped training).
int krt_epoch_end(KrtRun *r);

// [generated] The rate multiplier of the guard and on_plateau (1 until either acts); the
// schedule's rate is multiplied by it.
float krt_lr_scale(KrtRun *r);
// [generated] Called by the training step after the backward pass, before any weight,
// buffer or optimizer state is written: loss is the batch loss, grad_sq the sum of the
// squares of every gradient. Returns 1 to commit the step, 0 to discard it; on 0 the event
// is logged (step, epoch, the reason, the first probe holding a non-finite value), the rate
// multiplier is halved, and after guard_limit events in a row training stops
// (krt_train_step_end returns 1, krt_finish returns 3).
int krt_guard(KrtRun *r, float loss, float grad_sq, int64_t n);
// [generated] After the last epoch, before the test evaluation: when early stopping is on,
// restores the best weights (every tensor, as they were at the end of the best epoch),
// whatever the reason training ended, and writes them (params and buffers) to
// best.safetensors in out_dir. Does nothing when early stopping is off.
void krt_train_end(KrtRun *r);

// ---------------------------------------------------------------------------------------------
// conv.c — [generated] image kernels, NCHW. A convolution of x (n, c, h, w) with weights
// (o, c, kh, kw), stride s, padding p, dilation d gives (n, o, oh, ow) with
// oh = (h + 2p - d(kh - 1) - 1) / s + 1; col is scratch of c·kh·kw·oh·ow floats.

void krt_conv2d(const float *x, const float *wt, float *y, int64_t n, int64_t c, int64_t h,
                int64_t w, int64_t o, int64_t kh, int64_t kw, int64_t s, int64_t p, int64_t d,
                float *col);
void krt_conv2d_dx(const float *dy, const float *wt, float *dx, int64_t n, int64_t c,
                   int64_t h, int64_t w, int64_t o, int64_t kh, int64_t kw, int64_t s,
                   int64_t p, int64_t d, float *col);
void krt_conv2d_dw(const float *x, const float *dy, float *dw, int64_t n, int64_t c,
                   int64_t h, int64_t w, int64_t o, int64_t kh, int64_t kw, int64_t s,
                   int64_t p, int64_t d, float *col);
// Pooling over k × k windows of nc = n·c planes of h × w, stride s, padding p.
void krt_maxpool(const float *x, float *y, int64_t nc, int64_t h, int64_t w, int64_t k,
                 int64_t s, int64_t p);
void krt_maxpool_dx(const float *x, const float *dy, float *dx, int64_t nc, int64_t h,
                    int64_t w, int64_t k, int64_t s, int64_t p);
void krt_maxpool_gather(const float *x, const float *g, float *y, int64_t nc, int64_t h,
                        int64_t w, int64_t k, int64_t s, int64_t p);
void krt_avgpool(const float *x, float *y, int64_t nc, int64_t h, int64_t w, int64_t k,
                 int64_t s, int64_t p);
void krt_avgpool_dx(const float *dy, float *dx, int64_t nc, int64_t h, int64_t w, int64_t k,
                    int64_t s, int64_t p);

#endif
