// keel.h — the one internal header of the Keel compiler.
//
// Every struct, enum and cross-file prototype of compiler/*.c lives here, in sections named
// after the file that defines them. The pipeline is:
//
//   source text → lexer (grammar/lexer.re) → parser (grammar/parser.y) → AST (ast.c)
//     → lower.c (names, arguments, shapes; builds the IR) → ir.c (builder, verifier, printer)
//     → autodiff.c (reverse mode, IR → IR) → codegen.c (LLVM module) → jit.c (ORC LLJIT)
//
// The compiler allocates from one arena and never frees single objects; a compilation is a
// short-lived process. User errors go through error_at() and exit with status 1; compiler bugs
// go through die()/unreachable() and abort.

#ifndef KEEL_H
#define KEEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define KEEL_VERSION "0.1.0"

// ---------------------------------------------------------------------------------------------
// util.c — arena, strings, errors

// A position in a source file. line and col count from 1; col counts bytes.
typedef struct {
  const char *file;  // the name as the user gave it (or "<stdlib>/layers.nn")
  const char *src;   // the whole text of that file, for printing the offending line
  int line, col;
} Pos;

void *arena_alloc(size_t size);  // zeroed, never freed
char *str_dup(const char *s);
char *str_ndup(const char *s, size_t n);
char *str_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *read_file(const char *path, size_t *len);  // NULL when it cannot be read
const char *src_line(const char *src, int line);   // the start of that line (from 1)
// The text from p to the end of its line (or to stop), without a comment, runs of blanks as
// one space; with stop_then, only up to the word `then`. (Lints and explain quote it.)
char *src_text(const char *p, const char *stop, bool stop_then);

