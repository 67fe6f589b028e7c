// run.c — one training run: data, persistent tensors, batches, metrics, progress and report.
//
// Key idea: the generated training loop owns the math and this file owns the bookkeeping.
// The loop asks for batches (krt_train_batch copies rows of a seeded per-epoch permutation
// into its buffers) and reports each step's loss and outputs back (krt_train_step_end);
// everything else (loss and accuracy sums, the step limit, timing, the progress line, the
// metrics table and the files of krt_finish) lives here, behind the opaque KrtRun.
// Persistent tensors live in one allocation per kind (params, buffers, states), in the
// order of cfg->tensors, contiguous and without padding.
//
// The safety rails live here too. Each epoch end tracks the best epoch and, with early
// stopping on, copies the three blocks into a "best" copy (one memcpy per kind) that
// krt_train_end puts back; on_plateau multiplies the rate multiplier (krt_lr_scale), as
// torch's ReduceLROnPlateau does the rate. The guard (krt_guard) sees each step's loss and
// gradient norm before the step writes anything: a non-finite or spiking step is discarded
// (krt_train_step_end then leaves it out of the sums), the multiplier halves, and enough
// discarded steps in a row end training with exit status 3. krt_finish turns all of it into
// report.json and a short summary in plain words.
//
// Every epoch end writes last.safetensors (tensors, optimizer state and all this bookkeeping),
// and krt_resume reads it back, so a run can be stopped and continued with nothing lost: the
// order of an epoch is a function of the seed and the epoch, and every random number of the
// seed and the step, so the step, the epoch and the batch cursor are all the RNG state there
// is. SIGINT and SIGTERM only raise a flag; the loop's calls see it after the step in
// progress, close the books on a checkpoint (inside the epoch, if need be) and end the run
// with status 130.

#include "keelrt.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { TRAIN = 0, NSETS = 3 };  // set slots: TRAIN, KRT_VAL, KRT_TEST
enum { NKINDS = 3 };            // KRT_PARAM, KRT_BUFFER, KRT_STATE

static const double PROGRESS_EVERY = 0.25;  // seconds between rewrites of the progress line
enum { RECENT = 50, SPIKE_MIN_STEPS = 20 };  // the spike check: median of the last 50 good
                                             // losses, once 20 good steps were seen
static const double PLATEAU_THRESHOLD = 1e-4;  // torch's default (relative, mode min)
enum { CM_MAX_CLASSES = 1000, CM_PRINT_CLASSES = 20 };  // confusion matrix: kept, printed
enum { GUARD_DEFAULT_LIMIT = 3 };

// What a best epoch, early stopping or on_plateau looks at (a column of metrics.csv).
enum { M_TRAIN_LOSS, M_VAL_LOSS, M_VAL_ACC };
static const char *const metric_name[] = {"train_loss", "val_loss", "val_accuracy"};

typedef struct {
  double loss;      // Σ loss × n: mean-loss batches of different sizes weigh by their samples
  int64_t count;    // samples
  int64_t correct;  // argmax hits (classification only)
} Acc;

typedef struct {  // one epoch: a line of metrics.csv
  int64_t epoch, step;
  double lr, train_loss, train_acc, val_loss, val_acc, seconds;
  bool has_train, has_val;
} Row;

typedef struct {  // a step the guard discarded
  int64_t step, epoch;  // both from 1, as printed
  char reason[160];
  char where[160];      // the first probe holding a non-finite value, or "" (see where_of)
  double lr_scale_after;
} GuardEvent;

typedef struct {  // an on_plateau reduction
  int64_t epoch;
  double lr_scale;
} Reduction;

struct KrtRun {
  KrtConfig cfg;               // a copy; tensors points at our copy of the descriptors
  KrtTensorDesc *tensors;
  KrtSet set[NSETS];           // indexed by TRAIN, KRT_VAL, KRT_TEST
  bool has[NSETS];
  float *block[NKINDS];        // one allocation per tensor kind
  float **data;                // data[i]: tensor i, inside block[kind]
  int64_t *size;               // size[i]: floats of tensor i
  int64_t *perm;               // this epoch's order of the training samples
  int64_t nb;                  // batches per epoch
  int64_t epoch, step, epoch_steps, epochs_done;
  float lr;
  Acc acc[NSETS];
  bool tty;                    // stdout is a terminal: the progress line rewrites itself
  double t_epoch, t_last_step, t_progress;
  double train_seconds;        // Σ of epoch_begin → last step_end, for samples_per_second
  int64_t train_samples;
  Row *rows;
  int64_t nrows, cap_rows;
  KrtProbe *probes;            // our copy of cfg->probes
  double lr_scale;             // the multiplier of the guard and on_plateau
  // the best epoch: by the early-stopping monitor when it is on, else by val_loss
  // (train_loss without a val set)
  int best_metric;             // M_*
  int64_t best_epoch;          // from 1; 0 = none yet
  double best;                 // best_metric at best_epoch
  int64_t wait;                // early stopping: epochs since the last improvement
  bool early_stopped, restored, train_ended;
  float *best_block[NKINDS];   // early stopping: the tensors at the end of best_epoch
  int64_t block_size[NKINDS];  // floats in block[k]
  // on_plateau
  int plateau_metric;
  double plateau_best;
  int64_t plateau_bad;
  Reduction *reductions;
  int64_t nreductions, cap_reductions;
  // the guard
  float recent[RECENT];        // the last good losses, recent[i % RECENT] for i < good_steps
  int64_t good_steps;
  int guard_limit, guard_run;  // events in a row that stop training; the current run
  bool guard_used, rejected, guard_stopped;  // rejected: the current step was discarded
  GuardEvent *events;
  int64_t nevents, cap_events;
  // the confusion matrix of cm_set (KRT_TEST, else KRT_VAL; 0 = none): cm[true * c + pred]
  int cm_set;
  int64_t *cm, *best_cm;       // best_cm: of the val set at best_epoch (early stopping)
  // checkpoints and resume (see "exact checkpoints" below)
  int64_t batch_done;          // training batches of r->epoch done, resumed ones included
  int64_t batch0;              // where this epoch's batch loop starts (krt_first_batch)
  bool epoch_closed;           // krt_epoch_end closed r->epoch: the run is at a boundary
  bool resume_pending;         // krt_resume loaded a cursor inside r->epoch for epoch_begin
  double part_seconds;         // training seconds of r->epoch before this process took it on
  bool interrupted;            // SIGINT or SIGTERM was seen while training: the run stops
  bool val_skipped;            // krt_eval_begin skipped this epoch's val set because of it
  bool ckpt_fresh;             // last.safetensors holds the state as it is now
  bool training_done;          // krt_train_end ran uninterrupted: signals no longer stop
  double extra_seconds;        // an interrupted run's partial epoch, for its report
  int64_t extra_samples;
  bool data_hashed;
  uint64_t data_hash;          // a fingerprint of the training set (a resumed run needs it)
};

static const char *where_of(const GuardEvent *e) {
  return e->where[0] ? e->where : NULL;
}

static char *xstrdup(const char *s) {
  size_t n = strlen(s) + 1;
  return memcpy(krt_xmalloc(n), s, n);
}

static char *dir_of(const char *path) {
  const char *slash = path ? strrchr(path, '/') : NULL;
  if (!slash)
    return xstrdup(".");
  if (slash == path)
    return xstrdup("/");
  char *dir = xstrdup(path);
  dir[slash - path] = 0;
  return dir;
}

static char *join(const char *dir, const char *name) {
  size_t len = strlen(dir) + strlen(name) + 2;
  char *path = krt_xmalloc(len);
  snprintf(path, len, "%s/%s", dir, name);
  return path;
}

static void mkdir_p(const char *dir) {
  char *path = xstrdup(dir);
  for (char *p = path + 1;; p++) {
    if (*p != '/' && *p)
      continue;
    char c = *p;
    *p = 0;
    if (mkdir(path, 0777) != 0 && errno != EEXIST)
      krt_fail("%s: cannot create folder: %s", path, strerror(errno));
    if (!c)
      break;
    *p = c;
  }
  struct stat st;
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
    krt_fail("%s: cannot create folder: %s", dir, strerror(ENOTDIR));
  free(path);
}

// Makes room for element n of a growing array of *cap elements of size bytes; returns it.
static void *grow(void *arr, int64_t *cap, int64_t n, size_t size) {
  if (n < *cap)
    return arr;
  *cap = *cap ? 2 * *cap : 16;
  arr = realloc(arr, (size_t)*cap * size);
  if (!arr)
    krt_fail("out of memory allocating %zu bytes", (size_t)*cap * size);
  return arr;
}

static bool early_on(const KrtRun *r) {
  return r->cfg.early_patience > 0;
}

// ---------------------------------------------------------------------------------------------
// interruption: SIGINT and SIGTERM only raise a flag, which the loop's calls look at
// (poll_interrupt); the handler then restores the default action, so a second Ctrl-C ends the
// process at once. A signal the process was started ignoring (nohup, `&` in a script) stays
// ignored.

static volatile sig_atomic_t interrupt_signal;  // the signal received; 0 = none
static struct sigaction saved_action[2];         // SIGINT's and SIGTERM's before ours
static int handler_users;                        // runs alive that installed the handler
static const int caught[2] = {SIGINT, SIGTERM};

static void on_interrupt(int sig) {
  int saved_errno = errno;
  interrupt_signal = sig;
  struct sigaction dfl = {.sa_handler = SIG_DFL};
  sigemptyset(&dfl.sa_mask);
  for (int i = 0; i < 2; i++)
    sigaction(caught[i], &dfl, NULL);
  static const char msg[] = "\nkeel: interrupted: the current step finishes, then "
                            "last.safetensors is written (press Ctrl-C again to stop at once)\n";
  ssize_t written = write(2, msg, sizeof msg - 1);
  (void)written;
  errno = saved_errno;
}

static void install_handler(void) {
  interrupt_signal = 0;
  struct sigaction sa = {.sa_handler = on_interrupt, .sa_flags = SA_RESTART}, old;
  sigemptyset(&sa.sa_mask);
  for (int i = 0; i < 2; i++) {
    sigaction(caught[i], NULL, &old);
    if (!handler_users)
      saved_action[i] = old;
    if (old.sa_handler != SIG_IGN)
      sigaction(caught[i], &sa, NULL);
  }
  handler_users++;
}

static void remove_handler(void) {
  if (handler_users > 0 && --handler_users == 0)
    for (int i = 0; i < 2; i++)
      sigaction(caught[i], &saved_action[i], NULL);
}

// Whether the run was interrupted: a signal arrived and training was still going on (once
// krt_train_end ran uninterrupted, the run completes whatever arrives).
static bool poll_interrupt(KrtRun *r) {
  if (interrupt_signal && !r->training_done)
    r->interrupted = true;
  return r->interrupted;
}

