// jit.c — the generated module, optimized for a target and run in-process (ORC LLJIT) or
// written out and linked into a standalone trainer (keel build).
//
// Both ways use the same TargetMachine settings: the host CPU and its features unless
// --target or --cpu says otherwise (for the host, the loop vectorizer would otherwise aim at
// SSE2 only), and the same pass pipeline (`pipeline` below), which works function by function.
// keel run compiles the module in two halves on two threads (compile_halves) and LLJIT links
// the two objects; keel build compiles it whole. Each function gets the same instructions
// either way, so the JIT and a built trainer train to byte-identical weights. The generated
// code calls the runtime (krt_*), OpenBLAS and libm; LLJIT finds them in the keel process
// itself (linked with -rdynamic), a trainer links them.

#include "keel.h"

#include <llvm-c/Analysis.h>
#include <llvm-c/BitReader.h>
#include <llvm-c/BitWriter.h>
#include <llvm-c/Core.h>
#include <llvm-c/Error.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/Orc.h>
#include <llvm-c/Support.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Transforms/PassBuilder.h>
#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct KeelJit {
  LLVMOrcLLJITRef jit;
  bool linked;  // a lookup has linked the program
};

static _Noreturn void llvm_fail(const char *what, LLVMErrorRef err) {
  char *msg = LLVMGetErrorMessage(err);
  die("%s: %s", what, msg);
}

// The machine code target: the host (its CPU and features) unless --cpu names another
// (x86-64-v2 for a trainer that runs on older machines), or another triple with a generic
// CPU (keel build --target). The JIT and a trainer built with the same --cpu execute the same
// instructions.
static const char *cpu_name;

// LLVM ignores a CPU name it does not know, silently: check it against the usual ones.
static const char *known_cpus[] = {
    "generic", "x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4", "nehalem", "sandybridge",
    "ivybridge", "haswell", "broadwell", "skylake", "skylake-avx512", "cascadelake",
    "cooperlake", "icelake-client", "icelake-server", "tigerlake", "alderlake",
    "sapphirerapids", "znver1", "znver2", "znver3", "znver4", "btver2"};

void jit_set_cpu(const char *cpu) {
  if (!cpu)
    return;
  bool known = false;
  for (size_t i = 0; i < sizeof known_cpus / sizeof *known_cpus; i++)
    known |= !strcmp(cpu, known_cpus[i]);
  if (!known)
    fatal("unknown --cpu '%s' (for example x86-64-v2, x86-64-v3, skylake, znver3)", cpu);
  cpu_name = cpu;
}

// Code generation: LLVMCodeGenLevelLess, and no loop strength reduction. On the generated
// code (big functions of simple loops, few of them hot: the time is in BLAS and in the
// vectorized loops) both give the same training speed and take an eighth of the code
// generator's work off (Fashion MLP and CNN, tiny network). Less mainly drops the post-RA
// scheduler, which an out-of-order x86 does not need; loop strength reduction can only be
// turned off by LLVM's command-line option, global to the process: set once, before the
// first TargetMachine, so the JIT and keel build generate the same code. The same way, the
// loop vectorizer leaves a loop's last few elements to the scalar loop instead of a second,
// narrower vector loop: the module is 11 % smaller (the Fashion CNN's: 10,394 → 9,294
// lines) and compiles 5-8 % faster, and the generated loops run over thousands of elements.
static void codegen_options(void) {
  static bool done;
  if (done)
    return;
  done = true;
  const char *argv[] = {"keel", "-disable-lsr", "-enable-epilogue-vectorization=false"};
  LLVMParseCommandLineOptions(3, argv, NULL);
}

