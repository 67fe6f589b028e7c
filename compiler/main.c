// main.c — the `keel` command: the pipeline as a flat list of stage calls.
//
//   keel run FILE [flags]      compile the script and train it through the JIT
//   keel check FILE            the layer table: output shapes and parameter counts
//   keel explain FILE          the script's safety mechanisms in plain language
//   keel schedule FILE         the learning rate of every step, as CSV
//   keel emit ast|ir|llvm FILE print a stage's output
//
// Exit status: 0 on success, 1 on a script, data or command-line error.

#include "keel.h"
#include "keelrt.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char usage[] =
    "usage: keel run FILE [options]     train the network of a .nn script (JIT)\n"
    "       keel check FILE             show its layers, output shapes and parameter counts\n"
    "       keel explain FILE           what each safety mechanism of the script does\n"
    "       keel schedule FILE [options] print the learning rate at every step (CSV)\n"
    "       keel emit ast|ir|llvm FILE  print the syntax tree, the tensor IR (forward and\n"
    "                                   backward) or the optimized LLVM IR\n"
    "       keel --help | --version\n"
    "\n"
    "options of run (each overrides the script):\n"
    "  --epochs N      train for N epochs\n"
    "  --steps N       stop after N optimizer steps\n"
    "  --batch B       batch size\n"
    "  --seed S        seed of initialisation, shuffling and dropout\n"
    "  --threads T     threads for matrix products (default 1; results are bit-identical\n"
    "                  for the same seed and thread count)\n"
    "  --out DIR       where to write report.json, metrics.csv and final.safetensors\n"
    "                  (default runs/<script name>/)\n"
    "  --init FILE     start from the weights in a safetensors file\n"
    "  --no-shuffle    keep the training data in file order\n"
    "  --Werror        treat the safety lints' warnings as errors (also for keel check)\n";

typedef struct {
  const char *cmd, *what, *file, *out, *init;
  Overrides ov;
  int threads;
  bool no_shuffle, werror;
} Args;

static int64_t int_flag(const char *flag, const char *v, int64_t min) {
  char *end;
  if (!v)
    fatal("%s needs a value", flag);
  long long x = strtoll(v, &end, 10);
  if (*end || end == v || x < min)
    fatal("%s needs a whole number%s, got '%s'", flag, min > 0 ? " above 0" : "", v);
  return x;
}

static Args parse_args(int argc, char **argv) {
  Args a = {.ov = {-1, -1, -1, -1}, .threads = 1};
  if (argc < 2) {
    fputs(usage, stderr);
    exit(1);
  }
  a.cmd = argv[1];
  if (!strcmp(a.cmd, "--help") || !strcmp(a.cmd, "-h")) {
    fputs(usage, stdout);
    exit(0);
  }
  if (!strcmp(a.cmd, "--version")) {
    printf("keel %s\n", KEEL_VERSION);
    exit(0);
  }
  if (strcmp(a.cmd, "run") && strcmp(a.cmd, "check") && strcmp(a.cmd, "emit") &&
      strcmp(a.cmd, "schedule") && strcmp(a.cmd, "explain"))
    fatal("unknown command '%s' (try keel --help)", a.cmd);
  int i = 2;
  if (!strcmp(a.cmd, "emit")) {
    if (i >= argc || (strcmp(argv[i], "ast") && strcmp(argv[i], "ir") && strcmp(argv[i], "llvm")))
      fatal("keel emit needs ast, ir or llvm");
    a.what = argv[i++];
  }
  for (; i < argc; i++) {
    const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (f[0] != '-' || !f[1]) {
      if (a.file)
        fatal("more than one script: '%s' and '%s'", a.file, f);
      a.file = f;
      continue;
    }
    if (strcmp(a.cmd, "run") && strcmp(a.cmd, "schedule") && strcmp(f, "--help") &&
        !(!strcmp(a.cmd, "check") && !strcmp(f, "--Werror")))
      fatal("unknown option '%s' for keel %s", f, a.cmd);
    if (!strcmp(f, "--help")) {
      fputs(usage, stdout);
      exit(0);
    } else if (!strcmp(f, "--Werror")) {
      a.werror = true;
      continue;
    } else if (!strcmp(f, "--no-shuffle")) {
      a.no_shuffle = true;
      continue;
    } else if (!strcmp(f, "--epochs")) {
      a.ov.epochs = int_flag(f, v, 0);
    } else if (!strcmp(f, "--steps")) {
      a.ov.steps = int_flag(f, v, 1);
    } else if (!strcmp(f, "--batch")) {
      a.ov.batch = int_flag(f, v, 1);
    } else if (!strcmp(f, "--seed")) {
      a.ov.seed = int_flag(f, v, 0);
    } else if (!strcmp(f, "--threads")) {
      a.threads = (int)int_flag(f, v, 1);
    } else if (!strcmp(f, "--out")) {
      if (!v)
        fatal("--out needs a folder");
      a.out = v;
    } else if (!strcmp(f, "--init")) {
      if (!v)
        fatal("--init needs a safetensors file");
      a.init = v;
    } else {
      fatal("unknown option '%s' (try keel --help)", f);
    }
    i++;
  }
  if (!a.file)
    fatal("keel %s needs a .nn script", a.cmd);
  return a;
}

