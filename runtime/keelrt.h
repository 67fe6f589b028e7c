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
//   (or instead of both: krt_resume(r, "runs/x/last.safetensors"))
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
void krt_json_string(FILE *f, const char *s);  // s as a JSON string (null for NULL)
// A shape as "[256, 784]" ("[]" for a scalar), written into buf; returns buf.
const char *krt_shape_text(char *buf, size_t size, int rank, const int64_t *dim);
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
// The same, inlined (loops over many values).
static inline uint64_t krt_mix(uint64_t key, uint64_t counter) {
  uint64_t z = key + (counter + 1) * 0x9E3779B97F4A7C15ull;  // φ·2^64, the golden-ratio step
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
// Uniform in [0, 1) with 24 random bits: (krt_hash(key, counter) >> 40) * 2^-24.
float krt_uniform(uint64_t key, uint64_t counter);
// Standard normal by Box–Muller from counters 2c and 2c+1.
float krt_normal(uint64_t key, uint64_t counter);
// [generated] The key of a random instruction's numbers at a step:
// krt_hash(krt_hash(seed, stream), step) (krt_rand_fill's, and the fused loops' of codegen.c).
uint64_t krt_rand_key(uint64_t seed, uint64_t stream, uint64_t step);
// [generated] out[i] = uniform for i < count, key krt_rand_key(seed, stream, step), counter i.
void krt_rand_fill(float *out, int64_t count, uint64_t seed, uint64_t stream, uint64_t step);
// A uniformly random permutation of 0..n-1 (Fisher–Yates) keyed by key.
void krt_permutation(int64_t *perm, int64_t n, uint64_t key);

// ---------------------------------------------------------------------------------------------
// data.c — data sets in memory

typedef struct {
  float *x;          // n × features, row-major (NULL when the samples are bytes, x8)
  uint8_t *x8;       // IDX images: the bytes as read; a sample's value is x8[i] · x8_scale
  float x8_scale;    //   (a quarter of the memory of floats; converted when batches are taken)
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
// For prediction: images without labels, and CSV features with or without the label
// column (a CSV of exactly `features` columns has none; with one more, the column named
// label, or the last, is left out). y is zero.
KrtSet krt_load_idx_images(const char *images);
KrtSet krt_load_csv_features(const char *path, const char *label, int64_t features);
void krt_set_scale(KrtSet *s, float scale);          // x *= scale
// Sample values as floats: element i of x, or the features of one row copied into out.
float krt_set_value(const KrtSet *s, int64_t i);
void krt_set_row(const KrtSet *s, int64_t row, float *out);
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

enum { KRT_ST_MAX_RANK = 8 };

typedef struct {          // one tensor of a file, as its header describes it
  const char *name, *dtype;
  int rank;
  int64_t dim[KRT_ST_MAX_RANK];
  const void *data;       // its bytes, as stored (little-endian)
  int64_t bytes;
} KrtStTensor;

typedef struct {          // a whole file, read and checked by krt_st_load
  int count;              // tensors, in the order of the header
  KrtStTensor *t;
  int nmeta;              // metadata pairs of strings: meta[2i] = key, meta[2i+1] = value
  const char **meta;
  void *file_, *header_;  // private: the file's bytes and its parsed header
} KrtStFile;

// Reads path whole and checks it as krt_st_read does (failing the same way); every tensor of
// any dtype is listed, the data stays in memory until krt_st_close. Metadata values that are
// not strings (outside the format) are left out.
KrtStFile krt_st_load(const char *path);
const KrtStTensor *krt_st_find(const KrtStFile *f, const char *name);  // NULL: none
const char *krt_st_meta(const KrtStFile *f, const char *key);          // NULL: none
void krt_st_close(KrtStFile *f);

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
  bool drop_last;         // drop the last partial batch of each epoch (default: keep it);
                          // a training set smaller than one batch is then an error
  int64_t min_batch;      // a last partial batch smaller than this is dropped (batchnorm: 2)
  // checkpoints: the program's hash, stored in last.safetensors (krt_resume refuses another
  // program's; NULL = "unknown"), and the command the resume hint of an interrupted run
  // shows, e.g. "keel run model.nn" ("--resume <out_dir>/last.safetensors" follows; NULL:
  // "keel run <script>")
  const char *program_hash;
  const char *resume_hint;
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
// exit status: 0, or 3 when the guard stopped training. An interrupted run (see below) writes
// no final.safetensors: last.safetensors (brought up to date), metrics.csv and report.json
// ("stopped": "interrupted") so far, then "interrupted at step N (epoch E); to continue:
// <resume_hint> --resume <out_dir>/last.safetensors" ("(after epoch E)" at an epoch
// boundary); it returns 130.
int krt_finish(KrtRun *r);

// [generated] The training loop calls these, in this order:
//   epochs = krt_epochs(r); total = krt_total_steps(r)
//   for (epoch = krt_first_epoch(r); epoch < epochs; epoch++): nb = krt_epoch_begin(r, epoch)
//     for (b = krt_first_batch(r); b < nb; b++): n = krt_train_batch(r, b, x, y); step = krt_step(r)
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
int64_t krt_step(KrtRun *r);                // global step from 0
int64_t krt_batches_per_epoch(KrtRun *r);  // training batches (steps) in one epoch
int64_t krt_epoch_begin(KrtRun *r, int64_t epoch);  // shuffles (unless no shuffle); batches
                                                    // (full ones only with drop_last)
int64_t krt_train_batch(KrtRun *r, int64_t b, float *x, float *y);  // copies batch b; rows
// Accumulates loss and accuracy (argmax of out (n × classes) against y) and advances the step;
// a step the guard discarded advances the step only (and its guard line is printed here).
// Returns 1 when the step limit is reached, the guard stopped training or the run was
// interrupted.
int krt_train_step_end(KrtRun *r, float loss, const float *out, const float *y, int64_t n,
                       float lr);
int64_t krt_eval_begin(KrtRun *r, int which);  // batches of that set; 0 if it has none, or
                                               // when the run was interrupted
int64_t krt_eval_batch(KrtRun *r, int which, int64_t b, float *x, float *y);
// (For the test set, or the val set when there is no test set, it also counts the
// confusion matrix of the report.)
void krt_eval_step_end(KrtRun *r, int which, float loss, const float *out, const float *y,
                       int64_t n);
// Closes the epoch: a metrics row, the progress line, the best epoch, early stopping and
// on_plateau, then writes last.safetensors. Returns 1 when training should stop (the epochs
// are done, the step limit was reached, early stopping fired, the guard stopped training, or
// the run was interrupted). Interrupted before the epoch's training or its val evaluation
// was done, it leaves the epoch open: no row, and last.safetensors holds the cursor.
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
// best.safetensors in out_dir. Does nothing when early stopping is off, or when the run was
// interrupted (last.safetensors continues it). Once it ran, signals no longer stop the run.
void krt_train_end(KrtRun *r);

// ---------------------------------------------------------------------------------------------
// run.c — exact checkpoints and resume
//
// last.safetensors is written atomically into out_dir at the end of every epoch, and when the
// run is interrupted. krt_run_new installs handlers for SIGINT and SIGTERM (not for one the
// process was started ignoring) that only raise a flag and restore the default action, so a
// second Ctrl-C ends the process at once; krt_run_free puts the old handlers back. The
// loop's calls see the flag after the step in progress: krt_train_step_end returns 1,
// krt_eval_begin 0, krt_epoch_end writes the checkpoint and returns 1, and krt_finish
// returns 130.
//
// The file holds every tensor by name — parameters, buffers, then optimizer state, and with
// early stopping, once there is a best epoch, that epoch's copy of each ("best/<name>") —
// and string metadata: "format": "pt", "producer": "keel", "keel_program": the program hash,
// "keel_state": a JSON object with the rest (doubles as %.17g; NaN and infinities as the
// strings "nan", "inf", "-inf"):
//   version (1), seed (a string), batch_size, data {samples, batches, hash (a fingerprint
//   of the training set)}, epochs, total_steps (as planned), threads, step, epoch (the
//   epoch to run next, from 0), batch (its training batches done: 0 at an epoch boundary),
//   epochs_done,
//   lr, epoch_sums {loss, samples, correct, seconds} (the open epoch's), train_seconds,
//   train_samples, lr_scale, best_epoch, best, wait, early_stopped, plateau_best,
//   plateau_bad, lr_reductions [{epoch, lr_scale}], guard {used, stopped, good_steps, run,
//   recent [the last good losses], events [{step, epoch, reason, where, lr_scale_after}]},
//   rows [{epoch, step, lr, train_loss, train_accuracy, val_loss, val_accuracy, seconds}]
//   (null: no such value), optimizer_state [the names of the state tensors], and when the
//   val set has the report's confusion matrix cm (and with early stopping best_cm), flat.
// A run resumed from it ends with weights byte-identical to an uninterrupted run, and the
// same metrics.csv but for the seconds: the order of an epoch is a function of the seed and
// the epoch, every random number of the seed and the step.

// Loads a last.safetensors into r (instead of krt_init_tensors / krt_load_init), and prints
// where the run resumes. Refuses, naming the file and the first difference: another model (a
// parameter or buffer missing on either side, or of another shape), another optimizer (a
// state tensor missing on either side), another seed, batch size or training set, another
// program hash; or a file without keel_state (final.safetensors). Writes nothing.
void krt_resume(KrtRun *r, const char *path);
// [generated] Where the loops start: the epoch to begin with (0, or the resumed one; the
// epoch count when nothing is left to train) and, in each epoch, the batch (0, or once the
// cursor of the epoch an interrupt left open; the batch count when that epoch's training was
// over, so that it only evaluates and closes).
int64_t krt_first_epoch(KrtRun *r);
int64_t krt_first_batch(KrtRun *r);

// ---------------------------------------------------------------------------------------------
// profile.c — keel run --profile

typedef struct {
  const char *name;       // "matmul dense1 (backward)", "fused ×6: add, max (batchnorm1)"
  double flops;           // floating-point operations per call: flops + flops_per_row · n
  double flops_per_row;
} KrtKernel;

void krt_profile_start(const KrtKernel *kernels, int n);
void krt_profile_batch(int64_t n);  // the size of the batch the next step trains on
// [generated] after each kernel of the training step: the cycles it took
void krt_profile(KrtRun *r, int32_t id, uint64_t cycles);
// The table (share of the step time, seconds, calls, GFLOP/s per kernel) on stdout, and
// out_dir/profile.csv.
void krt_profile_report(const char *out_dir);

// ---------------------------------------------------------------------------------------------
// session.c — a compiled program, from its descriptor, trained or used for prediction. The
// JIT (`keel run`) and a built trainer go through the same code.

typedef void KrtMainFn(KrtRun *run, float **slots, uint64_t seed);
typedef float KrtScheduleFn(float **slots, const double *in);
typedef void KrtStepFn(float **slots, int64_t n, const double *in, uint64_t seed, KrtRun *run);

// The descriptor the compiler stores in the module as the string keel_program (JSON, see
// compiler/program.c), parsed.
typedef struct {
  const char *name, *script, *summary, *hash;
  KrtConfig cfg;                 // data, settings, tensors and probes as compiled
  double base_lr;
  int nslots;
  int64_t *slot_count;           // floats, times the batch size where slot_per_row
  bool *slot_per_row;
  int *probe_slot;               // cfg.probes[i].data lives in slot probe_slot[i]
  int x_slot, y_slot, out_slot;
  int in_rank;                   // the input's shape after n
  int64_t in_shape[4];
  KrtKernel *kernels;            // --profile: the training step's kernels, or none
  int nkernels;
} KrtProgram;

KrtProgram *krt_program_parse(const char *json);  // fails (krt_fail) on a malformed text

// What the command line may change; -1 / NULL / 0 = as compiled.
typedef struct {
  int64_t epochs, steps, batch, seed;
  int threads;
  const char *out, *init, *resume;
  bool no_shuffle;
  const char *data[3][2];        // --data train=PATH etc.: [train, val, test][path, path2]
  double compile_seconds;
  const char *resume_hint;
} KrtOptions;

typedef struct {
  const KrtProgram *prog;
  KrtRun *run;
  float **slots;
  float *block;
  uint64_t seed;
  const char *out_dir;
} KrtSession;

// Loads the data, allocates and initialises the tensors (or --init / --resume), and the
// slots, sized for the batch.
KrtSession krt_session_start(const KrtProgram *prog, const KrtOptions *opt);
void krt_session_end(KrtSession *s);
// Trains: the generated keel_main, then krt_finish. Returns the exit status.
int krt_session_train(KrtSession *s, KrtMainFn *main_fn);
// Predictions for every sample of input (IDX images, or a CSV whose columns are the
// features, a column named like the training label being ignored), with the weights of a
// safetensors file, written as CSV to out_path ("-" = stdout): for classification
// `class,p0,...` (softmax probabilities), for regression `y0,...`. Returns the exit status.
int krt_predict(const KrtProgram *prog, KrtStepFn *eval_step, const char *weights,
                const char *input, const char *out_path, int threads);
// The whole command line of a built trainer: training (the flags of keel run, plus
// --data NAME=PATH[,PATH2] and --resume), `predict --weights FILE INPUT [--out FILE]`, and
// --help (what it trains: the keel check table).
int krt_trainer_main(const char *json, KrtMainFn *main_fn, KrtStepFn *eval_step, int argc,
                     char **argv);

// ---------------------------------------------------------------------------------------------
// threads.c — the one thread pool (--threads T: T - 1 workers and the caller; OpenBLAS kept
// single-threaded). krt_parallel runs fn over [0, n) cut into T chunks at fixed places
// (multiples of align; one chunk when n < 2·min_chunk), chunk t with t as its last argument,
// and returns when all are done. The same T gives the same bits.

enum { KRT_MAX_THREADS = 64 };
typedef void KrtTask(void *ctx, int64_t lo, int64_t hi, int t);
void krt_threads_start(int threads);
int krt_threads(void);
void krt_parallel(KrtTask *fn, void *ctx, int64_t n, int64_t align, int64_t min_chunk);
// Scratch of at least `floats` floats for chunk t (kept and grown: no allocation once the
// first step has run).
float *krt_scratch(int t, int64_t floats);
// [generated] cblas_sgemm (row-major) over the pool: in pieces of columns of C small enough
// for OpenBLAS's unpacked kernels, or split by rows or columns of C (threads.c).
void krt_sgemm(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
               const float *b, int ldb, float beta, float *c, int ldc);
// The same on the calling thread only (inside a chunk of the pool: the convolutions).
void krt_sgemm_serial(int ta, int tb, int m, int n, int k, float alpha, const float *a,
                      int lda, const float *b, int ldb, float beta, float *c, int ldc);

// ---------------------------------------------------------------------------------------------
// conv.c — [generated] image kernels, NCHW. A convolution of x (n, c, h, w) with weights
// (o, c, kh, kw), stride s, padding p, dilation d gives (n, o, oh, ow) with
// oh = (h + 2p - d(kh - 1) - 1) / s + 1. Scratch comes from krt_scratch.

void krt_conv2d(const float *x, const float *wt, float *y, int64_t n, int64_t c, int64_t h,
                int64_t w, int64_t o, int64_t kh, int64_t kw, int64_t s, int64_t p, int64_t d);
void krt_conv2d_dx(const float *dy, const float *wt, float *dx, int64_t n, int64_t c,
                   int64_t h, int64_t w, int64_t o, int64_t kh, int64_t kw, int64_t s,
                   int64_t p, int64_t d);
void krt_conv2d_dw(const float *x, const float *dy, float *dw, int64_t n, int64_t c,
                   int64_t h, int64_t w, int64_t o, int64_t kh, int64_t kw, int64_t s,
                   int64_t p, int64_t d);
// Pooling over k × k windows of nc = n·c planes of h × w, stride s, padding p.
void krt_maxpool(const float *x, float *y, int64_t nc, int64_t h, int64_t w, int64_t k,
                 int64_t s, int64_t p);
// relu != 0: a window's gradient only where its maximum is above 0 (x is a relu's output)
void krt_maxpool_dx(const float *x, const float *dy, float *dx, int64_t nc, int64_t h,
                    int64_t w, int64_t k, int64_t s, int64_t p, int64_t relu);
void krt_maxpool_gather(const float *x, const float *g, float *y, int64_t nc, int64_t h,
                        int64_t w, int64_t k, int64_t s, int64_t p);
void krt_avgpool(const float *x, float *y, int64_t nc, int64_t h, int64_t w, int64_t k,
                 int64_t s, int64_t p);
void krt_avgpool_dx(const float *dy, float *dx, int64_t nc, int64_t h, int64_t w, int64_t k,
                    int64_t s, int64_t p);

#endif