static int64_t tensor_size(const KrtTensorDesc *t) {
  if (t->rank < 0 || t->rank > 4)
    krt_fail("tensor %s has rank %d (at most 4 is supported)", t->name, t->rank);
  int64_t n = 1;
  for (int d = 0; d < t->rank; d++) {
    if (t->dim[d] < 0)
      krt_fail("tensor %s has a negative dimension", t->name);
    n *= t->dim[d];
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// loading and checking the data

// The driver may pass names it already resolved with krt_find_data (relative to the current
// folder, like "examples/data.csv" for examples/x.nn); those are taken as they are when the
// search finds nothing.
static char *find(const char *name, const char *script_dir) {
  char *path = krt_find_data(name, script_dir);
  struct stat st;
  if (!path && name[0] != '/' && stat(name, &st) == 0 && !S_ISDIR(st.st_mode))
    path = xstrdup(name);
  if (!path)
    krt_fail("cannot find data file '%s' (looked in %s, $KEEL_DATA_PATH and /usr/share/datasets)",
             name, script_dir);
  return path;
}

// Loads one source (kind 1 = IDX images + labels, 2 = CSV) and checks it against the network.
static void load_set(KrtRun *r, int which, int kind, const char *path, const char *path2,
                     const char *label, const char *script_dir) {
  if (kind == 0)
    return;
  if (kind != 1 && kind != 2)
    krt_fail("unknown data source kind %d", kind);
  if (!path || (kind == 1 && !path2))
    krt_fail("IDX data needs an images file and a labels file");
  const KrtConfig *cfg = &r->cfg;
  char *file = find(path, script_dir);
  char *labels = kind == 1 ? find(path2, script_dir) : NULL;
  KrtSet *s = &r->set[which];
  *s = kind == 1 ? krt_load_idx(file, labels) : krt_load_csv(file, label);
  const char *yfile = kind == 1 ? labels : file;
  if (s->features != cfg->features)
    krt_fail("%s: samples have %lld value%s, the network's input expects %lld", file,
             (long long)s->features, s->features == 1 ? "" : "s", (long long)cfg->features);
  if (cfg->classes > 0) {
    for (int64_t i = 0; i < s->n * s->ydim; i++) {
      float y = s->y[i];
      if (y != floorf(y))
        krt_fail("%s: label %g is not a class number (the network has %lld outputs)", yfile, y,
                 (long long)cfg->classes);
      if (!(y >= 0 && y < (float)cfg->classes))
        krt_fail("%s: label %g is outside the network's %lld outputs", yfile, y,
                 (long long)cfg->classes);
    }
  } else if (s->ydim != cfg->ydim) {
    krt_fail("%s: samples have %lld target value%s, the network's output has %lld", yfile,
             (long long)s->ydim, s->ydim == 1 ? "" : "s", (long long)cfg->ydim);
  }
  r->has[which] = true;
  free(file);
  free(labels);
}

// Early stopping, on_plateau, the guard and the confusion matrix: their settings, checked,
// and their state. Runs once the data is loaded (what is monitored depends on the val set).
static void setup_rails(KrtRun *r) {
  const KrtConfig *cfg = &r->cfg;
  if (cfg->early_patience < 0 || cfg->plateau_patience < 0 || cfg->guard_limit < 0)
    krt_fail("patience and guard limit must not be negative");
  if (!(cfg->early_min_delta >= 0))
    krt_fail("early stopping's min_delta must not be negative, not %g", cfg->early_min_delta);
  if (cfg->early_monitor != KRT_MONITOR_VAL_LOSS && cfg->early_monitor != KRT_MONITOR_VAL_ACCURACY)
    krt_fail("unknown early stopping monitor %d", cfg->early_monitor);
  if (cfg->plateau_patience > 0 && !(cfg->plateau_factor > 0 && cfg->plateau_factor < 1))
    krt_fail("on_plateau's factor must be between 0 and 1, not %g", cfg->plateau_factor);
  if (!(cfg->spike_factor >= 0))
    krt_fail("the guard's spike factor must not be negative, not %g", cfg->spike_factor);
  if (cfg->nprobes < 0 || (cfg->nprobes > 0 && !cfg->probes))
    krt_fail("bad guard probes (%d)", cfg->nprobes);

  bool val = r->has[KRT_VAL], cls = cfg->classes > 0;
  r->best_metric = !val ? M_TRAIN_LOSS
                   : early_on(r) && cls && cfg->early_monitor == KRT_MONITOR_VAL_ACCURACY
                       ? M_VAL_ACC
                       : M_VAL_LOSS;
  r->best = r->best_metric == M_VAL_ACC ? -INFINITY : INFINITY;
  r->plateau_metric = val ? M_VAL_LOSS : M_TRAIN_LOSS;
  r->plateau_best = INFINITY;
  r->lr_scale = 1;
  r->guard_limit = cfg->guard_limit ? cfg->guard_limit : GUARD_DEFAULT_LIMIT;
  r->probes = krt_xmalloc((size_t)(cfg->nprobes + 1) * sizeof(KrtProbe));
  if (cfg->nprobes)
    memcpy(r->probes, cfg->probes, (size_t)cfg->nprobes * sizeof(KrtProbe));
  r->cfg.probes = r->probes;
  if (early_on(r))
    for (int k = 0; k < NKINDS; k++)
      r->best_block[k] = krt_xmalloc((size_t)r->block_size[k] * sizeof(float));
  int64_t c = cfg->classes;
  r->cm_set = !cls || c > CM_MAX_CLASSES ? 0 : r->has[KRT_TEST] ? KRT_TEST : val ? KRT_VAL : 0;
  if (r->cm_set)
    r->cm = krt_xmalloc((size_t)(c * c) * sizeof(int64_t));
  if (r->cm_set == KRT_VAL && early_on(r))
    r->best_cm = krt_xmalloc((size_t)(c * c) * sizeof(int64_t));
}

KrtRun *krt_run_new(const KrtConfig *cfg) {
  KrtRun *r = krt_xmalloc(sizeof *r);
  r->cfg = *cfg;
  if (cfg->batch <= 0)
    krt_fail("the batch size must be positive, not %lld", (long long)cfg->batch);
  if (cfg->threads > 0)
    krt_threads_start(cfg->threads);

  char *dir = dir_of(cfg->script);
  if (cfg->train_kind == 0)
    krt_fail("no training data (the script names no train source)");
  load_set(r, TRAIN, cfg->train_kind, cfg->train_path, cfg->train_path2, cfg->train_label, dir);
  load_set(r, KRT_VAL, cfg->val_kind, cfg->val_path, cfg->val_path2, cfg->val_label, dir);
  load_set(r, KRT_TEST, cfg->test_kind, cfg->test_path, cfg->test_path2, cfg->test_label, dir);
  free(dir);
  if (cfg->scale != 0)
    for (int i = 0; i < NSETS; i++)
      krt_set_scale(&r->set[i], (float)cfg->scale);
  if (cfg->holdout != 0 && cfg->val_kind == 0) {
    krt_set_holdout(&r->set[TRAIN], &r->set[KRT_VAL], cfg->holdout, cfg->seed);
    r->has[KRT_VAL] = true;
  }
  if (r->set[TRAIN].n == 0)
    krt_fail("%s: no training samples%s", cfg->train_path,
             cfg->holdout != 0 && cfg->val_kind == 0 ? " left after the holdout" : "");
  int64_t n = r->set[TRAIN].n;
  if (cfg->drop_last && n < cfg->batch)
    krt_fail("drop_last with batch %lld leaves no batch: the training set has %lld sample%s",
             (long long)cfg->batch, (long long)n, n == 1 ? "" : "s");
  r->nb = cfg->drop_last ? n / cfg->batch : (n + cfg->batch - 1) / cfg->batch;
  // a last batch smaller than min_batch (batchnorm needs 2 samples for a variance) is
  // dropped, as drop_last would, and said so
  if (!cfg->drop_last && cfg->min_batch > 1 && n % cfg->batch && n % cfg->batch < cfg->min_batch &&
      r->nb > 1) {
    r->nb--;
    printf("note: the last batch of each epoch would hold %lld sample%s, too few for "
           "batchnorm's statistics; it is dropped\n", (long long)(n % cfg->batch),
           n % cfg->batch == 1 ? "" : "s");
  }
  r->perm = krt_xmalloc((size_t)n * sizeof(int64_t));

  // persistent tensors: sizes, then one block per kind, then pointers into the blocks
  int nt = cfg->ntensors;
  r->tensors = krt_xmalloc((size_t)(nt ? nt : 1) * sizeof(KrtTensorDesc));
  if (nt)
    memcpy(r->tensors, cfg->tensors, (size_t)nt * sizeof(KrtTensorDesc));
  r->cfg.tensors = r->tensors;
  r->data = krt_xmalloc((size_t)(nt ? nt : 1) * sizeof(float *));
  r->size = krt_xmalloc((size_t)(nt ? nt : 1) * sizeof(int64_t));
  int64_t total[NKINDS] = {0};
  for (int i = 0; i < nt; i++) {
    int k = r->tensors[i].kind;
    if (k < 0 || k >= NKINDS)
      krt_fail("tensor %s has unknown kind %d", r->tensors[i].name, k);
    r->size[i] = tensor_size(&r->tensors[i]);
    total[k] += r->size[i];
  }
  for (int k = 0; k < NKINDS; k++) {
    r->block[k] = krt_xmalloc((size_t)total[k] * sizeof(float));
    total[k] = 0;  // now the offset of the next tensor of kind k
  }
  for (int i = 0; i < nt; i++) {
    int k = r->tensors[i].kind;
    r->data[i] = r->block[k] + total[k];
    total[k] += r->size[i];
  }
  for (int k = 0; k < NKINDS; k++)
    r->block_size[k] = total[k];
  r->tty = isatty(1);
  setup_rails(r);
  install_handler();
  return r;
}

void krt_run_free(KrtRun *r) {
  if (!r)
    return;
  remove_handler();
  for (int i = 0; i < NSETS; i++)
    krt_set_free(&r->set[i]);
  for (int k = 0; k < NKINDS; k++)
    free(r->block[k]);
  free(r->tensors);
  free(r->data);
  free(r->size);
  free(r->perm);
  free(r->rows);
  free(r->probes);
  for (int k = 0; k < NKINDS; k++)
    free(r->best_block[k]);
  free(r->reductions);
  free(r->events);
  free(r->cm);
  free(r->best_cm);
  free(r);
}

float *krt_tensor(KrtRun *r, int i) {
  if (i < 0 || i >= r->cfg.ntensors)
    krt_fail("no persistent tensor %d (the run has %d)", i, r->cfg.ntensors);
  return r->data[i];
}

void krt_init_tensors(KrtRun *r) {
  for (int i = 0; i < r->cfg.ntensors; i++) {
    const KrtTensorDesc *t = &r->tensors[i];
    uint64_t key = krt_hash(r->cfg.seed, 1000 + (uint64_t)i);
    float *p = r->data[i];
    for (int64_t j = 0; j < r->size[i]; j++) {
      if (t->init == KRT_UNIFORM)
        p[j] = (float)(t->a + (t->b - t->a) * krt_uniform(key, (uint64_t)j));
      else if (t->init == KRT_NORMAL)
        p[j] = (float)(t->a + t->b * krt_normal(key, (uint64_t)j));
      else
        p[j] = (float)t->a;
    }
  }
}

// The PARAM and BUFFER tensors, as named tensors for a checkpoint. Returns their count.
static int saved_tensors(KrtRun *r, KrtNamedTensor *out) {
  int n = 0;
  for (int i = 0; i < r->cfg.ntensors; i++) {
    const KrtTensorDesc *t = &r->tensors[i];
    if (t->kind == KRT_STATE)
      continue;
    out[n] = (KrtNamedTensor){.name = t->name, .rank = t->rank, .data = r->data[i]};
    memcpy(out[n].dim, t->dim, sizeof t->dim);
    n++;
  }
  return n;
}

void krt_load_init(KrtRun *r, const char *path) {
  KrtNamedTensor *t = krt_xmalloc((size_t)(r->cfg.ntensors + 1) * sizeof(KrtNamedTensor));
  krt_st_read(path, t, saved_tensors(r, t));
  free(t);
}

// ---------------------------------------------------------------------------------------------
// the schedule and batches

int64_t krt_epochs(KrtRun *r) {
  if (r->cfg.epochs == 0 && r->cfg.steps > 0)
    return (r->cfg.steps + r->nb - 1) / r->nb;
  return r->cfg.epochs;
}

int64_t krt_total_steps(KrtRun *r) {
  int64_t total = r->nb * krt_epochs(r);
  return r->cfg.steps > 0 && r->cfg.steps < total ? r->cfg.steps : total;
}

int64_t krt_step(KrtRun *r) {
  return r->step;
}

int64_t krt_batches_per_epoch(KrtRun *r) {
  return r->nb;
}

static bool step_limit(const KrtRun *r) {
  return r->cfg.steps > 0 && r->step >= r->cfg.steps;
}

int64_t krt_epoch_begin(KrtRun *r, int64_t epoch) {
  if (r->resume_pending && epoch != r->epoch)
    krt_fail("the training loop began epoch %lld, but the run resumes inside epoch %lld (the "
             "loop must start at krt_first_epoch)", (long long)epoch + 1, (long long)r->epoch + 1);
  // the order is a function of the seed and the epoch, so a resumed epoch gets it back
  if (r->cfg.shuffle) {
    krt_permutation(r->perm, r->set[TRAIN].n, krt_hash(r->cfg.seed, 2000 + (uint64_t)epoch));
  } else {
    for (int64_t i = 0; i < r->set[TRAIN].n; i++)
      r->perm[i] = i;
  }
  double now = krt_now();
  if (r->resume_pending) {  // the interrupted epoch goes on: its cursor, sums and clock
    r->resume_pending = false;
    r->batch0 = r->batch_done;
    r->t_epoch = now - r->part_seconds;
  } else {
    r->acc[TRAIN] = (Acc){0};
    r->batch_done = r->batch0 = 0;
    r->t_epoch = now;
  }
  r->epoch = epoch;
  r->acc[KRT_VAL] = (Acc){0};
  r->epoch_steps = 0;
  r->epoch_closed = r->val_skipped = false;
  r->t_last_step = r->t_progress = now;
  return r->nb;
}

typedef struct {
  const KrtSet *s;
  const int64_t *order;
  int64_t first;
  float *x, *y;
} Rows;

static void copy_chunk(void *ctx, int64_t lo, int64_t hi, int t) {
  const Rows *c = ctx;
  const KrtSet *s = c->s;
  for (int64_t i = lo; i < hi; i++) {
    int64_t k = c->order ? c->order[c->first + i] : c->first + i;
    if (c->order && s->x8 && i + 4 < hi)  // shuffled rows are cache misses: ask early
      for (int64_t at = 0; at < s->features; at += 64)
        __builtin_prefetch(s->x8 + c->order[c->first + i + 4] * s->features + at);
    krt_set_row(s, k, c->x + i * s->features);
    memcpy(c->y + i * s->ydim, s->y + k * s->ydim, (size_t)s->ydim * sizeof(float));
  }
}

// The rows of a batch, on the pool: each thread gathers the rows that the step's loops give it
// (they cut the batch the same way), so they start in the cache of the core that reads them.
static void copy_rows(const KrtSet *s, const int64_t *order, int64_t first, int64_t rows,
                      float *x, float *y) {
  Rows c = {s, order, first, x, y};
  int64_t row = s->features * (int64_t)sizeof(float);
  krt_parallel(copy_chunk, &c, rows, 1, row >= 32768 ? 1 : 32768 / row);
}

// Rows of batch b of a set of n samples (the last batch may be partial).
static int64_t batch_rows(const KrtRun *r, int64_t n, int64_t b, const char *what) {
  int64_t first = b * r->cfg.batch;
  if (b < 0 || first >= n)
    krt_fail("%s batch %lld does not exist (%lld samples in batches of %lld)", what,
             (long long)b, (long long)n, (long long)r->cfg.batch);
  return n - first < r->cfg.batch ? n - first : r->cfg.batch;
}

int64_t krt_train_batch(KrtRun *r, int64_t b, float *x, float *y) {
  if (r->cfg.drop_last && b >= r->nb)
    krt_fail("training batch %lld does not exist (%lld samples in %lld full batches of %lld; "
             "drop_last drops the rest)",
             (long long)b, (long long)r->set[TRAIN].n, (long long)r->nb, (long long)r->cfg.batch);
  int64_t rows = batch_rows(r, r->set[TRAIN].n, b, "training");
  copy_rows(&r->set[TRAIN], r->perm, b * r->cfg.batch, rows, x, y);
  return rows;
}

static int64_t argmax(const float *o, int64_t c) {
  int64_t best = 0;
  for (int64_t j = 1; j < c; j++)
    if (o[j] > o[best])  // the first maximum wins
      best = j;
  return best;
}

// Adds a batch to a set's sums; cm, when given, counts cm[true * classes + predicted].
static void accumulate(const KrtRun *r, Acc *a, float loss, const float *out, const float *y,
                       int64_t n, int64_t *cm) {
  a->loss += (double)loss * (double)n;
  a->count += n;
  int64_t c = r->cfg.classes;
  if (c <= 0 || !out || !y)
    return;
  for (int64_t i = 0; i < n; i++) {
    int64_t pred = argmax(out + i * c, c), truth = (int64_t)y[i];
    a->correct += pred == truth;
    if (cm && truth >= 0 && truth < c)
      cm[truth * c + pred]++;
  }
}

static int digits(int64_t v) {
  int d = 1;
  while (v >= 10) {
    v /= 10;
    d++;
  }
  return d;
}

// The line of a discarded step, printed as krt_train_step_end learns the step's rate:
// guard: step 412 discarded: the loss was NaN (first non-finite value: the output of
// dense2); learning rate halved to 0.025
static void print_guard_event(const KrtRun *r, const GuardEvent *e, float lr) {
  printf("%sguard: step %lld discarded: %s", r->tty ? "\r\033[K" : "", (long long)e->step,
         e->reason);
  if (where_of(e))
    printf(" (first non-finite value: %s)", where_of(e));
  if (r->guard_stopped)
    printf("; %d step%s in a row discarded: training stops\n", r->guard_run,
           r->guard_run == 1 ? "" : "s");
  else
    printf("; learning rate halved to %g\n", (double)lr * 0.5);
  fflush(stdout);
}

int krt_train_step_end(KrtRun *r, float loss, const float *out, const float *y, int64_t n,
                       float lr) {
  if (r->rejected)  // the guard discarded the step: it counts as a step, not in the sums
    print_guard_event(r, &r->events[r->nevents - 1], lr);
  else
    accumulate(r, &r->acc[TRAIN], loss, out, y, n, NULL);
  r->rejected = false;
  r->lr = lr;
  r->step++;
  r->epoch_steps++;
  r->batch_done++;
  r->ckpt_fresh = false;
  r->t_last_step = krt_now();
  if (r->tty && r->t_last_step - r->t_progress >= PROGRESS_EVERY) {
    int64_t epochs = krt_epochs(r);
    printf("\repoch %*lld/%lld  batch %lld/%lld", digits(epochs), (long long)r->epoch + 1,
           (long long)epochs, (long long)r->batch_done, (long long)r->nb);
    if (r->acc[TRAIN].count > 0)
      printf("  loss %.4f", r->acc[TRAIN].loss / (double)r->acc[TRAIN].count);
    printf("\033[K");
    fflush(stdout);
    r->t_progress = r->t_last_step;
  }
  return step_limit(r) || r->guard_stopped || poll_interrupt(r);
}

static const KrtSet *eval_set(KrtRun *r, int which) {
  if (which != KRT_VAL && which != KRT_TEST)
    krt_fail("unknown evaluation set %d", which);
  return &r->set[which];
}

int64_t krt_eval_begin(KrtRun *r, int which) {
  const KrtSet *s = eval_set(r, which);
  if (poll_interrupt(r)) {  // the epoch stays open; a resumed run evaluates it
    r->val_skipped |= which == KRT_VAL && r->has[KRT_VAL];
    return 0;
  }
  r->acc[which] = (Acc){0};
  if (which == r->cm_set)
    memset(r->cm, 0, (size_t)(r->cfg.classes * r->cfg.classes) * sizeof(int64_t));
  return r->has[which] ? (s->n + r->cfg.batch - 1) / r->cfg.batch : 0;
}

int64_t krt_eval_batch(KrtRun *r, int which, int64_t b, float *x, float *y) {
  const KrtSet *s = eval_set(r, which);
  int64_t rows = batch_rows(r, s->n, b, which == KRT_VAL ? "validation" : "test");
  copy_rows(s, NULL, b * r->cfg.batch, rows, x, y);
  return rows;
}

void krt_eval_step_end(KrtRun *r, int which, float loss, const float *out, const float *y,
                       int64_t n) {
  eval_set(r, which);
  accumulate(r, &r->acc[which], loss, out, y, n, which == r->cm_set ? r->cm : NULL);
}

// ---------------------------------------------------------------------------------------------
// epochs: metrics rows and the progress line

static double mean(const Acc *a) {
  return a->loss / (double)a->count;
}

static double accuracy(const Acc *a) {
  return (double)a->correct / (double)a->count;
}

static bool epoch_rails(KrtRun *r, const Row *row);
static void write_last(KrtRun *r);

int krt_epoch_end(KrtRun *r) {
  double now = krt_now();
  double train_time = r->batch_done ? r->t_last_step - r->t_epoch : 0;
  // interrupted before the epoch's training or its evaluation was done: the epoch stays open,
  // and last.safetensors holds its cursor and sums
  bool trained = r->batch_done >= r->nb || step_limit(r) || r->guard_stopped;
  if (poll_interrupt(r) && (!trained || r->val_skipped)) {
    r->part_seconds = train_time;
    write_last(r);
    r->extra_seconds = train_time;
    r->extra_samples = r->acc[TRAIN].count;
    fflush(stdout);
    return 1;
  }
  r->train_seconds += train_time;
  r->train_samples += r->acc[TRAIN].count;
  bool cls = r->cfg.classes > 0;
  const Acc *t = &r->acc[TRAIN], *v = &r->acc[KRT_VAL];
  Row row = {.epoch = r->epoch + 1, .step = r->step, .lr = r->lr, .seconds = now - r->t_epoch,
             .has_train = t->count > 0, .has_val = v->count > 0};
  if (row.has_train) {
    row.train_loss = mean(t);
    row.train_acc = cls ? accuracy(t) : NAN;
  }
  if (row.has_val) {
    row.val_loss = mean(v);
    row.val_acc = cls ? accuracy(v) : NAN;
  }
  r->rows = grow(r->rows, &r->cap_rows, r->nrows, sizeof(Row));
  r->rows[r->nrows++] = row;
  r->epochs_done++;

  // epoch  3/20  loss 0.4123  acc 0.8512  val_loss 0.4501  val_acc 0.8399  lr 0.001  2.41s  ...
  int64_t epochs = krt_epochs(r);
  printf("%sepoch %*lld/%lld", r->tty ? "\r" : "", digits(epochs), (long long)row.epoch,
         (long long)epochs);
  if (row.has_train)
    printf("  loss %.4f", row.train_loss);
  if (row.has_train && cls)
    printf("  acc %.4f", row.train_acc);
  if (row.has_val)
    printf("  val_loss %.4f", row.val_loss);
  if (row.has_val && cls)
    printf("  val_acc %.4f", row.val_acc);
  printf("  lr %g  %.2fs", row.lr, row.seconds);
  if (train_time > 0 && t->count > 0)
    printf("  %.0f samples/s", (double)t->count / train_time);
  printf("%s\n", r->tty ? "\033[K" : "");
  bool early_stop = epoch_rails(r, &r->rows[r->nrows - 1]);
  r->epoch_closed = true;
  r->part_seconds = 0;
  write_last(r);
  fflush(stdout);
  return step_limit(r) || r->epochs_done >= epochs || early_stop || r->guard_stopped ||
         r->interrupted;
}

// ---------------------------------------------------------------------------------------------
// the safety rails: the best epoch, early stopping, on_plateau, the guard

static double metric(const Row *w, int m) {
  if (m == M_TRAIN_LOSS)
    return w->has_train ? w->train_loss : NAN;
  if (m == M_VAL_LOSS)
    return w->has_val ? w->val_loss : NAN;
  return w->has_val ? w->val_acc : NAN;
}

static const Row *find_row(const KrtRun *r, int64_t epoch) {
  for (int64_t i = r->nrows - 1; epoch > 0 && i >= 0; i--)
    if (r->rows[i].epoch == epoch)
      return &r->rows[i];
  return NULL;
}

// At the end of each epoch: the best epoch (and with early stopping a copy of every tensor),
// the patience of early stopping and of on_plateau. Returns true when early stopping fires.
static bool epoch_rails(KrtRun *r, const Row *row) {
  const KrtConfig *cfg = &r->cfg;
  bool stop = false;
  // improvement: beating the best by more than min_delta (Keras); NaN never improves
  double v = metric(row, r->best_metric), delta = early_on(r) ? cfg->early_min_delta : 0;
  bool better = isfinite(v) && (r->best_metric == M_VAL_ACC ? v > r->best + delta
                                                            : v < r->best - delta);
  if (better) {
    r->best = v;
    r->best_epoch = row->epoch;
    r->wait = 0;
    if (early_on(r)) {
      for (int k = 0; k < NKINDS; k++)
        memcpy(r->best_block[k], r->block[k], (size_t)r->block_size[k] * sizeof(float));
      if (r->best_cm)
        memcpy(r->best_cm, r->cm, (size_t)(cfg->classes * cfg->classes) * sizeof(int64_t));
    }
  } else if (early_on(r) && ++r->wait >= cfg->early_patience) {
    r->early_stopped = stop = true;
    // early stopping: val_loss has not improved for 3 epochs (best 0.3412 at epoch 4)
    printf("early stopping: %s has not improved", metric_name[r->best_metric]);
    if (delta > 0)
      printf(" by more than %g", delta);
    printf(" for %lld epoch%s", (long long)r->wait, r->wait == 1 ? "" : "s");
    if (r->best_epoch)
      printf(" (best %.4f at epoch %lld)\n", r->best, (long long)r->best_epoch);
    else
      printf(" (it was never finite)\n");
  }

  // on_plateau, as torch's ReduceLROnPlateau(mode="min", threshold=1e-4, threshold_mode="rel"):
  // reduce when the epochs without improvement exceed the patience
  if (cfg->plateau_patience > 0) {
    double p = metric(row, r->plateau_metric);
    if (isfinite(p) && p < r->plateau_best * (1 - PLATEAU_THRESHOLD)) {
      r->plateau_best = p;
      r->plateau_bad = 0;
    } else if (++r->plateau_bad > cfg->plateau_patience) {
      r->lr_scale *= cfg->plateau_factor;
      r->reductions = grow(r->reductions, &r->cap_reductions, r->nreductions, sizeof(Reduction));
      r->reductions[r->nreductions++] = (Reduction){row->epoch, r->lr_scale};
      // on_plateau: val_loss has not improved for 3 epochs: learning rate reduced to 0.001
      printf("on_plateau: %s has not improved for %lld epochs: learning rate reduced to %g\n",
             metric_name[r->plateau_metric], (long long)r->plateau_bad,
             (double)r->lr * cfg->plateau_factor);
      r->plateau_bad = 0;
    }
  }
  return stop;
}

float krt_lr_scale(KrtRun *r) {
  return (float)r->lr_scale;
}

static double recent_median(const KrtRun *r) {
  int m = r->good_steps < RECENT ? (int)r->good_steps : RECENT;
  float v[RECENT];
  memcpy(v, r->recent, (size_t)m * sizeof(float));
  for (int i = 1; i < m; i++)  // insertion sort: 50 values
    for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
      float t = v[j];
      v[j] = v[j - 1];
      v[j - 1] = t;
    }
  return m % 2 ? v[m / 2] : 0.5 * ((double)v[m / 2 - 1] + (double)v[m / 2]);
}

// Whether the median of the recent losses can be below t: not when more than half of them
// are at least t. This count spares the sort of recent_median on almost every step.
static bool may_spike(const KrtRun *r, double t) {
  int m = r->good_steps < RECENT ? (int)r->good_steps : RECENT, below = 0;
  for (int i = 0; i < m; i++)
    below += r->recent[i] < t;
  return 2 * below >= m;
}

// The first probe, in order, holding a non-finite value (n: the rows of this batch).
static const char *first_nonfinite(const KrtRun *r, int64_t n) {
  for (int i = 0; i < r->cfg.nprobes; i++) {
    const KrtProbe *p = &r->probes[i];
    int64_t count = p->count * (p->per_row ? n : 1);
    for (int64_t j = 0; p->data && j < count; j++)
      if (!isfinite(p->data[j]))
        return p->what;
  }
  return NULL;
}

int krt_guard(KrtRun *r, float loss, float grad_sq, int64_t n) {
  r->guard_used = true;
  char reason[160] = "";
  if (isnan(loss))
    snprintf(reason, sizeof reason, "the loss was NaN");
  else if (isinf(loss))
    snprintf(reason, sizeof reason, "the loss was infinite");
  else if (!isfinite(grad_sq))
    snprintf(reason, sizeof reason, "a gradient was not finite");
  else if (r->cfg.spike_factor > 0 && r->good_steps >= SPIKE_MIN_STEPS &&
           may_spike(r, loss / r->cfg.spike_factor)) {
    double median = recent_median(r);  // a median of 0 (a perfect fit) flags nothing
    if (median > 0 && loss > r->cfg.spike_factor * median)
      snprintf(reason, sizeof reason, "the loss spiked to %.4g, more than %g× the recent median %.4g",
               (double)loss, r->cfg.spike_factor, median);
  }
  if (!reason[0]) {
    r->recent[r->good_steps++ % RECENT] = loss;
    r->guard_run = 0;
    return 1;
  }
  r->lr_scale *= 0.5;
  if (++r->guard_run >= r->guard_limit)
    r->guard_stopped = true;
  r->events = grow(r->events, &r->cap_events, r->nevents, sizeof(GuardEvent));
  GuardEvent *e = &r->events[r->nevents++];
  *e = (GuardEvent){.step = r->step + 1, .epoch = r->epoch + 1, .lr_scale_after = r->lr_scale};
  memcpy(e->reason, reason, sizeof reason);
  const char *where = first_nonfinite(r, n);
  snprintf(e->where, sizeof e->where, "%s", where ? where : "");
  r->rejected = true;  // krt_train_step_end prints the event and leaves the step out
  return 0;
}

// The PARAM and BUFFER tensors into path, atomically.
static void write_checkpoint(KrtRun *r, const char *path) {
  KrtNamedTensor *t = krt_xmalloc((size_t)(r->cfg.ntensors + 1) * sizeof(KrtNamedTensor));
  const char *meta[] = {"format", "pt", "producer", "keel"};
  krt_st_write(path, t, saved_tensors(r, t), meta, 2);
  free(t);
}

void krt_train_end(KrtRun *r) {
  if (poll_interrupt(r))  // last.safetensors goes on from here; nothing is restored or written
    return;
  r->training_done = true;
  if (r->train_ended || !early_on(r))
    return;
  r->train_ended = true;
  const char *name = metric_name[r->best_metric];
  if (!r->best_epoch) {
    printf("early stopping: no epoch had a finite %s; the last weights are kept\n", name);
    fflush(stdout);
    return;
  }
  for (int k = 0; k < NKINDS; k++)
    memcpy(r->block[k], r->best_block[k], (size_t)r->block_size[k] * sizeof(float));
  r->restored = true;
  const char *dir = r->cfg.out_dir ? r->cfg.out_dir : ".";
  mkdir_p(dir);
  char *path = join(dir, "best.safetensors");
  write_checkpoint(r, path);
  // early stopping: restored the weights of epoch 4 (val_loss 0.3412); wrote runs/x/best.safetensors
  bool last = r->nrows && r->rows[r->nrows - 1].epoch == r->best_epoch;
  printf("early stopping: %s the weights of epoch %lld (%s %.4f); wrote %s\n",
         last ? "kept" : "restored", (long long)r->best_epoch, name, r->best, path);
  fflush(stdout);
  free(path);
}

// ---------------------------------------------------------------------------------------------
// the end of the run: final.safetensors, metrics.csv, report.json, and a short report

static void csv_cell(FILE *f, bool has, double v) {
  fputc(',', f);
  if (has && isfinite(v))
    fprintf(f, "%.6g", v);
  else if (has)
    fprintf(f, "%s", isnan(v) ? "nan" : v > 0 ? "inf" : "-inf");
}

static void write_metrics(FILE *f, void *ctx) {
  const KrtRun *r = ctx;
  bool cls = r->cfg.classes > 0;
  fputs("epoch,step,lr,train_loss,train_accuracy,val_loss,val_accuracy,seconds\n", f);
  for (int64_t i = 0; i < r->nrows; i++) {
    const Row *w = &r->rows[i];
    fprintf(f, "%lld,%lld,%.6g", (long long)w->epoch, (long long)w->step, w->lr);
    csv_cell(f, w->has_train, w->train_loss);
    csv_cell(f, w->has_train && cls, w->train_acc);
    csv_cell(f, w->has_val, w->val_loss);
    csv_cell(f, w->has_val && cls, w->val_acc);
    csv_cell(f, true, w->seconds);
    fputc('\n', f);
  }
}

// Training time and samples, with the partial epoch of an interrupted run.
static double run_seconds(const KrtRun *r) {
  return r->train_seconds + r->extra_seconds;
}

static int64_t run_samples(const KrtRun *r) {
  return r->train_samples + r->extra_samples;
}

// A JSON number, or null when there is no (finite) value.
static void json_val(FILE *f, bool has, double v) {
  if (has && isfinite(v))
    fprintf(f, "%.9g", v);
  else
    fputs("null", f);
}

// One "key": value line of report.json.
static void json_num(FILE *f, const char *key, bool has, double v) {
  fprintf(f, "  \"%s\": ", key);
  json_val(f, has, v);
  fputs(",\n", f);
}

static const char *stop_reason(const KrtRun *r) {
  return r->interrupted    ? "interrupted"
         : r->guard_stopped  ? "guard"
         : r->early_stopped ? "early_stop"
         : step_limit(r)    ? "steps"
                            : "epochs";
}

// The confusion matrix the report shows: the test set's; without one, the val set's at the
// best epoch when early stopping restored it, else after the last epoch. NULL when empty.
static const int64_t *report_cm(const KrtRun *r) {
  if (!r->cm_set)
    return NULL;
  const int64_t *cm = r->cm_set == KRT_VAL && r->restored && r->best_cm ? r->best_cm : r->cm;
  int64_t total = 0, c = r->cfg.classes;
  for (int64_t i = 0; i < c * c; i++)
    total += cm[i];
  return total ? cm : NULL;
}

// Σ of row i of a confusion matrix: the samples of true class i.
static int64_t cm_row(const int64_t *cm, int64_t c, int64_t i) {
  int64_t n = 0;
  for (int64_t j = 0; j < c; j++)
    n += cm[i * c + j];
  return n;
}

typedef struct {
  bool has;
  double loss, acc;  // val_loss − train_loss; train_accuracy − val_accuracy (NaN: regression)
} Gap;

static Gap gap_of(const KrtRun *r, const Row *w) {
  if (!w || !w->has_train || !w->has_val)
    return (Gap){0};
  return (Gap){true, w->val_loss - w->train_loss,
               r->cfg.classes > 0 ? w->train_acc - w->val_acc : NAN};
}

static void json_gap(FILE *f, Gap g) {
  if (!g.has) {
    fputs("null", f);
    return;
  }
  fputs("{\"loss\": ", f);
  json_val(f, true, g.loss);
  fputs(", \"accuracy\": ", f);
  json_val(f, true, g.acc);
  fputc('}', f);
}

static void write_report(FILE *f, void *ctx) {
  const KrtRun *r = ctx;
  bool cls = r->cfg.classes > 0;
  const Row *last = r->nrows ? &r->rows[r->nrows - 1] : &(Row){0};
  const Acc *test = &r->acc[KRT_TEST];
  fprintf(f, "{\n  \"epochs\": %lld,\n  \"steps\": %lld,\n  \"stopped\": \"%s\",\n",
          (long long)r->epochs_done, (long long)r->step, stop_reason(r));
  json_num(f, "train_loss", last->has_train, last->train_loss);
  json_num(f, "train_accuracy", last->has_train && cls, last->train_acc);
  json_num(f, "val_loss", last->has_val, last->val_loss);
  json_num(f, "val_accuracy", last->has_val && cls, last->val_acc);
  json_num(f, "test_loss", test->count > 0, test->count ? mean(test) : 0);
  json_num(f, "test_accuracy", test->count > 0 && cls, test->count ? accuracy(test) : 0);
  double seconds = run_seconds(r);
  json_num(f, "samples_per_second", seconds > 0, (double)run_samples(r) / seconds);
  json_num(f, "compile_seconds", true, r->cfg.compile_seconds);
  fprintf(f, "  \"parameters\": %lld,\n  \"seed\": %llu,\n  \"batch\": %lld,\n",
          (long long)r->cfg.parameters, (unsigned long long)r->cfg.seed,
          (long long)r->cfg.batch);
  json_num(f, "best_epoch", r->best_epoch > 0, (double)r->best_epoch);
  fprintf(f, "  \"early_stopped\": %s,\n  \"guard_events\": [", r->early_stopped ? "true" : "false");
  for (int64_t i = 0; i < r->nevents; i++) {
    const GuardEvent *e = &r->events[i];
    fprintf(f, "%s\n    {\"step\": %lld, \"epoch\": %lld, \"reason\": ", i ? "," : "",
            (long long)e->step, (long long)e->epoch);
    krt_json_string(f, e->reason);
    fputs(", \"where\": ", f);
    krt_json_string(f, where_of(e));
    fputs(", \"lr_scale_after\": ", f);
    json_val(f, true, e->lr_scale_after);
    fputc('}', f);
  }
  fputs(r->nevents ? "\n  ],\n  \"lr_reductions\": [" : "],\n  \"lr_reductions\": [", f);
  for (int64_t i = 0; i < r->nreductions; i++) {
    fprintf(f, "%s\n    {\"epoch\": %lld, \"lr_scale\": ", i ? "," : "",
            (long long)r->reductions[i].epoch);
    json_val(f, true, r->reductions[i].lr_scale);
    fputc('}', f);
  }
  fputs(r->nreductions ? "\n  ],\n" : "],\n", f);

  const int64_t *cm = report_cm(r);
  int64_t c = r->cfg.classes;
  fputs("  \"per_class_accuracy\": ", f);
  for (int64_t i = 0; cm && i < c; i++) {
    int64_t n = cm_row(cm, c, i);
    fputs(i ? ", " : "[", f);
    json_val(f, n > 0, n ? (double)cm[i * c + i] / (double)n : 0);
  }
  fputs(cm ? "],\n  \"confusion_matrix\": " : "null,\n  \"confusion_matrix\": ", f);
  for (int64_t i = 0; cm && i < c; i++) {
    fputs(i ? ",\n    [" : "[\n    [", f);
    for (int64_t j = 0; j < c; j++)
      fprintf(f, "%s%lld", j ? ", " : "", (long long)cm[i * c + j]);
    fputc(']', f);
  }
  fputs(cm ? "\n  ],\n" : "null,\n", f);

  fputs("  \"train_val_gap\": ", f);
  if (r->has[KRT_VAL]) {
    fputs("{\"best_epoch\": ", f);
    json_gap(f, gap_of(r, find_row(r, r->best_epoch)));
    fputs(", \"last_epoch\": ", f);
    json_gap(f, gap_of(r, r->nrows ? last : NULL));
    fputs("}\n}\n", f);
  } else {
    fputs("null\n}\n", f);
  }
}

static void print_result(const char *what, bool cls, double loss, double acc) {
  printf("%s loss %.4f", what, loss);
  if (cls)
    printf("  accuracy %.4f", acc);
  printf("\n");
}

// ---------------------------------------------------------------------------------------------
// the summary in plain words, after the numbers

static void print_gap(const KrtRun *r, const Row *best, const Row *last) {
  bool cls = r->cfg.classes > 0;
  Gap b = gap_of(r, best), l = gap_of(r, last);
  if (!b.has || !l.has)
    return;
  bool later = last->epoch > best->epoch;
  bool wide_acc = cls && later && l.acc - b.acc > 0.02;
  bool wide_loss = later && l.loss - b.loss > 0.1 * fabs(best->val_loss);
  const char *what = cls && !(wide_loss && !wide_acc) ? "" : " loss";
  int prec = *what ? 4 : 2;
  double gb = *what ? b.loss : b.acc, gl = *what ? l.loss : l.acc;
  if (wide_acc || wide_loss) {
    printf("the gap between training and validation%s widened from %.*f to %.*f after epoch %lld: "
           "the network started to memorise the training data (overfitting); ",
           what, prec, gb, prec, gl, (long long)best->epoch);
    if (r->restored)
      printf("early stopping kept the weights of epoch %lld\n", (long long)best->epoch);
    else if (early_on(r))
      printf("the saved weights are those of the last epoch\n");
    else
      printf("the saved weights are those of the last epoch (early stopping would keep those of "
             "epoch %lld)\n", (long long)best->epoch);
  } else if (later) {
    printf("the gap between training and validation%s went from %.*f at epoch %lld to %.*f at "
           "epoch %lld: no sign of overfitting\n",
           what, prec, gb, (long long)best->epoch, prec, gl, (long long)last->epoch);
  } else {
    printf("the gap between training and validation%s is %.*f at epoch %lld, the best and the "
           "last\n", what, prec, gl, (long long)last->epoch);
  }
}

static void print_confusion(const KrtRun *r) {
  const int64_t *cm = report_cm(r);
  if (!cm)
    return;
  int64_t c = r->cfg.classes;
  char set[96];
  if (r->cm_set == KRT_TEST)
    snprintf(set, sizeof set, "the test set");
  else if (cm == r->best_cm)
    snprintf(set, sizeof set, "the validation set at epoch %lld, the restored weights",
             (long long)r->best_epoch);
  else
    snprintf(set, sizeof set, "the validation set after epoch %lld",
             (long long)(r->nrows ? r->rows[r->nrows - 1].epoch : 0));
  if (c > CM_PRINT_CLASSES) {
    printf("per-class accuracy and the confusion matrix of %s (%lld classes) are in "
           "report.json\n", set, (long long)c);
    return;
  }
  int64_t max = 0;
  for (int64_t i = 0; i < c * c; i++)
    max = cm[i] > max ? cm[i] : max;
  int lw = digits(c - 1), cw = digits(max) > lw ? digits(max) : lw;
  printf("confusion matrix of %s (rows: true class, columns: predicted class):\n", set);
  printf("  %*s", lw, "");
  for (int64_t j = 0; j < c; j++)
    printf("  %*lld", cw, (long long)j);
  printf("  accuracy\n");
  for (int64_t i = 0; i < c; i++) {
    printf("  %*lld", lw, (long long)i);
    for (int64_t j = 0; j < c; j++)
      printf("  %*lld", cw, (long long)cm[i * c + j]);
    int64_t n = cm_row(cm, c, i);
    if (n)
      printf("  %8.4f\n", (double)cm[i * c + i] / (double)n);
    else
      printf("  %8s\n", "-");
  }
}

// Values of the saved tensors (params, buffers) that are NaN or infinite.
static int64_t nonfinite_weights(const KrtRun *r) {
  int64_t bad = 0;
  for (int k = KRT_PARAM; k <= KRT_BUFFER; k++)
    for (int64_t i = 0; i < r->block_size[k]; i++)
      bad += !isfinite(r->block[k][i]);
  return bad;
}

static void print_guard(const KrtRun *r) {
  if (!r->guard_used && !r->nevents)
    return;
  if (!r->nevents) {
    printf("guard: no step was discarded\n");
    return;
  }
  if (!r->guard_stopped) {
    // guard: 2 steps discarded (steps 412, 980); the learning rate ends at 0.25× the schedule's
    printf("guard: %lld step%s discarded (step%s", (long long)r->nevents,
           r->nevents == 1 ? "" : "s", r->nevents == 1 ? "" : "s");
    for (int64_t i = 0; i < r->nevents && i < 5; i++)
      printf("%s %lld", i ? "," : "", (long long)r->events[i].step);
    printf("%s); the learning rate ends at %g× the schedule's\n", r->nevents > 5 ? ", …" : "",
           r->lr_scale);
    return;
  }
  const GuardEvent *e = &r->events[r->nevents - 1];
  const GuardEvent *first = &r->events[r->nevents - r->guard_run];
  if (r->guard_run == 1)
    printf("\ntraining stopped at step %lld (epoch %lld): the step was discarded (%s",
           (long long)e->step, (long long)e->epoch, e->reason);
  else
    printf("\ntraining stopped at step %lld (epoch %lld): %d steps in a row were discarded "
           "(the last: %s", (long long)e->step, (long long)e->epoch, r->guard_run, e->reason);
  if (where_of(e))
    printf("; first non-finite value: %s", where_of(e));
  printf(").\n");
  printf("What happened: the numbers blew up. The loss or the gradients became NaN or infinite, "
         "or the loss jumped far above its recent values");
  if (r->guard_run > 1)
    printf(", and halving the learning rate %d times did not help", r->guard_run - 1);
  printf(". No discarded step changed the weights.\n");
  if (r->restored)
    printf("The saved weights are those of epoch %lld, the best epoch", (long long)r->best_epoch);
  else
    printf("The saved weights are the last good ones, from before step %lld", (long long)first->step);
  int64_t bad = nonfinite_weights(r);
  if (bad)
    printf(", but %lld of their values are NaN or infinite.\n", (long long)bad);
  else
    printf(", and hold no NaN or infinity.\n");
  printf("What to try:\n"
         "  - a lower learning rate (a tenth of this one is a good start)\n"
         "  - gradient clipping: add `clip norm=1.0` to the train block\n"
         "  - a warmup schedule, e.g. `schedule warmup 500 then cosine`\n"
         "  - checking the data for extreme values (huge inputs or targets, or pixels that "
         "need `scale 1/255`)\n");
}

static void print_summary(const KrtRun *r) {
  const Row *last = r->nrows ? &r->rows[r->nrows - 1] : NULL;
  const Row *best = find_row(r, r->best_epoch);
  bool cls = r->cfg.classes > 0, val = r->has[KRT_VAL];
  if (best) {
    // best epoch: 4 of 7 (val_loss 0.3412, val_accuracy 0.8790)
    printf("best epoch: %lld of %lld (", (long long)best->epoch, (long long)last->epoch);
    if (val && cls)
      printf("val_loss %.4f, val_accuracy %.4f)\n", best->val_loss, best->val_acc);
    else if (val)
      printf("val_loss %.4f)\n", best->val_loss);
    else
      printf("train_loss %.4f)\n", best->train_loss);
  } else if (last) {
    printf("best epoch: none (no epoch had a finite %s)\n", metric_name[r->best_metric]);
  }
  if (val && best)
    print_gap(r, best, last);
  else if (!val && last)
    printf("no validation data: overfitting cannot be seen (`holdout 0.1` in the data block "
           "would show it)\n");
  if (early_on(r) && last) {
    if (r->early_stopped) {
      printf("early stopping fired after epoch %lld: %s had not improved",
             (long long)last->epoch, metric_name[r->best_metric]);
      if (r->cfg.early_min_delta > 0)
        printf(" by more than %g", r->cfg.early_min_delta);
      printf(" for %d epoch%s", r->cfg.early_patience, r->cfg.early_patience == 1 ? "" : "s");
    } else {
      printf("early stopping did not fire");
    }
    if (r->restored)
      printf("; the weights of epoch %lld were %s\n", (long long)r->best_epoch,
             r->best_epoch == last->epoch ? "kept" : "restored");
    else
      printf("; the last weights were kept\n");
  }
  if (r->nreductions) {
    // on_plateau reduced the learning rate after epochs 5, 9; it ends at 0.01× the schedule's
    printf("on_plateau reduced the learning rate after epoch%s", r->nreductions == 1 ? "" : "s");
    for (int64_t i = 0; i < r->nreductions; i++)
      printf("%s %lld", i ? "," : "", (long long)r->reductions[i].epoch);
    printf("; it ends at %g× the schedule's\n", r->lr_scale);
  }
  print_confusion(r);
  print_guard(r);
}

// trained 3 epochs (938 steps) in 7.4s, 24310 samples/s
static void print_trained(const KrtRun *r) {
  double seconds = run_seconds(r);
  printf("trained %lld epoch%s (%lld step%s) in %.1fs", (long long)r->epochs_done,
         r->epochs_done == 1 ? "" : "s", (long long)r->step, r->step == 1 ? "" : "s", seconds);
  if (seconds > 0)
    printf(", %.0f samples/s", (double)run_samples(r) / seconds);
  printf("\n");
}

// An interrupted run: last.safetensors (current), metrics.csv and report.json so far, and how
// to go on; no final.safetensors.
static int finish_interrupted(KrtRun *r, const char *dir, const char *csv, const char *json) {
  char *last = join(dir, "last.safetensors");
  if (!r->ckpt_fresh)
    write_last(r);
  krt_write_atomic(csv, write_metrics, r);
  krt_write_atomic(json, write_report, r);
  print_trained(r);
  printf("wrote %s, metrics.csv, report.json\n", last);
  // where the checkpoint stands: inside an epoch, or at the boundary after one
  int64_t epoch = r->epoch_closed ? r->epoch + 1 : r->epoch;
  int64_t batch = r->epoch_closed ? 0 : r->batch_done;
  if (batch == 0 && epoch > 0)
    printf("interrupted at step %lld (after epoch %lld)", (long long)r->step, (long long)epoch);
  else
    printf("interrupted at step %lld (epoch %lld)", (long long)r->step, (long long)epoch + 1);
  if (r->cfg.resume_hint)
    printf("; to continue: %s --resume %s\n", r->cfg.resume_hint, last);
  else
    printf("; to continue: keel run %s --resume %s\n", r->cfg.script ? r->cfg.script : "SCRIPT",
           last);
  fflush(stdout);
  free(last);
  return 130;
}

int krt_finish(KrtRun *r) {
  const char *dir = r->cfg.out_dir ? r->cfg.out_dir : ".";
  mkdir_p(dir);
  char *st = join(dir, "final.safetensors"), *csv = join(dir, "metrics.csv");
  char *json = join(dir, "report.json");
  if (r->interrupted) {
    int status = finish_interrupted(r, dir, csv, json);
    free(st);
    free(csv);
    free(json);
    return status;
  }

  write_checkpoint(r, st);
  krt_write_atomic(csv, write_metrics, r);
  krt_write_atomic(json, write_report, r);

  bool cls = r->cfg.classes > 0;
  print_trained(r);
  const Row *last = r->nrows ? &r->rows[r->nrows - 1] : NULL;
  if (last && last->has_train)
    print_result("train", cls, last->train_loss, last->train_acc);
  if (last && last->has_val)
    print_result("val  ", cls, last->val_loss, last->val_acc);
  if (r->acc[KRT_TEST].count > 0)
    print_result("test ", cls, mean(&r->acc[KRT_TEST]), accuracy(&r->acc[KRT_TEST]));
  printf("wrote %s, metrics.csv, report.json\n", st);
  print_summary(r);
  fflush(stdout);
  free(st);
  free(csv);
  free(json);
  return r->guard_stopped ? 3 : 0;
}

// ---------------------------------------------------------------------------------------------
// exact checkpoints and resume
//
// last.safetensors holds every tensor by name, params, buffers and optimizer state in that
// order (with early stopping, once there is a best epoch, also its copy of each as
// "best/<name>"), and in its metadata keel_program (the program's hash) and keel_state: a
// JSON object with everything else the rest of the run depends on. Doubles are printed with
// %.17g (the non-finite ones as the strings "nan", "inf", "-inf"), so each comes back bit for
// bit. The state is at an epoch boundary (epoch: the next epoch to run, from 0; batch 0), or
// inside an epoch an interrupt left open (batch: its training batches done; epoch_sums: its
// partial sums). Random numbers are functions of the seed and the step, and the order of an
// epoch of the seed and the epoch, so the step and the cursor are all the "RNG state" there is.

enum { STATE_VERSION = 2 };  // 2: the data fingerprint in 8 lanes

static void put_double(FILE *f, double v) {
  if (isfinite(v))
    fprintf(f, "%.17g", v);
  else
    fputs(isnan(v) ? "\"nan\"" : v > 0 ? "\"inf\"" : "\"-inf\"", f);
}

static void put_counts(FILE *f, const char *key, const int64_t *v, int64_t n) {
  fprintf(f, ",\"%s\":[", key);
  for (int64_t i = 0; i < n; i++)
    fprintf(f, "%s%lld", i ? "," : "", (long long)v[i]);
  fputc(']', f);
}

static uint32_t float_bits(float v) {
  uint32_t bits;
  memcpy(&bits, &v, sizeof bits);
  return bits;
}

// A fingerprint of the training set as loaded (after scale and holdout): a resumed run must
// see the same samples. Value i goes into lane i mod 8 (eight independent chains of the mix,
// which the CPU runs side by side: Fashion-MNIST's 47 million values in about 0.03 s instead
// of 0.2), then the lanes into one.
static uint64_t train_fingerprint(KrtRun *r) {
  if (r->data_hashed)
    return r->data_hash;
  const KrtSet *s = &r->set[TRAIN];
  uint64_t h = krt_hash((uint64_t)s->n, (uint64_t)s->features << 20 | (uint64_t)s->ydim);
  uint64_t lane[8];
  for (int k = 0; k < 8; k++)
    lane[k] = krt_mix(h, (uint64_t)k);
  int64_t nx = s->n * s->features, i = 0;
  if (s->x8)
    for (; i + 8 <= nx; i += 8)
      for (int k = 0; k < 8; k++)
        lane[k] = krt_mix(lane[k], float_bits((float)s->x8[i + k] * s->x8_scale));
  else
    for (; i + 8 <= nx; i += 8)
      for (int k = 0; k < 8; k++)
        lane[k] = krt_mix(lane[k], float_bits(s->x[i + k]));
  for (int k = 0; i < nx; i++, k++)
    lane[k] = krt_mix(lane[k], float_bits(krt_set_value(s, i)));
  for (int k = 0; k < 8; k++)
    h = krt_mix(h, lane[k]);
  for (int64_t e = 0; e < s->n * s->ydim; e++)
    h = krt_hash(h, float_bits(s->y[e]));
  r->data_hashed = true;
  r->data_hash = h;
  return h;
}

// keel_state: malloc'd JSON text.
static char *state_json(KrtRun *r) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  if (!f)
    krt_fail("out of memory writing a checkpoint");
  bool boundary = r->epoch_closed;
  Acc sums = boundary ? (Acc){0} : r->acc[TRAIN];
  fprintf(f, "{\"version\":%d,\"seed\":\"%llu\",\"batch_size\":%lld,", STATE_VERSION,
          (unsigned long long)r->cfg.seed, (long long)r->cfg.batch);
  fprintf(f, "\"data\":{\"samples\":%lld,\"batches\":%lld,\"hash\":\"%016llx\"},",
          (long long)r->set[TRAIN].n, (long long)r->nb,
          (unsigned long long)train_fingerprint(r));
  fprintf(f, "\"epochs\":%lld,\"total_steps\":%lld,\"threads\":%d,", (long long)krt_epochs(r),
          (long long)krt_total_steps(r), r->cfg.threads);
  fprintf(f, "\"step\":%lld,\"epoch\":%lld,\"batch\":%lld,\"epochs_done\":%lld,\"lr\":",
          (long long)r->step, (long long)(boundary ? r->epoch + 1 : r->epoch),
          (long long)(boundary ? 0 : r->batch_done), (long long)r->epochs_done);
  put_double(f, r->lr);
  fputs(",\"epoch_sums\":{\"loss\":", f);
  put_double(f, sums.loss);
  fprintf(f, ",\"samples\":%lld,\"correct\":%lld,\"seconds\":", (long long)sums.count,
          (long long)sums.correct);
  put_double(f, boundary ? 0 : r->part_seconds);
  fputs("},\"train_seconds\":", f);
  put_double(f, r->train_seconds);
  fprintf(f, ",\"train_samples\":%lld,\"lr_scale\":", (long long)r->train_samples);
  put_double(f, r->lr_scale);
  fprintf(f, ",\"best_epoch\":%lld,\"best\":", (long long)r->best_epoch);
  put_double(f, r->best);
  fprintf(f, ",\"wait\":%lld,\"early_stopped\":%s,\"plateau_best\":", (long long)r->wait,
          r->early_stopped ? "true" : "false");
  put_double(f, r->plateau_best);
  fprintf(f, ",\"plateau_bad\":%lld,\"lr_reductions\":[", (long long)r->plateau_bad);
  for (int64_t i = 0; i < r->nreductions; i++) {
    fprintf(f, "%s{\"epoch\":%lld,\"lr_scale\":", i ? "," : "", (long long)r->reductions[i].epoch);
    put_double(f, r->reductions[i].lr_scale);
    fputc('}', f);
  }
  fprintf(f, "],\"guard\":{\"used\":%s,\"stopped\":%s,\"good_steps\":%lld,\"run\":%d,\"recent\":[",
          r->guard_used ? "true" : "false", r->guard_stopped ? "true" : "false",
          (long long)r->good_steps, r->guard_run);
  for (int64_t i = 0; i < r->good_steps && i < RECENT; i++) {
    fputs(i ? "," : "", f);
    put_double(f, r->recent[i]);
  }
  fputs("],\"events\":[", f);
  for (int64_t i = 0; i < r->nevents; i++) {
    const GuardEvent *e = &r->events[i];
    fprintf(f, "%s{\"step\":%lld,\"epoch\":%lld,\"reason\":", i ? "," : "", (long long)e->step,
            (long long)e->epoch);
    krt_json_string(f, e->reason);
    fputs(",\"where\":", f);
    krt_json_string(f, where_of(e));
    fputs(",\"lr_scale_after\":", f);
    put_double(f, e->lr_scale_after);
    fputc('}', f);
  }
  fputs("]},\"rows\":[", f);
  for (int64_t i = 0; i < r->nrows; i++) {
    const Row *w = &r->rows[i];
    fprintf(f, "%s{\"epoch\":%lld,\"step\":%lld,\"lr\":", i ? "," : "", (long long)w->epoch,
            (long long)w->step);
    put_double(f, w->lr);
    const char *key[2][2] = {{"train_loss", "train_accuracy"}, {"val_loss", "val_accuracy"}};
    double v[2][2] = {{w->train_loss, w->train_acc}, {w->val_loss, w->val_acc}};
    bool has[2] = {w->has_train, w->has_val};
    for (int s = 0; s < 2; s++)
      for (int j = 0; j < 2; j++) {
        fprintf(f, ",\"%s\":", key[s][j]);
        if (has[s])
          put_double(f, v[s][j]);
        else
          fputs("null", f);
      }
    fputs(",\"seconds\":", f);
    put_double(f, w->seconds);
    fputc('}', f);
  }
  fputs("],\"optimizer_state\":[", f);
  for (int i = 0, n = 0; i < r->cfg.ntensors; i++)
    if (r->tensors[i].kind == KRT_STATE) {
      fputs(n++ ? "," : "", f);
      krt_json_string(f, r->tensors[i].name);
    }
  fputc(']', f);
  int64_t c = r->cfg.classes;
  if (r->cm_set == KRT_VAL)  // the last val evaluation's matrix is the report's, if it ends here
    put_counts(f, "cm", r->cm, c * c);
  if (r->best_cm)
    put_counts(f, "best_cm", r->best_cm, c * c);
  fputc('}', f);
  if (fclose(f) != 0)
    krt_fail("out of memory writing a checkpoint");
  return text;
}