// The script and the stdlib, parsed; the stdlib's definitions follow the script's.
static Node *parse_stdlib(void) {
  Node head = {0}, *tail = &head;
  for (int i = 0; i < stdlib_count; i++) {
    tail->next = parse_file(stdlib_files[i].name, stdlib_files[i].src);
    while (tail->next)
      tail = tail->next;
  }
  return head.next;
}

static void check_table(Prog *p) {
  printf("%-14s %-12s %-18s %12s\n", "layer", "kind", "output", "parameters");
  printf("%-14s %-12s %-18s %12s\n", "input", "", shape_str(p->in_shape), "");
  for (int i = 0; i < p->nlayers; i++) {
    LayerInfo *l = &p->layers[i];
    printf("%-14s %-12s %-18s %12lld\n", l->name, l->kind, shape_str(l->out),
           (long long)l->nparams);
  }
  printf("%-14s %-12s %-18s %12lld\n", "total", "", "", (long long)p->nparams);
}

static const char *default_out(const char *script) {
  const char *base = strrchr(script, '/');
  base = base ? base + 1 : script;
  size_t len = strlen(base);
  if (len > 3 && !strcmp(base + len - 3, ".nn"))
    len -= 3;
  return str_fmt("runs/%.*s", (int)len, base);
}

static void fill_source(const DataSource *s, bool has, int *kind, const char **path,
                        const char **path2, const char **label) {
  *kind = has ? (s->kind == SRC_IDX ? 1 : 2) : 0;
  *path = s->path, *path2 = s->path2, *label = s->label;
}

// A compiled script ready to train: the JIT, the run (data, tensors) and the slots.
typedef struct {
  KeelJit *jit;
  KrtRun *run;
  float **slots, *block;
} Session;

static Session start(Prog *p, Args *a) {
  double t0 = krt_now();
  KeelJit *jit = jit_compile(p, false, NULL);
  double compile_seconds = krt_now() - t0;

  KrtTensorDesc *desc = arena_alloc(sizeof *desc * (size_t)(p->ntensors + 1));
  for (int i = 0; i < p->ntensors; i++) {
    Tensor *t = &p->tensors[i];
    desc[i] = (KrtTensorDesc){.name = t->name, .kind = (int)t->kind, .rank = t->shape.rank,
                              .init = (int)t->init, .a = t->a, .b = t->b};
    for (int d = 0; d < t->shape.rank; d++)
      desc[i].dim[d] = t->shape.dim[d];
  }
  KrtConfig cfg = {
      .script = p->script,
      .out_dir = a->out ? a->out : default_out(p->script),
      .scale = p->scale, .holdout = p->holdout,
      .features = shape_numel(p->in_shape, 1),
      .ydim = p->classify ? 1 : p->out_shape.dim[1],
      .classes = p->classify ? p->out_shape.dim[1] : 0,
      .batch = p->batch, .epochs = p->epochs, .steps = p->steps, .seed = p->seed,
      .shuffle = !a->no_shuffle, .threads = a->threads,
      .compile_seconds = compile_seconds,
      .tensors = desc, .ntensors = p->ntensors, .parameters = p->nparams,
      .drop_last = p->drop_last, .min_batch = p->min_batch,
      .early_patience = p->early_patience, .early_min_delta = p->early_min_delta,
      .early_monitor = p->early_monitor_accuracy ? KRT_MONITOR_VAL_ACCURACY : KRT_MONITOR_VAL_LOSS,
      .plateau_patience = p->plateau_patience, .plateau_factor = p->plateau_factor,
      .spike_factor = p->guard_spike, .guard_limit = p->guard_limit,
  };
  fill_source(&p->train_src, p->has_train, &cfg.train_kind, &cfg.train_path, &cfg.train_path2,
              &cfg.train_label);
  fill_source(&p->val_src, p->has_val, &cfg.val_kind, &cfg.val_path, &cfg.val_path2,
              &cfg.val_label);
  fill_source(&p->test_src, p->has_test, &cfg.test_kind, &cfg.test_path, &cfg.test_path2,
              &cfg.test_label);

  // one block for every slot that is not a persistent tensor, each 64-byte aligned
  float **slots = calloc((size_t)p->nslots, sizeof *slots);
  int64_t total = 0;
  for (int s = p->ntensors; s < p->nslots; s++)
    total += (p->slot_size[s] + 15) & ~(int64_t)15;
  float *block = aligned_alloc(64, (size_t)(total ? total : 16) * sizeof(float));
  if (!slots || !block)
    fatal("out of memory for %lld activations", (long long)total);
  for (int s = p->ntensors, off = 0; s < p->nslots; s++) {
    slots[s] = block + off;
    off += (int)((p->slot_size[s] + 15) & ~(int64_t)15);
  }
  // what the guard inspects when a step goes non-finite
  KrtProbe *probes = arena_alloc(sizeof *probes * (size_t)(p->nprobes + 1));
  for (int i = 0; i < p->nprobes; i++) {
    int v = p->probe_val[i], s = p->slot_train[v];
    if (s < p->ntensors)
      continue;
    Shape sh = p->train->ins[v].shape;
    bool per_row = false;
    for (int d = 0; d < sh.rank; d++)
      per_row |= sh.dim[d] == DIM_N;
    probes[cfg.nprobes++] = (KrtProbe){p->probe_what[i], slots[s], shape_numel(sh, 1), per_row};
  }
  cfg.probes = probes;

  KrtRun *r = krt_run_new(&cfg);
  krt_init_tensors(r);
  if (a->init)
    krt_load_init(r, a->init);
  for (int s = 0; s < p->ntensors; s++)
    slots[s] = krt_tensor(r, s);

  return (Session){jit, r, slots, block};
}

