// session.c — a compiled program, set up from its descriptor and trained or asked for
// predictions. `keel run` (through the JIT) and a built trainer both come here, so data,
// tensors, slots and settings are prepared by the same code whichever way the machine code
// arrived; with the same target CPU the weights come out byte-identical.
//
// The descriptor is the JSON text compiler/program.c writes into the module as keel_program.
// A slot is the buffer of one IR value: its size is fixed, or per sample (times the batch).

#include "keelrt.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------------
// The descriptor

static char *dup_str(const char *s) {
  if (!s)
    return NULL;
  size_t n = strlen(s) + 1;
  return memcpy(krt_xmalloc(n), s, n);
}

static const cJSON *field(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  if (!v)
    krt_fail("the program descriptor lacks '%s' (was the trainer built by another keel?)", k);
  return v;
}

static double num(const cJSON *o, const char *k) {
  const cJSON *v = field(o, k);
  if (!cJSON_IsNumber(v))
    krt_fail("the program descriptor's '%s' is not a number", k);
  return v->valuedouble;
}

static char *str(const cJSON *o, const char *k) {
  const cJSON *v = field(o, k);
  return cJSON_IsString(v) ? dup_str(v->valuestring) : NULL;
}

static void source(const cJSON *o, const char *k, int *kind, const char **path,
                   const char **path2, const char **label) {
  const cJSON *s = field(o, k);
  *kind = 0;
  if (cJSON_IsNull(s))
    return;
  char *kn = str(s, "kind");
  *kind = kn && !strcmp(kn, "idx") ? 1 : 2;
  free(kn);
  *path = str(s, "path"), *path2 = str(s, "path2"), *label = str(s, "label");
}

