// codegen.c — the IR as an LLVM module, through the LLVM 19 C API.
//
// The module holds four functions:
//
//   void train_step(float **slots, i64 n, double *in, i64 seed, KrtRun *run)
//                                                     forward, backward, guard, update
//   void eval_step(float **slots, i64 n, double *in, i64 seed, KrtRun *run)
//                                                     forward (eval mode), loss
//   float schedule(float **slots, double *in)                     the learning rate
//   void keel_main(KrtRun *run, float **slots, i64 seed)          epochs, batches, evaluation
//
// Every IR value lives in a slot, a float buffer sized once for the largest batch (no
// allocation while training). in[] holds the run-time scalars, indexed by InputKind. Each
// instruction becomes a loop nest over its output: elementwise ops whose operands have the
// output's shape (or are scalars) become one flat loop that LLVM vectorizes; broadcasting
// uses per-dimension strides. Matrix products call krt_sgemm (OpenBLAS's cblas_sgemm, in
// chunks over the runtime's thread pool); random numbers
// call krt_rand_fill, so the JIT, a built trainer and the interpreter draw the same numbers.

#include "keel.h"

#include <llvm-c/Core.h>
#include <llvm-c/DebugInfo.h>  // LLVMTemporaryMDNode, for loop metadata
#include <string.h>

typedef struct {
  LLVMContextRef ctx;
  LLVMModuleRef mod;
  LLVMBuilderRef b;
  LLVMTypeRef f32, f64, i64, i32, ptr, vd;
  LLVMValueRef fn;     // the function being built
  Prog *p;
  Fn *ir;
  int *slot;           // slot of each instruction of ir
  LLVMValueRef *buf;   // per instruction: its buffer pointer (or NULL)
  LLVMValueRef *scratch;  // per instruction: its scratch buffer (or NULL)
  int *scratch_slot;      // per instruction: the slot of its scratch, or -1
  LLVMValueRef *imm;   // per instruction: a constant or a scalar input's value
  LLVMValueRef n, in, seed, run;
  LLVMValueRef chunks;  // the chunks krt_parallel may cut a loop into: the pool's threads,
                        // asked once at the top of each function (gen_body)
  bool guard;          // train_step: call krt_guard before the stores
  bool *keep;          // per instruction: the runtime reads its slot (loss, output, probes)
  bool profile;        // bracket each kernel with the cycle counter (train_step, --profile)
} Cg;

// ---------------------------------------------------------------------------------------------
// Slots

// A new slot for a value of the given shape (floats at the compiled batch size, and per
// sample when the shape has the batch dimension once, so a trainer can change the batch).
static int new_slot(Prog *p, Shape shape) {
  if (p->nslots == p->slot_cap) {
    p->slot_cap = p->slot_cap ? p->slot_cap * 2 : 256;
    int64_t *s = arena_alloc(sizeof(int64_t) * (size_t)p->slot_cap);
    int64_t *r = arena_alloc(sizeof(int64_t) * (size_t)p->slot_cap);
    if (p->nslots) {
      memcpy(s, p->slot_size, sizeof(int64_t) * (size_t)p->nslots);
      memcpy(r, p->slot_size_per_row, sizeof(int64_t) * (size_t)p->nslots);
    }
    p->slot_size = s, p->slot_size_per_row = r;
  }
  int nn = 0;
  for (int d = 0; d < shape.rank; d++)
    nn += shape.dim[d] == DIM_N;
  p->slot_size[p->nslots] = shape_numel(shape, p->batch);
  // a shape with n twice (x xᵀ) is sized for the compiled batch and cannot grow
  p->slot_size_per_row[p->nslots] = nn == 1 ? shape_numel(shape, 1) : 0;
  return p->nslots++;
}

static Shape flat(int64_t count) { return shape_make(1, count); }

// Floats of scratch an instruction needs (0: none).
static int64_t scratch_size(Fn *fn, Ins *ins, int64_t batch) {
  return ins->op == OP_LSE ? shape_numel(ins->shape, batch) : 0;
}

// Memory planning. A value's slot is taken when it is computed and handed back after its
// last use (a value the runtime reads, and everything a RESHAPE aliases, lives longer); a
// later value that fits takes it again (the smallest free slot that fits). Only elementwise
// ops work in place (over an operand they read for the last time): a reduction, a product,
// a convolution or a pooling kernel never writes over one of its operands. The three
// functions never run at once, so eval and the schedule reuse train's slots as well.
typedef struct {
  int *slot;
  int n, cap;
} FreeSlots;

// Best fit: the smallest free slot that holds the value at every batch size (a per-sample
// slot for a per-sample value, a fixed one for a fixed value), else a new one.
static int take_slot(Prog *p, FreeSlots *fs, Shape shape) {
  int fresh = new_slot(p, shape);  // its size, for comparing; given back below if unused
  int64_t row = p->slot_size_per_row[fresh], size = p->slot_size[fresh];
  int best = -1;
  for (int k = 0; k < fs->n; k++) {
    int s = fs->slot[k];
    bool fits = row ? p->slot_size_per_row[s] >= row
                    : !p->slot_size_per_row[s] && p->slot_size[s] >= size;
    if (fits && (best < 0 || p->slot_size[s] < p->slot_size[fs->slot[best]]))
      best = k;
  }
  if (best < 0)
    return fresh;
  int s = fs->slot[best];
  fs->slot[best] = fs->slot[--fs->n];
  p->nslots--;  // the fresh one was the last slot: drop it
  return s;
}

static void give_slot(FreeSlots *fs, int s) {
  if (fs->n == fs->cap) {
    fs->cap = fs->cap ? 2 * fs->cap : 256;
    int *n = arena_alloc(sizeof(int) * (size_t)fs->cap);
    if (fs->n)
      memcpy(n, fs->slot, sizeof(int) * (size_t)fs->n);
    fs->slot = n;
  }
  fs->slot[fs->n++] = s;
}

static bool elementwise_op(Op op) {
  OpClass c = op_class[op];
  return c == OC_UNARY || c == OC_BINARY || c == OC_SELECT;
}

// Whether an operand of instruction i, not a scalar, has another shape than i.
static bool broadcasts(Fn *fn, int i) {
  for (int k = 0; k < op_nargs[fn->ins[i].op]; k++) {
    Shape a = fn->ins[fn->ins[i].arg[k]].shape;
    if (a.rank && !shape_eq(a, fn->ins[i].shape))
      return true;
  }
  return false;
}

// Gives back the slots of the values whose last use is instruction i (once).
static void free_operands(FreeSlots *fs, const int *slot, int *free_at, const int *next_free,
                          int i) {
  for (int v = free_at[i]; v >= 0; v = next_free[v])
    give_slot(fs, slot[v]);
  free_at[i] = -1;
}

static int *plan_fn(Prog *p, Fn *fn, const bool *keep, FreeSlots *fs, int **scratch_out) {
  int n = fn->len;
  int *slot = arena_alloc(sizeof(int) * (size_t)(n + 1));
  int *scratch = arena_alloc(sizeof(int) * (size_t)(n + 1));
  int *last = arena_alloc(sizeof(int) * (size_t)(n + 1));
  bool *owned = arena_alloc(sizeof(bool) * (size_t)(n + 1));
  // the last use of each value; kept values live to the end; an aliased value as long as
  // its reshapes
  for (int i = 0; i < n; i++) {
    last[i] = keep[i] ? n : i;
    for (int k = 0; k < op_nargs[fn->ins[i].op]; k++)
      last[fn->ins[i].arg[k]] = last[fn->ins[i].arg[k]] > i ? last[fn->ins[i].arg[k]] : i;
  }
  for (int i = n - 1; i >= 0; i--)
    if (fn->ins[i].op == OP_RESHAPE && last[i] > last[fn->ins[i].arg[0]])
      last[fn->ins[i].arg[0]] = last[i];
  // the values whose slot comes free after instruction i: free_at[i] .. chained by next_free
  int *free_at = arena_alloc(sizeof(int) * (size_t)(n + 1));
  int *next_free = arena_alloc(sizeof(int) * (size_t)(n + 1));
  for (int i = 0; i <= n; i++)
    free_at[i] = -1;
  for (int i = 0; i < n; i++) {
    Ins *ins = &fn->ins[i];
    scratch[i] = -1;
    switch (ins->op) {
    case OP_CONST: slot[i] = -1; break;
    case OP_INPUT:
      slot[i] = ins->input == IN_X ? p->x_slot : ins->input == IN_Y ? p->y_slot : -1;
      break;
    case OP_TENSOR:
    case OP_STORE: slot[i] = ins->tensor; break;
    case OP_RESHAPE: slot[i] = slot[ins->arg[0]]; break;  // same elements, same buffer
    default:
      // Scalars keep slots of their own: fusion may compute one before the loop it sits in
      // (hoisting), earlier than its place here, so it must not take a slot freed meanwhile.
      if (ins->shape.rank == 0) {
        slot[i] = new_slot(p, ins->shape);
        break;
      }
      // An elementwise op may write over an operand it reads for the last time: each
      // element is read before it is written, at the same index. Not when an operand
      // broadcasts: it is read at other indices (its slot may be larger than it, and fit).
      if (elementwise_op(ins->op) && !broadcasts(fn, i))
        free_operands(fs, slot, free_at, next_free, i);
      slot[i] = take_slot(p, fs, ins->shape);
      owned[i] = true;
      // scratch: LSE's running sums, a convolution's im2col matrix (for this kernel only)
      if (ins->op == OP_LSE)
        scratch[i] = take_slot(p, fs, ins->shape);
      else if (scratch_size(fn, ins, p->batch) > 0)
        scratch[i] = take_slot(p, fs, flat(scratch_size(fn, ins, p->batch)));
      if (last[i] < n)
        next_free[i] = free_at[last[i]], free_at[last[i]] = i;
      break;
    }
    if (scratch[i] >= 0)
      give_slot(fs, scratch[i]);
    free_operands(fs, slot, free_at, next_free, i);
  }
  // after the function, every slot it owned is free for the next one
  for (int i = 0; i < n; i++)
    if (owned[i] && last[i] == n)
      give_slot(fs, slot[i]);
  *scratch_out = scratch;
  return slot;
}

// The values the runtime reads after (or during) a function: they keep their slots.
static bool *kept(Prog *p, Fn *fn) {
  bool *keep = arena_alloc(sizeof(bool) * (size_t)(fn->len + 1));
  if (fn == p->train) {
    keep[p->train_loss] = keep[p->train_out] = keep[p->train_gsq] = true;
    for (int k = 0; k < p->nprobes; k++)
      keep[p->probe_val[k]] = true;
  } else if (fn == p->eval) {
    keep[p->eval_loss] = keep[p->eval_out] = true;
  } else {
    keep[p->sched_out] = true;
  }
  return keep;
}

void cg_plan_slots(Prog *p) {
  p->nslots = 0;
  for (int t = 0; t < p->ntensors; t++)
    new_slot(p, p->tensors[t].shape);
  p->x_slot = new_slot(p, p->in_shape);
  p->y_slot = new_slot(p, p->y_shape);
  FreeSlots fs = {0};
  p->slot_train = plan_fn(p, p->train, kept(p, p->train), &fs, &p->scratch_train);
  p->slot_eval = plan_fn(p, p->eval, kept(p, p->eval), &fs, &p->scratch_eval);
  p->slot_sched = plan_fn(p, p->sched, kept(p, p->sched), &fs, &p->scratch_sched);
}

// ---------------------------------------------------------------------------------------------
// Small builders

static LLVMValueRef ci64(Cg *cg, int64_t v) { return LLVMConstInt(cg->i64, (unsigned long long)v, 1); }
static LLVMValueRef cf32(Cg *cg, double v) { return LLVMConstReal(cg->f32, v); }

static LLVMValueRef gep(Cg *cg, LLVMValueRef base, LLVMValueRef idx) {
  return LLVMBuildInBoundsGEP2(cg->b, cg->f32, base, &idx, 1, "");
}
static LLVMValueRef load_at(Cg *cg, LLVMValueRef base, LLVMValueRef idx) {
  return LLVMBuildLoad2(cg->b, cg->f32, gep(cg, base, idx), "");
}
static void store_at(Cg *cg, LLVMValueRef v, LLVMValueRef base, LLVMValueRef idx) {
  LLVMBuildStore(cg->b, v, gep(cg, base, idx));
}

static LLVMValueRef dim_val(Cg *cg, int64_t d) { return d == DIM_N ? cg->n : ci64(cg, d); }

static LLVMValueRef numel(Cg *cg, Shape s) {
  LLVMValueRef c = ci64(cg, 1);
  int64_t fixed = 1;
  for (int i = 0; i < s.rank; i++)
    if (s.dim[i] == DIM_N)
      c = LLVMBuildMul(cg->b, c, cg->n, "");
    else
      fixed *= s.dim[i];
  return LLVMBuildMul(cg->b, c, ci64(cg, fixed), "");
}

static LLVMValueRef call(Cg *cg, const char *name, LLVMTypeRef ret, LLVMTypeRef *params,
                         int np, LLVMValueRef *args) {
  LLVMTypeRef ty = LLVMFunctionType(ret, params, (unsigned)np, 0);
  LLVMValueRef f = LLVMGetNamedFunction(cg->mod, name);
  if (!f)
    f = LLVMAddFunction(cg->mod, name, ty);
  return LLVMBuildCall2(cg->b, ty, f, args, (unsigned)np, "");
}

static LLVMValueRef intrinsic1(Cg *cg, const char *name, LLVMValueRef x) {
  unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
  LLVMTypeRef t = cg->f32;
  LLVMValueRef f = LLVMGetIntrinsicDeclaration(cg->mod, id, &t, 1);
  LLVMTypeRef ft = LLVMIntrinsicGetType(cg->ctx, id, &t, 1);
  return LLVMBuildCall2(cg->b, ft, f, &x, 1, "");
}

static LLVMValueRef intrinsic2(Cg *cg, const char *name, LLVMValueRef x, LLVMValueRef y) {
  unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
  LLVMTypeRef t = cg->f32;
  LLVMValueRef f = LLVMGetIntrinsicDeclaration(cg->mod, id, &t, 1);
  LLVMTypeRef ft = LLVMIntrinsicGetType(cg->ctx, id, &t, 1);
  LLVMValueRef args[2] = {x, y};
  return LLVMBuildCall2(cg->b, ft, f, args, 2, "");
}

// A counted loop: for (iv = 0; iv < count; iv++). Usage: loop_begin, body, loop_end.
typedef struct {
  LLVMBasicBlockRef head, exit;
  LLVMValueRef iv;
  int interleave;  // > 1: the vectorized loop keeps that many sums (a loop that sums)
} Loop;