// last.safetensors in out_dir, atomically, from the state as it is now.
static void write_last(KrtRun *r) {
  const char *dir = r->cfg.out_dir ? r->cfg.out_dir : ".";
  mkdir_p(dir);
  char *path = join(dir, "last.safetensors");
  int nt = r->cfg.ntensors;
  bool best = early_on(r) && r->best_epoch > 0;
  KrtNamedTensor *t = krt_xmalloc((size_t)(2 * nt + 1) * sizeof(KrtNamedTensor));
  char **names = krt_xmalloc((size_t)(nt + 1) * sizeof(char *));
  int n = 0;
  for (int pass = 0; pass < (best ? 2 : 1); pass++)
    for (int k = 0; k < NKINDS; k++)
      for (int i = 0; i < nt; i++) {
        const KrtTensorDesc *d = &r->tensors[i];
        if (d->kind != k)
          continue;
        KrtNamedTensor *nt_ = &t[n++];
        *nt_ = (KrtNamedTensor){.name = d->name, .rank = d->rank, .data = r->data[i]};
        memcpy(nt_->dim, d->dim, sizeof d->dim);
        if (pass) {
          names[i] = join("best", d->name);
          nt_->name = names[i];
          nt_->data = r->best_block[k] + (r->data[i] - r->block[k]);
        }
      }
  char *state = state_json(r);
  const char *meta[] = {"format", "pt", "producer", "keel", "keel_program",
                        r->cfg.program_hash ? r->cfg.program_hash : "unknown",
                        "keel_state", state};
  krt_st_write(path, t, n, meta, 4);
  r->ckpt_fresh = true;
  for (int i = 0; i < nt; i++)
    free(names[i]);
  free(names);
  free(t);
  free(state);
  free(path);
}