KrtProgram *krt_program_parse(const char *json) {
  cJSON *o = cJSON_Parse(json);
  if (!o)
    krt_fail("the program descriptor is not valid JSON");
  KrtProgram *p = krt_xmalloc(sizeof *p);
  KrtConfig *c = &p->cfg;
  p->name = str(o, "name"), p->script = str(o, "script");
  p->summary = str(o, "summary"), p->hash = str(o, "hash");
  c->script = p->script;
  source(o, "train", &c->train_kind, &c->train_path, &c->train_path2, &c->train_label);
  source(o, "val", &c->val_kind, &c->val_path, &c->val_path2, &c->val_label);
  source(o, "test", &c->test_kind, &c->test_path, &c->test_path2, &c->test_label);
  c->scale = num(o, "scale"), c->holdout = num(o, "holdout");
  c->features = (int64_t)num(o, "features"), c->ydim = (int64_t)num(o, "ydim");
  c->classes = (int64_t)num(o, "classes");
  c->batch = (int64_t)num(o, "batch"), c->epochs = (int64_t)num(o, "epochs");
  c->steps = (int64_t)num(o, "steps"), c->seed = (uint64_t)num(o, "seed");
  c->shuffle = true;
  p->base_lr = num(o, "base_lr");
  c->parameters = (int64_t)num(o, "parameters");
  c->drop_last = num(o, "drop_last") != 0, c->min_batch = (int64_t)num(o, "min_batch");
  c->early_patience = (int)num(o, "early_patience");
  c->early_min_delta = num(o, "early_min_delta");
  c->early_monitor = num(o, "early_monitor_accuracy") != 0 ? KRT_MONITOR_VAL_ACCURACY
                                                            : KRT_MONITOR_VAL_LOSS;
  c->plateau_patience = (int)num(o, "plateau_patience");
  c->plateau_factor = num(o, "plateau_factor");
  c->spike_factor = num(o, "spike_factor"), c->guard_limit = (int)num(o, "guard_limit");
  c->program_hash = p->hash;
  p->x_slot = (int)num(o, "x_slot"), p->y_slot = (int)num(o, "y_slot");
  p->out_slot = (int)num(o, "out_slot");
  const cJSON *in = field(o, "in_shape");
  p->in_rank = cJSON_GetArraySize(in);
  for (int d = 0; d < p->in_rank && d < 4; d++)
    p->in_shape[d] = (int64_t)cJSON_GetArrayItem(in, d)->valuedouble;

  const cJSON *ts = field(o, "tensors");
  int nt = cJSON_GetArraySize(ts);
  KrtTensorDesc *t = krt_xmalloc(sizeof *t * (size_t)(nt + 1));
  static const char *kinds[] = {"param", "buffer", "state"}, *inits[] = {"const", "uniform", "normal"};
  for (int i = 0; i < nt; i++) {
    const cJSON *e = cJSON_GetArrayItem(ts, i), *shape = field(e, "shape");
    char *kind = str(e, "kind"), *init = str(e, "init");
    t[i].name = str(e, "name");
    for (int k = 0; k < 3; k++) {
      if (kind && !strcmp(kind, kinds[k]))
        t[i].kind = k;
      if (init && !strcmp(init, inits[k]))
        t[i].init = k;
    }
    free(kind), free(init);
    t[i].rank = cJSON_GetArraySize(shape);
    for (int d = 0; d < t[i].rank && d < 4; d++)
      t[i].dim[d] = (int64_t)cJSON_GetArrayItem(shape, d)->valuedouble;
    t[i].a = num(e, "a"), t[i].b = num(e, "b");
  }
  c->tensors = t, c->ntensors = nt;

  const cJSON *ss = field(o, "slots");
  p->nslots = cJSON_GetArraySize(ss);
  p->slot_count = krt_xmalloc(sizeof(int64_t) * (size_t)(p->nslots + 1));
  p->slot_per_row = krt_xmalloc(sizeof(bool) * (size_t)(p->nslots + 1));
  for (int i = 0; i < p->nslots; i++) {
    const cJSON *e = cJSON_GetArrayItem(ss, i);
    p->slot_count[i] = (int64_t)cJSON_GetArrayItem(e, 0)->valuedouble;
    p->slot_per_row[i] = cJSON_GetArrayItem(e, 1)->valuedouble != 0;
  }

  const cJSON *ps = field(o, "probes");
  int np = cJSON_GetArraySize(ps);
  KrtProbe *probes = krt_xmalloc(sizeof *probes * (size_t)(np + 1));
  p->probe_slot = krt_xmalloc(sizeof(int) * (size_t)(np + 1));
  for (int i = 0; i < np; i++) {
    const cJSON *e = cJSON_GetArrayItem(ps, i);
    probes[i].what = str(e, "what");
    probes[i].count = (int64_t)num(e, "count");
    probes[i].per_row = num(e, "per_row") != 0;
    p->probe_slot[i] = (int)num(e, "slot");
  }
  c->probes = probes, c->nprobes = np;
  const cJSON *ks = cJSON_GetObjectItemCaseSensitive(o, "kernels");
  p->nkernels = ks ? cJSON_GetArraySize(ks) : 0;
  p->kernels = krt_xmalloc(sizeof(KrtKernel) * (size_t)(p->nkernels + 1));
  for (int i = 0; i < p->nkernels; i++) {
    const cJSON *e = cJSON_GetArrayItem(ks, i);
    p->kernels[i] = (KrtKernel){str(e, "name"), num(e, "flops"), num(e, "flops_per_row")};
  }
  cJSON_Delete(o);
  return p;
}

// ---------------------------------------------------------------------------------------------
// Sessions

// Every slot that is not a persistent tensor lives in one block, each 64-byte aligned.
static float *alloc_slots(const KrtProgram *p, int64_t batch, float **slots) {
  int nt = p->cfg.ntensors;
  int64_t total = 0;
  for (int s = nt; s < p->nslots; s++)
    total += (p->slot_count[s] * (p->slot_per_row[s] ? batch : 1) + 15) & ~(int64_t)15;
  float *block = aligned_alloc(64, (size_t)(total ? total : 16) * sizeof(float));
  if (!block)
    krt_fail("out of memory allocating %lld activations", (long long)total);
  memset(block, 0, (size_t)(total ? total : 16) * sizeof(float));
  for (int s = nt, off = 0; s < p->nslots; s++) {
    slots[s] = block + off;
    off += (int)((p->slot_count[s] * (p->slot_per_row[s] ? batch : 1) + 15) & ~(int64_t)15);
  }
  return block;
}