static Loop loop_from(Cg *cg, LLVMValueRef start, LLVMValueRef count);
static Loop loop_begin(Cg *cg, LLVMValueRef count) { return loop_from(cg, ci64(cg, 0), count); }

// for (iv = start; iv < count; iv++)
static Loop loop_from(Cg *cg, LLVMValueRef start, LLVMValueRef count) {
  Loop l;
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(cg->b);
  l.head = LLVMAppendBasicBlockInContext(cg->ctx, cg->fn, "loop");
  LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(cg->ctx, cg->fn, "body");
  l.exit = LLVMAppendBasicBlockInContext(cg->ctx, cg->fn, "done");
  LLVMBuildBr(cg->b, l.head);
  LLVMPositionBuilderAtEnd(cg->b, l.head);
  l.iv = LLVMBuildPhi(cg->b, cg->i64, "i");
  LLVMAddIncoming(l.iv, &start, &pre, 1);
  LLVMBuildCondBr(cg->b, LLVMBuildICmp(cg->b, LLVMIntSLT, l.iv, count, ""), body, l.exit);
  LLVMPositionBuilderAtEnd(cg->b, body);
  return l;
}

// A sum over a loop vectorizes into one vector of partial sums, each add waiting for the
// last (4 cycles on Zen 4: 4 floats a cycle from the L2 cache, which could give 16); the
// pipeline interleaves no loop unless told to, so a loop that sums is told to keep
// l->interleave vectors of sums (llvm.loop.interleave.count on its back edge).
static void loop_end(Cg *cg, Loop *l) {
  LLVMValueRef next = LLVMBuildAdd(cg->b, l->iv, ci64(cg, 1), "");
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(cg->b);
  LLVMAddIncoming(l->iv, &next, &latch, 1);
  LLVMValueRef back = LLVMBuildBr(cg->b, l->head);
  if (l->interleave > 1) {
    LLVMMetadataRef self = LLVMTemporaryMDNode(cg->ctx, NULL, 0);
    LLVMMetadataRef hint[2] = {
        LLVMMDStringInContext2(cg->ctx, "llvm.loop.interleave.count", 26),
        LLVMValueAsMetadata(LLVMConstInt(LLVMInt32TypeInContext(cg->ctx), (unsigned)l->interleave, 0))};
    LLVMMetadataRef ops[2] = {self, LLVMMDNodeInContext2(cg->ctx, hint, 2)};
    LLVMMetadataRef loop = LLVMMDNodeInContext2(cg->ctx, ops, 2);
    LLVMMetadataReplaceAllUsesWith(self, loop);  // the loop's id is the node itself
    LLVMSetMetadata(back, LLVMGetMDKindIDInContext(cg->ctx, "llvm.loop", 9),
                    LLVMMetadataAsValue(cg->ctx, loop));
  }
  LLVMPositionBuilderAtEnd(cg->b, l->exit);
}

static void fill(Cg *cg, LLVMValueRef base, LLVMValueRef count, LLVMValueRef v) {
  Loop l = loop_begin(cg, count);
  store_at(cg, v, base, l.iv);
  loop_end(cg, &l);
}

// ---------------------------------------------------------------------------------------------
// Operands

static bool is_scalar_val(Cg *cg, int v) { return cg->ir->ins[v].shape.rank == 0; }

// The value of a scalar operand (loaded once, before any loop that uses it).
static LLVMValueRef scalar(Cg *cg, int v) {
  if (cg->imm[v])
    return cg->imm[v];
  return LLVMBuildLoad2(cg->b, cg->f32, cg->buf[v], "");
}

// Offset of an operand with shape `in` inside a loop nest over `out` with indices idx[].
static LLVMValueRef bcast_offset(Cg *cg, Shape in, Shape out, LLVMValueRef *idx) {
  LLVMValueRef off = ci64(cg, 0), stride = ci64(cg, 1);
  for (int i = out.rank - 1, j = in.rank - 1; j >= 0; i--, j--) {
    if (in.dim[j] != 1)
      off = LLVMBuildAdd(cg->b, off, LLVMBuildMul(cg->b, idx[i], stride, ""), "");
    stride = LLVMBuildMul(cg->b, stride, dim_val(cg, in.dim[j]), "");
  }
  return off;
}

// e^x in float, without a libm call so that loops using it vectorize: x = k·ln 2 + r with
// |r| ≤ ln 2 / 2, e^r by Cephes' degree-6 polynomial (within 2 ulp), 2^k from the exponent
// bits. x is clamped to [-87.3, 88.7] (beyond, e^x is 0 or inf in float anyway; the guard
// sees an inf loss either way).
static LLVMValueRef poly(Cg *cg, LLVMValueRef x, const double *c, int n) {
  LLVMValueRef y = cf32(cg, c[0]);
  for (int i = 1; i < n; i++)
    y = LLVMBuildFAdd(cg->b, LLVMBuildFMul(cg->b, y, x, ""), cf32(cg, c[i]), "");
  return y;
}

static LLVMValueRef fast_exp(Cg *cg, LLVMValueRef x) {
  LLVMBuilderRef B = cg->b;
  static const double p[] = {1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                             4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1};
  LLVMValueRef nan = LLVMBuildFCmp(B, LLVMRealUNO, x, x, "");
  x = intrinsic2(cg, "llvm.minnum", intrinsic2(cg, "llvm.maxnum", x, cf32(cg, -87.3365447504)),
                 cf32(cg, 88.7228391117));
  LLVMValueRef k = intrinsic1(cg, "llvm.floor",
                              LLVMBuildFAdd(B, LLVMBuildFMul(B, x, cf32(cg, 1.44269504088896341), ""),
                                            cf32(cg, 0.5), ""));
  LLVMValueRef r = LLVMBuildFSub(B, x, LLVMBuildFMul(B, k, cf32(cg, 0.693359375), ""), "");
  r = LLVMBuildFSub(B, r, LLVMBuildFMul(B, k, cf32(cg, -2.12194440e-4), ""), "");
  LLVMValueRef z = LLVMBuildFMul(B, r, r, "");
  LLVMValueRef y = LLVMBuildFAdd(B, LLVMBuildFAdd(B, LLVMBuildFMul(B, poly(cg, r, p, 6), z, ""), r, ""),
                                 cf32(cg, 1), "");
  // 2^k: k + 127 in the exponent bits (k is in [-126, 128] after the clamp; 2^128 = inf)
  LLVMValueRef bits = LLVMBuildShl(B, LLVMBuildAdd(B, LLVMBuildFPToSI(B, k, cg->i32, ""),
                                                   LLVMConstInt(cg->i32, 127, 0), ""),
                                   LLVMConstInt(cg->i32, 23, 0), "");
  LLVMValueRef two_k = LLVMBuildBitCast(B, bits, cg->f32, "");
  y = LLVMBuildFMul(B, y, two_k, "");
  return LLVMBuildSelect(B, nan, x, y, "");  // NaN stays NaN
}

// tanh(x): Cephes' odd polynomial for |x| < 0.625, 1 - 2/(e^{2|x|} + 1) with x's sign above.
static LLVMValueRef fast_tanh(Cg *cg, LLVMValueRef x) {
  LLVMBuilderRef B = cg->b;
  static const double p[] = {-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2,
                             1.33314422036e-1, -3.33332819422e-1};
  LLVMValueRef ax = intrinsic1(cg, "llvm.fabs", x), z = LLVMBuildFMul(B, x, x, "");
  LLVMValueRef small = LLVMBuildFAdd(B, LLVMBuildFMul(B, LLVMBuildFMul(B, poly(cg, z, p, 5), z, ""), x, ""),
                                     x, "");
  LLVMValueRef e = fast_exp(cg, LLVMBuildFMul(B, ax, cf32(cg, 2), ""));
  LLVMValueRef big = LLVMBuildFSub(B, cf32(cg, 1),
                                   LLVMBuildFDiv(B, cf32(cg, 2), LLVMBuildFAdd(B, e, cf32(cg, 1), ""), ""), "");
  big = intrinsic2(cg, "llvm.copysign", big, x);
  return LLVMBuildSelect(B, LLVMBuildFCmp(B, LLVMRealOLT, ax, cf32(cg, 0.625), ""), small, big, "");
}

static LLVMValueRef elementwise(Cg *cg, Op op, LLVMValueRef a, LLVMValueRef b, LLVMValueRef c,
                                int barg, Fn *fn) {
  LLVMBuilderRef B = cg->b;
  LLVMValueRef t;
  switch (op) {
  case OP_NEG: return LLVMBuildFNeg(B, a, "");
  case OP_EXP: return fast_exp(cg, a);
  case OP_LOG: return intrinsic1(cg, "llvm.log", a);
  case OP_SQRT: return intrinsic1(cg, "llvm.sqrt", a);
  case OP_TANH: return fast_tanh(cg, a);
  case OP_SIGMOID:
    t = fast_exp(cg, LLVMBuildFNeg(B, a, ""));
    return LLVMBuildFDiv(B, cf32(cg, 1), LLVMBuildFAdd(B, cf32(cg, 1), t, ""), "");
  case OP_ABS: return intrinsic1(cg, "llvm.fabs", a);
  case OP_SIN: return intrinsic1(cg, "llvm.sin", a);
  case OP_COS: return intrinsic1(cg, "llvm.cos", a);
  case OP_FLOOR: return intrinsic1(cg, "llvm.floor", a);
  case OP_ADD: return LLVMBuildFAdd(B, a, b, "");
  case OP_SUB: return LLVMBuildFSub(B, a, b, "");
  case OP_MUL: return LLVMBuildFMul(B, a, b, "");
  case OP_DIV: return LLVMBuildFDiv(B, a, b, "");
  case OP_POW: {
    double e;
    if (barg >= 0 && ir_is_const(fn, barg, &e) && e == 2)
      return LLVMBuildFMul(B, a, a, "");
    return intrinsic2(cg, "llvm.pow", a, b);
  }
  // NaN in a propagates (unordered compares are true), as in torch.maximum
  case OP_MAX: return LLVMBuildSelect(B, LLVMBuildFCmp(B, LLVMRealUGT, a, b, ""), a, b, "");
  case OP_MIN: return LLVMBuildSelect(B, LLVMBuildFCmp(B, LLVMRealULT, a, b, ""), a, b, "");
#define CMP(pred) LLVMBuildUIToFP(B, LLVMBuildFCmp(B, pred, a, b, ""), cg->f32, "")
  case OP_LT: return CMP(LLVMRealOLT);
  case OP_LE: return CMP(LLVMRealOLE);
  case OP_GT: return CMP(LLVMRealOGT);
  case OP_GE: return CMP(LLVMRealOGE);
  case OP_EQ: return CMP(LLVMRealOEQ);
  case OP_NE: return CMP(LLVMRealUNE);
#undef CMP
  case OP_SELECT:
    return LLVMBuildSelect(B, LLVMBuildFCmp(B, LLVMRealUNE, a, cf32(cg, 0), ""), b, c, "");
  default: die("elementwise: %s", op_names[op]);
  }
}

// ---------------------------------------------------------------------------------------------
// Parallel loops. A loop over a tensor large enough to share (the optimizer's update of a
// weight matrix, an activation at a large batch) is outlined into a kernel
//   void kernel(i64 *env, i64 lo, i64 hi, i32 chunk)
// that runs elements lo..hi, and the step calls krt_parallel(kernel, env, count, …), which
// cuts [0, count) into one chunk per thread at fixed places. Elementwise work gives the same
// bits however it is cut. env holds the batch size, the buffers and the scalars the loop
// reads, one 8-byte cell each, in the step function's frame.

enum { PAR_MIN = 8192 };  // floats per chunk at the least: below, one thread does it all
// vectors of partial sums in a loop that sums (loop_end), if it has that many floats at least:
// interleaved, a loop does 4 × 16 floats a step, and a shorter one runs all in the scalar
// remainder (the tiny 2-16-1 network 13.4 -> 5.0 million samples/s with every sum
// interleaved); the loops of a batch's rows gained nothing measurable and cost the MLP's
// compile 0.015 s, so only sums over a large weight's gradient (the guard's Σ g²) are interleaved
enum { SUM_INTERLEAVE = 4, SUM_INTERLEAVE_MIN = 32768 };
enum { MAX_CHUNKS = 64 };  // KRT_MAX_THREADS: krt_parallel's chunks are numbered below it

static LLVMValueRef cell_at(Cg *cg, LLVMValueRef env, int k) {
  LLVMValueRef idx = ci64(cg, k);
  return LLVMBuildInBoundsGEP2(cg->b, cg->i64, env, &idx, 1, "");
}

static bool has_batch(Shape s) {
  for (int d = 0; d < s.rank; d++)
    if (s.dim[d] == DIM_N)
      return true;
  return false;
}

// Whether a loop over a value of shape s is outlined for the pool: a fixed size of two chunks
// or more, or at least 64 floats per sample (two chunks from a batch of 256). Smaller ones
// (a loss over [n, 10]) would only add functions for LLVM to compile.
static bool worth_sharing(Shape s) {
  return has_batch(s) ? shape_numel(s, 1) >= 64 : shape_numel(s, 1) >= 2 * PAR_MIN;
}

typedef struct {
  LLVMValueRef kernel, env, outer_fn, outer_n;
  LLVMBasicBlockRef outer_bb;
  int *ids, nids;            // instructions whose cg->buf the kernel replaced
  LLVMValueRef *saved;       // their step-function pointers
  LLVMValueRef *sc;          // the scalar values (replaced in place) and their originals
  LLVMValueRef *sc_saved;
  int nsc;
  LLVMValueRef *extra;       // more pointers (per-chunk partial sums), set before outline_begin
  LLVMValueRef *extra_saved;
  int nextra;
} Outline;