// Reading keel_state: every field must be there and of its type; numbers may be the strings
// of the non-finite values.
_Noreturn static void bad_state(const char *path, const char *key) {
  krt_fail("%s: bad checkpoint state: '%s' is missing or malformed", path, key);
}

static const cJSON *jitem(const char *path, const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v)
    bad_state(path, key);
  return v;
}

static double jnum(const char *path, const cJSON *o, const char *key) {
  const cJSON *v = jitem(path, o, key);
  if (cJSON_IsNumber(v))
    return v->valuedouble;
  if (cJSON_IsString(v) && strcmp(v->valuestring, "nan") == 0)
    return NAN;
  if (cJSON_IsString(v) && strcmp(v->valuestring, "inf") == 0)
    return INFINITY;
  if (cJSON_IsString(v) && strcmp(v->valuestring, "-inf") == 0)
    return -INFINITY;
  bad_state(path, key);
}

static int64_t jint(const char *path, const cJSON *o, const char *key, int64_t min) {
  double d = jnum(path, o, key);
  if (!(d == floor(d) && d >= (double)min && d <= 9007199254740992.0))
    bad_state(path, key);
  return (int64_t)d;
}

static bool jbool(const char *path, const cJSON *o, const char *key) {
  const cJSON *v = jitem(path, o, key);
  if (!cJSON_IsBool(v))
    bad_state(path, key);
  return cJSON_IsTrue(v);
}

