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

#include "keelrt.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
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
  const char *where;    // the first probe holding a non-finite value, or NULL
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
};

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
    openblas_set_num_threads(cfg->threads);

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
  return r;
}

void krt_run_free(KrtRun *r) {
  if (!r)
    return;
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
  r->epoch = epoch;
  if (r->cfg.shuffle) {
    krt_permutation(r->perm, r->set[TRAIN].n, krt_hash(r->cfg.seed, 2000 + (uint64_t)epoch));
  } else {
    for (int64_t i = 0; i < r->set[TRAIN].n; i++)
      r->perm[i] = i;
  }
  r->acc[TRAIN] = r->acc[KRT_VAL] = (Acc){0};
  r->epoch_steps = 0;
  r->t_epoch = r->t_last_step = r->t_progress = krt_now();
  return r->nb;
}

static void copy_rows(const KrtSet *s, const int64_t *order, int64_t first, int64_t rows,
                      float *x, float *y) {
  for (int64_t i = 0; i < rows; i++) {
    int64_t k = order ? order[first + i] : first + i;
    memcpy(x + i * s->features, s->x + k * s->features, (size_t)s->features * sizeof(float));
    memcpy(y + i * s->ydim, s->y + k * s->ydim, (size_t)s->ydim * sizeof(float));
  }
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
  if (e->where)
    printf(" (first non-finite value: %s)", e->where);
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
  r->t_last_step = krt_now();
  if (r->tty && r->t_last_step - r->t_progress >= PROGRESS_EVERY) {
    int64_t epochs = krt_epochs(r);
    printf("\repoch %*lld/%lld  batch %lld/%lld", digits(epochs), (long long)r->epoch + 1,
           (long long)epochs, (long long)r->epoch_steps, (long long)r->nb);
    if (r->acc[TRAIN].count > 0)
      printf("  loss %.4f", r->acc[TRAIN].loss / (double)r->acc[TRAIN].count);
    printf("\033[K");
    fflush(stdout);
    r->t_progress = r->t_last_step;
  }
  return step_limit(r) || r->guard_stopped;
}

static const KrtSet *eval_set(KrtRun *r, int which) {
  if (which != KRT_VAL && which != KRT_TEST)
    krt_fail("unknown evaluation set %d", which);
  return &r->set[which];
}

int64_t krt_eval_begin(KrtRun *r, int which) {
  const KrtSet *s = eval_set(r, which);
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

int krt_epoch_end(KrtRun *r) {
  double now = krt_now();
  double train_time = r->epoch_steps ? r->t_last_step - r->t_epoch : 0;
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
  fflush(stdout);
  return step_limit(r) || r->epochs_done >= epochs || early_stop || r->guard_stopped;
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
  else if (r->cfg.spike_factor > 0 && r->good_steps >= SPIKE_MIN_STEPS) {
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
  *e = (GuardEvent){.step = r->step + 1, .epoch = r->epoch + 1,
                    .where = first_nonfinite(r, n), .lr_scale_after = r->lr_scale};
  memcpy(e->reason, reason, sizeof reason);
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

static void json_str(FILE *f, const char *s) {
  if (!s) {
    fputs("null", f);
    return;
  }
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\')
      fprintf(f, "\\%c", *p);
    else if (*p < 0x20)
      fprintf(f, "\\u%04x", *p);
    else
      fputc(*p, f);
  }
  fputc('"', f);
}

static const char *stop_reason(const KrtRun *r) {
  return r->guard_stopped  ? "guard"
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
  json_num(f, "samples_per_second", r->train_seconds > 0,
           (double)r->train_samples / r->train_seconds);
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
    json_str(f, e->reason);
    fputs(", \"where\": ", f);
    json_str(f, e->where);
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
  if (e->where)
    printf("; first non-finite value: %s", e->where);
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

int krt_finish(KrtRun *r) {
  const char *dir = r->cfg.out_dir ? r->cfg.out_dir : ".";
  mkdir_p(dir);
  char *st = join(dir, "final.safetensors"), *csv = join(dir, "metrics.csv");
  char *json = join(dir, "report.json");

  write_checkpoint(r, st);
  krt_write_atomic(csv, write_metrics, r);
  krt_write_atomic(json, write_report, r);

  // trained 3 epochs (938 steps) in 7.4s, 24310 samples/s
  bool cls = r->cfg.classes > 0;
  printf("trained %lld epoch%s (%lld step%s) in %.1fs", (long long)r->epochs_done,
         r->epochs_done == 1 ? "" : "s", (long long)r->step, r->step == 1 ? "" : "s",
         r->train_seconds);
  if (r->train_seconds > 0)
    printf(", %.0f samples/s", (double)r->train_samples / r->train_seconds);
  printf("\n");
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