static void outline_begin(Cg *cg, Outline *o, int *ids, int nids, LLVMValueRef *sc, int nsc,
                          LLVMValueRef *lo, LLVMValueRef *hi) {
  LLVMBuilderRef B = cg->b;
  int ncells = 1;  // the batch size n first
  for (int k = 0; k < nids; k++)
    ncells += cg->buf[ids[k]] != NULL;
  for (int k = 0; k < nsc; k++)
    ncells += sc[k] != NULL;
  ncells += o->nextra;
  LLVMTypeRef cells = LLVMArrayType2(cg->i64, (uint64_t)(ncells ? ncells : 1));
  LLVMBasicBlockRef here = LLVMGetInsertBlock(B), entry = LLVMGetEntryBasicBlock(cg->fn);
  LLVMValueRef first = LLVMGetFirstInstruction(entry);
  if (first)
    LLVMPositionBuilderBefore(B, first);
  else
    LLVMPositionBuilderAtEnd(B, entry);
  o->env = LLVMBuildAlloca(B, cells, "env");
  LLVMPositionBuilderAtEnd(B, here);
  o->outer_fn = cg->fn, o->outer_bb = here;
  o->ids = ids, o->nids = nids, o->sc = sc, o->nsc = nsc;
  o->saved = arena_alloc(sizeof(LLVMValueRef) * (size_t)(nids + 1));
  o->sc_saved = arena_alloc(sizeof(LLVMValueRef) * (size_t)(nsc + 1));
  // the step stores the cells ...
  // one cell per slot: an update in place must load and store through one pointer value, or
  // the vectorizer's overlap check fails at run time and the scalar loop runs
  LLVMBuildStore(B, cg->n, cell_at(cg, o->env, 0));
  int cell = 1, *cell_of = arena_alloc(sizeof(int) * (size_t)(nids + 1));
  for (int k = 0; k < nids; k++) {
    cell_of[k] = -1;
    if (!(o->saved[k] = cg->buf[ids[k]]))
      continue;
    for (int e = 0; e < k && cell_of[k] < 0; e++)
      if (o->saved[e] && cg->slot[ids[e]] == cg->slot[ids[k]])
        cell_of[k] = cell_of[e];
    if (cell_of[k] < 0) {
      cell_of[k] = cell;
      LLVMBuildStore(B, o->saved[k], cell_at(cg, o->env, cell++));
    }
  }
  int nptr = cell;
  for (int k = 0; k < nsc; k++)
    if ((o->sc_saved[k] = sc[k]))
      LLVMBuildStore(B, sc[k], cell_at(cg, o->env, cell++));
  o->extra_saved = arena_alloc(sizeof(LLVMValueRef) * (size_t)(o->nextra + 1));
  for (int k = 0; k < o->nextra; k++)
    LLVMBuildStore(B, o->extra_saved[k] = o->extra[k], cell_at(cg, o->env, cell++));
  // ... and the kernel loads them
  LLVMTypeRef params[4] = {cg->ptr, cg->i64, cg->i64, cg->i32};
  o->kernel = LLVMAddFunction(cg->mod, "kernel", LLVMFunctionType(cg->vd, params, 4, 0));
  LLVMSetLinkage(o->kernel, LLVMInternalLinkage);
  cg->fn = o->kernel;
  LLVMPositionBuilderAtEnd(B, LLVMAppendBasicBlockInContext(cg->ctx, o->kernel, "entry"));
  LLVMValueRef env = LLVMGetParam(o->kernel, 0);
  o->outer_n = cg->n;
  cg->n = LLVMBuildLoad2(B, cg->i64, cell_at(cg, env, 0), "n");
  LLVMValueRef *ptrs = arena_alloc(sizeof(LLVMValueRef) * (size_t)(nptr + 1));
  for (int c = 1; c < nptr; c++)
    ptrs[c] = LLVMBuildLoad2(B, cg->ptr, cell_at(cg, env, c), "");
  cell = nptr;
  for (int k = 0; k < nids; k++)
    if (o->saved[k])
      cg->buf[ids[k]] = ptrs[cell_of[k]];
  for (int k = 0; k < nsc; k++)
    if (o->sc_saved[k])
      sc[k] = LLVMBuildLoad2(B, cg->f32, cell_at(cg, env, cell++), "");
  for (int k = 0; k < o->nextra; k++)
    o->extra[k] = LLVMBuildLoad2(B, cg->ptr, cell_at(cg, env, cell++), "");
  *lo = LLVMGetParam(o->kernel, 1), *hi = LLVMGetParam(o->kernel, 2);
}

// Ends the kernel and calls it over [0, count) in chunks of at least min_chunk, cut at
// multiples of align.
static void outline_end(Cg *cg, Outline *o, LLVMValueRef count, int64_t align,
                        LLVMValueRef min_chunk) {
  LLVMBuildRetVoid(cg->b);
  cg->n = o->outer_n;
  for (int k = 0; k < o->nids; k++)
    if (o->saved[k])
      cg->buf[o->ids[k]] = o->saved[k];
  for (int k = 0; k < o->nsc; k++)
    o->sc[k] = o->sc_saved[k];
  for (int k = 0; k < o->nextra; k++)
    o->extra[k] = o->extra_saved[k];
  cg->fn = o->outer_fn;
  LLVMPositionBuilderAtEnd(cg->b, o->outer_bb);
  LLVMTypeRef pt[5] = {cg->ptr, cg->ptr, cg->i64, cg->i64, cg->i64};
  LLVMValueRef args[5] = {o->kernel, o->env, count, ci64(cg, align), min_chunk};
  call(cg, "krt_parallel", cg->vd, pt, 5, args);
}

// A tensor divided by a scalar (the optimizers' bias corrections, a mean's count): multiplied by
// the scalar's reciprocal, computed once before the loop. A division costs a core 10 to 20
// times a multiplication; AdamW's update of a weight matrix divides twice per weight and was
// bound by it. The result may differ from the division in the last bit.
static bool div_by_scalar(Fn *fn, int i) {
  Ins *ins = &fn->ins[i];
  return ins->op == OP_DIV && ins->shape.rank > 0 && fn->ins[ins->arg[1]].shape.rank == 0;
}

static LLVMValueRef reciprocal(Cg *cg, LLVMValueRef v) {
  return LLVMBuildFDiv(cg->b, cf32(cg, 1), v, "");
}

// An elementwise instruction (or a STORE, which is a broadcast copy).
static void gen_elementwise(Cg *cg, int i, LLVMValueRef dst) {
  Fn *fn = cg->ir;
  Ins *ins = &fn->ins[i];
  int na = ins->op == OP_STORE ? 1 : op_nargs[ins->op];
  bool flat = true;
  for (int k = 0; k < na; k++)
    if (!is_scalar_val(cg, ins->arg[k]) && !shape_eq(fn->ins[ins->arg[k]].shape, ins->shape))
      flat = false;
  LLVMValueRef sc[3] = {0};
  for (int k = 0; k < na; k++)
    if (is_scalar_val(cg, ins->arg[k]))
      sc[k] = scalar(cg, ins->arg[k]);
  Op op = ins->op == OP_STORE ? OP_ADD : ins->op;  // a store is x + 0 without the add
  if (div_by_scalar(fn, i))
    sc[1] = reciprocal(cg, sc[1]), op = OP_MUL;
  // large loops run on the pool: flat ones by elements, broadcasting ones by samples
  Shape sh = ins->shape;
  Outline o = {0};
  LLVMValueRef lo = NULL, hi = NULL, count = flat ? numel(cg, sh) : NULL;
  bool rows = !flat && sh.rank >= 2 && sh.dim[0] == DIM_N;
  int ids[4] = {i};  // (the kernel's bookkeeping points here until outline_end)
  if ((flat || rows) && worth_sharing(sh)) {
    for (int k = 0; k < na; k++)
      ids[k + 1] = ins->arg[k];
    outline_begin(cg, &o, ids, na + 1, sc, na, &lo, &hi);
    dst = cg->buf[i];
  }
  if (flat) {
    Loop l = o.kernel ? loop_from(cg, lo, hi) : loop_begin(cg, count);
    LLVMValueRef v[3] = {0};
    for (int k = 0; k < na; k++)
      v[k] = sc[k] ? sc[k] : load_at(cg, cg->buf[ins->arg[k]], l.iv);
    LLVMValueRef r = ins->op == OP_STORE ? v[0] : elementwise(cg, op, v[0], v[1], v[2], ins->arg[1], fn);
    store_at(cg, r, dst, l.iv);
    loop_end(cg, &l);
    if (o.kernel)
      outline_end(cg, &o, count, 16, ci64(cg, PAR_MIN));
    return;
  }
  // a loop per dimension; operands index with their own strides
  Loop loops[MAX_RANK];
  LLVMValueRef idx[MAX_RANK];
  for (int d = 0; d < ins->shape.rank; d++) {
    loops[d] = d == 0 && o.kernel ? loop_from(cg, lo, hi) : loop_begin(cg, dim_val(cg, sh.dim[d]));
    idx[d] = loops[d].iv;
  }
  LLVMValueRef v[3] = {0};
  for (int k = 0; k < na; k++)
    v[k] = sc[k] ? sc[k] : load_at(cg, cg->buf[ins->arg[k]],
                                   bcast_offset(cg, fn->ins[ins->arg[k]].shape, ins->shape, idx));
  LLVMValueRef r = ins->op == OP_STORE ? v[0] : elementwise(cg, op, v[0], v[1], v[2], ins->arg[1], fn);
  store_at(cg, r, dst, bcast_offset(cg, ins->shape, ins->shape, idx));
  for (int d = ins->shape.rank - 1; d >= 0; d--)
    loop_end(cg, &loops[d]);
  if (o.kernel) {  // at least PAR_MIN floats per chunk
    int64_t per_sample = shape_numel(sh, 1);
    outline_end(cg, &o, o.outer_n, 1, ci64(cg, per_sample >= PAR_MIN ? 1 : PAR_MIN / per_sample));
  }
}

// outer × len × inner view of a reduction's input, with the axis of length len.
static void reduce_dims(Cg *cg, Shape a, int axis, LLVMValueRef *outer, LLVMValueRef *len,
                        LLVMValueRef *inner) {
  if (axis < 0) {
    *outer = ci64(cg, 1), *len = numel(cg, a), *inner = ci64(cg, 1);
    return;
  }
  Shape o = {0}, in = {0};
  for (int i = 0; i < axis; i++)
    o.dim[o.rank++] = a.dim[i];
  for (int i = axis + 1; i < a.rank; i++)
    in.dim[in.rank++] = a.dim[i];
  *outer = numel(cg, o), *len = dim_val(cg, a.dim[axis]), *inner = numel(cg, in);
}

// A reduction along contiguous memory (the last axis, or everything): for each of `outer`
// rows, an accumulator in a register over `len` elements. Sums carry the `reassoc` flag so
// LLVM vectorizes them: the order of the additions is then fixed by the compiled program
// (its vector width), the same in every run, the JIT and a trainer for the same target.
// For LSE's second pass, sub holds each row's maximum and the sum is of exp(x - max).
// The element at idx of the elementwise instruction p, computed from its operands (a
// producer fused into the reduction that consumes it).
static LLVMValueRef produce(Cg *cg, int p, LLVMValueRef idx) {
  Ins *ins = &cg->ir->ins[p];
  LLVMValueRef v[3] = {0};
  for (int k = 0; k < op_nargs[ins->op]; k++)
    v[k] = is_scalar_val(cg, ins->arg[k]) ? scalar(cg, ins->arg[k])
                                          : load_at(cg, cg->buf[ins->arg[k]], idx);
  return elementwise(cg, ins->op, v[0], v[1], v[2], ins->arg[1], cg->ir);
}

static void reduce_rows(Cg *cg, Op op, LLVMValueRef src, LLVMValueRef dst, LLVMValueRef outer,
                        LLVMValueRef len, bool lse_pass, int producer, LLVMValueRef first_row) {
  LLVMBuilderRef B = cg->b;
  bool is_max = (op == OP_RMAX || op == OP_LSE) && !lse_pass;
  Loop lo = loop_begin(cg, outer);
  LLVMValueRef init = cf32(cg, is_max ? -1.0 / 0.0 : 0);
  LLVMValueRef m = lse_pass ? load_at(cg, dst, lo.iv) : NULL;
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(B);
  Loop ll = loop_begin(cg, len);
  LLVMBasicBlockRef body = LLVMGetInsertBlock(B);
  LLVMPositionBuilder(B, ll.head, LLVMGetFirstInstruction(ll.head));
  LLVMValueRef acc = LLVMBuildPhi(B, cg->f32, "acc");
  LLVMAddIncoming(acc, &init, &pre, 1);
  LLVMPositionBuilderAtEnd(B, body);
  LLVMValueRef at = LLVMBuildAdd(B, LLVMBuildMul(B, LLVMBuildAdd(B, lo.iv, first_row, ""), len, ""),
                                 ll.iv, "");
  LLVMValueRef x = producer >= 0 ? produce(cg, producer, at) : load_at(cg, src, at);
  LLVMValueRef r;
  if (is_max) {
    r = LLVMBuildSelect(B, LLVMBuildFCmp(B, LLVMRealUGT, x, acc, ""), x, acc, "");
  } else {
    if (lse_pass)
      x = fast_exp(cg, LLVMBuildFSub(B, x, m, ""));
    r = LLVMBuildFAdd(B, acc, x, "");
    LLVMSetFastMathFlags(r, LLVMFastMathAllowReassoc);
  }
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(B);
  LLVMAddIncoming(acc, &r, &latch, 1);
  loop_end(cg, &ll);
  if (lse_pass)  // the log of the sum, added to the maximum
    store_at(cg, LLVMBuildFAdd(B, m, intrinsic1(cg, "llvm.log", acc), ""), dst, lo.iv);
  else if (op == OP_MEAN)
    store_at(cg, LLVMBuildFDiv(B, acc, LLVMBuildSIToFP(B, len, cg->f32, ""), ""), dst, lo.iv);
  else
    store_at(cg, acc, dst, lo.iv);
  loop_end(cg, &lo);
}

// A reduction whose input is computed on the fly by the elementwise instruction producer
// (its only use), or read from its slot (producer -1).
static bool contiguous_reduce(Fn *fn, int i) {
  Ins *ins = &fn->ins[i];
  return op_class[ins->op] == OC_REDUCE &&
         (ins->axis < 0 || ins->axis == fn->ins[ins->arg[0]].shape.rank - 1);
}

// Whether an instruction reads a scalar input other than a constant (the step's own values,
// which a kernel of the pool cannot see).
static bool reads_input(Fn *fn, int p) {
  for (int k = 0; k < op_nargs[fn->ins[p].op]; k++) {
    Ins *a = &fn->ins[fn->ins[p].arg[k]];
    if (a->shape.rank == 0 && a->op != OP_CONST)
      return true;
  }
  return false;
}

static bool col_sum(Shape as, Shape out);
static void gen_col_sum(Cg *cg, int i, LLVMValueRef dst, bool mean);