static const char *jstr(const char *path, const cJSON *o, const char *key) {
  const cJSON *v = jitem(path, o, key);
  if (!cJSON_IsString(v))
    bad_state(path, key);
  return v->valuestring;
}

static const cJSON *jobj(const char *path, const cJSON *o, const char *key, bool array) {
  const cJSON *v = jitem(path, o, key);
  if (array ? !cJSON_IsArray(v) : !cJSON_IsObject(v))
    bad_state(path, key);
  return v;
}

static void jcounts(const char *path, const cJSON *o, const char *key, int64_t *out, int64_t n) {
  const cJSON *a = jobj(path, o, key, true);
  if (cJSON_GetArraySize(a) != n)
    bad_state(path, key);
  int64_t i = 0;
  for (const cJSON *v = a->child; v; v = v->next, i++) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble != floor(v->valuedouble))
      bad_state(path, key);
    out[i] = (int64_t)v->valuedouble;
  }
}

static bool listed(const cJSON *names, const char *name) {
  for (const cJSON *v = names->child; v; v = v->next)
    if (cJSON_IsString(v) && strcmp(v->valuestring, name) == 0)
      return true;
  return false;
}

static bool run_has(const KrtRun *r, const char *name) {
  for (int i = 0; i < r->cfg.ntensors; i++)
    if (strcmp(r->tensors[i].name, name) == 0)
      return true;
  return false;
}

