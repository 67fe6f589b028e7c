// run.c — one training run: data, persistent tensors, batches, metrics, progress and report.
//
// Key idea: the generated training loop owns the math and this file owns the bookkeeping.
// The loop asks for batches (krt_train_batch copies rows of a seeded per-epoch permutation
// into its buffers) and reports each step's loss and outputs back (krt_train_step_end);
// everything else (loss and accuracy sums, the step limit, timing, the progress line, the
// metrics table and the files of krt_finish) lives here, behind the opaque KrtRun.
// Persistent tensors live in one allocation per kind (params, buffers, states), in the
// order of cfg->tensors, contiguous and without padding.

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
  r->nb = (r->set[TRAIN].n + cfg->batch - 1) / cfg->batch;
  r->perm = krt_xmalloc((size_t)r->set[TRAIN].n * sizeof(int64_t));

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
  r->tty = isatty(1);
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
  int64_t rows = batch_rows(r, r->set[TRAIN].n, b, "training");
  copy_rows(&r->set[TRAIN], r->perm, b * r->cfg.batch, rows, x, y);
  return rows;
}

static void accumulate(const KrtRun *r, Acc *a, float loss, const float *out, const float *y,
                       int64_t n) {
  a->loss += (double)loss * (double)n;
  a->count += n;
  int64_t c = r->cfg.classes;
  if (c <= 0 || !out || !y)
    return;
  for (int64_t i = 0; i < n; i++) {
    const float *o = out + i * c;
    int64_t best = 0;
    for (int64_t j = 1; j < c; j++)
      if (o[j] > o[best])  // the first maximum wins
        best = j;
    a->correct += best == (int64_t)y[i];
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

int krt_train_step_end(KrtRun *r, float loss, const float *out, const float *y, int64_t n,
                       float lr) {
  accumulate(r, &r->acc[TRAIN], loss, out, y, n);
  r->lr = lr;
  r->step++;
  r->epoch_steps++;
  r->t_last_step = krt_now();
  if (r->tty && r->t_last_step - r->t_progress >= PROGRESS_EVERY) {
    int64_t epochs = krt_epochs(r);
    printf("\repoch %*lld/%lld  batch %lld/%lld  loss %.4f\033[K", digits(epochs),
           (long long)r->epoch + 1, (long long)epochs, (long long)r->epoch_steps,
           (long long)r->nb, r->acc[TRAIN].loss / (double)r->acc[TRAIN].count);
    fflush(stdout);
    r->t_progress = r->t_last_step;
  }
  return step_limit(r);
}

static const KrtSet *eval_set(KrtRun *r, int which) {
  if (which != KRT_VAL && which != KRT_TEST)
    krt_fail("unknown evaluation set %d", which);
  return &r->set[which];
}

int64_t krt_eval_begin(KrtRun *r, int which) {
  const KrtSet *s = eval_set(r, which);
  r->acc[which] = (Acc){0};
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
  accumulate(r, &r->acc[which], loss, out, y, n);
}

// ---------------------------------------------------------------------------------------------
// epochs: metrics rows and the progress line

static double mean(const Acc *a) {
  return a->loss / (double)a->count;
}

static double accuracy(const Acc *a) {
  return (double)a->correct / (double)a->count;
}

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
  if (r->nrows == r->cap_rows) {
    r->cap_rows = r->cap_rows ? 2 * r->cap_rows : 16;
    r->rows = realloc(r->rows, (size_t)r->cap_rows * sizeof(Row));
    if (!r->rows)
      krt_fail("out of memory allocating %zu bytes", (size_t)r->cap_rows * sizeof(Row));
  }
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
  if (train_time > 0)
    printf("  %.0f samples/s", (double)t->count / train_time);
  printf("%s\n", r->tty ? "\033[K" : "");
  fflush(stdout);
  return step_limit(r) || r->epochs_done >= epochs;
}

// ---------------------------------------------------------------------------------------------
// the end of the run: final.safetensors, metrics.csv, report.json, and a short report

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

// One "key": value line of report.json; null when there is no (finite) value.
static void json_num(FILE *f, const char *key, bool has, double v) {
  if (has && isfinite(v))
    fprintf(f, "  \"%s\": %.9g,\n", key, v);
  else
    fprintf(f, "  \"%s\": null,\n", key);
}

static void write_report(FILE *f, void *ctx) {
  const KrtRun *r = ctx;
  bool cls = r->cfg.classes > 0;
  const Row *last = r->nrows ? &r->rows[r->nrows - 1] : &(Row){0};
  const Acc *test = &r->acc[KRT_TEST];
  fprintf(f, "{\n  \"epochs\": %lld,\n  \"steps\": %lld,\n  \"stopped\": \"%s\",\n",
          (long long)r->epochs_done, (long long)r->step, step_limit(r) ? "steps" : "epochs");
  json_num(f, "train_loss", last->has_train, last->train_loss);
  json_num(f, "train_accuracy", last->has_train && cls, last->train_acc);
  json_num(f, "val_loss", last->has_val, last->val_loss);
  json_num(f, "val_accuracy", last->has_val && cls, last->val_acc);
  json_num(f, "test_loss", test->count > 0, test->count ? mean(test) : 0);
  json_num(f, "test_accuracy", test->count > 0 && cls, test->count ? accuracy(test) : 0);
  json_num(f, "samples_per_second", r->train_seconds > 0,
           (double)r->train_samples / r->train_seconds);
  json_num(f, "compile_seconds", true, r->cfg.compile_seconds);
  fprintf(f, "  \"parameters\": %lld,\n  \"seed\": %llu,\n  \"batch\": %lld\n}\n",
          (long long)r->cfg.parameters, (unsigned long long)r->cfg.seed,
          (long long)r->cfg.batch);
}

static void print_result(const char *what, bool cls, double loss, double acc) {
  printf("%s loss %.4f", what, loss);
  if (cls)
    printf("  accuracy %.4f", acc);
  printf("\n");
}

int krt_finish(KrtRun *r) {
  const char *dir = r->cfg.out_dir ? r->cfg.out_dir : ".";
  mkdir_p(dir);
  char *st = join(dir, "final.safetensors"), *csv = join(dir, "metrics.csv");
  char *json = join(dir, "report.json");

  KrtNamedTensor *t = krt_xmalloc((size_t)(r->cfg.ntensors + 1) * sizeof(KrtNamedTensor));
  const char *meta[] = {"format", "pt", "producer", "keel"};
  krt_st_write(st, t, saved_tensors(r, t), meta, 2);
  free(t);
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
  fflush(stdout);
  free(st);
  free(csv);
  free(json);
  return 0;
}