// Prints `file:line:col: error: message`, the source line and a caret, then exits 1.
_Noreturn void error_at(Pos pos, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// The same layout with "warning:", and returns.
void warn_at(Pos pos, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// An error with no source position (a bad command-line flag, a bad data file): `keel: error: …`.
_Noreturn void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// While set, an error inside another file (a stdlib layer body) is reported at `at` (the
// user's layer line) as `<prefix><message>` with a note pointing into the other file.
void error_context(Pos at, const char *prefix);
void error_context_clear(void);
// A compiler bug: prints the C file and line and aborts.
_Noreturn void die_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define die(...) die_at(__FILE__, __LINE__, __VA_ARGS__)
#define unreachable() die_at(__FILE__, __LINE__, "unreachable")

// ---------------------------------------------------------------------------------------------
// ast.c — the syntax tree built by grammar/parser.y
//
// One fat Node struct for every kind; the comment on each kind says which fields it uses.
// Lists (statements, arguments, items, definitions) are chained through `next`.

typedef enum {
  // expressions
  ND_NUM,      // num
  ND_STR,      // name = the string's contents (escapes resolved)
  ND_IDENT,    // name
  ND_DIMS,     // name = the text "1x28x28" (a shape literal)
  ND_UNARY,    // op = '-', lhs
  ND_BINARY,   // op = one of + - * / ^ @ < > or OPC_EQ.. (the enum below), lhs, rhs
  ND_TERNARY,  // cond ? lhs : rhs
  ND_CALL,     // name = callee, args = list of expressions and ND_NAMED
  ND_NAMED,    // name = expr   (a named argument or item); name, lhs = the value
  ND_THEN,     // the word `then` inside an item list (schedule composition)
  // statements inside layer / optimizer bodies
  ND_ASSIGN,   // name = lhs
  ND_PARAM,    // param name[args] init lhs     (lhs may be NULL: no init given)
  ND_BUFFER,   // buffer name[args] init lhs
  ND_STATE,    // state name = lhs      (one node per name: `state m = 0, v = 0` gives two)
  ND_MODE,     // train { body } or eval { body }: name = "train" | "eval", body
  // a line inside a data / network / train block: a word followed by items
  ND_LINE,     // name = the first word, args = the items (expressions, ND_NAMED, ND_THEN)
  // top-level definitions
  ND_DATA,      // data name { body: ND_LINE list }
  ND_NETWORK,   // network name { body: ND_LINE list }
  ND_LAYERDEF,  // layer name(args: params) { body: statements }
  ND_LOSSDEF,   // loss name(args: params) = lhs
  ND_OPTDEF,    // optimizer name(args: params) { body: statements }
  ND_SCHEDDEF,  // schedule name(args: params) = lhs
  ND_TRAIN,     // train name on name2 { body: ND_LINE list }
} NodeKind;

// Binary operators beyond single characters (ND_BINARY.op holds a char or one of these).
enum { OPC_EQ = 256, OPC_NE, OPC_LE, OPC_GE };

// A parameter in a definition's parameter list is an ND_IDENT (no default) or an ND_NAMED
// (name = default value).
typedef struct Node Node;
struct Node {
  NodeKind kind;
  Pos pos;        // the node's representative token
  Node *next;     // next in its list
  double num;     // ND_NUM
  const char *name;
  const char *name2;  // ND_TRAIN: the data set's name
  int op;             // ND_UNARY, ND_BINARY
  Node *lhs, *rhs, *cond;
  Node *args;     // call arguments, line items, definition parameters, param/buffer dims
  Node *body;     // statements or lines
  int depth;      // expressions: 1 for a leaf, 1 + the deepest child's (parser.y caps it)
};

Node *ast_new(NodeKind kind, Pos pos);
void ast_dump(FILE *out, Node *prog);  // `keel emit ast`
const char *ast_kind_name(NodeKind kind);

// ---------------------------------------------------------------------------------------------
// parse.c — glue between the re2c lexer and the Bison parser

// Parses one source file; returns its list of top-level definitions. Syntax errors go
// through error_at.
Node *parse_file(const char *filename, const char *src);

// ---------------------------------------------------------------------------------------------
// ir.c — the tensor IR
//
// A function is an array of instructions in SSA form; a value is the index of the instruction
// that defines it. Shapes are static except dimension 0, which may be the batch size n
// (DIM_N), a run-time value. Every op is a row of ops.def.

#define MAX_RANK 4
#define DIM_N (-1)  // the batch dimension, known only when a batch arrives

typedef struct {
  int rank;
  int64_t dim[MAX_RANK];
} Shape;

typedef enum {
#define OP(id, name, nargs, cls) OP_##id,
#include "ops.def"
#undef OP
  OP_COUNT
} Op;

// How an op behaves, for shape rules, codegen and the interpreter (column 4 of ops.def).
typedef enum {
  OC_LEAF,   // no tensor arguments: inputs, constants, tensors, rand
  OC_UNARY,  // elementwise, one argument, same shape
  OC_BINARY, // elementwise, two arguments, NumPy broadcasting
  OC_SELECT, // elementwise, three arguments, broadcasting
  OC_REDUCE, // reduce one axis (axis >= 0) or all (axis == -1)
  OC_OTHER,  // its own rule
} OpClass;

// Which run-time input an OP_INPUT stands for.
typedef enum {
  IN_X,     // the batch of samples (n, features...)
  IN_Y,     // the batch of labels (n) or targets (n, k)
  IN_N,     // the batch size n, as a scalar
  IN_LR,    // the scheduled learning rate, scalar
  IN_T,     // the optimizer step, from 1, scalar
  IN_STEP,  // schedule: the global step from 0
  IN_STEPS, // schedule: the schedule's duration in steps
  IN_EPOCH, // schedule: the epoch from 0
  IN_BASE,  // schedule: the optimizer's base learning rate
  IN_SPE,   // schedule: batches (steps) per epoch, for durations given in epochs
  IN_COUNT
} InputKind;

typedef struct {
  Op op;
  Shape shape;
  int arg[3];       // argument values (instruction indices)
  double imm;       // OP_CONST: the value
  int axis;         // reductions, EXPAND, SUMTO keeps its target in shape
  int ta, tb;       // OP_MATMUL: transpose a / b
  int input;        // OP_INPUT: an InputKind
  int tensor;       // OP_TENSOR, OP_STORE: index into Prog.tensors
  int seq;          // OP_RAND: stream number, distinct per rand in the program
  int attr[4];      // images: {stride, pad, dilation} (conv) or {kernel, stride, pad} (pool);
                    // attr[3], MAXPOOL_DX only: 1 = the gradient only where the maximum is
                    // above 0 (a relu before the pool, folded in by ir_fold_relu_pool)
  Pos pos;          // where in the source this came from
  const char *layer;  // the layer instance it belongs to ("dense1"), or NULL
} Ins;

typedef struct {
  const char *name;
  Ins *ins;
  int len, cap;
  int nfwd;  // train: instructions before autodiff appended the backward pass
  Pos cur_pos;             // position and layer given to new instructions that have none
  const char *cur_layer;
} Fn;

// Persistent tensors: they live across steps, in checkpoints.
typedef enum {
  TK_PARAM,   // trained: has a gradient and an optimizer update
  TK_BUFFER,  // state updated by the forward pass in training (batchnorm statistics)
  TK_STATE,   // optimizer state, one per parameter and state variable
} TensorKind;

typedef enum { INIT_CONST, INIT_UNIFORM, INIT_NORMAL } InitKind;

typedef struct {
  const char *name;  // "dense1.weight", "dense1.weight.momentum_buffer"
  TensorKind kind;
  Shape shape;       // never has DIM_N
  InitKind init;
  double a, b;       // CONST: value a; UNIFORM: [a, b); NORMAL: mean a, std b
  int param;         // TK_STATE: the parameter it belongs to
} Tensor;

extern const char *op_names[OP_COUNT];
extern const int op_nargs[OP_COUNT];
extern const OpClass op_class[OP_COUNT];

Fn *ir_new_fn(const char *name);
// Appends an instruction after computing its shape from its arguments; shape errors are
// reported at pos. Constant scalar arguments are folded.
int ir_emit(Fn *fn, Ins ins);
int ir_const(Fn *fn, double v);
int ir_input(Fn *fn, InputKind k, Shape shape);
int ir_op1(Fn *fn, Op op, int a);
int ir_op2(Fn *fn, Op op, int a, int b);
int ir_select(Fn *fn, int c, int a, int b);
int ir_reduce(Fn *fn, Op op, int a, int axis);
int ir_expand(Fn *fn, int a, int axis, int64_t size);   // insert axis of the given size
int ir_sumto(Fn *fn, int a, Shape to);                   // sum broadcast dims down to `to`
int ir_matmul(Fn *fn, int a, int b, int ta, int tb);
int ir_reshape(Fn *fn, int a, Shape to);
// conv2d(x, w) with stride, pad, dilation; pooling with kernel, stride, pad
int ir_conv2d(Fn *fn, int x, int w, int stride, int pad, int dilation);
int ir_pool(Fn *fn, Op op, int x, int kernel, int stride, int pad);
// the output size of a window of `window` elements sliding over `size` (+2·pad) by stride
int64_t conv_out_size(int64_t size, int64_t window, int stride, int pad, int dilation);

bool shape_eq(Shape a, Shape b);
int64_t shape_numel(Shape s, int64_t n);   // element count with DIM_N = n
char *shape_str(Shape s);                  // "[n, 784]"
bool shape_broadcast(Shape a, Shape b, Shape *out);
Shape shape_scalar(void);
Shape shape_make_dims(int rank, const int64_t *dims);
// shape_make(2, DIM_N, 784): every size becomes an int64_t (through a variadic argument an
// int DIM_N would be read as 4294967295)
#define shape_make(rank, ...) shape_make_dims((rank), (const int64_t[]){__VA_ARGS__})

void ir_verify(Fn *fn);                    // dies on a malformed function
struct Prog;
void ir_print(FILE *out, struct Prog *p, Fn *fn);
bool ir_is_const(Fn *fn, int v, double *value);
double ir_scalar_op(Op op, double a, double b, double c);  // elementwise semantics
int ir_broadcast_to(Fn *fn, int v, Shape to);  // materialize a broadcast (reshape + expand)

// ---------------------------------------------------------------------------------------------
// autodiff.c — reverse mode as an IR → IR pass

// Appends to fn the instructions that compute d(loss)/d(wrt[i]) for each i, and returns the
// gradient values in grads[i]. loss must be a scalar. Values that do not depend on wrt get a
// zero constant.
void ad_grad(Fn *fn, int loss, const int *wrt, int nwrt, int *grads);

// ---------------------------------------------------------------------------------------------
// passes.c — clean-up passes

// Common subexpressions and dead code; *roots[i] are values to keep, updated to their new
// numbers (every STORE is kept too).
void ir_simplify(Fn *fn, int **roots, int nroots);
void ir_fold_relu_pool(Fn *fn);
void ir_sink_expands(Fn *fn, int **roots, int nroots);

// ---------------------------------------------------------------------------------------------
// interp.c — a reference interpreter in double precision (tests and gradient checks)

// Runs fn with batch size n. inputs[k] and tensors[t] supply OP_INPUT and OP_TENSOR data.
// Returns one malloc'd buffer per instruction (caller frees with interp_free).
double **interp_run(Fn *fn, int64_t n, double **inputs, double **tensors, uint64_t seed,
                    uint64_t step);
void interp_free(Fn *fn, double **vals);

// ---------------------------------------------------------------------------------------------
// lower.c — names, arguments and shapes: AST → program

// A bound argument of a layer, loss, optimizer or schedule: its parameter and value.
typedef struct {
  const char *name;
  double value;
  bool epochs;         // schedules: the value was given in epochs (value is the count)
} Arg;

// A layer instance of the network, for `keel check`, lints, explain and error attribution.
typedef struct {
  const char *name;    // "dense1"
  const char *kind;    // "dense"
  Shape out;           // its output shape
  int64_t nparams;     // trained parameters it owns
  Pos pos;
  int train_probe;     // train function: Σ output·0, finite exactly when every output is
  Shape in;            // its input shape
  Arg *args;           // every parameter of its definition, in order, with its value
  int nargs;
} LayerInfo;

// A definition used by the train block, with its arguments (lints and explain).
typedef struct {
  const char *name;    // "adamw"
  Arg *args;
  int nargs;
  Pos pos;             // its name in the script
  bool has_duration;   // schedules: it has a `duration` parameter
} Use;

typedef enum { SRC_IDX, SRC_CSV } SourceKind;

typedef struct {
  SourceKind kind;
  const char *path, *path2;   // IDX: images, labels; CSV: path
  const char *label;          // CSV: label column name, NULL = the last column
  Pos pos;
} DataSource;

typedef struct Prog {
  const char *script;        // path of the script
  const char *model_name;    // network's name
  // persistent tensors
  Tensor *tensors;
  int ntensors, tensor_cap;
  // the compiled functions
  Fn *train;   // forward (train mode), loss, backward, optimizer update, stores
  Fn *eval;    // forward (eval mode) and loss
  Fn *sched;   // the learning rate as a function of step, steps, epoch, base
  int train_loss, train_out;  // values in train: the loss (scalar) and the network output
  int eval_loss, eval_out;    // the same in eval
  int sched_out;              // value in sched: the learning rate
  // what the network eats and produces
  Shape in_shape;     // (n, features...)
  Shape out_shape;    // (n, k)
  Shape y_shape;      // (n) class indices, or (n, k) targets
  bool classify;      // loss takes class indices: report accuracy
  // data
  DataSource train_src, test_src, val_src;
  bool has_train, has_test, has_val;
  double scale, holdout;
  // settings (after command-line overrides)
  int64_t batch, epochs, steps;  // steps 0 = no limit
  uint64_t seed;
  double base_lr;
  bool drop_last;
  int64_t min_batch;                      // smallest useful batch (batchnorm: 2)
  double clip_norm, clip_value;           // 0 = off
  int early_patience;                     // 0 = off
  double early_min_delta;
  bool early_monitor_accuracy;            // monitor val_accuracy instead of val_loss
  int plateau_patience;                   // 0 = off
  double plateau_factor;
  double guard_spike;                     // 0 = no spike check
  int guard_limit;
  Pos early_pos, clip_pos, plateau_pos;   // where each was set, for lints and explain
  Pos data_pos, batch_pos;                // the data block's name, the batch line
  bool batch_set;                         // the script sets batch (or --batch)
  Use loss, opt;                          // the loss and the optimizer
  Use *segments;                          // the schedule's parts (a then b ...), or none
  int nsegments;
  // the guard: train's sum of squared gradients, and where to look for the first
  // non-finite value (layer outputs, then gradients in backward order)
  int train_gsq;
  int nprobes;
  int *probe_val;            // values of train
  const char **probe_what;   // "the output of dense2"
  // memory: every value lives in a slot; slots [0, ntensors) are the persistent tensors, the
  // rest one block sized for the largest batch (codegen.c plans them, the driver allocates)
  int nslots, slot_cap;
  int64_t *slot_size;        // floats at the compiled batch size
  int64_t *slot_size_per_row;  // floats per sample, or 0 for a slot of fixed size
  int x_slot, y_slot;
  int *slot_train, *slot_eval, *slot_sched;  // per instruction, -1 = none (a constant)
  int *scratch_train, *scratch_eval, *scratch_sched;  // its scratch slot (LSE, conv), or -1
  // layers, for keel check
  LayerInfo *layers;
  int nlayers;
  int64_t nparams;
  const char *summary;       // the `keel check` table, for a trainer's --help
  // keel run --profile: the training step's kernels, timed by the generated code
  bool profile;
  int nkernels, kernel_cap;
  const char **kernel_name;
  double *kernel_flops, *kernel_flops_per_row;
} Prog;

// Command-line overrides; a negative value (or NULL) means "as the script says".
typedef struct {
  int64_t epochs, steps, batch, seed;
} Overrides;

Prog *lower_program(const char *script_path, Node *user, Node *stdlib, Overrides ov);

// ---------------------------------------------------------------------------------------------
// program.c — the descriptor the runtime reads (JSON, stored in the module as keel_program)

char *program_json(Prog *p, const char *summary);
void check_table(FILE *out, Prog *p);  // the layer table of `keel check`

// ---------------------------------------------------------------------------------------------
// lint.c, explain.c — the safety lints and `keel explain`

// Prints every compile-time lint of p as `file:line:col: warning: ...` with the source line
// and a caret; returns how many it printed.
int lint_program(Prog *p);
// The lints that need the data's size (at the start of a run): a schedule whose parts
// outlast training or that never changes the rate. Returns how many it printed.
int lint_schedule(Prog *p, int64_t total_steps, int64_t steps_per_epoch);
// `keel explain`: one or two plain sentences for every safety mechanism of the script.
void explain_program(FILE *out, Prog *p);

// ---------------------------------------------------------------------------------------------
// stdlib.c — the standard library sources, embedded at build time

typedef struct { const char *name; const char *src; } StdlibFile;
extern const StdlibFile stdlib_files[];
extern const int stdlib_count;
Node *parse_stdlib(void);  // every stdlib file parsed, as one list of definitions

// ---------------------------------------------------------------------------------------------
// codegen.c, jit.c — LLVM

typedef struct KeelJit KeelJit;
// Plans the slots of p, builds the LLVM module, optimizes it for the host CPU, and (unless
// print_llvm, which prints the optimized module to out instead) hands it to ORC LLJIT.
KeelJit *jit_compile(Prog *p, bool print_llvm, FILE *out);
// The address of a symbol of the module: keel_main, eval_step, schedule, keel_program.
void *jit_symbol(KeelJit *j, const char *name);
void jit_set_cpu(const char *cpu);  // --cpu: the CPU to generate code for (NULL: this one)
void jit_free(KeelJit *j);
// keel build: the same module, with `main`, for the host (or --target TRIPLE), written as an
// executable linked with the runtime (emit NULL), or as "obj", "asm" or "llvm" text.
int aot_build(Prog *p, const char *out, const char *emit, const char *triple);

// codegen.c: the module, in the given LLVM context (an LLVMContextRef and LLVMModuleRef,
// passed as void * so that only codegen.c and jit.c include the LLVM headers).
void cg_plan_slots(Prog *p);
// trainer: also emit `main`, for a standalone trainer executable (keel build)
void *cg_module(Prog *p, void *llvm_context, bool trainer);

#endif
