// main.c — the `keel` command: the pipeline as a flat list of stage calls.
//
//   keel run FILE [flags]      compile the script and train it through the JIT
//   keel build FILE -o OUT     the same program as a standalone trainer executable
//   keel predict FILE --weights W INPUT   predictions through the JIT
//   keel check FILE            the layer table: output shapes and parameter counts
//   keel explain FILE          the script's safety mechanisms in plain language
//   keel schedule FILE         the learning rate of every step, as CSV
//   keel emit ast|ir|llvm FILE print a stage's output
//
// Training and prediction go through the runtime's session (runtime/session.c), which reads
// the program descriptor the module carries — exactly as a built trainer does.
// Exit status: 0 on success, 1 on a script, data or command-line error, 3 when the
// divergence guard stopped training, 130 when interrupted.

#include "keel.h"
#include "keelrt.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char usage[] =
    "usage: keel run FILE [options]     train the network of a .nn script (JIT)\n"
    "       keel build FILE -o OUT [--emit obj|asm|llvm] [--target TRIPLE] [--cpu NAME]\n"
    "                                   a standalone trainer executable (OUT --help)\n"
    "       keel predict FILE --weights W INPUT [--out CSV]\n"
    "                                   predictions for IDX images or CSV rows\n"
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
    "  --threads T     threads for the training step: matrix products, convolutions and\n"
    "                  large loops (default 1, at most 64; results are bit-identical for\n"
    "                  the same seed and thread count)\n"
    "  --out DIR       where to write report.json, metrics.csv, final.safetensors and the\n"
    "                  last.safetensors checkpoint (default runs/<script name>/)\n"
    "  --init FILE     start from the weights in a safetensors file\n"
    "  --resume FILE   continue an interrupted run from its last.safetensors\n"
    "  --no-shuffle    keep the training data in file order\n"
    "  --Werror        treat the safety lints' warnings as errors (also for keel check)\n"
    "  --profile       time every kernel of the training step; print a table of where the\n"
    "                  time goes (and write profile.csv)\n"
    "  --cpu NAME      generate code for that CPU (e.g. x86-64-v2) instead of this one;\n"
    "                  keel build takes it too: the same --cpu gives the same weights\n";

typedef struct {
  const char *cmd, *what, *file, *out, *init, *resume, *output, *emit, *target, *weights,
      *input;
  const char *hint;  // the command to continue this run: keel run FILE and its flags
  const char *cpu;
  Overrides ov;
  int threads;
  bool no_shuffle, werror, profile;
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

static bool is(const char *a, const char *b) { return !strcmp(a, b); }

// Which flags each command takes ("*" = the training flags of run).
static bool takes(const char *cmd, const char *flag) {
  static const char *train[] = {"--epochs", "--steps", "--batch", "--seed", "--threads",
                                "--out", "--init", "--resume", "--no-shuffle", "--Werror",
                                "--profile", "--cpu"};
  if (is(cmd, "run") || is(cmd, "schedule")) {
    for (size_t i = 0; i < sizeof train / sizeof *train; i++)
      if (is(flag, train[i]))
        return true;
    return false;
  }
  if (is(cmd, "check"))
    return is(flag, "--Werror");
  if (is(cmd, "emit"))
    return is(flag, "--cpu");
  if (is(cmd, "build"))
    return is(flag, "-o") || is(flag, "--emit") || is(flag, "--target") || is(flag, "--batch") ||
           is(flag, "--cpu") || is(flag, "--Werror");
  if (is(cmd, "predict"))
    return is(flag, "--weights") || is(flag, "--out") || is(flag, "--batch") ||
           is(flag, "--threads");
  return false;
}

static Args parse_args(int argc, char **argv) {
  Args a = {.ov = {-1, -1, -1, -1}, .threads = 1};
  if (argc < 2) {
    fputs(usage, stderr);
    exit(1);
  }
  a.cmd = argv[1];
  if (is(a.cmd, "--help") || is(a.cmd, "-h")) {
    fputs(usage, stdout);
    exit(0);
  }
  if (is(a.cmd, "--version")) {
    printf("keel %s\n", KEEL_VERSION);
    exit(0);
  }
  static const char *cmds[] = {"run", "build", "predict", "check", "explain", "schedule", "emit"};
  bool known = false;
  for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++)
    known |= is(a.cmd, cmds[i]);
  if (!known)
    fatal("unknown command '%s' (try keel --help)", a.cmd);
  int i = 2;
  if (is(a.cmd, "emit")) {
    if (i >= argc || (!is(argv[i], "ast") && !is(argv[i], "ir") && !is(argv[i], "llvm")))
      fatal("keel emit needs ast, ir or llvm");
    a.what = argv[i++];
  }
  for (; i < argc; i++) {
    const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (f[0] != '-' || !f[1]) {
      if (!a.file)
        a.file = f;
      else if (is(a.cmd, "predict") && !a.input)
        a.input = f;
      else
        fatal("unexpected argument '%s'", f);
      continue;
    }
    if (is(f, "--help")) {
      fputs(usage, stdout);
      exit(0);
    }
    if (!takes(a.cmd, f))
      fatal("unknown option '%s' for keel %s (try keel --help)", f, a.cmd);
    if (is(f, "--Werror")) {
      a.werror = true;
      continue;
    }
    if (is(f, "--no-shuffle")) {
      a.no_shuffle = true;
      continue;
    }
    if (is(f, "--profile")) {
      a.profile = true;
      continue;
    }
    if (!v)
      fatal("%s needs a value", f);
    if (is(f, "--epochs")) a.ov.epochs = int_flag(f, v, 0);
    else if (is(f, "--steps")) a.ov.steps = int_flag(f, v, 1);
    else if (is(f, "--batch")) a.ov.batch = int_flag(f, v, 1);
    else if (is(f, "--seed")) a.ov.seed = int_flag(f, v, 0);
    else if (is(f, "--threads")) a.threads = (int)int_flag(f, v, 1);
    else if (is(f, "--out")) a.out = v;
    else if (is(f, "--init")) a.init = v;
    else if (is(f, "--resume")) a.resume = v;
    else if (is(f, "-o")) a.output = v;
    else if (is(f, "--emit")) {
      if (!is(v, "obj") && !is(v, "asm") && !is(v, "llvm"))
        fatal("--emit takes obj, asm or llvm, not '%s'", v);
      a.emit = v;
    } else if (is(f, "--target")) {
      a.target = v;
    } else if (is(f, "--cpu")) {
      a.cpu = v;
    } else if (is(f, "--weights")) {
      a.weights = v;
    }
    i++;
  }
  if (!a.file)
    fatal("keel %s needs a .nn script", a.cmd);
  // the same command without --resume/--init, to print with "--resume last.safetensors"
  a.hint = str_fmt("keel %s", a.cmd);
  for (int k = 2; k < argc; k++) {
    if (is(argv[k], "--resume") || is(argv[k], "--init")) {
      k++;
      continue;
    }
    a.hint = str_fmt("%s %s", a.hint, argv[k]);
  }
  if (is(a.cmd, "build") && !a.output)
    fatal("keel build needs -o OUT, the file to write");
  if (a.target && !a.emit)
    fatal("--target %s writes an object for another machine: add --emit obj (or asm, llvm)",
          a.target);
  if (is(a.cmd, "predict") && (!a.weights || !a.input))
    fatal("usage: keel predict FILE --weights WEIGHTS.safetensors INPUT [--out CSV]");
  return a;
}