KrtSession krt_session_start(const KrtProgram *p, const KrtOptions *opt) {
  KrtConfig cfg = p->cfg;
  if (opt->epochs >= 0) cfg.epochs = opt->epochs;
  if (opt->steps >= 0) cfg.steps = opt->steps;
  if (opt->batch > 0) cfg.batch = opt->batch;
  if (opt->seed >= 0) cfg.seed = (uint64_t)opt->seed;
  cfg.shuffle = !opt->no_shuffle;
  cfg.threads = opt->threads;
  cfg.compile_seconds = opt->compile_seconds;
  cfg.resume_hint = opt->resume_hint;
  if (opt->out) {
    cfg.out_dir = opt->out;
  } else {  // runs/<script name without .nn>
    const char *base = strrchr(p->script, '/');
    base = base ? base + 1 : p->script;
    size_t len = strlen(base);
    if (len > 3 && !strcmp(base + len - 3, ".nn"))
      len -= 3;
    char *dir = krt_xmalloc(len + 6);
    snprintf(dir, len + 6, "runs/%.*s", (int)len, base);
    cfg.out_dir = dir;
  }
  // --data train=PATH[,PATH2]: the same kind of source, another file
  int *kinds[3] = {&cfg.train_kind, &cfg.val_kind, &cfg.test_kind};
  const char **paths[3][2] = {{&cfg.train_path, &cfg.train_path2},
                              {&cfg.val_path, &cfg.val_path2},
                              {&cfg.test_path, &cfg.test_path2}};
  for (int k = 0; k < 3; k++) {
    if (!opt->data[k][0])
      continue;
    if (!*kinds[k])
      krt_fail("--data: the program has no %s source to replace", k == 0 ? "train" : k == 1 ? "val" : "test");
    if (*kinds[k] == 1 && !opt->data[k][1])
      krt_fail("--data: an IDX source needs two files: images,labels");
    *paths[k][0] = opt->data[k][0], *paths[k][1] = opt->data[k][1];
  }

  KrtSession s = {.prog = p, .seed = cfg.seed};
  s.slots = krt_xmalloc(sizeof(float *) * (size_t)(p->nslots + 1));
  s.block = alloc_slots(p, cfg.batch, s.slots);
  KrtProbe *probes = krt_xmalloc(sizeof *probes * (size_t)(cfg.nprobes + 1));
  for (int i = 0; i < cfg.nprobes; i++) {
    probes[i] = cfg.probes[i];
    probes[i].data = s.slots[p->probe_slot[i]];
  }
  cfg.probes = probes;
  s.run = krt_run_new(&cfg);
  free(probes);  // krt_run_new keeps its own copy
  if (opt->resume) {
    krt_resume(s.run, opt->resume);
  } else {
    krt_init_tensors(s.run);
    if (opt->init)
      krt_load_init(s.run, opt->init);
  }
  for (int t = 0; t < cfg.ntensors; t++)
    s.slots[t] = krt_tensor(s.run, t);
  if (p->nkernels)
    krt_profile_start(p->kernels, p->nkernels);
  s.out_dir = cfg.out_dir;
  return s;
}

void krt_session_end(KrtSession *s) {
  krt_run_free(s->run);
  free(s->block);
  free(s->slots);
}

int krt_session_train(KrtSession *s, KrtMainFn *main_fn) {
  main_fn(s->run, s->slots, s->seed);
  int status = krt_finish(s->run);
  if (s->prog->nkernels)
    krt_profile_report(s->out_dir);
  return status;
}

// ---------------------------------------------------------------------------------------------
// Predictions

static void write_rows(FILE *f, const KrtProgram *p, const float *out, int64_t n) {
  int64_t k = p->cfg.classes ? p->cfg.classes : p->cfg.ydim;
  for (int64_t i = 0; i < n; i++) {
    const float *o = out + i * k;
    if (!p->cfg.classes) {
      for (int64_t j = 0; j < k; j++)
        fprintf(f, "%s%.9g", j ? "," : "", o[j]);
      fputc('\n', f);
      continue;
    }
    // the class with the largest score (the first on ties, as the run's accuracy counts it),
    // and the softmax of the scores
    int64_t best = 0;
    double m = o[0], sum = 0;
    for (int64_t j = 1; j < k; j++)
      if (o[j] > o[best])
        best = j;
    for (int64_t j = 1; j < k; j++)
      m = fmax(m, o[j]);
    for (int64_t j = 0; j < k; j++)
      sum += exp((double)o[j] - m);
    fprintf(f, "%lld", (long long)best);
    for (int64_t j = 0; j < k; j++)
      fprintf(f, ",%.6g", exp((double)o[j] - m) / sum);
    fputc('\n', f);
  }
}

