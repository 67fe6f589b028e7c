// program.c — the program descriptor: everything the runtime needs to know about a compiled
// script, as one JSON text that codegen stores in the module (`keel_program`).
//
// The JIT and a built trainer read the same descriptor through the same runtime code
// (runtime/session.c), so they set up data, tensors, slots and settings identically: only the
// way the machine code arrived differs. The descriptor holds the persistent tensors (names,
// shapes, initialisers), the slots (sizes, per sample or fixed), the guard's probes, the data
// sources as the script names them, every setting of the train block, the `keel check` table
// and a hash of the compiled program (for refusing to resume into a different program).

#include "keel.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
  char *buf;
  size_t len, cap;
} Buf;

static void put(Buf *b, const char *s) {
  size_t n = strlen(s);
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 4096;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *p = arena_alloc(cap);
    if (b->len)
      memcpy(p, b->buf, b->len);
    b->buf = p, b->cap = cap;
  }
  memcpy(b->buf + b->len, s, n + 1);
  b->len += n;
}

static void put_str(Buf *b, const char *s) {
  if (!s) {
    put(b, "null");
    return;
  }
  put(b, "\"");
  for (; *s; s++) {
    char c[8];
    if (*s == '"' || *s == '\\')
      snprintf(c, sizeof c, "\\%c", *s);
    else if ((unsigned char)*s < 0x20)
      snprintf(c, sizeof c, "\\u%04x", (unsigned char)*s);
    else
      c[0] = *s, c[1] = 0;
    put(b, c);
  }
  put(b, "\"");
}

static void key(Buf *b, const char *k) {
  if (b->len && b->buf[b->len - 1] != '{' && b->buf[b->len - 1] != '[')
    put(b, ",");
  put_str(b, k);
  put(b, ":");
}

static void num(Buf *b, const char *k, double v) {
  key(b, k);
  put(b, str_fmt("%.17g", v));
}

static void str(Buf *b, const char *k, const char *v) {
  key(b, k);
  put_str(b, v);
}

static void source(Buf *b, const char *k, const DataSource *s, bool has) {
  key(b, k);
  if (!has) {
    put(b, "null");
    return;
  }
  put(b, "{");
  str(b, "kind", s->kind == SRC_IDX ? "idx" : "csv");
  str(b, "path", s->path);
  str(b, "path2", s->path2);
  str(b, "label", s->label);
  put(b, "}");
}

// The `keel check` table: every layer's output shape and parameter count, and the total.
void check_table(FILE *out, Prog *p) {
  int wn = 14, wk = 12, ws = 18;  // the columns grow to the longest entry
  for (int i = 0; i < p->nlayers; i++) {
    LayerInfo *l = &p->layers[i];
    int a = (int)strlen(l->name) + 1, b = (int)strlen(l->kind) + 1, c = (int)strlen(shape_str(l->out)) + 1;
    wn = a > wn ? a : wn, wk = b > wk ? b : wk, ws = c > ws ? c : ws;
  }
  fprintf(out, "%-*s %-*s %-*s %12s\n", wn, "layer", wk, "kind", ws, "output", "parameters");
  fprintf(out, "%-*s %-*s %-*s %12s\n", wn, "input", wk, "", ws, shape_str(p->in_shape), "");
  for (int i = 0; i < p->nlayers; i++) {
    LayerInfo *l = &p->layers[i];
    fprintf(out, "%-*s %-*s %-*s %12lld\n", wn, l->name, wk, l->kind, ws, shape_str(l->out),
            (long long)l->nparams);
  }
  fprintf(out, "%-*s %-*s %-*s %12lld\n", wn, "total", wk, "", ws, "", (long long)p->nparams);
}

// FNV-1a over the printed IR of every function: equal programs, equal hashes.
static char *program_hash(Prog *p) {
  char *text;
  size_t len;
  FILE *f = open_memstream(&text, &len);
  ir_print(f, p, p->train);
  ir_print(f, p, p->eval);
  ir_print(f, p, p->sched);
  // the settings the runtime acts on, besides the IR (epochs and steps may change on resume)
  fprintf(f, "early %d %.17g %d plateau %d %.17g guard %.17g %d drop_last %d\n",
          p->early_patience, p->early_min_delta, p->early_monitor_accuracy, p->plateau_patience,
          p->plateau_factor, p->guard_spike, p->guard_limit, p->drop_last);
  fclose(f);
  uint64_t h = 0xcbf29ce484222325u;
  for (size_t i = 0; i < len; i++)
    h = (h ^ (unsigned char)text[i]) * 0x100000001b3u;
  free(text);
  return str_fmt("%016llx", (unsigned long long)h);
}