static LLVMTargetMachineRef target_machine(const char *triple_or_null) {
  codegen_options();
  if (triple_or_null) {  // keel build --target: any of the targets LLVM was built with
    LLVMInitializeAllTargetInfos();
    LLVMInitializeAllTargets();
    LLVMInitializeAllTargetMCs();
    LLVMInitializeAllAsmPrinters();
  } else if (LLVMInitializeNativeTarget() || LLVMInitializeNativeAsmPrinter()) {
    fatal("LLVM cannot generate code for this machine");
  }
  char *triple = triple_or_null ? LLVMNormalizeTargetTriple(triple_or_null)
                                : LLVMGetDefaultTargetTriple();
  char *err = NULL;
  LLVMTargetRef target;
  if (LLVMGetTargetFromTriple(triple, &target, &err))
    fatal("unknown target '%s': %s", triple, err);
  char *cpu = cpu_name ? strdup(cpu_name) : triple_or_null ? strdup("generic") : LLVMGetHostCPUName();
  char *features = cpu_name || triple_or_null ? strdup("") : LLVMGetHostCPUFeatures();
  LLVMTargetMachineRef tm = LLVMCreateTargetMachine(target, triple, cpu, features,
                                                    LLVMCodeGenLevelLess, LLVMRelocPIC,
                                                    LLVMCodeModelDefault);
  LLVMDisposeMessage(triple);
  free(cpu), free(features);
  if (!tm)
    fatal("cannot create a target machine for '%s'", triple_or_null);
  return tm;
}

// The summary a trainer prints for --help: the keel check table.
static void set_summary(Prog *p) {
  char *text;
  size_t len;
  FILE *f = open_memstream(&text, &len);
  check_table(f, p);
  fclose(f);
  p->summary = str_dup(text);
  free(text);
}

// Slots and the summary are planned once (the cache key needs them before any LLVM work).
static void prepare(Prog *p) {
  if (p->summary)
    return;
  cg_plan_slots(p);
  set_summary(p);
}

// The pass pipeline: the function simplification and vectorization passes of default<O3>
// that matter for the generated code, once each, in the order O3 runs them. The module has a
// handful of functions that call the runtime, so the inliner, the interprocedural passes and
// the attribute inference have nothing to do; the SLP vectorizer only rewrote the runtime
// alias checks of vectorized loops and took a third of the time. Vectorized loops are not
// interleaved or unrolled further: the generated loops are memory-bound, and it halves the
// time LLVM spends. Measured against default<O3> (with the same vectorizer settings): the
// same samples/s on the Fashion MLP and CNN and the tiny network, a third to a half less
// time in the optimizer.
static const char pipeline[] =
    "function("
    // clean up the straight-line code as generated
    "simplifycfg,sroa,early-cse,instcombine<no-verify-fixpoint>,simplifycfg,"
    // loops into the rotated form the vectorizer needs, invariant code out of them, zero
    // fills into memset, induction variables simplified (rotating without MemorySSA, which
    // O3 keeps up to date through it for licm: 2-3 % of the compile, about the same code)
    "loop(loop-instsimplify,loop-simplifycfg,loop-rotate),loop-mssa(licm),"
    "simplifycfg,instcombine<no-verify-fixpoint>,loop(loop-idiom,indvars,loop-deletion),"
    "gvn,instcombine<no-verify-fixpoint>,adce,dse,loop-mssa(licm),"
    "simplifycfg<hoist-common-insts;sink-common-insts>,instcombine<no-verify-fixpoint>,"
    // vectorize, then simplify what the vectorizer generated; not O3's last simplifycfg: the
    // bigger blocks it makes cost the instruction selector 5 % of the compile, for the same
    // training speed
    "loop-vectorize<interleave-forced-only>,infer-alignment,instcombine<no-verify-fixpoint>,"
    "simplifycfg<no-keep-loops;hoist-common-insts;sink-common-insts>,vector-combine,"
    "instcombine<no-verify-fixpoint>,loop-mssa(licm))";

static void optimize(LLVMModuleRef mod, LLVMTargetMachineRef tm) {
  char *triple = LLVMGetTargetMachineTriple(tm);
  LLVMSetTarget(mod, triple);
  LLVMDisposeMessage(triple);
  LLVMTargetDataRef layout = LLVMCreateTargetDataLayout(tm);
  LLVMSetModuleDataLayout(mod, layout);
  LLVMDisposeTargetData(layout);
  LLVMPassBuilderOptionsRef opts = LLVMCreatePassBuilderOptions();
  LLVMErrorRef err = LLVMRunPasses(mod, pipeline, tm, opts);
  if (err)
    llvm_fail("optimizing", err);
  LLVMDisposePassBuilderOptions(opts);
}