static void gen_reduce_from(Cg *cg, int i, LLVMValueRef dst, int producer) {
  Fn *fn = cg->ir;
  Ins *ins = &fn->ins[i];
  LLVMBuilderRef B = cg->b;
  LLVMValueRef src = cg->buf[ins->arg[0]], outer, len, inner;
  Shape as = fn->ins[ins->arg[0]].shape;
  reduce_dims(cg, as, ins->axis, &outer, &len, &inner);
  if (contiguous_reduce(fn, i) && ins->axis >= 0 && worth_sharing(as) &&
      !(producer >= 0 && reads_input(fn, producer))) {
    // rows on the pool (each row's sum is one thread's, whatever the chunks)
    int ids[5] = {i, ins->arg[0]}, nids = 2;
    for (int k = 0; producer >= 0 && k < op_nargs[fn->ins[producer].op]; k++)
      ids[nids++] = fn->ins[producer].arg[k];
    Outline o = {0};
    LLVMValueRef lo, hi, rows = outer;
    outline_begin(cg, &o, ids, nids, NULL, 0, &lo, &hi);
    reduce_dims(cg, as, ins->axis, &outer, &len, &inner);  // the kernel's own n
    LLVMValueRef d = gep(cg, cg->buf[i], lo), cnt = LLVMBuildSub(B, hi, lo, "");
    reduce_rows(cg, ins->op, cg->buf[ins->arg[0]], d, cnt, len, false, producer, lo);
    if (ins->op == OP_LSE)
      reduce_rows(cg, ins->op, cg->buf[ins->arg[0]], d, cnt, len, true, producer, lo);
    int64_t row = as.dim[as.rank - 1] == DIM_N ? 1 : as.dim[as.rank - 1];
    outline_end(cg, &o, rows, 1, ci64(cg, row >= PAR_MIN ? 1 : PAR_MIN / row));
    return;
  }
  if (contiguous_reduce(fn, i)) {  // contiguous: accumulate in registers
    reduce_rows(cg, ins->op, src, dst, outer, len, false, producer, ci64(cg, 0));
    if (ins->op == OP_LSE)
      reduce_rows(cg, ins->op, src, dst, outer, len, true, producer, ci64(cg, 0));
    return;
  }
  if (producer < 0 && (ins->op == OP_SUM || ins->op == OP_MEAN) && ins->axis == 0 &&
      col_sum(as, ins->shape)) {
    gen_col_sum(cg, i, dst, ins->op == OP_MEAN);
    return;
  }
  LLVMValueRef cnt = numel(cg, ins->shape);
  bool is_max = ins->op == OP_RMAX || ins->op == OP_LSE;
  if (producer >= 0)
    die("gen_reduce: a fused producer on a strided reduction");
  fill(cg, dst, cnt, cf32(cg, is_max ? -1.0 / 0.0 : 0));
  // pass 1: sum or max; pass 2 (LSE): Σ exp(a - max) into the second slot
  for (int pass = 0; pass < (ins->op == OP_LSE ? 2 : 1); pass++) {
    LLVMValueRef acc = pass ? cg->scratch[i] : dst;  // LSE's sums go to its scratch
    if (pass)
      fill(cg, acc, cnt, cf32(cg, 0));
    Loop lo = loop_begin(cg, outer);
    Loop ll = loop_begin(cg, len);
    Loop li = loop_begin(cg, inner);
    LLVMValueRef oi = LLVMBuildAdd(B, LLVMBuildMul(B, lo.iv, inner, ""), li.iv, "");
    LLVMValueRef ai = LLVMBuildAdd(
        B, LLVMBuildMul(B, LLVMBuildAdd(B, LLVMBuildMul(B, lo.iv, len, ""), ll.iv, ""), inner, ""),
        li.iv, "");
    LLVMValueRef x = load_at(cg, src, ai), cur = load_at(cg, acc, oi), r;
    if (pass)
      r = LLVMBuildFAdd(B, cur, fast_exp(cg, LLVMBuildFSub(B, x, load_at(cg, dst, oi), "")), "");
    else if (is_max)
      r = LLVMBuildSelect(B, LLVMBuildFCmp(B, LLVMRealUGT, x, cur, ""), x, cur, "");
    else
      r = LLVMBuildFAdd(B, cur, x, "");
    store_at(cg, r, acc, oi);
    loop_end(cg, &li);
    loop_end(cg, &ll);
    loop_end(cg, &lo);
  }
  if (ins->op == OP_LSE || ins->op == OP_MEAN) {
    LLVMValueRef lenf = LLVMBuildSIToFP(B, len, cg->f32, "");
    Loop l = loop_begin(cg, cnt);
    LLVMValueRef v = load_at(cg, dst, l.iv);
    if (ins->op == OP_MEAN)
      v = LLVMBuildFDiv(B, v, lenf, "");
    else
      v = LLVMBuildFAdd(B, v, intrinsic1(cg, "llvm.log", load_at(cg, cg->scratch[i], l.iv)), "");
    store_at(cg, v, dst, l.iv);
    loop_end(cg, &l);
  }
}

static void gen_reduce(Cg *cg, int i, LLVMValueRef dst) { gen_reduce_from(cg, i, dst, -1); }

static void gen_matmul(Cg *cg, int i, LLVMValueRef dst) {
  Fn *fn = cg->ir;
  Ins *ins = &fn->ins[i];
  Shape as = fn->ins[ins->arg[0]].shape, bs = fn->ins[ins->arg[1]].shape;
  LLVMBuilderRef B = cg->b;
#define I32(v) LLVMBuildTrunc(B, v, cg->i32, "")
  LLVMValueRef M = dim_val(cg, ins->shape.dim[0]), N = dim_val(cg, ins->shape.dim[1]);
  LLVMValueRef K = dim_val(cg, ins->ta ? as.dim[0] : as.dim[1]);
  LLVMValueRef lda = dim_val(cg, as.dim[1]), ldb = dim_val(cg, bs.dim[1]);
  LLVMTypeRef pt[14] = {cg->i32, cg->i32, cg->i32, cg->i32, cg->i32, cg->i32, cg->f32,
                        cg->ptr, cg->i32, cg->ptr, cg->i32, cg->f32, cg->ptr, cg->i32};
  LLVMValueRef args[13] = {
      LLVMConstInt(cg->i32, ins->ta, 0), LLVMConstInt(cg->i32, ins->tb, 0),
      I32(M), I32(N), I32(K), cf32(cg, 1),
      cg->buf[ins->arg[0]], I32(lda), cg->buf[ins->arg[1]], I32(ldb), cf32(cg, 0),
      dst, I32(N)};
#undef I32
  call(cg, "krt_sgemm", cg->vd, pt + 1, 13, args);
}

// A float on the stack, allocated in the entry block (where mem2reg turns it into registers,
// and where a loop does not grow the stack).
static LLVMValueRef entry_alloca_of(Cg *cg, LLVMTypeRef t) {
  LLVMBasicBlockRef here = LLVMGetInsertBlock(cg->b), entry = LLVMGetEntryBasicBlock(cg->fn);
  LLVMValueRef first = LLVMGetFirstInstruction(entry);
  if (first)
    LLVMPositionBuilderBefore(cg->b, first);
  else
    LLVMPositionBuilderAtEnd(cg->b, entry);
  LLVMValueRef a = LLVMBuildAlloca(cg->b, t, "");
  LLVMPositionBuilderAtEnd(cg->b, here);
  return a;
}

static LLVMValueRef entry_alloca(Cg *cg) { return entry_alloca_of(cg, cg->f32); }

// Partial sums of a reduction cut into chunks: `width` floats for each of MAX_CHUNKS chunks,
// in the step's frame, zeroed before the kernel runs (chunk t writes floats t·width …).
// The step number t, as an integer (a random instruction's key depends on it).
static LLVMValueRef step_number(Cg *cg) {
  LLVMBuilderRef B = cg->b;
  LLVMValueRef at = LLVMBuildInBoundsGEP2(B, cg->f64, cg->in, (LLVMValueRef[]){ci64(cg, IN_T)}, 1, "");
  return LLVMBuildFPToSI(B, LLVMBuildLoad2(B, cg->f64, at, ""), cg->i64, "");
}


static LLVMValueRef partials(Cg *cg, int64_t width) {
  LLVMValueRef p = entry_alloca_of(cg, LLVMArrayType2(cg->f32, (uint64_t)(width * MAX_CHUNKS)));
  fill(cg, p, LLVMBuildMul(cg->b, cg->chunks, ci64(cg, width), ""), cf32(cg, 0));
  return p;
}

// dst[c] = the partial sums for c added in chunk order: the same bits for the same T.
static void add_partials(Cg *cg, LLVMValueRef part, LLVMValueRef dst, int64_t width) {
  LLVMBuilderRef B = cg->b;
  fill(cg, dst, ci64(cg, width), cf32(cg, 0));
  Loop lt = loop_begin(cg, cg->chunks), lc = loop_begin(cg, ci64(cg, width));
  LLVMValueRef t = load_at(cg, part, LLVMBuildAdd(B, LLVMBuildMul(B, lt.iv, ci64(cg, width), ""), lc.iv, ""));
  store_at(cg, LLVMBuildFAdd(B, load_at(cg, dst, lc.iv), t, ""), dst, lc.iv);
  loop_end(cg, &lc), loop_end(cg, &lt);
}

// A sum over the samples of a batch of rows ([n, c] → [c]: a bias's or batchnorm's gradient,
// batchnorm's means): the rows on the pool, each chunk's sums per feature kept apart (a row of
// c floats, in the L1 cache) and added in chunk order. Each thread so reads only its own rows,
// which the parallel loops before and after it cut the same way: on one thread, it would copy
// the other core's rows to its own, and the next loop's writes there would first have to take
// them back (at a batch of 128 on two threads the loop after batchnorm's mean took 2.3 µs on
// the calling thread and 8.6 on the other).
static bool col_sum(Shape as, Shape out) {
  return as.rank == 2 && as.dim[0] == DIM_N && as.dim[1] != DIM_N && out.rank == 1 &&
         out.dim[0] == as.dim[1] && as.dim[1] * MAX_CHUNKS <= 16384 && worth_sharing(as);
}

// sums[c] += rows lo..hi of the [n, C] value at src
static void add_rows(Cg *cg, LLVMValueRef src, LLVMValueRef sums, LLVMValueRef lo, LLVMValueRef hi,
                     int64_t C) {
  LLVMBuilderRef B = cg->b;
  Loop lr = loop_from(cg, lo, hi), lc = loop_begin(cg, ci64(cg, C));
  LLVMValueRef x = load_at(cg, src, LLVMBuildAdd(B, LLVMBuildMul(B, lr.iv, ci64(cg, C), ""), lc.iv, ""));
  store_at(cg, LLVMBuildFAdd(B, load_at(cg, sums, lc.iv), x, ""), sums, lc.iv);
  loop_end(cg, &lc), loop_end(cg, &lr);
}

static void gen_col_sum(Cg *cg, int i, LLVMValueRef dst, bool mean) {
  Fn *fn = cg->ir;
  LLVMBuilderRef B = cg->b;
  int a = fn->ins[i].arg[0];
  int64_t C = fn->ins[a].shape.dim[1], min_rows = C >= PAR_MIN ? 1 : PAR_MIN / C;
  // a batch too small to share (krt_parallel would run it in one call) is summed in place
  LLVMBasicBlockRef shared = LLVMAppendBasicBlockInContext(cg->ctx, cg->fn, "shared"),
                    alone = LLVMAppendBasicBlockInContext(cg->ctx, cg->fn, "alone"),
                    join = LLVMAppendBasicBlockInContext(cg->ctx, cg->fn, "join");
  LLVMValueRef n = dim_val(cg, DIM_N);
  LLVMBuildCondBr(B, LLVMBuildAnd(B, LLVMBuildICmp(B, LLVMIntSGE, n, ci64(cg, 2 * min_rows), ""),
                                  LLVMBuildICmp(B, LLVMIntSGT, cg->chunks, ci64(cg, 1), ""), ""),
                  shared, alone);
  LLVMPositionBuilderAtEnd(B, alone);
  fill(cg, dst, ci64(cg, C), cf32(cg, 0));
  add_rows(cg, cg->buf[a], dst, ci64(cg, 0), n, C);
  LLVMBuildBr(B, join);
  LLVMPositionBuilderAtEnd(B, shared);
  LLVMValueRef part = partials(cg, C), lo, hi;
  int ids[2] = {i, a};
  Outline o = {.extra = &part, .nextra = 1};
  outline_begin(cg, &o, ids, 2, NULL, 0, &lo, &hi);
  LLVMValueRef chunk = LLVMBuildZExt(B, LLVMGetParam(o.kernel, 3), cg->i64, "");
  add_rows(cg, cg->buf[a], gep(cg, part, LLVMBuildMul(B, chunk, ci64(cg, C), "")), lo, hi, C);
  outline_end(cg, &o, o.outer_n, 1, ci64(cg, min_rows));
  add_partials(cg, part, dst, C);
  LLVMBuildBr(B, join);
  LLVMPositionBuilderAtEnd(B, join);
  if (mean) {
    LLVMValueRef nf = LLVMBuildSIToFP(B, n, cg->f32, "");
    Loop l = loop_begin(cg, ci64(cg, C));
    store_at(cg, LLVMBuildFDiv(B, load_at(cg, dst, l.iv), nf, ""), dst, l.iv);
    loop_end(cg, &l);
  }
}