typedef struct {
  const KrtProgram *p;
  KrtStepFn *eval_step;
  float **slots;
  const KrtSet *set;
} Predict;

static void predict_all(FILE *f, void *ctx) {
  Predict *pr = ctx;
  const KrtProgram *p = pr->p;
  int64_t k = p->cfg.classes ? p->cfg.classes : p->cfg.ydim, batch = p->cfg.batch;
  if (p->cfg.classes) {
    fprintf(f, "class");
    for (int64_t j = 0; j < k; j++)
      fprintf(f, ",p%lld", (long long)j);
  } else {
    for (int64_t j = 0; j < k; j++)
      fprintf(f, "%sy%lld", j ? "," : "", (long long)j);
  }
  fputc('\n', f);
  double in[16] = {0};
  for (int64_t b = 0; b < pr->set->n; b += batch) {
    int64_t n = pr->set->n - b < batch ? pr->set->n - b : batch;
    for (int64_t i = 0; i < n; i++)
      krt_set_row(pr->set, b + i, pr->slots[p->x_slot] + i * p->cfg.features);
    memset(pr->slots[p->y_slot], 0, sizeof(float) * (size_t)(n * p->cfg.ydim));
    pr->eval_step(pr->slots, n, in, p->cfg.seed, NULL);
    write_rows(f, p, pr->slots[p->out_slot], n);
  }
}

static bool ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && !strcmp(s + a - b, suffix);
}

int krt_predict(const KrtProgram *p, KrtStepFn *eval_step, const char *weights,
                const char *input, const char *out_path, int threads) {
  if (threads > 0)
    krt_threads_start(threads);
  // the input: IDX images (any file that is not .csv), or CSV features
  KrtSet set;
  if (ends_with(input, ".csv")) {
    set = krt_load_csv_features(input, p->cfg.train_label, p->cfg.features);
  } else {
    set = krt_load_idx_images(input);
  }
  if (set.features != p->cfg.features)
    krt_fail("%s: samples have %lld values, the network's input expects %lld", input,
             (long long)set.features, (long long)p->cfg.features);
  if (p->cfg.scale != 0)
    krt_set_scale(&set, (float)p->cfg.scale);
  // the trained tensors: parameters and buffers from the weights file
  const KrtConfig *c = &p->cfg;
  float **slots = krt_xmalloc(sizeof(float *) * (size_t)(p->nslots + 1));
  float *block = alloc_slots(p, c->batch, slots);
  KrtNamedTensor *named = krt_xmalloc(sizeof *named * (size_t)(c->ntensors + 1));
  int nnamed = 0;
  for (int t = 0; t < c->ntensors; t++) {
    const KrtTensorDesc *d = &c->tensors[t];
    int64_t count = 1;
    for (int k = 0; k < d->rank; k++)
      count *= d->dim[k];
    slots[t] = krt_xmalloc(sizeof(float) * (size_t)(count ? count : 1));
    if (d->kind == KRT_STATE)
      continue;
    named[nnamed] = (KrtNamedTensor){.name = d->name, .rank = d->rank, .data = slots[t]};
    memcpy(named[nnamed++].dim, d->dim, sizeof d->dim);
  }
  krt_st_read(weights, named, nnamed);
  Predict pr = {p, eval_step, slots, &set};
  if (!strcmp(out_path, "-")) {
    predict_all(stdout, &pr);
    fflush(stdout);
  } else {
    krt_write_atomic(out_path, predict_all, &pr);
  }
  for (int t = 0; t < c->ntensors; t++)
    free(slots[t]);
  free(named), free(slots), free(block);
  krt_set_free(&set);
  return 0;
}

// ---------------------------------------------------------------------------------------------
// A built trainer's command line