// Fails unless the checkpoint's tensor c (named name) is F32 of the shape of t. what: "network"
// or "program"; differ: what another shape means.
static void check_shape(const char *path, const char *name, const KrtStTensor *c,
                        const KrtTensorDesc *t, const char *what, const char *differ) {
  if (strcmp(c->dtype, "F32") != 0)
    krt_fail("%s: tensor %s has dtype %s, expected F32", path, name, c->dtype);
  bool same = c->rank == t->rank;
  for (int d = 0; same && d < c->rank; d++)
    same = c->dim[d] == t->dim[d];
  if (!same) {
    char got[160], want[160];
    krt_fail("%s: the checkpoint's %s is %s but this %s's is %s (%s)", path, name,
             krt_shape_text(got, sizeof got, c->rank, c->dim), what,
             krt_shape_text(want, sizeof want, t->rank, t->dim), differ);
  }
}

// What the checkpoint keeps for the parameter of optimizer state `name` (the name less its
// last part): "; it has A", "; it has A and B", ...; or ", which keeps no state" when it holds
// no optimizer state at all.
static void state_alternatives(char *buf, size_t size, const KrtStFile *f, const cJSON *states,
                               const char *name) {
  const char *dot = strrchr(name, '.');
  size_t owner = dot ? (size_t)(dot - name) + 1 : 0;
  int total = 0, n = 0;
  const char *found[64];
  for (int j = 0; j < f->count; j++) {
    const char *c = f->t[j].name;
    if (strncmp(c, "best/", 5) == 0 || !listed(states, c))
      continue;
    total++;
    if (owner && strncmp(c, name, owner) == 0 && !strchr(c + owner, '.') && n < 64)
      found[n++] = c;
  }
  buf[0] = 0;
  if (!total) {
    snprintf(buf, size, ", which keeps no state");
    return;
  }
  size_t len = 0;
  for (int i = 0; i < n && len < size; i++)
    len += (size_t)snprintf(buf + len, size - len, "%s%s", i == 0 ? "; it has " : i == n - 1 ? " and " : ", ",
                            found[i]);
}