static void gen_ins(Cg *cg, int i) {
  Fn *fn = cg->ir;
  Ins *ins = &fn->ins[i];
  LLVMBuilderRef B = cg->b;
  LLVMValueRef dst = cg->buf[i];
  switch (op_class[ins->op]) {
  case OC_UNARY: case OC_BINARY: case OC_SELECT: gen_elementwise(cg, i, dst); return;
  case OC_REDUCE: gen_reduce(cg, i, dst); return;
  default: break;
  }
  switch (ins->op) {
  case OP_INPUT: case OP_CONST: case OP_TENSOR: case OP_RESHAPE: return;  // no code
  case OP_STORE: gen_elementwise(cg, i, cg->buf[i]); return;
  case OP_RAND: {
    LLVMTypeRef pt[5] = {cg->ptr, cg->i64, cg->i64, cg->i64, cg->i64};
    LLVMValueRef args[5] = {dst, numel(cg, ins->shape), cg->seed, ci64(cg, ins->seq), step_number(cg)};
    call(cg, "krt_rand_fill", cg->vd, pt, 5, args);
    return;
  }
  case OP_MATMUL: gen_matmul(cg, i, dst); return;
  case OP_TRANSPOSE: {
    Shape as = fn->ins[ins->arg[0]].shape;
    LLVMValueRef R = dim_val(cg, as.dim[0]), C = dim_val(cg, as.dim[1]);
    Loop lr = loop_begin(cg, R), lc = loop_begin(cg, C);
    LLVMValueRef v = load_at(cg, cg->buf[ins->arg[0]], LLVMBuildAdd(B, LLVMBuildMul(B, lr.iv, C, ""), lc.iv, ""));
    store_at(cg, v, dst, LLVMBuildAdd(B, LLVMBuildMul(B, lc.iv, R, ""), lr.iv, ""));
    loop_end(cg, &lc), loop_end(cg, &lr);
    return;
  }
  case OP_EXPAND: {
    LLVMValueRef outer, len, inner;
    reduce_dims(cg, ins->shape, ins->axis, &outer, &len, &inner);
    Loop lo = loop_begin(cg, outer), ll = loop_begin(cg, len), li = loop_begin(cg, inner);
    LLVMValueRef ai = LLVMBuildAdd(B, LLVMBuildMul(B, lo.iv, inner, ""), li.iv, "");
    LLVMValueRef oi = LLVMBuildAdd(B, LLVMBuildMul(B, LLVMBuildAdd(B, LLVMBuildMul(B, lo.iv, len, ""), ll.iv, ""), inner, ""), li.iv, "");
    LLVMValueRef v = is_scalar_val(cg, ins->arg[0]) ? scalar(cg, ins->arg[0]) : load_at(cg, cg->buf[ins->arg[0]], ai);
    store_at(cg, v, dst, oi);
    loop_end(cg, &li), loop_end(cg, &ll), loop_end(cg, &lo);
    return;
  }
  case OP_SUMTO: {
    Shape as = fn->ins[ins->arg[0]].shape;
    if (col_sum(as, ins->shape)) {
      gen_col_sum(cg, i, dst, false);
      return;
    }
    fill(cg, dst, numel(cg, ins->shape), cf32(cg, 0));
    // Trailing dimensions that are summed away (a bias or batchnorm gradient per channel:
    // [n, c, h, w] → [c, 1, 1]) are contiguous: sum each block in a register, then add it.
    int k = 0, off = as.rank - ins->shape.rank;
    while (k < as.rank && as.dim[as.rank - 1 - k] != 1 &&
           (as.rank - 1 - k - off < 0 || ins->shape.dim[as.rank - 1 - k - off] == 1))
      k++;
    if (k > 0) {
      Shape outer = {.rank = as.rank - k}, block = {.rank = k};
      for (int d = 0; d < as.rank; d++)
        d < as.rank - k ? (outer.dim[d] = as.dim[d]) : (block.dim[d - outer.rank] = as.dim[d]);
      if (outer.rank == 2 && outer.dim[0] == DIM_N && outer.dim[1] != DIM_N &&
          outer.dim[1] * MAX_CHUNKS <= 16384 && shape_numel(ins->shape, 1) == outer.dim[1] &&
          worth_sharing(as)) {
        // per channel over the samples ([n, c, h, w] → [c, 1, 1]): samples on the pool, each
        // chunk's sums per channel kept apart and added in chunk order
        LLVMValueRef C = ci64(cg, outer.dim[1]), len = numel(cg, block);
        LLVMValueRef part = partials(cg, outer.dim[1]);
        int ids[2] = {i, ins->arg[0]};
        Outline o = {.extra = &part, .nextra = 1};
        LLVMValueRef lo, hi;
        outline_begin(cg, &o, ids, 2, NULL, 0, &lo, &hi);
        LLVMValueRef acc = entry_alloca(cg);
        LLVMValueRef mine = gep(cg, part, LLVMBuildMul(B, LLVMBuildZExt(B, LLVMGetParam(o.kernel, 3), cg->i64, ""), C, ""));
        Loop ls = loop_from(cg, lo, hi), lc = loop_begin(cg, C);
        LLVMValueRef row = LLVMBuildAdd(B, LLVMBuildMul(B, ls.iv, C, ""), lc.iv, "");
        reduce_rows(cg, OP_SUM, cg->buf[ins->arg[0]], acc, ci64(cg, 1), len, false, -1, row);
        store_at(cg, LLVMBuildFAdd(B, load_at(cg, mine, lc.iv), LLVMBuildLoad2(B, cg->f32, acc, ""), ""),
                 mine, lc.iv);
        loop_end(cg, &lc), loop_end(cg, &ls);
        int64_t per_sample = outer.dim[1] * shape_numel(block, 1);
        outline_end(cg, &o, o.outer_n, 1, ci64(cg, per_sample >= PAR_MIN ? 1 : PAR_MIN / per_sample));
        add_partials(cg, part, dst, outer.dim[1]);
        return;
      }
      Loop loops[MAX_RANK];
      LLVMValueRef idx[MAX_RANK];
      for (int d = 0; d < outer.rank; d++)
        loops[d] = loop_begin(cg, dim_val(cg, outer.dim[d])), idx[d] = loops[d].iv;
      for (int d = outer.rank; d < as.rank; d++)
        idx[d] = ci64(cg, 0);
      LLVMValueRef len = numel(cg, block), acc = entry_alloca(cg);
      LLVMValueRef row = outer.rank ? bcast_offset(cg, outer, outer, idx) : ci64(cg, 0);
      reduce_rows(cg, OP_SUM, cg->buf[ins->arg[0]], acc, ci64(cg, 1), len, false, -1, row);
      LLVMValueRef oi = bcast_offset(cg, ins->shape, as, idx);
      store_at(cg, LLVMBuildFAdd(B, load_at(cg, dst, oi), LLVMBuildLoad2(B, cg->f32, acc, ""), ""), dst, oi);
      for (int d = outer.rank - 1; d >= 0; d--)
        loop_end(cg, &loops[d]);
      return;
    }
    Loop loops[MAX_RANK];
    LLVMValueRef idx[MAX_RANK];
    for (int d = 0; d < as.rank; d++)
      loops[d] = loop_begin(cg, dim_val(cg, as.dim[d])), idx[d] = loops[d].iv;
    LLVMValueRef x = load_at(cg, cg->buf[ins->arg[0]], bcast_offset(cg, as, as, idx));
    LLVMValueRef oi = bcast_offset(cg, ins->shape, as, idx);
    store_at(cg, LLVMBuildFAdd(B, load_at(cg, dst, oi), x, ""), dst, oi);
    for (int d = as.rank - 1; d >= 0; d--)
      loop_end(cg, &loops[d]);
    return;
  }
  case OP_PICK:
  case OP_PICKGRAD: {
    Shape wide = ins->op == OP_PICK ? fn->ins[ins->arg[0]].shape : ins->shape;
    LLVMValueRef R = dim_val(cg, wide.dim[0]), K = dim_val(cg, wide.dim[1]);
    if (ins->op == OP_PICKGRAD)
      fill(cg, dst, LLVMBuildMul(B, R, K, ""), cf32(cg, 0));
    Loop l = loop_begin(cg, R);
    LLVMValueRef k = LLVMBuildFPToSI(B, load_at(cg, cg->buf[ins->arg[1]], l.iv), cg->i64, "");
    LLVMValueRef wi = LLVMBuildAdd(B, LLVMBuildMul(B, l.iv, K, ""), k, "");
    LLVMValueRef a = ins->op == OP_PICK ? load_at(cg, cg->buf[ins->arg[0]], wi)
                                        : load_at(cg, cg->buf[ins->arg[0]], l.iv);
    store_at(cg, a, dst, ins->op == OP_PICK ? l.iv : wi);
    loop_end(cg, &l);
    return;
  }
  case OP_CONV2D:
  case OP_CONV2D_DX:
  case OP_CONV2D_DW: {
    Shape x = ins->op == OP_CONV2D_DX ? ins->shape : fn->ins[ins->arg[0]].shape;
    Shape w = ins->op == OP_CONV2D_DW ? ins->shape : fn->ins[ins->arg[1]].shape;
    LLVMValueRef a = cg->buf[ins->arg[0]], b = cg->buf[ins->arg[1]];
    LLVMTypeRef pt[13] = {cg->ptr, cg->ptr, cg->ptr};
    LLVMValueRef args[13] = {a, b, dst, dim_val(cg, x.dim[0]), ci64(cg, x.dim[1]),
                             ci64(cg, x.dim[2]), ci64(cg, x.dim[3]), ci64(cg, w.dim[0]),
                             ci64(cg, w.dim[2]), ci64(cg, w.dim[3]), ci64(cg, ins->attr[0]),
                             ci64(cg, ins->attr[1]), ci64(cg, ins->attr[2])};
    for (int k = 3; k < 13; k++)
      pt[k] = cg->i64;
    call(cg, ins->op == OP_CONV2D ? "krt_conv2d" : ins->op == OP_CONV2D_DX ? "krt_conv2d_dx"
                                                                          : "krt_conv2d_dw",
         cg->vd, pt, 13, args);
    return;
  }
  case OP_MAXPOOL:
  case OP_AVGPOOL:
  case OP_MAXPOOL_DX:
  case OP_MAXPOOL_GATHER:
  case OP_AVGPOOL_DX: {
    Shape x = ins->op == OP_AVGPOOL_DX ? ins->shape : fn->ins[ins->arg[0]].shape;
    LLVMValueRef nc = LLVMBuildMul(B, dim_val(cg, x.dim[0]), ci64(cg, x.dim[1]), "");
    LLVMValueRef rest[7] = {nc, ci64(cg, x.dim[2]), ci64(cg, x.dim[3]), ci64(cg, ins->attr[0]),
                            ci64(cg, ins->attr[1]), ci64(cg, ins->attr[2]), ci64(cg, ins->attr[3])};
    LLVMTypeRef pt[10] = {cg->ptr, cg->ptr, cg->ptr, cg->i64, cg->i64, cg->i64, cg->i64, cg->i64,
                          cg->i64, cg->i64};
    LLVMValueRef args[10];
    int k = 0;
    args[k++] = cg->buf[ins->arg[0]];
    bool two = ins->op == OP_MAXPOOL_DX || ins->op == OP_MAXPOOL_GATHER;
    if (two)
      args[k++] = cg->buf[ins->arg[1]];
    args[k++] = dst;
    memcpy(args + k, rest, sizeof rest);
    const char *name = ins->op == OP_MAXPOOL ? "krt_maxpool" : ins->op == OP_AVGPOOL ? "krt_avgpool"
                       : ins->op == OP_MAXPOOL_DX ? "krt_maxpool_dx"
                       : ins->op == OP_MAXPOOL_GATHER ? "krt_maxpool_gather" : "krt_avgpool_dx";
    call(cg, name, cg->vd, two ? pt : pt + 1, k + 6 + (ins->op == OP_MAXPOOL_DX), args);
    return;
  }
  default: die("codegen: %s", op_names[ins->op]);
  }
}

// ---------------------------------------------------------------------------------------------
// Fusion: a run of consecutive elementwise instructions of one shape, whose tensor operands
// all have that shape, becomes one loop. A value used only inside the run stays in a
// register; one read later (or by the runtime: cg->keep) is also stored to its slot.

// An operand that broadcasts (a per-channel mean against [n, c, h, w]) may join with
// *inner_dims set to the number of trailing dimensions it is constant over (the loop nest
// then runs over blocks of those, the operand read once per block); without `bcast`, or with
// no such operand, every operand has the output's shape and *inner_dims is its rank.
// A per-feature operand of a batch of rows ([c] against [n, c]: batchnorm's statistics, a
// bias): in a fused run over rows, read at the index within the row.
static bool row_operand(Shape a, Shape out) {
  return out.rank == 2 && a.rank == 1 && a.dim[0] == out.dim[1] && a.dim[0] != DIM_N;
}

static bool fusable(Fn *fn, int i, Shape *shape, bool bcast, int *inner_dims) {
  Ins *ins = &fn->ins[i];
  OpClass c = op_class[ins->op];
  if (ins->op == OP_EXPAND && bcast && ins->axis == ins->shape.rank - 1 &&
      ins->shape.rank >= 2 && fn->ins[ins->arg[0]].shape.rank > 0) {
    // a value repeated along the last axis (a mean's gradient): a broadcast operand
    *shape = ins->shape;
    *inner_dims = 1;
    return true;
  }
  if (ins->op == OP_EXPAND && bcast && ins->axis == 0 &&
      row_operand(fn->ins[ins->arg[0]].shape, ins->shape)) {
    // a per-feature value repeated over the batch (a batchnorm statistic's gradient): read
    // along each row
    *shape = ins->shape;
    *inner_dims = 1;
    return true;
  }
  if (ins->op == OP_RAND) {  // a dropout mask's numbers: computed where they are used
    *shape = ins->shape;
    *inner_dims = ins->shape.rank;
    return true;
  }
  if (c != OC_UNARY && c != OC_BINARY && c != OC_SELECT && ins->op != OP_STORE)
    return false;
  int inner = ins->shape.rank;
  for (int k = 0; k < op_nargs[ins->op]; k++) {
    Shape a = fn->ins[ins->arg[k]].shape;
    if (a.rank == 0 || shape_eq(a, ins->shape))
      continue;
    if (bcast && row_operand(a, ins->shape)) {  // read along each row: blocks are rows
      inner = 1;
      continue;
    }
    int ones = 0;  // trailing dimensions where a is 1 (or has none)
    while (ones < ins->shape.rank && (ones >= a.rank || a.dim[a.rank - 1 - ones] == 1))
      ones++;
    if (ones == ins->shape.rank)  // one value ([1] against [n, 1]): read per outer block
      ones--;
    if (!bcast || ones == 0)
      return false;
    inner = ones < inner ? ones : inner;
  }
  *shape = ins->shape;
  *inner_dims = inner;
  return true;
}

// Whether j's slot is that of an operand the run (with j) reads by broadcast, or one of j's
// broadcast operands has the slot of a member: a block reads such an operand at another
// index than it writes, so the two must not share memory (the planner reuses slots of equal
// size).
static bool bcast_clash(Cg *cg, const int *members, int nm, int j) {
  Fn *fn = cg->ir;
  for (int k = 0; k <= nm; k++) {
    int m = k < nm ? members[k] : j;
    if (op_class[fn->ins[m].op] == OC_REDUCE || fn->ins[m].op == OP_SUMTO)
      continue;
    for (int q = 0; q < op_nargs[fn->ins[m].op]; q++) {
      int a = fn->ins[m].arg[q];
      Shape as = fn->ins[a].shape;
      if (as.rank == 0 || shape_eq(as, fn->ins[m].shape))
        continue;
      if (cg->slot[a] == cg->slot[j])
        return true;
      for (int e = 0; m == j && e < nm; e++)
        if (cg->slot[a] == cg->slot[members[e]])
          return true;
    }
  }
  return false;
}

// The shape of an expand's operand (an expand along the last axis) with that axis as a 1.
static Shape shape_make_expand(Shape a) {
  a.dim[a.rank++] = 1;
  return a;
}