static LLVMModuleRef generate(Prog *p, LLVMContextRef ctx, bool trainer) {
  prepare(p);
  LLVMModuleRef mod = cg_module(p, ctx, trainer);
  char *msg = NULL;
  if (LLVMVerifyModule(mod, LLVMReturnStatusAction, &msg))
    die("the generated module is invalid: %s", msg);
  LLVMDisposeMessage(msg);
  return mod;
}

static LLVMModuleRef build_module(Prog *p, LLVMContextRef ctx, LLVMTargetMachineRef tm,
                                  bool trainer) {
  LLVMModuleRef mod = generate(p, ctx, trainer);
  optimize(mod, tm);
  return mod;
}

// ---------------------------------------------------------------------------------------------
// keel run compiles on two threads: the module is cut in two halves, the training step's
// function in one, everything else (the loops it hands to the thread pool, evaluation, the
// training loop) in the other, each optimized and turned into machine code in a context of
// its own, and the JIT links the two objects. The pass pipeline works function by function,
// so each function gets the instructions it would get in one module (a built trainer, one
// module, trains to the same bytes: tests/run.sh checks it). The outlined loops become
// external symbols (keel.kernel…) so that the halves can call each other.

typedef struct {
  LLVMMemoryBufferRef bitcode;  // the whole module, unoptimized
  bool train_half;              // the training step's function, or all the others
  LLVMTargetMachineRef tm;      // its own (made on the main thread: LLVM's registries)
  LLVMMemoryBufferRef obj;      // out: machine code
} Half;

// A function without its body: a declaration the other half defines.
static void drop_body(LLVMValueRef f) {
  for (LLVMBasicBlockRef bb = LLVMGetFirstBasicBlock(f); bb; bb = LLVMGetNextBasicBlock(bb))
    for (LLVMValueRef in = LLVMGetFirstInstruction(bb); in; in = LLVMGetNextInstruction(in))
      if (LLVMGetTypeKind(LLVMTypeOf(in)) != LLVMVoidTypeKind)
        LLVMReplaceAllUsesWith(in, LLVMGetPoison(LLVMTypeOf(in)));
  for (LLVMBasicBlockRef bb = LLVMGetFirstBasicBlock(f); bb; bb = LLVMGetNextBasicBlock(bb))
    for (LLVMValueRef in = LLVMGetFirstInstruction(bb), next; in; in = next) {
      next = LLVMGetNextInstruction(in);
      LLVMInstructionEraseFromParent(in);
    }
  for (LLVMBasicBlockRef bb = LLVMGetFirstBasicBlock(f), next; bb; bb = next) {
    next = LLVMGetNextBasicBlock(bb);
    LLVMDeleteBasicBlock(bb);
  }
  LLVMSetLinkage(f, LLVMExternalLinkage);
}

static void *compile_half(void *arg) {
  Half *h = arg;
  LLVMContextRef ctx = LLVMContextCreate();
  LLVMModuleRef mod;
  if (LLVMParseBitcodeInContext2(ctx, h->bitcode, &mod))
    die("reading the generated module back");
  for (LLVMValueRef f = LLVMGetFirstFunction(mod); f; f = LLVMGetNextFunction(f)) {
    size_t len;
    const char *name = LLVMGetValueName2(f, &len);
    if (!LLVMIsDeclaration(f) && (strcmp(name, "train_step") == 0) != h->train_half)
      drop_body(f);
  }
  if (h->train_half)  // the program's descriptor is the other half's
    for (LLVMValueRef g = LLVMGetFirstGlobal(mod); g; g = LLVMGetNextGlobal(g))
      if (LLVMGetLinkage(g) == LLVMExternalLinkage && !LLVMIsDeclaration(g))
        LLVMSetInitializer(g, NULL);
  optimize(mod, h->tm);
  char *msg = NULL;
  if (LLVMTargetMachineEmitToMemoryBuffer(h->tm, mod, LLVMObjectFile, &msg, &h->obj))
    die("emitting the object: %s", msg);
  LLVMDisposeModule(mod);
  LLVMDisposeTargetMachine(h->tm);
  LLVMContextDispose(ctx);
  return NULL;
}