static void lint_fail(int warnings, bool werror) {
  if (warnings && werror)
    fatal("%d warning%s treated as error%s (--Werror)", warnings, warnings == 1 ? "" : "s",
          warnings == 1 ? "" : "s");
}

// Compiles through the JIT and opens a session on the program the module describes.
static KrtSession start(Prog *p, Args *a, KeelJit **jit) {
  double t0 = krt_now();
  *jit = jit_compile(p, false, NULL);
  const KrtProgram *prog = krt_program_parse(jit_symbol(*jit, "keel_program"));
  KrtOptions opt = {.epochs = -1, .steps = -1, .batch = -1, .seed = -1, .threads = a->threads,
                    .out = a->out, .init = a->init, .resume = a->resume,
                    .no_shuffle = a->no_shuffle, .compile_seconds = krt_now() - t0,
                    .resume_hint = a->hint};
  KrtSession s = krt_session_start(prog, &opt);
  lint_fail(lint_schedule(p, krt_total_steps(s.run), krt_batches_per_epoch(s.run)), a->werror);
  return s;
}

static int run(Prog *p, Args *a) {
  KeelJit *jit;
  KrtSession s = start(p, a, &jit);
  int status = krt_session_train(&s, (KrtMainFn *)jit_symbol(jit, "keel_main"));
  krt_session_end(&s);
  jit_free(jit);
  return status;
}

// `keel schedule FILE`: the learning rate at every step, as CSV (step, epoch, lr).
static int schedule(Prog *p, Args *a) {
  KeelJit *jit;
  KrtSession s = start(p, a, &jit);
  KrtScheduleFn *lr = (KrtScheduleFn *)jit_symbol(jit, "schedule");
  int64_t total = krt_total_steps(s.run), per_epoch = krt_batches_per_epoch(s.run);
  double in[IN_COUNT] = {0};
  in[IN_STEPS] = (double)total, in[IN_BASE] = p->base_lr, in[IN_SPE] = (double)per_epoch;
  printf("step,epoch,lr\n");
  for (int64_t step = 0; step < total; step++) {
    in[IN_STEP] = (double)step, in[IN_EPOCH] = (double)(step / per_epoch);
    printf("%lld,%lld,%.9g\n", (long long)step, (long long)(step / per_epoch),
           lr(s.slots, in));
  }
  krt_session_end(&s);
  jit_free(jit);
  return 0;
}

static int predict(Prog *p, Args *a) {
  KeelJit *jit = jit_compile(p, false, NULL);
  const KrtProgram *prog = krt_program_parse(jit_symbol(jit, "keel_program"));
  int status = krt_predict(prog, (KrtStepFn *)jit_symbol(jit, "eval_step"), a->weights,
                           a->input, a->out ? a->out : "-", a->threads);
  jit_free(jit);
  return status;
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
  if (is(a.cmd, "emit") && is(a.what, "ast")) {
    ast_dump(stdout, user);
    return 0;
  }
  Prog *p = lower_program(a.file, user, parse_stdlib(), a.ov);
  p->profile = a.profile;
  jit_set_cpu(a.cpu);
  if (is(a.cmd, "explain")) {
    explain_program(stdout, p);
    return 0;
  }
  if (is(a.cmd, "check") || is(a.cmd, "run") || is(a.cmd, "build"))
    lint_fail(lint_program(p), a.werror);
  if (is(a.cmd, "check")) {
    check_table(stdout, p);
    return 0;
  }
  if (is(a.cmd, "emit")) {
    if (is(a.what, "ir")) {
      ir_print(stdout, p, p->train);
      ir_print(stdout, p, p->eval);
      ir_print(stdout, p, p->sched);
    } else {
      jit_compile(p, true, stdout);
    }
    return 0;
  }
  if (is(a.cmd, "build"))
    return aot_build(p, a.output, a.emit, a.target);
  if (is(a.cmd, "predict"))
    return predict(p, &a);
  if (is(a.cmd, "schedule"))
    return schedule(p, &a);
  return run(p, &a);
}