// An elementwise value read only by the contiguous reduction right after it (Σ g², a
// mean's square, the guard's probes): computed inside the reduction's loop.
static bool feeds_reduction(Cg *cg, int i, const int *last_use) {
  Fn *fn = cg->ir;
  Shape one;
  int flat;
  return fusable(fn, i, &one, false, &flat) && fn->ins[i].op != OP_STORE && i + 1 < fn->len &&
         contiguous_reduce(fn, i + 1) && fn->ins[i + 1].arg[0] == i && last_use[i] == i + 1 &&
         !cg->keep[i] && !(cg->guard && i + 1 == cg->p->train_gsq + 1);
}

// The floats of one block of the trailing `inner_dims` dimensions; 0 if one has the batch.
static int64_t block_size(Shape s, int inner_dims) {
  int64_t b = 1;
  for (int d = s.rank - inner_dims; d < s.rank; d++)
    b = s.dim[d] == DIM_N ? 0 : b * s.dim[d];
  return b;
}

// A tensor's handle, a reshape (a view of a value computed before the run), or a scalar
// instruction with no loop and no effects, none of whose operands is in the run.
static bool hoistable(Fn *fn, int j, const int *members, int nm) {
  Ins *ins = &fn->ins[j];
  OpClass c = op_class[ins->op];
  if (ins->op == OP_TENSOR)  // no code: its slot is a persistent tensor
    return true;
  if (ins->op == OP_RESHAPE) {  // no code, a view: but not of a value the run computes
    for (int m = 0; m < nm; m++)
      if (ins->arg[0] == members[m])
        return false;
    return true;
  }
  if (ins->shape.rank != 0 ||
      !(c == OC_UNARY || c == OC_BINARY || c == OC_SELECT || ins->op == OP_INPUT || ins->op == OP_CONST))
    return false;
  for (int k = 0; k < op_nargs[ins->op]; k++)
    for (int m = 0; m < nm; m++)
      if (ins->arg[k] == members[m])
        return false;
  return true;
}

// The fused loop over members[0..nm) (in order); `end` is the first instruction after the run.
// A float accumulator at the top of loop l, 0 on entry from pre.
static LLVMValueRef acc_phi(Cg *cg, Loop *l, LLVMBasicBlockRef pre) {
  LLVMBasicBlockRef here = LLVMGetInsertBlock(cg->b);
  LLVMPositionBuilder(cg->b, l->head, LLVMGetFirstInstruction(l->head));
  LLVMValueRef acc = LLVMBuildPhi(cg->b, cg->f32, "acc"), zero = cf32(cg, 0);
  LLVMAddIncoming(acc, &zero, &pre, 1);
  LLVMPositionBuilderAtEnd(cg->b, here);
  return acc;
}

// a + b that LLVM may reorder (and so vectorize): the order is then fixed by the compiled code
static LLVMValueRef fadd_reassoc(Cg *cg, LLVMValueRef a, LLVMValueRef b) {
  LLVMValueRef r = LLVMBuildFAdd(cg->b, a, b, "");
  LLVMSetFastMathFlags(r, LLVMFastMathAllowReassoc);
  return r;
}

// A full sum of a member's value (the guard's probe Σ output·0) is a member too: each chunk
// sums its elements in a register and writes its partial sum; the step adds the partial sums
// in chunk order (the same bits for the same thread count).
static bool is_sum_member(Fn *fn, int m) { return op_class[fn->ins[m].op] == OC_REDUCE; }

// A per-channel sum ([n, c, …] → [c, 1, …]: a bias's or batchnorm's gradient) of a value of
// the run's shape is a member too: each block (within one sample and channel) is summed in a
// register and added to its chunk's partial sum for the channel; the step adds the chunks'
// partial sums in chunk order. Never stored by the loop, so nothing later in the run reads it.
static bool chan_sum(Fn *fn, int j, Shape s) {
  Ins *ins = &fn->ins[j];
  if (ins->op != OP_SUMTO || !shape_eq(fn->ins[ins->arg[0]].shape, s) || s.rank < 3 ||
      s.dim[0] != DIM_N || s.dim[1] == DIM_N || s.dim[1] * MAX_CHUNKS > 16384 ||
      ins->shape.rank != s.rank - 1 || ins->shape.dim[0] != s.dim[1])
    return false;
  for (int d = 1; d < ins->shape.rank; d++)
    if (ins->shape.dim[d] != 1)
      return false;
  return true;
}

// A random instruction's key for this step (krt_rand_key, as krt_rand_fill computes it), in a
// slot of the step's frame (a kernel of the pool reads it there).
static LLVMValueRef rand_key(Cg *cg, int i) {
  LLVMBuilderRef B = cg->b;
  LLVMTypeRef pt[3] = {cg->i64, cg->i64, cg->i64};
  LLVMValueRef k = call(cg, "krt_rand_key", cg->i64, pt, 3,
                        (LLVMValueRef[]){cg->seed, ci64(cg, cg->ir->ins[i].seq), step_number(cg)});
  LLVMValueRef cell = entry_alloca_of(cg, cg->i64);
  LLVMBuildStore(B, k, cell);
  return cell;
}

// Number `counter` of a random stream: krt_uniform's (float)(krt_mix(key, counter) >> 40) · 2⁻²⁴.
static LLVMValueRef uniform_at(Cg *cg, LLVMValueRef key, LLVMValueRef counter) {
  LLVMBuilderRef B = cg->b;
  LLVMValueRef z = LLVMBuildAdd(B, key, LLVMBuildMul(B, LLVMBuildAdd(B, counter, ci64(cg, 1), ""),
                                                     ci64(cg, (int64_t)0x9E3779B97F4A7C15ull), ""), "");
  z = LLVMBuildMul(B, LLVMBuildXor(B, z, LLVMBuildLShr(B, z, ci64(cg, 30), ""), ""),
                   ci64(cg, (int64_t)0xBF58476D1CE4E5B9ull), "");
  z = LLVMBuildMul(B, LLVMBuildXor(B, z, LLVMBuildLShr(B, z, ci64(cg, 27), ""), ""),
                   ci64(cg, (int64_t)0x94D049BB133111EBull), "");
  z = LLVMBuildXor(B, z, LLVMBuildLShr(B, z, ci64(cg, 31), ""), "");
  LLVMValueRef bits = LLVMBuildLShr(B, z, ci64(cg, 40), "");
  return LLVMBuildFMul(B, LLVMBuildUIToFP(B, bits, cg->f32, ""), cf32(cg, 1.0 / 16777216.0), "");
}

static void gen_fused(Cg *cg, const int *members, int nm, int end, const int *last_use,
                      Shape shape, int inner_dims) {
  Fn *fn = cg->ir;
  int from = members[0];
  int *pos = arena_alloc(sizeof(int) * (size_t)(end - from));  // member index, or -1
  for (int k = 0; k < end - from; k++)
    pos[k] = -1;
  for (int k = 0; k < nm; k++)
    pos[members[k] - from] = k;
#define MEMBER(a) ((a) >= from && pos[(a) - from] >= 0)
  LLVMValueRef *val = arena_alloc(sizeof(LLVMValueRef) * (size_t)nm);
  // scalar operands from outside the run are read once, before the loop
  LLVMValueRef *sc = arena_alloc(sizeof(LLVMValueRef) * (size_t)(3 * nm));
  for (int k = 0; k < nm; k++)
    for (int q = 0; q < op_nargs[fn->ins[members[k]].op]; q++) {
      int a = fn->ins[members[k]].arg[q];
      if (!MEMBER(a) && is_scalar_val(cg, a))
        sc[3 * k + q] = q == 1 && div_by_scalar(fn, members[k]) ? reciprocal(cg, scalar(cg, a))
                                                               : scalar(cg, a);
    }
  // The loops: over `outer` blocks of `inner` elements, where an operand that broadcasts
  // (a per-channel statistic) is constant within a block; one flat loop when none does.
  int split = shape.rank - inner_dims;  // the dimensions of the outer loop
  int64_t inner = 1;
  for (int d = split; d < shape.rank; d++)
    inner *= shape.dim[d];
  LLVMValueRef outer = ci64(cg, 1);
  for (int d = 0; d < split; d++)
    outer = LLVMBuildMul(cg->b, outer, dim_val(cg, shape.dim[d]), "");
  LLVMValueRef count = split ? outer : numel(cg, shape), lo = ci64(cg, 0), hi = count;
  Outline o = {0};
  // the kernel's extra cells: partial sums, random streams' keys
  LLVMValueRef *part = arena_alloc(sizeof(LLVMValueRef) * (size_t)nm);
  int *part_of = arena_alloc(sizeof(int) * (size_t)nm);
  bool share = worth_sharing(shape);
  int64_t C = shape.rank > 1 ? shape.dim[1] : 1;  // channels, for per-channel sums
  for (int k = 0; k < nm; k++) {
    bool chan = fn->ins[members[k]].op == OP_SUMTO;
    if ((is_sum_member(fn, members[k]) && share) || chan) {
      part_of[k] = o.nextra;
      part[o.nextra++] = partials(cg, chan ? C : 1);
    } else if (fn->ins[members[k]].op == OP_RAND) {  // its key, in the step's frame
      part_of[k] = o.nextra;
      part[o.nextra++] = rand_key(cg, members[k]);
    }
  }
  o.extra = part;
  if (share) {
    // the buffers it reads and writes, and the scalars, pass to the kernel
    int *ids = arena_alloc(sizeof(int) * (size_t)(3 * nm + nm));
    int nids = 0;
    for (int k = 0; k < nm; k++) {
      ids[nids++] = members[k];
      for (int q = 0; q < op_nargs[fn->ins[members[k]].op]; q++)
        if (!MEMBER(fn->ins[members[k]].arg[q]))
          ids[nids++] = fn->ins[members[k]].arg[q];
    }
    outline_begin(cg, &o, ids, nids, sc, 3 * nm, &lo, &hi);
  }
  LLVMValueRef chunk = o.kernel ? LLVMBuildZExt(cg->b, LLVMGetParam(o.kernel, 3), cg->i64, "")
                                : ci64(cg, 0);
  LLVMValueRef *key = arena_alloc(sizeof(LLVMValueRef) * (size_t)nm);  // random streams' keys
  for (int k = 0; k < nm; k++)
    if (fn->ins[members[k]].op == OP_RAND)
      key[k] = LLVMBuildLoad2(cg->b, cg->i64, part[part_of[k]], "key");
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(cg->b);
  Loop lb = {0}, l = loop_from(cg, lo, hi);
  // sums: acc over the chunk, acc_in over a block (the same when there are no blocks)
  LLVMValueRef *acc = arena_alloc(sizeof(LLVMValueRef) * (size_t)nm * 3);
  LLVMValueRef *acc_in = acc + nm, *acc_next = acc + 2 * nm;
  for (int k = 0; k < nm; k++)
    if (is_sum_member(fn, members[k]))
      acc[k] = acc_in[k] = acc_phi(cg, &l, pre),
      l.interleave = split || shape_numel(shape, cg->p->batch) < SUM_INTERLEAVE_MIN ? 0 : SUM_INTERLEAVE;
  LLVMValueRef at = l.iv;  // the element's index
  LLVMValueRef *bc = arena_alloc(sizeof(LLVMValueRef) * (size_t)(3 * nm));
  LLVMValueRef idx[MAX_RANK];
  if (split) {
    // the outer block's index in each outer dimension; the broadcast operands' values
    LLVMValueRef rest = l.iv;
    for (int d = shape.rank - 1; d >= 0; d--)
      idx[d] = ci64(cg, 0);
    for (int d = split - 1; d > 0; d--) {
      LLVMValueRef dim = dim_val(cg, shape.dim[d]);
      idx[d] = LLVMBuildURem(cg->b, rest, dim, "");
      rest = LLVMBuildUDiv(cg->b, rest, dim, "");
    }
    idx[0] = rest;
    for (int k = 0; k < nm; k++)
      for (int q = 0; q < op_nargs[fn->ins[members[k]].op]; q++) {
        int a = fn->ins[members[k]].arg[q];
        Shape as = fn->ins[a].shape;
        if (fn->ins[members[k]].op == OP_EXPAND && fn->ins[members[k]].axis != 0)
          // a seen with a 1 where the axis goes (along axis 0 it is a row operand)
          as = shape_make_expand(as);
        if (!MEMBER(a) && as.rank && !shape_eq(as, shape) && !row_operand(as, shape))
          bc[3 * k + q] = load_at(cg, cg->buf[a], bcast_offset(cg, as, shape, idx));
      }
    LLVMValueRef base = LLVMBuildMul(cg->b, l.iv, ci64(cg, inner), "");
    LLVMBasicBlockRef pre_block = LLVMGetInsertBlock(cg->b);
    lb = loop_begin(cg, ci64(cg, inner));
    for (int k = 0; k < nm; k++)
      if (is_sum_member(fn, members[k]) || fn->ins[members[k]].op == OP_SUMTO)
        acc_in[k] = acc_phi(cg, &lb, pre_block),
        lb.interleave = inner < SUM_INTERLEAVE_MIN ? 0 : SUM_INTERLEAVE;
    at = LLVMBuildAdd(cg->b, base, lb.iv, "");
  }
  for (int k = 0; k < nm; k++) {
    int m = members[k];
    Ins *ins = &fn->ins[m];
    LLVMValueRef v[3] = {0};
    for (int q = 0; q < op_nargs[ins->op]; q++) {
      int a = ins->arg[q];
      v[q] = MEMBER(a) ? val[pos[a - from]] : sc[3 * k + q] ? sc[3 * k + q]
             : bc[3 * k + q] ? bc[3 * k + q]
             : split && row_operand(fn->ins[a].shape, shape) ? load_at(cg, cg->buf[a], lb.iv)
             : load_at(cg, cg->buf[a], at);
    }
    if (is_sum_member(fn, m) || ins->op == OP_SUMTO) {
      acc_next[k] = fadd_reassoc(cg, acc_in[k], v[0]);
      continue;
    }
    Op op = div_by_scalar(fn, m) ? OP_MUL : ins->op;
    if (op == OP_RAND)  // `at` is the element's index in the whole tensor: the counter
      val[k] = uniform_at(cg, key[k], at);
    else
      val[k] = ins->op == OP_STORE || ins->op == OP_EXPAND
                   ? v[0] : elementwise(cg, op, v[0], v[1], v[2], ins->arg[1], fn);
    if (ins->op == OP_STORE || last_use[m] >= end || cg->keep[m])
      store_at(cg, val[k], cg->buf[m], at);
  }
  if (split) {  // a block's sums join the chunk's
    LLVMBasicBlockRef latch = LLVMGetInsertBlock(cg->b);
    for (int k = 0; k < nm; k++)
      if (is_sum_member(fn, members[k]) || fn->ins[members[k]].op == OP_SUMTO)
        LLVMAddIncoming(acc_in[k], &acc_next[k], &latch, 1);
    loop_end(cg, &lb);
    for (int k = 0; k < nm; k++)
      if (is_sum_member(fn, members[k])) {
        acc_next[k] = fadd_reassoc(cg, acc[k], acc_in[k]);
      } else if (fn->ins[members[k]].op == OP_SUMTO) {  // into the chunk's sum for channel c
        LLVMValueRef p = gep(cg, part[part_of[k]],
                             LLVMBuildAdd(cg->b, LLVMBuildMul(cg->b, chunk, ci64(cg, C), ""), idx[1], ""));
        LLVMBuildStore(cg->b, LLVMBuildFAdd(cg->b, LLVMBuildLoad2(cg->b, cg->f32, p, ""), acc_in[k], ""), p);
      }
  }
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(cg->b);
  for (int k = 0; k < nm; k++)
    if (is_sum_member(fn, members[k]))
      LLVMAddIncoming(acc[k], &acc_next[k], &latch, 1);
  loop_end(cg, &l);
  for (int k = 0; k < nm; k++) {  // the chunk's sum: its partial, or the result
    if (!is_sum_member(fn, members[k]))
      continue;
    if (o.kernel)
      store_at(cg, acc[k], part[part_of[k]], chunk);
    else
      store_at(cg, acc[k], cg->buf[members[k]], ci64(cg, 0));
  }
  if (o.kernel) {
    outline_end(cg, &o, count, split ? 1 : 16,
                ci64(cg, split ? (inner >= PAR_MIN ? 1 : PAR_MIN / inner) : PAR_MIN));
    for (int k = 0; k < nm; k++)  // full sums: the partial sums in chunk order
      if (is_sum_member(fn, members[k]))
        add_partials(cg, part[part_of[k]], cg->buf[members[k]], 1);
  }
  for (int k = 0; k < nm; k++)  // per-channel sums: likewise, channel by channel
    if (fn->ins[members[k]].op == OP_SUMTO)
      add_partials(cg, part[part_of[k]], cg->buf[members[k]], C);
#undef MEMBER
}