static void stop(Session *s) {
  krt_run_free(s->run);
  free(s->block);
  free(s->slots);
  jit_free(s->jit);
}

static int run(Prog *p, Args *a) {
  Session s = start(p, a);
  int warnings = lint_schedule(p, krt_total_steps(s.run), krt_batches_per_epoch(s.run));
  if (warnings && a->werror)
    fatal("%d warning%s treated as error%s (--Werror)", warnings, warnings == 1 ? "" : "s",
          warnings == 1 ? "" : "s");
  jit_main(s.jit)(s.run, s.slots, p->seed);
  int status = krt_finish(s.run);
  stop(&s);
  return status;
}

// `keel schedule FILE`: the learning rate at every step, as CSV (step, epoch, lr).
static int schedule(Prog *p, Args *a) {
  Session s = start(p, a);
  KeelSchedule *lr = jit_schedule(s.jit);
  int64_t total = krt_total_steps(s.run), per_epoch = krt_batches_per_epoch(s.run);
  double in[IN_COUNT] = {0};
  in[IN_STEPS] = (double)total, in[IN_BASE] = p->base_lr, in[IN_SPE] = (double)per_epoch;
  printf("step,epoch,lr\n");
  for (int64_t step = 0; step < total; step++) {
    in[IN_STEP] = (double)step, in[IN_EPOCH] = (double)(step / per_epoch);
    printf("%lld,%lld,%.9g\n", (long long)step, (long long)(step / per_epoch),
           lr(s.slots, in));
  }
  stop(&s);
  return 0;
}

int main(int argc, char **argv) {
  Args a = parse_args(argc, argv);
  size_t len;
  char *src = read_file(a.file, &len);
  if (!src)
    fatal("cannot read '%s'", a.file);
  if (strlen(src) != len)
    fatal("'%s' is not a text file (it contains a NUL byte)", a.file);
  Node *user = parse_file(a.file, src);
  if (!strcmp(a.cmd, "emit") && !strcmp(a.what, "ast")) {
    ast_dump(stdout, user);
    return 0;
  }
  Prog *p = lower_program(a.file, user, parse_stdlib(), a.ov);
  if (!strcmp(a.cmd, "explain")) {
    explain_program(stdout, p);
    return 0;
  }
  if (!strcmp(a.cmd, "check") || !strcmp(a.cmd, "run")) {
    int warnings = lint_program(p);
    if (warnings && a.werror)
      fatal("%d warning%s treated as error%s (--Werror)", warnings, warnings == 1 ? "" : "s",
            warnings == 1 ? "" : "s");
  }
  if (!strcmp(a.cmd, "check")) {
    check_table(p);
    return 0;
  }
  if (!strcmp(a.cmd, "emit")) {
    if (!strcmp(a.what, "ir")) {
      ir_print(stdout, p, p->train);
      ir_print(stdout, p, p->eval);
      ir_print(stdout, p, p->sched);
    } else {
      jit_compile(p, true, stdout);
    }
    return 0;
  }
  if (!strcmp(a.cmd, "schedule"))
    return schedule(p, &a);
  return run(p, &a);
}