// The network first (params and buffers, both ways), then the optimizer's state: the first
// difference, in words.
static void check_tensors(const KrtRun *r, const char *path, const KrtStFile *f,
                          const cJSON *states) {
  for (int pass = 0; pass < 2; pass++) {
    bool opt = pass == 1;
    for (int i = 0; i < r->cfg.ntensors; i++) {
      const KrtTensorDesc *t = &r->tensors[i];
      if ((t->kind == KRT_STATE) != opt)
        continue;
      const KrtStTensor *c = krt_st_find(f, t->name);
      if (!c && !opt)
        krt_fail("%s: this network has %s, which the checkpoint lacks (a different model)", path,
                 t->name);
      if (!c) {
        char alt[1024];
        state_alternatives(alt, sizeof alt, f, states, t->name);
        krt_fail("%s: this program needs the optimizer state %s, which the checkpoint lacks (it "
                 "was trained with another optimizer%s)", path, t->name, alt);
      }
      check_shape(path, t->name, c, t, opt ? "program" : "network",
                  opt ? "a different optimizer" : "a different model");
    }
    for (int j = 0; j < f->count; j++) {
      const char *name = f->t[j].name;
      if (strncmp(name, "best/", 5) == 0 || listed(states, name) != opt || run_has(r, name))
        continue;
      if (opt)
        krt_fail("%s: the checkpoint has the optimizer state %s, which this program does not use "
                 "(it was trained with another optimizer)", path, name);
      krt_fail("%s: the checkpoint has %s, which this network lacks (a different model)", path,
               name);
    }
  }
}