// ---------------------------------------------------------------------------------------------
// --profile: each kernel of the training step (an instruction with code, or a fused run) is
// bracketed by the cycle counter; the runtime adds up the cycles per kernel.

static LLVMValueRef read_cycles(Cg *cg) {
  unsigned id = LLVMLookupIntrinsicID("llvm.readcyclecounter", 21);
  LLVMValueRef f = LLVMGetIntrinsicDeclaration(cg->mod, id, NULL, 0);
  return LLVMBuildCall2(cg->b, LLVMIntrinsicGetType(cg->ctx, id, NULL, 0), f, NULL, 0, "");
}

static LLVMValueRef profile_begin(Cg *cg) { return read_cycles(cg); }

// Floating-point operations of one instruction: a fixed count and a count per sample.
static void flops_of(Fn *fn, Ins *ins, double *fixed, double *per_row) {
  Shape s = ins->shape;
  double c = 1;
  bool row = false;
  if (ins->op == OP_MATMUL) {
    Shape a = fn->ins[ins->arg[0]].shape;
    int64_t k = ins->ta ? a.dim[0] : a.dim[1];
    double m = s.dim[0] == DIM_N ? 1 : (double)s.dim[0], nn = s.dim[1] == DIM_N ? 1 : (double)s.dim[1];
    double kk = k == DIM_N ? 1 : (double)k;
    c = 2 * m * nn * kk;
    row = s.dim[0] == DIM_N || s.dim[1] == DIM_N || k == DIM_N;
  } else if (ins->op >= OP_CONV2D && ins->op <= OP_CONV2D_DW) {
    Shape x = ins->op == OP_CONV2D_DX ? s : fn->ins[ins->arg[0]].shape;
    Shape w = ins->op == OP_CONV2D_DW ? s : fn->ins[ins->arg[1]].shape;
    int64_t oh = conv_out_size(x.dim[2], w.dim[2], ins->attr[0], ins->attr[1], ins->attr[2]);
    int64_t ow = conv_out_size(x.dim[3], w.dim[3], ins->attr[0], ins->attr[1], ins->attr[2]);
    c = 2.0 * (double)(w.dim[0] * w.dim[1] * w.dim[2] * w.dim[3] * oh * ow);
    row = true;
  } else {
    Shape t = op_class[ins->op] == OC_REDUCE ? fn->ins[ins->arg[0]].shape : s;
    for (int d = 0; d < t.rank; d++)
      t.dim[d] == DIM_N ? (row = true) : (c *= (double)t.dim[d]);
  }
  *fixed = row ? 0 : c, *per_row = row ? c : 0;
}

static void profile_end(Cg *cg, LLVMValueRef t0, int from, int to) {
  Fn *fn = cg->ir;
  Prog *p = cg->p;
  Ins *ins = &fn->ins[from];
  if (ins->op == OP_INPUT || ins->op == OP_CONST || ins->op == OP_TENSOR || ins->op == OP_RESHAPE)
    return;  // no code, nothing to time
  if (p->nkernels == p->kernel_cap) {
    int cap = p->kernel_cap ? 2 * p->kernel_cap : 128;
    const char **nm = arena_alloc(sizeof(char *) * (size_t)cap);
    double *f = arena_alloc(sizeof(double) * (size_t)cap), *r = arena_alloc(sizeof(double) * (size_t)cap);
    if (p->nkernels) {
      memcpy(nm, p->kernel_name, sizeof(char *) * (size_t)p->nkernels);
      memcpy(f, p->kernel_flops, sizeof(double) * (size_t)p->nkernels);
      memcpy(r, p->kernel_flops_per_row, sizeof(double) * (size_t)p->nkernels);
    }
    p->kernel_name = nm, p->kernel_flops = f, p->kernel_flops_per_row = r, p->kernel_cap = cap;
  }
  // its name: the op (or the fused ops), the layers involved, forward or backward
  char name[256];
  int len = 0;
  const char *layers[2] = {0};
  double fixed = 0, per_row = 0;
  for (int m = from; m < to; m++) {
    double a, b;
    flops_of(fn, &fn->ins[m], &a, &b);
    fixed += a, per_row += b;
    const char *l = fn->ins[m].layer;
    if (l && (!layers[0] || strcmp(layers[0], l)) && !layers[1])
      layers[layers[0] ? 1 : 0] = l;
    if (to - from == 1)
      continue;
    if (m == from)
      len += snprintf(name + len, sizeof name - len, "fused ×%d: ", to - from);
    if (m - from < 4)
      len += snprintf(name + len, sizeof name - len, "%s%s", m > from ? ", " : "",
                      op_names[fn->ins[m].op]);
    else if (m - from == 4)
      len += snprintf(name + len, sizeof name - len, ", …");
  }
  if (to - from == 1)
    len += snprintf(name + len, sizeof name - len, "%s", op_names[ins->op]);
  for (int k = 0; k < 2 && layers[k]; k++)
    len += snprintf(name + len, sizeof name - len, "%s%s", k ? ", " : " (", layers[k]);
  if (layers[0])
    len += snprintf(name + len, sizeof name - len, ")");
  snprintf(name + len, sizeof name - len, " %s %s",
           from < fn->nfwd ? "forward" : ins->op == OP_STORE ? "update" : "backward",
           shape_str(ins->shape));
  int id = p->nkernels++;
  p->kernel_name[id] = str_dup(name), p->kernel_flops[id] = fixed;
  p->kernel_flops_per_row[id] = per_row;
  LLVMValueRef dt = LLVMBuildSub(cg->b, read_cycles(cg), t0, "");
  LLVMTypeRef pt[3] = {cg->ptr, cg->i32, cg->i64};
  call(cg, "krt_profile", cg->vd, pt, 3, (LLVMValueRef[]){cg->run, LLVMConstInt(cg->i32, (unsigned)id, 0), dt});
}

// Sets up buffer pointers and immediate values, then emits every instruction in order.
static void gen_body(Cg *cg, Fn *ir, int *slot, LLVMValueRef slots) {
  LLVMBuilderRef B = cg->b;
  cg->ir = ir, cg->slot = slot;
  cg->chunks = LLVMBuildZExt(B, call(cg, "krt_threads", cg->i32, NULL, 0, NULL), cg->i64, "");
  cg->buf = arena_alloc(sizeof(LLVMValueRef) * (size_t)(ir->len + 1));
  cg->imm = arena_alloc(sizeof(LLVMValueRef) * (size_t)(ir->len + 1));
  cg->scratch = arena_alloc(sizeof(LLVMValueRef) * (size_t)(ir->len + 1));
  for (int i = 0; i < ir->len; i++) {
    Ins *ins = &ir->ins[i];
    int s = slot[i];
    if (ins->op == OP_CONST)
      cg->imm[i] = cf32(cg, ins->imm);
    else if (ins->op == OP_INPUT && ins->input == IN_N)
      cg->imm[i] = LLVMBuildSIToFP(B, cg->n, cg->f32, "n");
    else if (ins->op == OP_INPUT && s < 0)
      cg->imm[i] = LLVMBuildFPTrunc(B, LLVMBuildLoad2(B, cg->f64, LLVMBuildInBoundsGEP2(B, cg->f64, cg->in, (LLVMValueRef[]){ci64(cg, ins->input)}, 1, ""), ""), cg->f32, "");
    if (s >= 0) {
      LLVMValueRef idx = ci64(cg, s);
      cg->buf[i] = LLVMBuildLoad2(B, cg->ptr, LLVMBuildInBoundsGEP2(B, cg->ptr, slots, &idx, 1, ""), "");
    }
    if (cg->scratch_slot[i] >= 0) {
      LLVMValueRef idx = ci64(cg, cg->scratch_slot[i]);
      cg->scratch[i] = LLVMBuildLoad2(B, cg->ptr, LLVMBuildInBoundsGEP2(B, cg->ptr, slots, &idx, 1, ""), "");
    }
  }
  // the last instruction that reads each value, for fusion
  int *last_use = arena_alloc(sizeof(int) * (size_t)(ir->len + 1));
  int *members = arena_alloc(sizeof(int) * (size_t)(ir->len + 1));
  int *hoisted = arena_alloc(sizeof(int) * (size_t)(ir->len + 1));
  // per-channel sums in a run, and views of them: their values exist only after the loop
  bool *pending = arena_alloc(sizeof(bool) * (size_t)(ir->len + 1));
  memset(pending, 0, sizeof(bool) * (size_t)(ir->len + 1));
  for (int i = 0; i < ir->len; i++)
    for (int k = 0; k < op_nargs[ir->ins[i].op]; k++)
      last_use[ir->ins[i].arg[k]] = i;
  for (int i = 0; i < ir->len;) {
    // The guard: once the loss and Σ g² are known, and before anything of the update is
    // computed or written (weights, buffers, optimizer state), the runtime may discard the
    // step.
    if (cg->guard && i == cg->p->train_gsq + 1) {
      LLVMTypeRef pt[4] = {cg->ptr, cg->f32, cg->f32, cg->i64};
      LLVMValueRef args[4] = {cg->run, scalar(cg, cg->p->train_loss), scalar(cg, cg->p->train_gsq),
                              cg->n};
      LLVMValueRef ok = call(cg, "krt_guard", cg->i32, pt, 4, args);
      LLVMBasicBlockRef commit = LLVMAppendBasicBlockInContext(cg->ctx, cg->fn, "commit");
      LLVMBasicBlockRef discard = LLVMAppendBasicBlockInContext(cg->ctx, cg->fn, "discard");
      LLVMBuildCondBr(B, LLVMBuildICmp(B, LLVMIntNE, ok, LLVMConstInt(cg->i32, 0, 0), ""),
                      commit, discard);
      LLVMPositionBuilderAtEnd(B, discard);
      LLVMBuildRetVoid(B);
      LLVMPositionBuilderAtEnd(B, commit);
    }
    // A run to fuse: elementwise instructions of one shape; scalar arithmetic in between
    // (a bias correction, a scheduled factor) is hoisted before the loop.
    // An operand broadcast over blocks of at least 16 floats (a channel's plane) may join.
    Shape shape, next;
    int j = i + 1, nm = 1, nh = 0, inner = 0, in_j;
    members[0] = i;
    bool starts = fusable(ir, i, &shape, true, &inner) &&
                  (inner == shape.rank || block_size(shape, inner) >= 16);
    if (!starts && ir->ins[i].op == OP_SUMTO) {  // a per-channel sum may open a run
      shape = ir->ins[ir->ins[i].arg[0]].shape, inner = shape.rank - 2;
      starts = chan_sum(ir, i, shape) && block_size(shape, inner) >= 16;
      pending[i] = starts;
    }
    if (starts) {
      for (; j < ir->len; j++) {
        if (cg->guard && j == cg->p->train_gsq + 1)
          break;  // the guard comes between Σ g² and the update
        bool waits = false;  // j reads a sum the loop is still computing
        for (int k = 0; k < op_nargs[ir->ins[j].op]; k++)
          waits |= pending[ir->ins[j].arg[k]];
        if (waits && ir->ins[j].op == OP_RESHAPE) {  // a view of it: no code
          pending[j] = true;
          hoisted[nh++] = j;
          continue;
        }
        if (waits)
          break;
        if (chan_sum(ir, j, shape) && block_size(shape, inner < shape.rank - 2 ? inner : shape.rank - 2) >= 16) {
          inner = inner < shape.rank - 2 ? inner : shape.rank - 2;
          pending[j] = true;
          members[nm++] = j;
          continue;
        }
        if (feeds_reduction(cg, j, last_use)) {
          // a full sum of it (a guard probe) joins the run: one pass instead of two, and
          // the run goes on after it
          if (ir->ins[j + 1].op == OP_SUM && ir->ins[j + 1].axis < 0 &&
              fusable(ir, j, &next, true, &in_j) && shape_eq(next, shape) &&
              (in_j >= inner || block_size(shape, in_j) >= 16) && !bcast_clash(cg, members, nm, j)) {
            inner = in_j < inner ? in_j : inner;
            members[nm++] = j, members[nm++] = j + 1;
            j++;
            continue;
          }
          break;  // j is better computed inside the reduction's loop, never stored
        }
        if (fusable(ir, j, &next, true, &in_j) && shape_eq(next, shape) &&
            (in_j >= inner || block_size(shape, in_j) >= 16) && !bcast_clash(cg, members, nm, j)) {
          inner = in_j < inner ? in_j : inner;
          members[nm++] = j;
          continue;
        }
        if (shape.rank > 0 && hoistable(ir, j, members, nm)) {
          hoisted[nh++] = j;
          continue;
        }
        break;
      }
    }
    LLVMValueRef t0 = cg->profile ? profile_begin(cg) : NULL;
    for (int k = 0; k < nh; k++)
      gen_ins(cg, hoisted[k]);
    if (nm > 1) {
      gen_fused(cg, members, nm, j, last_use, shape, inner);
    } else if (feeds_reduction(cg, i, last_use) && ir->ins[i + 1].op == OP_SUM &&
               ir->ins[i + 1].axis < 0 && starts && worth_sharing(shape)) {
      // a large full sum (Σ g² of a weight's gradient): a run of two, shared by the pool
      members[1] = i + 1;
      gen_fused(cg, members, 2, i + 2, last_use, shape, inner);
      j = i + 2;
    } else if (feeds_reduction(cg, i, last_use)) {
      // an elementwise value read only by the reduction after it: computed inside it
      gen_reduce_from(cg, i + 1, cg->buf[i + 1], i);
      j = i + 2;
    } else {
      j = i + 1;
      gen_ins(cg, i);
    }
    if (t0)
      profile_end(cg, t0, i, j);
    i = j;
  }
}