// The two objects of the program, compiled side by side.
static void compile_halves(Prog *p, LLVMMemoryBufferRef obj[2]) {
  LLVMContextRef ctx = LLVMContextCreate();
  LLVMModuleRef mod = generate(p, ctx, false);
  for (LLVMValueRef f = LLVMGetFirstFunction(mod); f; f = LLVMGetNextFunction(f))
    if (LLVMGetLinkage(f) == LLVMInternalLinkage) {  // an outlined loop
      size_t len;
      char *name = str_fmt("keel.%s", LLVMGetValueName2(f, &len));
      LLVMSetValueName2(f, name, strlen(name));
      LLVMSetLinkage(f, LLVMExternalLinkage);
    }
  LLVMMemoryBufferRef bitcode = LLVMWriteBitcodeToMemoryBuffer(mod);
  Half h[2] = {{bitcode, true, target_machine(NULL), NULL}, {bitcode, false, target_machine(NULL), NULL}};
  LLVMDisposeModule(mod);
  LLVMContextDispose(ctx);
  pthread_t t;
  bool two = pthread_create(&t, NULL, compile_half, &h[1]) == 0;
  compile_half(&h[0]);
  if (two)
    pthread_join(t, NULL);
  else
    compile_half(&h[1]);
  LLVMDisposeMemoryBuffer(bitcode);
  obj[0] = h[0].obj, obj[1] = h[1].obj;
}

// ---------------------------------------------------------------------------------------------
// The object-code cache: a run of a script whose compiled program is unchanged skips LLVM
// (about 0.2 s for the Fashion MLP) and loads the objects the first run wrote. The key hashes
// the program descriptor (the IR's hash, slots, settings), the target (triple, CPU,
// features) and the keel executable itself, so a rebuilt keel never reuses old code. The
// folder is $KEEL_CACHE_DIR (empty: no cache), else $XDG_CACHE_HOME/keel or ~/.cache/keel.

static uint64_t fnv(uint64_t h, const void *data, size_t n) {
  for (size_t i = 0; i < n; i++)
    h = (h ^ ((const unsigned char *)data)[i]) * 0x100000001b3u;
  return h;
}

static char *cache_path(Prog *p, LLVMTargetMachineRef tm) {
  const char *env = getenv("KEEL_CACHE_DIR"), *xdg = getenv("XDG_CACHE_HOME");
  const char *home = getenv("HOME");
  if (p->profile || (env && !*env))
    return NULL;  // --profile's timers are in the code: never cached
  const char *dir = env ? env : xdg && *xdg ? str_fmt("%s/keel", xdg)
                          : home && *home ? str_fmt("%s/.cache/keel", home) : NULL;
  size_t len;
  char *exe = dir ? read_file("/proc/self/exe", &len) : NULL;
  if (!exe)
    return NULL;
  prepare(p);
  uint64_t h = 0xcbf29ce484222325u;
  const char *json = program_json(p, p->summary);
  char *triple = LLVMGetTargetMachineTriple(tm), *cpu = LLVMGetTargetMachineCPU(tm);
  char *features = LLVMGetTargetMachineFeatureString(tm);
  const char *parts[] = {json, triple, cpu, features, KEEL_VERSION};
  for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
    h = fnv(h, parts[i], strlen(parts[i]) + 1);
  h = fnv(h, exe, len);
  LLVMDisposeMessage(triple), LLVMDisposeMessage(cpu), LLVMDisposeMessage(features);
  char *mk = str_fmt("mkdir -p '%s' 2>/dev/null", dir);
  if (access(dir, W_OK) != 0 && system(mk) != 0)
    return NULL;
  return str_fmt("%s/%016llx", dir, (unsigned long long)h);  // + .0.o and .1.o, the halves
}

// Writes the object atomically; a cache that cannot be written is simply not used.
static void cache_store(const char *path, LLVMMemoryBufferRef obj) {
  char *tmp = str_fmt("%s.tmp.%d", path, (int)getpid());
  FILE *f = fopen(tmp, "wb");
  if (!f)
    return;
  size_t n = LLVMGetBufferSize(obj);
  bool ok = fwrite(LLVMGetBufferStart(obj), 1, n, f) == n;
  ok &= fclose(f) == 0;
  if (!ok || rename(tmp, path) != 0)
    remove(tmp);
}