// The seed, the batch size and the training set: what the order of the samples depends on.
static void check_data(KrtRun *r, const char *path, const cJSON *st) {
  char seed[32];
  snprintf(seed, sizeof seed, "%llu", (unsigned long long)r->cfg.seed);
  const char *saved = jstr(path, st, "seed");
  if (strcmp(saved, seed) != 0)
    krt_fail("%s: the checkpoint was trained with seed %s, this run has seed %s (a resumed run "
             "must keep its seed)", path, saved, seed);
  int64_t batch = jint(path, st, "batch_size", 1);
  if (batch != r->cfg.batch)
    krt_fail("%s: the checkpoint was trained with batch %lld, this run has batch %lld (a resumed "
             "run must keep its batch size)", path, (long long)batch, (long long)r->cfg.batch);
  const cJSON *data = jobj(path, st, "data", false);
  int64_t n = jint(path, data, "samples", 0);
  if (n != r->set[TRAIN].n)
    krt_fail("%s: the checkpoint was trained on other data (%lld training samples, this run has "
             "%lld)", path, (long long)n, (long long)r->set[TRAIN].n);
  char hash[32];
  snprintf(hash, sizeof hash, "%016llx", (unsigned long long)train_fingerprint(r));
  if (strcmp(jstr(path, data, "hash"), hash) != 0)
    krt_fail("%s: the checkpoint was trained on other data (as many training samples, %lld, but "
             "other values)", path, (long long)n);
}

static void load_state(KrtRun *r, const char *path, const cJSON *st) {
  r->step = jint(path, st, "step", 0);
  r->epoch = jint(path, st, "epoch", 0);
  r->batch_done = jint(path, st, "batch", 0);
  if (r->batch_done > r->nb)
    bad_state(path, "batch");
  r->epochs_done = jint(path, st, "epochs_done", 0);
  r->lr = (float)jnum(path, st, "lr");
  const cJSON *sums = jobj(path, st, "epoch_sums", false);
  r->acc[TRAIN] = (Acc){jnum(path, sums, "loss"), jint(path, sums, "samples", 0),
                        jint(path, sums, "correct", 0)};
  r->part_seconds = jnum(path, sums, "seconds");
  r->train_seconds = jnum(path, st, "train_seconds");
  r->train_samples = jint(path, st, "train_samples", 0);
  r->lr_scale = jnum(path, st, "lr_scale");
  r->best_epoch = jint(path, st, "best_epoch", 0);
  r->best = jnum(path, st, "best");
  r->wait = jint(path, st, "wait", 0);
  r->early_stopped = jbool(path, st, "early_stopped");
  r->plateau_best = jnum(path, st, "plateau_best");
  r->plateau_bad = jint(path, st, "plateau_bad", 0);
  r->nreductions = 0;
  for (const cJSON *e = jobj(path, st, "lr_reductions", true)->child; e; e = e->next) {
    r->reductions = grow(r->reductions, &r->cap_reductions, r->nreductions, sizeof(Reduction));
    r->reductions[r->nreductions++] =
        (Reduction){jint(path, e, "epoch", 1), jnum(path, e, "lr_scale")};
  }

  const cJSON *g = jobj(path, st, "guard", false);
  r->guard_used = jbool(path, g, "used");
  r->guard_stopped = jbool(path, g, "stopped");
  r->good_steps = jint(path, g, "good_steps", 0);
  r->guard_run = (int)jint(path, g, "run", 0);
  const cJSON *recent = jobj(path, g, "recent", true);
  int m = r->good_steps < RECENT ? (int)r->good_steps : RECENT, i = 0;
  if (cJSON_GetArraySize(recent) != m)
    bad_state(path, "recent");
  for (const cJSON *v = recent->child; v; v = v->next, i++) {
    if (!cJSON_IsNumber(v))
      bad_state(path, "recent");
    r->recent[i] = (float)v->valuedouble;
  }
  r->nevents = 0;
  for (const cJSON *e = jobj(path, g, "events", true)->child; e; e = e->next) {
    r->events = grow(r->events, &r->cap_events, r->nevents, sizeof(GuardEvent));
    GuardEvent *ev = &r->events[r->nevents++];
    *ev = (GuardEvent){.step = jint(path, e, "step", 1), .epoch = jint(path, e, "epoch", 1),
                       .lr_scale_after = jnum(path, e, "lr_scale_after")};
    snprintf(ev->reason, sizeof ev->reason, "%s", jstr(path, e, "reason"));
    const cJSON *where = jitem(path, e, "where");
    if (!cJSON_IsNull(where))
      snprintf(ev->where, sizeof ev->where, "%s", jstr(path, e, "where"));
  }

  r->nrows = 0;
  for (const cJSON *e = jobj(path, st, "rows", true)->child; e; e = e->next) {
    r->rows = grow(r->rows, &r->cap_rows, r->nrows, sizeof(Row));
    Row *w = &r->rows[r->nrows++];
    *w = (Row){.epoch = jint(path, e, "epoch", 1), .step = jint(path, e, "step", 0),
               .lr = jnum(path, e, "lr"), .seconds = jnum(path, e, "seconds")};
    w->has_train = !cJSON_IsNull(jitem(path, e, "train_loss"));
    w->has_val = !cJSON_IsNull(jitem(path, e, "val_loss"));
    if (w->has_train) {
      w->train_loss = jnum(path, e, "train_loss");
      w->train_acc = jnum(path, e, "train_accuracy");
    }
    if (w->has_val) {
      w->val_loss = jnum(path, e, "val_loss");
      w->val_acc = jnum(path, e, "val_accuracy");
    }
  }
  int64_t c = r->cfg.classes;
  if (r->cm_set == KRT_VAL)
    jcounts(path, st, "cm", r->cm, c * c);
  if (r->best_cm)
    jcounts(path, st, "best_cm", r->best_cm, c * c);
  r->resume_pending = r->batch_done > 0;
  r->epoch_closed = false;
  r->ckpt_fresh = false;  // out_dir's last.safetensors is written anew
}

// Every tensor, and with early stopping the best epoch's copies.
static void load_tensors(KrtRun *r, const char *path, const KrtStFile *f) {
  for (int i = 0; i < r->cfg.ntensors; i++) {
    const KrtStTensor *c = krt_st_find(f, r->tensors[i].name);
    memcpy(r->data[i], c->data, (size_t)c->bytes);
  }
  if (!early_on(r) || r->best_epoch == 0)
    return;
  for (int i = 0; i < r->cfg.ntensors; i++) {
    const KrtTensorDesc *t = &r->tensors[i];
    char *name = join("best", t->name);
    const KrtStTensor *c = krt_st_find(f, name);
    if (!c)
      krt_fail("%s: the checkpoint lacks %s, the best epoch's copy of %s (early stopping was off "
               "when it was written)", path, name, t->name);
    check_shape(path, name, c, t, "network", "a different model");
    int k = t->kind;
    memcpy(r->best_block[k] + (r->data[i] - r->block[k]), c->data, (size_t)c->bytes);
    free(name);
  }
}

void krt_resume(KrtRun *r, const char *path) {
  KrtStFile f = krt_st_load(path);
  const char *text = krt_st_meta(&f, "keel_state");
  if (!text)
    krt_fail("%s: not a checkpoint to resume from (its metadata has no keel_state; "
             "final.safetensors and best.safetensors hold weights only, which --init starts a new "
             "run from)", path);
  cJSON *st = cJSON_Parse(text);
  if (!cJSON_IsObject(st))
    krt_fail("%s: bad checkpoint state: keel_state is not a JSON object", path);
  int64_t version = jint(path, st, "version", 0);
  if (version != STATE_VERSION)
    krt_fail("%s: checkpoint state version %lld; this runtime reads version %d", path,
             (long long)version, STATE_VERSION);

  check_tensors(r, path, &f, jobj(path, st, "optimizer_state", true));
  check_data(r, path, st);
  const char *program = krt_st_meta(&f, "keel_program");
  const char *mine = r->cfg.program_hash ? r->cfg.program_hash : "unknown";
  int64_t nb = jint(path, jobj(path, st, "data", false), "batches", 0);
  if (strcmp(program ? program : "unknown", mine) != 0 || nb != r->nb)
    krt_fail("%s: written by a different program (the same tensors, but the loss, schedule or "
             "settings differ)", path);

  load_state(r, path, st);
  load_tensors(r, path, &f);
  if (r->batch_done > 0)
    printf("resuming from %s: epoch %lld, batch %lld of %lld (step %lld)\n", path,
           (long long)r->epoch + 1, (long long)r->batch_done, (long long)r->nb,
           (long long)r->step);
  else if (r->epoch > 0)
    printf("resuming from %s after epoch %lld (step %lld)\n", path, (long long)r->epoch,
           (long long)r->step);
  else
    printf("resuming from %s at the start\n", path);
  int64_t planned = jint(path, st, "total_steps", 0);
  if (planned != krt_total_steps(r))
    printf("note: the checkpoint's run was to train %lld steps, this one %lld; a schedule over "
           "the whole run follows the new count\n", (long long)planned,
           (long long)krt_total_steps(r));
  int64_t threads = jint(path, st, "threads", 0);
  if (threads != r->cfg.threads)  // matrix products may round differently
    printf("note: the checkpoint's run used --threads %lld, this one %d; the weights will not be "
           "bit-identical to an uninterrupted run's\n", (long long)threads, r->cfg.threads);
  fflush(stdout);
  cJSON_Delete(st);
  krt_st_close(&f);
}

int64_t krt_first_epoch(KrtRun *r) {
  // nothing left to train: interrupted before the loop, or a checkpoint of a run whose training
  // had ended (early stopping, the guard, the step limit; the epoch count ends the loop itself)
  if (poll_interrupt(r) || r->early_stopped ||
      (!r->resume_pending && (step_limit(r) || r->guard_stopped)))
    return krt_epochs(r);
  return r->epoch;
}

int64_t krt_first_batch(KrtRun *r) {
  // an epoch resumed after its training ended (step limit, guard) only evaluates and closes
  if (poll_interrupt(r) || step_limit(r) || r->guard_stopped)
    return r->nb;
  return r->batch0;
}