static LLVMValueRef gen_step(Cg *cg, const char *name, Fn *ir, int *slot, bool guard) {
  LLVMTypeRef params[5] = {cg->ptr, cg->i64, cg->ptr, cg->i64, cg->ptr};
  cg->fn = LLVMAddFunction(cg->mod, name, LLVMFunctionType(cg->vd, params, 5, 0));
  LLVMPositionBuilderAtEnd(cg->b, LLVMAppendBasicBlockInContext(cg->ctx, cg->fn, "entry"));
  cg->n = LLVMGetParam(cg->fn, 1), cg->in = LLVMGetParam(cg->fn, 2), cg->seed = LLVMGetParam(cg->fn, 3);
  cg->run = LLVMGetParam(cg->fn, 4), cg->guard = guard;
  cg->profile = guard && cg->p->profile;
  cg->keep = kept(cg->p, ir);
  cg->scratch_slot = ir == cg->p->train ? cg->p->scratch_train : cg->p->scratch_eval;
  gen_body(cg, ir, slot, LLVMGetParam(cg->fn, 0));
  cg->guard = cg->profile = false;
  LLVMBuildRetVoid(cg->b);
  return cg->fn;
}

static LLVMValueRef gen_schedule(Cg *cg, Prog *p) {
  LLVMTypeRef params[2] = {cg->ptr, cg->ptr};
  cg->fn = LLVMAddFunction(cg->mod, "schedule", LLVMFunctionType(cg->f32, params, 2, 0));
  LLVMPositionBuilderAtEnd(cg->b, LLVMAppendBasicBlockInContext(cg->ctx, cg->fn, "entry"));
  cg->n = ci64(cg, 1), cg->in = LLVMGetParam(cg->fn, 1), cg->seed = ci64(cg, 0);
  cg->keep = kept(p, p->sched);
  cg->scratch_slot = p->scratch_sched;
  gen_body(cg, p->sched, p->slot_sched, LLVMGetParam(cg->fn, 0));
  LLVMBuildRet(cg->b, scalar(cg, p->sched_out));
  return cg->fn;
}

// ---------------------------------------------------------------------------------------------
// keel_main: the training loop

static LLVMValueRef rt(Cg *cg, const char *name, LLVMTypeRef ret, int np, LLVMTypeRef *pt,
                       LLVMValueRef *args) {
  return call(cg, name, ret, pt, np, args);
}

static void set_in(Cg *cg, LLVMValueRef in, int k, LLVMValueRef v) {
  LLVMValueRef idx = ci64(cg, k);
  LLVMBuildStore(cg->b, v, LLVMBuildInBoundsGEP2(cg->b, cg->f64, in, &idx, 1, ""));
}

static LLVMValueRef slot_ptr(Cg *cg, LLVMValueRef slots, int s) {
  LLVMValueRef idx = ci64(cg, s);
  return LLVMBuildLoad2(cg->b, cg->ptr, LLVMBuildInBoundsGEP2(cg->b, cg->ptr, slots, &idx, 1, ""), "");
}

// The evaluation loop over set `which` (KRT_VAL = 1, KRT_TEST = 2).
static void gen_eval_loop(Cg *cg, Prog *p, LLVMValueRef eval, LLVMValueRef r, LLVMValueRef slots,
                          LLVMValueRef in, LLVMValueRef seed, int which) {
  LLVMBuilderRef B = cg->b;
  LLVMTypeRef p2[2] = {cg->ptr, cg->i32}, p5[5] = {cg->ptr, cg->i32, cg->i64, cg->ptr, cg->ptr};
  LLVMValueRef w = LLVMConstInt(cg->i32, (unsigned long long)which, 0);
  LLVMValueRef nb = rt(cg, "krt_eval_begin", cg->i64, 2, p2, (LLVMValueRef[]){r, w});
  LLVMValueRef X = slot_ptr(cg, slots, p->x_slot), Y = slot_ptr(cg, slots, p->y_slot);
  Loop l = loop_begin(cg, nb);
  LLVMValueRef n = rt(cg, "krt_eval_batch", cg->i64, 5, p5, (LLVMValueRef[]){r, w, l.iv, X, Y});
  LLVMTypeRef ps[5] = {cg->ptr, cg->i64, cg->ptr, cg->i64, cg->ptr};
  LLVMBuildCall2(B, LLVMFunctionType(cg->vd, ps, 5, 0), eval, (LLVMValueRef[]){slots, n, in, seed, r}, 5, "");
  LLVMValueRef loss = LLVMBuildLoad2(B, cg->f32, slot_ptr(cg, slots, p->slot_eval[p->eval_loss]), "");
  LLVMTypeRef pe[7] = {cg->ptr, cg->i32, cg->f32, cg->ptr, cg->ptr, cg->i64};
  rt(cg, "krt_eval_step_end", cg->vd, 6, pe,
     (LLVMValueRef[]){r, w, loss, slot_ptr(cg, slots, p->slot_eval[p->eval_out]), Y, n});
  loop_end(cg, &l);
}

static void gen_main(Cg *cg, Prog *p, LLVMValueRef train, LLVMValueRef eval, LLVMValueRef sched) {
  LLVMBuilderRef B = cg->b;
  LLVMTypeRef params[3] = {cg->ptr, cg->ptr, cg->i64};
  cg->fn = LLVMAddFunction(cg->mod, "keel_main", LLVMFunctionType(cg->vd, params, 3, 0));
  LLVMPositionBuilderAtEnd(B, LLVMAppendBasicBlockInContext(cg->ctx, cg->fn, "entry"));
  LLVMValueRef r = LLVMGetParam(cg->fn, 0), slots = LLVMGetParam(cg->fn, 1), seed = LLVMGetParam(cg->fn, 2);
  LLVMValueRef in = LLVMBuildArrayAlloca(B, cg->f64, ci64(cg, IN_COUNT), "in");
  for (int k = 0; k < IN_COUNT; k++)
    set_in(cg, in, k, LLVMConstReal(cg->f64, 0));
  set_in(cg, in, IN_BASE, LLVMConstReal(cg->f64, p->base_lr));
  LLVMTypeRef p1 = cg->ptr, p2[2] = {cg->ptr, cg->i64}, p4[4] = {cg->ptr, cg->i64, cg->ptr, cg->ptr};
  LLVMValueRef epochs = rt(cg, "krt_epochs", cg->i64, 1, &p1, &r);
  LLVMValueRef total = rt(cg, "krt_total_steps", cg->i64, 1, &p1, &r);
  set_in(cg, in, IN_STEPS, LLVMBuildSIToFP(B, total, cg->f64, ""));
  LLVMValueRef X = slot_ptr(cg, slots, p->x_slot), Y = slot_ptr(cg, slots, p->y_slot);
  LLVMBasicBlockRef finish = LLVMAppendBasicBlockInContext(cg->ctx, cg->fn, "finish");

  Loop le = loop_from(cg, rt(cg, "krt_first_epoch", cg->i64, 1, &p1, &r), epochs);
  set_in(cg, in, IN_EPOCH, LLVMBuildSIToFP(B, le.iv, cg->f64, ""));
  LLVMValueRef nb = rt(cg, "krt_epoch_begin", cg->i64, 2, p2, (LLVMValueRef[]){r, le.iv});
  set_in(cg, in, IN_SPE, LLVMBuildSIToFP(B, nb, cg->f64, ""));
  Loop lb = loop_from(cg, rt(cg, "krt_first_batch", cg->i64, 1, &p1, &r), nb);
  LLVMValueRef n = rt(cg, "krt_train_batch", cg->i64, 4, p4, (LLVMValueRef[]){r, lb.iv, X, Y});
  LLVMValueRef step = rt(cg, "krt_step", cg->i64, 1, &p1, &r);
  set_in(cg, in, IN_STEP, LLVMBuildSIToFP(B, step, cg->f64, ""));
  set_in(cg, in, IN_T, LLVMBuildSIToFP(B, LLVMBuildAdd(B, step, ci64(cg, 1), ""), cg->f64, ""));
  LLVMTypeRef pl[2] = {cg->ptr, cg->ptr};
  LLVMValueRef lr = LLVMBuildCall2(B, LLVMFunctionType(cg->f32, pl, 2, 0), sched, (LLVMValueRef[]){slots, in}, 2, "lr");
  lr = LLVMBuildFMul(B, lr, rt(cg, "krt_lr_scale", cg->f32, 1, &p1, &r), "");
  set_in(cg, in, IN_LR, LLVMBuildFPExt(B, lr, cg->f64, ""));
  if (p->profile) {
    LLVMTypeRef pb = cg->i64;
    rt(cg, "krt_profile_batch", cg->vd, 1, &pb, &n);
  }
  LLVMTypeRef ps[5] = {cg->ptr, cg->i64, cg->ptr, cg->i64, cg->ptr};
  LLVMBuildCall2(B, LLVMFunctionType(cg->vd, ps, 5, 0), train, (LLVMValueRef[]){slots, n, in, seed, r}, 5, "");
  LLVMValueRef loss = LLVMBuildLoad2(B, cg->f32, slot_ptr(cg, slots, p->slot_train[p->train_loss]), "");
  LLVMTypeRef pe[6] = {cg->ptr, cg->f32, cg->ptr, cg->ptr, cg->i64, cg->f32};
  LLVMValueRef stop = rt(cg, "krt_train_step_end", cg->i32, 6, pe,
                         (LLVMValueRef[]){r, loss, slot_ptr(cg, slots, p->slot_train[p->train_out]), Y, n, lr});
  LLVMBasicBlockRef cont = LLVMAppendBasicBlockInContext(cg->ctx, cg->fn, "next_batch");
  LLVMBuildCondBr(B, LLVMBuildICmp(B, LLVMIntNE, stop, LLVMConstInt(cg->i32, 0, 0), ""), lb.exit, cont);
  LLVMPositionBuilderAtEnd(B, cont);
  loop_end(cg, &lb);
  gen_eval_loop(cg, p, eval, r, slots, in, seed, 1);
  LLVMValueRef done = rt(cg, "krt_epoch_end", cg->i32, 1, &p1, &r);
  LLVMBasicBlockRef cont2 = LLVMAppendBasicBlockInContext(cg->ctx, cg->fn, "next_epoch");
  LLVMBuildCondBr(B, LLVMBuildICmp(B, LLVMIntNE, done, LLVMConstInt(cg->i32, 0, 0), ""), finish, cont2);
  LLVMPositionBuilderAtEnd(B, cont2);
  loop_end(cg, &le);
  LLVMBuildBr(B, finish);
  LLVMPositionBuilderAtEnd(B, finish);
  rt(cg, "krt_train_end", cg->vd, 1, &p1, &r);
  gen_eval_loop(cg, p, eval, r, slots, in, seed, 2);
  LLVMBuildRetVoid(B);
}

// The program descriptor (program.c) as the string `keel_program`, and for a built trainer
// `int main(argc, argv)`, which hands everything to the runtime's trainer command line.
static void gen_descriptor(Cg *cg, Prog *p, LLVMValueRef main_fn, LLVMValueRef eval, bool trainer) {
  const char *json = program_json(p, p->summary);
  LLVMValueRef text = LLVMConstStringInContext(cg->ctx, json, (unsigned)strlen(json), 0);
  LLVMValueRef g = LLVMAddGlobal(cg->mod, LLVMTypeOf(text), "keel_program");
  LLVMSetInitializer(g, text);
  LLVMSetGlobalConstant(g, 1);
  if (!trainer)
    return;
  LLVMTypeRef params[2] = {cg->i32, cg->ptr};
  cg->fn = LLVMAddFunction(cg->mod, "main", LLVMFunctionType(cg->i32, params, 2, 0));
  LLVMPositionBuilderAtEnd(cg->b, LLVMAppendBasicBlockInContext(cg->ctx, cg->fn, "entry"));
  LLVMTypeRef pt[5] = {cg->ptr, cg->ptr, cg->ptr, cg->i32, cg->ptr};
  LLVMValueRef args[5] = {g, main_fn, eval, LLVMGetParam(cg->fn, 0), LLVMGetParam(cg->fn, 1)};
  LLVMBuildRet(cg->b, call(cg, "krt_trainer_main", cg->i32, pt, 5, args));
}

void *cg_module(Prog *p, void *llvm_context, bool trainer) {
  Cg cg = {.ctx = llvm_context, .p = p};
  cg.mod = LLVMModuleCreateWithNameInContext(p->model_name, cg.ctx);
  cg.b = LLVMCreateBuilderInContext(cg.ctx);
  cg.f32 = LLVMFloatTypeInContext(cg.ctx), cg.f64 = LLVMDoubleTypeInContext(cg.ctx);
  cg.i64 = LLVMInt64TypeInContext(cg.ctx), cg.i32 = LLVMInt32TypeInContext(cg.ctx);
  cg.ptr = LLVMPointerTypeInContext(cg.ctx, 0), cg.vd = LLVMVoidTypeInContext(cg.ctx);
  LLVMValueRef train = gen_step(&cg, "train_step", p->train, p->slot_train, true);
  LLVMValueRef eval = gen_step(&cg, "eval_step", p->eval, p->slot_eval, false);
  LLVMValueRef sched = gen_schedule(&cg, p);
  gen_main(&cg, p, train, eval, sched);
  gen_descriptor(&cg, p, LLVMGetNamedFunction(cg.mod, "keel_main"), eval, trainer);
  LLVMDisposeBuilder(cg.b);
  return cg.mod;
}