char *program_json(Prog *p, const char *summary) {
  Buf b = {0};
  put(&b, "{");
  str(&b, "name", p->model_name);
  str(&b, "script", p->script);
  str(&b, "summary", summary);
  str(&b, "hash", program_hash(p));
  source(&b, "train", &p->train_src, p->has_train);
  source(&b, "val", &p->val_src, p->has_val);
  source(&b, "test", &p->test_src, p->has_test);
  num(&b, "scale", p->scale);
  num(&b, "holdout", p->holdout);
  num(&b, "features", (double)shape_numel(p->in_shape, 1));
  num(&b, "ydim", p->classify ? 1 : (double)p->out_shape.dim[1]);
  num(&b, "classes", p->classify ? (double)p->out_shape.dim[1] : 0);
  num(&b, "batch", (double)p->batch);
  num(&b, "epochs", (double)p->epochs);
  num(&b, "steps", (double)p->steps);
  num(&b, "seed", (double)p->seed);
  num(&b, "base_lr", p->base_lr);
  num(&b, "parameters", (double)p->nparams);
  num(&b, "drop_last", p->drop_last);
  num(&b, "min_batch", (double)p->min_batch);
  num(&b, "early_patience", p->early_patience);
  num(&b, "early_min_delta", p->early_min_delta);
  num(&b, "early_monitor_accuracy", p->early_monitor_accuracy);
  num(&b, "plateau_patience", p->plateau_patience);
  num(&b, "plateau_factor", p->plateau_factor);
  num(&b, "spike_factor", p->guard_spike);
  num(&b, "guard_limit", p->guard_limit);
  num(&b, "x_slot", p->x_slot);
  num(&b, "y_slot", p->y_slot);
  num(&b, "out_slot", p->slot_eval[p->eval_out]);
  key(&b, "in_shape");
  put(&b, "[");
  for (int d = 1; d < p->in_shape.rank; d++)
    put(&b, str_fmt("%s%lld", d > 1 ? "," : "", (long long)p->in_shape.dim[d]));
  put(&b, "]");

  key(&b, "tensors");
  put(&b, "[");
  static const char *kinds[] = {"param", "buffer", "state"};
  static const char *inits[] = {"const", "uniform", "normal"};
  for (int i = 0; i < p->ntensors; i++) {
    Tensor *t = &p->tensors[i];
    put(&b, i ? ",{" : "{");
    str(&b, "name", t->name);
    str(&b, "kind", kinds[t->kind]);
    key(&b, "shape");
    put(&b, "[");
    for (int d = 0; d < t->shape.rank; d++)
      put(&b, str_fmt("%s%lld", d ? "," : "", (long long)t->shape.dim[d]));
    put(&b, "]");
    str(&b, "init", inits[t->init]);
    num(&b, "a", t->a);
    num(&b, "b", t->b);
    put(&b, "}");
  }
  put(&b, "]");

  // slot sizes: [floats, per sample (1) or fixed (0)], in slot order
  key(&b, "slots");
  put(&b, "[");
  for (int s = 0; s < p->nslots; s++) {
    int64_t per = p->slot_size_per_row[s];
    put(&b, str_fmt("%s[%lld,%d]", s ? "," : "", (long long)(per ? per : p->slot_size[s]),
                    per ? 1 : 0));
  }
  put(&b, "]");

  if (p->profile) {
    key(&b, "kernels");
    put(&b, "[");
    for (int i = 0; i < p->nkernels; i++) {
      put(&b, i ? ",{" : "{");
      str(&b, "name", p->kernel_name[i]);
      num(&b, "flops", p->kernel_flops[i]);
      num(&b, "flops_per_row", p->kernel_flops_per_row[i]);
      put(&b, "}");
    }
    put(&b, "]");
  }
  key(&b, "probes");
  put(&b, "[");
  for (int i = 0, first = 1; i < p->nprobes; i++) {
    int v = p->probe_val[i], s = p->slot_train[v];
    if (s < p->ntensors)
      continue;
    Shape sh = p->train->ins[v].shape;
    bool per_row = false;
    for (int d = 0; d < sh.rank; d++)
      per_row |= sh.dim[d] == DIM_N;
    put(&b, first ? "{" : ",{");
    first = 0;
    str(&b, "what", p->probe_what[i]);
    num(&b, "slot", s);
    num(&b, "count", (double)shape_numel(sh, 1));
    num(&b, "per_row", per_row);
    put(&b, "}");
  }
  put(&b, "]}");
  return b.buf;
}
