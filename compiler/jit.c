// jit.c — optimize the generated module for this CPU and run it under ORC LLJIT.
//
// The module is optimized with the `default<O3>` pipeline on a TargetMachine for the host
// CPU and its features (otherwise the loop vectorizer targets SSE2 only), and LLJIT is given
// a host-detected JITTargetMachineBuilder so its code generation agrees with the optimizer.
// The generated code calls the runtime (krt_*), OpenBLAS and libm; LLJIT finds them in the
// keel process itself (linked with -rdynamic).

#include "keel.h"

#include <llvm-c/Core.h>
#include <llvm-c/Error.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/Orc.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Analysis.h>
#include <llvm-c/Transforms/PassBuilder.h>
#include <stdlib.h>

struct KeelJit {
  LLVMOrcLLJITRef jit;
  KeelMain *main;
};

static _Noreturn void llvm_fail(const char *what, LLVMErrorRef err) {
  char *msg = LLVMGetErrorMessage(err);
  die("%s: %s", what, msg);
}

static LLVMTargetMachineRef host_machine(void) {
  char *triple = LLVMGetDefaultTargetTriple(), *err = NULL;
  LLVMTargetRef target;
  if (LLVMGetTargetFromTriple(triple, &target, &err))
    die("no LLVM target for %s: %s", triple, err);
  char *cpu = LLVMGetHostCPUName(), *features = LLVMGetHostCPUFeatures();
  LLVMTargetMachineRef tm = LLVMCreateTargetMachine(target, triple, cpu, features,
                                                    LLVMCodeGenLevelAggressive, LLVMRelocPIC,
                                                    LLVMCodeModelJITDefault);
  LLVMDisposeMessage(triple), LLVMDisposeMessage(cpu), LLVMDisposeMessage(features);
  return tm;
}

KeelJit *jit_compile(Prog *p, bool print_llvm, FILE *out) {
  LLVMInitializeNativeTarget();
  LLVMInitializeNativeAsmPrinter();
  cg_plan_slots(p);

  LLVMOrcThreadSafeContextRef tsc = LLVMOrcCreateNewThreadSafeContext();
  LLVMContextRef ctx = LLVMOrcThreadSafeContextGetContext(tsc);
  LLVMModuleRef mod = cg_module(p, ctx);
  char *msg = NULL;
  if (LLVMVerifyModule(mod, LLVMReturnStatusAction, &msg))
    die("the generated module is invalid: %s", msg);
  LLVMDisposeMessage(msg);

  LLVMTargetMachineRef tm = host_machine();
  char *triple = LLVMGetTargetMachineTriple(tm);
  LLVMSetTarget(mod, triple);
  LLVMDisposeMessage(triple);
  LLVMTargetDataRef layout = LLVMCreateTargetDataLayout(tm);
  LLVMSetModuleDataLayout(mod, layout);
  LLVMPassBuilderOptionsRef opts = LLVMCreatePassBuilderOptions();
  LLVMPassBuilderOptionsSetLoopVectorization(opts, 1);
  LLVMPassBuilderOptionsSetSLPVectorization(opts, 1);
  LLVMErrorRef err = LLVMRunPasses(mod, "default<O3>", tm, opts);
  if (err)
    llvm_fail("optimizing", err);
  LLVMDisposePassBuilderOptions(opts);
  LLVMDisposeTargetData(layout);
  LLVMDisposeTargetMachine(tm);

  if (print_llvm) {
    char *text = LLVMPrintModuleToString(mod);
    fputs(text, out);
    LLVMDisposeMessage(text);
    LLVMDisposeModule(mod);
    LLVMOrcDisposeThreadSafeContext(tsc);
    return NULL;
  }

  LLVMOrcLLJITBuilderRef builder = LLVMOrcCreateLLJITBuilder();
  LLVMOrcJITTargetMachineBuilderRef jtmb;
  if ((err = LLVMOrcJITTargetMachineBuilderDetectHost(&jtmb)))
    llvm_fail("detecting the host", err);
  LLVMOrcLLJITBuilderSetJITTargetMachineBuilder(builder, jtmb);
  KeelJit *j = calloc(1, sizeof *j);
  if ((err = LLVMOrcCreateLLJIT(&j->jit, builder)))
    llvm_fail("creating the JIT", err);
  LLVMOrcDefinitionGeneratorRef gen;
  if ((err = LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess(
           &gen, LLVMOrcLLJITGetGlobalPrefix(j->jit), NULL, NULL)))
    llvm_fail("searching the process", err);
  LLVMOrcJITDylibRef dylib = LLVMOrcLLJITGetMainJITDylib(j->jit);
  LLVMOrcJITDylibAddGenerator(dylib, gen);
  LLVMOrcThreadSafeModuleRef tsm = LLVMOrcCreateNewThreadSafeModule(mod, tsc);
  if ((err = LLVMOrcLLJITAddLLVMIRModule(j->jit, dylib, tsm)))
    llvm_fail("adding the module", err);
  LLVMOrcDisposeThreadSafeContext(tsc);
  LLVMOrcExecutorAddress addr;
  if ((err = LLVMOrcLLJITLookup(j->jit, &addr, "keel_main")))
    llvm_fail("looking up keel_main", err);
  j->main = (KeelMain *)(uintptr_t)addr;
  return j;
}

KeelMain *jit_main(KeelJit *j) { return j->main; }

KeelSchedule *jit_schedule(KeelJit *j) {
  LLVMOrcExecutorAddress addr;
  LLVMErrorRef err = LLVMOrcLLJITLookup(j->jit, &addr, "schedule");
  if (err)
    llvm_fail("looking up schedule", err);
  return (KeelSchedule *)(uintptr_t)addr;
}

void jit_free(KeelJit *j) {
  if (!j)
    return;
  LLVMOrcDisposeLLJIT(j->jit);
  free(j);
}