// LLVM's memory, given back to the kernel where LLVM is idle. Pages of LLVM's code and
// read-only data stay resident once touched, although most are used once: at start-up
// libLLVM's relocation and symbol tables and the pages its static constructors ran (about
// 36 MB of the 54 MB that `keel --version` peaks at), during a compile the optimizer and the
// code generator (20 MB more), none of it used while the program trains. Those of LLVM's
// mappings that are read-only and hold no page of the process's own are dropped with
// MADV_DONTNEED: the kernel maps a page again from the page cache (or reads the file) if
// LLVM runs it later, so this is always correct. Writable mappings are kept, and so are those
// with a page of their own (Anonymous or Swap in smaps: copied on write): the relocated
// .data.rel.ro is read-only but copied, and dropping it would lose the relocations; so is a
// page a debugger put a breakpoint in. (Private_Dirty would also count the page cache's
// dirty pages, of a library installed or linked moments ago, which are safe to drop.) With
// `heap`, the freed heap of the optimizer and the code generator goes back too.
static void give_back_llvm_memory(bool heap) {
  if (heap)
    malloc_trim(0);
  Dl_info info;
  if (!dladdr((void *)LLVMRunPasses, &info) || !info.dli_fname)
    return;
  char *lib = realpath(info.dli_fname, NULL);
  FILE *f = lib ? fopen("/proc/self/smaps", "r") : NULL;
  if (!f) {
    free(lib);
    return;
  }
  char line[4096], perms[8], path[4096];
  unsigned long start = 0, end = 0, own = 0, kb;
  bool candidate = false;
  for (;;) {
    bool eof = !fgets(line, sizeof line, f);
    unsigned long a, b;
    int n = 0;
    if (eof || sscanf(line, "%lx-%lx %7s %*s %*s %*s %n", &a, &b, perms, &n) == 3) {
      // the previous mapping is complete: drop it when it is LLVM's, read-only, not copied
      if (candidate && own == 0)
        madvise((void *)start, end - start, MADV_DONTNEED);
      if (eof)
        break;
      path[0] = 0;
      sscanf(line + n, "%4095[^\n]", path);
      start = a, end = b, own = 0;
      candidate = perms[1] != 'w' && !strcmp(path, lib);
    } else if (sscanf(line, "Anonymous: %lu kB", &kb) == 1 ||
               sscanf(line, "Swap: %lu kB", &kb) == 1) {
      own += kb;
    }
  }
  fclose(f);
  free(lib);
}

KeelJit *jit_compile(Prog *p, bool print_llvm, FILE *out) {
  give_back_llvm_memory(false);  // what start-up left behind
  LLVMTargetMachineRef tm = target_machine(NULL);
  if (print_llvm) {  // the optimized module, as one
    LLVMContextRef ctx = LLVMContextCreate();
    LLVMModuleRef mod = build_module(p, ctx, tm, false);
    char *text = LLVMPrintModuleToString(mod);
    fputs(text, out);
    LLVMDisposeMessage(text);
    LLVMDisposeModule(mod);
    LLVMDisposeTargetMachine(tm);
    LLVMContextDispose(ctx);
    return NULL;
  }
  // the two objects: from the cache, or compiled now (and cached)
  char *cached = cache_path(p, tm);
  LLVMMemoryBufferRef obj[2] = {NULL, NULL};
  for (int k = 0; cached && k < 2; k++) {
    size_t len = 0;
    char *bytes = read_file(str_fmt("%s.%d.o", cached, k), &len);
    if (bytes && len)
      obj[k] = LLVMCreateMemoryBufferWithMemoryRangeCopy(bytes, len, "keel");
  }
  if (!obj[0] || !obj[1]) {
    for (int k = 0; k < 2; k++)
      if (obj[k])
        LLVMDisposeMemoryBuffer(obj[k]);
    compile_halves(p, obj);
    for (int k = 0; cached && k < 2; k++)
      cache_store(str_fmt("%s.%d.o", cached, k), obj[k]);
  }
  LLVMOrcLLJITBuilderRef builder = LLVMOrcCreateLLJITBuilder();
  // the JIT's TargetMachine is the one the halves were compiled for (it takes ownership)
  LLVMOrcLLJITBuilderSetJITTargetMachineBuilder(
      builder, LLVMOrcJITTargetMachineBuilderCreateFromTargetMachine(tm));
  KeelJit *j = calloc(1, sizeof *j);
  LLVMErrorRef err;
  if ((err = LLVMOrcCreateLLJIT(&j->jit, builder)))
    llvm_fail("creating the JIT", err);
  LLVMOrcDefinitionGeneratorRef gen;
  if ((err = LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess(
           &gen, LLVMOrcLLJITGetGlobalPrefix(j->jit), NULL, NULL)))
    llvm_fail("searching the process", err);
  LLVMOrcJITDylibRef dylib = LLVMOrcLLJITGetMainJITDylib(j->jit);
  LLVMOrcJITDylibAddGenerator(dylib, gen);
  for (int k = 0; k < 2; k++)  // (the JIT takes ownership of the buffers)
    if ((err = LLVMOrcLLJITAddObjectFile(j->jit, dylib, obj[k])))
      llvm_fail("adding the object", err);
  return j;
}