static int64_t int_flag(const char *flag, const char *v, int64_t min) {
  char *end;
  if (!v)
    krt_fail("%s needs a value", flag);
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (*end || end == v || errno || x < min)
    krt_fail("%s needs a whole number%s, got '%s'", flag, min > 0 ? " above 0" : "", v);
  return x;
}

static void usage(const KrtProgram *p, const char *argv0) {
  printf("%s — a trainer built by keel from %s (network '%s')\n\n", argv0, p->script, p->name);
  printf("%s\n", p->summary ? p->summary : "");
  printf("usage: %s [options]                      train\n"
         "       %s predict --weights FILE INPUT [--out FILE]\n"
         "                                         predictions for INPUT (IDX images or CSV)\n\n"
         "options:\n"
         "  --epochs N  --steps N  --batch B  --seed S  --threads T\n"
         "  --out DIR         where report.json, metrics.csv and the checkpoints go\n"
         "  --init FILE       start from the weights of a safetensors file\n"
         "  --resume FILE     continue an interrupted run from its last.safetensors\n"
         "  --no-shuffle      keep the training data in file order\n"
         "  --data NAME=PATH  use another file for the train, val or test source\n"
         "                    (an IDX source takes IMAGES,LABELS)\n",
         argv0, argv0);
}

int krt_trainer_main(const char *json, KrtMainFn *main_fn, KrtStepFn *eval_step, int argc,
                     char **argv) {
  const KrtProgram *p = krt_program_parse(json);
  KrtOptions opt = {.epochs = -1, .steps = -1, .batch = -1, .seed = -1, .threads = 1};
  const char *weights = NULL, *input = NULL, *pred_out = "-";
  bool predict = argc > 1 && !strcmp(argv[1], "predict");
  char *hint = krt_xmalloc(strlen(argv[0]) + 1);
  strcpy(hint, argv[0]);
  opt.resume_hint = hint;
  for (int i = predict ? 2 : 1; i < argc; i++) {
    const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
      usage(p, argv[0]);
      return 0;
    }
    if (predict && !strcmp(f, "--weights") && v) { weights = v, i++; continue; }
    if (predict && !strcmp(f, "--out") && v) { pred_out = v, i++; continue; }
    if (predict && f[0] != '-') {
      if (input)
        krt_fail("predict takes one input file");
      input = f;
      continue;
    }
    if (!strcmp(f, "--no-shuffle")) { opt.no_shuffle = true; continue; }
    if (!strcmp(f, "--epochs")) opt.epochs = int_flag(f, v, 0);
    else if (!strcmp(f, "--steps")) opt.steps = int_flag(f, v, 1);
    else if (!strcmp(f, "--batch")) opt.batch = int_flag(f, v, 1);
    else if (!strcmp(f, "--seed")) opt.seed = int_flag(f, v, 0);
    else if (!strcmp(f, "--threads")) opt.threads = (int)int_flag(f, v, 1);
    else if (!strcmp(f, "--out") && v) opt.out = v;
    else if (!strcmp(f, "--init") && v) opt.init = v;
    else if (!strcmp(f, "--resume") && v) opt.resume = v;
    else if (!strcmp(f, "--data") && v) {
      const char *eq = strchr(v, '=');
      int k = !eq ? -1 : !strncmp(v, "train=", 6) ? 0 : !strncmp(v, "val=", 4) ? 1
                   : !strncmp(v, "test=", 5) ? 2 : -1;
      if (k < 0)
        krt_fail("--data takes train=PATH, val=PATH or test=PATH, got '%s'", v);
      char *path = dup_str(eq + 1), *comma = strchr(path, ',');
      if (comma)
        *comma = 0;
      opt.data[k][0] = path, opt.data[k][1] = comma ? comma + 1 : NULL;
    } else {
      krt_fail("unknown option '%s' (try %s --help)", f, argv[0]);
    }
    i++;
  }
  if (predict) {
    if (!weights || !input)
      krt_fail("usage: %s predict --weights FILE INPUT [--out FILE]", argv[0]);
    return krt_predict(p, eval_step, weights, input, pred_out, opt.threads);
  }
  KrtSession s = krt_session_start(p, &opt);
  int status = krt_session_train(&s, main_fn);
  krt_session_end(&s);
  return status;
}