void *jit_symbol(KeelJit *j, const char *name) {
  LLVMOrcExecutorAddress addr;
  LLVMErrorRef err = LLVMOrcLLJITLookup(j->jit, &addr, name);
  if (err)
    llvm_fail(str_fmt("looking up %s", name), err);
  if (!j->linked) {  // the first lookup links the program: LLVM's work is done
    j->linked = true;
    give_back_llvm_memory(true);
  }
  return (void *)(uintptr_t)addr;
}

void jit_free(KeelJit *j) {
  if (!j)
    return;
  LLVMOrcDisposeLLJIT(j->jit);
  free(j);
}

// ---------------------------------------------------------------------------------------------
// keel build

// The folder keel runs from (where make put libkeelrt.a next to it).
static char *exe_dir(void) {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0)
    return str_dup(".");
  buf[n] = 0;
  char *slash = strrchr(buf, '/');
  return slash ? str_ndup(buf, (size_t)(slash - buf)) : str_dup(".");
}

int aot_build(Prog *p, const char *out, const char *emit, const char *triple) {
  LLVMContextRef ctx = LLVMContextCreate();
  LLVMTargetMachineRef tm = target_machine(triple);
  LLVMModuleRef mod = build_module(p, ctx, tm, true);
  char *err = NULL;
  if (emit && !strcmp(emit, "llvm")) {
    if (LLVMPrintModuleToFile(mod, out, &err))
      fatal("cannot write '%s': %s", out, err);
    return 0;
  }
  bool link = !emit;
  const char *obj = link ? str_fmt("%s.o.tmp.%d", out, (int)getpid()) : out;
  LLVMCodeGenFileType kind = emit && !strcmp(emit, "asm") ? LLVMAssemblyFile : LLVMObjectFile;
  if (LLVMTargetMachineEmitToFile(tm, mod, (char *)obj, kind, &err))
    fatal("cannot write '%s': %s", obj, err);
  LLVMDisposeModule(mod);
  LLVMDisposeTargetMachine(tm);
  LLVMContextDispose(ctx);
  if (!link)
    return 0;
  if (triple) {
    remove(obj);
    fatal("linking for --target %s needs that target's toolchain; use --emit obj", triple);
  }
  // link with the runtime library and what it needs, into a temporary name, then rename:
  // nothing half-written is left at `out`
  const char *lib = str_fmt("%s/libkeelrt.a", exe_dir());
  if (access(lib, R_OK) != 0)
    fatal("cannot find the runtime library %s (build keel with make)", lib);
  const char *tmp = str_fmt("%s.tmp.%d", out, (int)getpid());
  const char *cc = getenv("CC") ? getenv("CC") : "cc";
  const char *cmd = str_fmt("%s -o '%s' '%s' '%s' -lopenblas -lz -lcjson -lm -lpthread", cc, tmp,
                            obj, lib);
  int status = system(cmd);
  remove(obj);
  if (status != 0) {
    remove(tmp);
    fatal("linking the trainer failed: %s", cmd);
  }
  if (rename(tmp, out) != 0) {
    remove(tmp);
    fatal("cannot write '%s'", out);
  }
  return 0;
}
