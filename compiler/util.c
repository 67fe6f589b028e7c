// util.c — the arena, string helpers and error reporting.
//
// The compiler never frees single objects: everything comes from arena_alloc, which grabs
// big blocks from malloc and hands out pieces. A compilation is a short-lived process.
//
// User errors print the chibicc/tcc/gcc layout, which editors understand:
//
//   model.nn:7:9: error: unknown layer 'dens'
//     layer dens 256 relu
//           ^

#include "keel.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------------
// Arena

#define ARENA_BLOCK (1 << 20)  // 1 MiB blocks; bigger requests get a block of their own

static char *arena_cur, *arena_end;

void *arena_alloc(size_t size) {
  size = (size + 15) & ~(size_t)15;
  if (size > (size_t)(arena_end - arena_cur)) {
    size_t block = size > ARENA_BLOCK ? size : ARENA_BLOCK;
    arena_cur = malloc(block);
    if (!arena_cur) {
      fprintf(stderr, "keel: error: out of memory\n");
      exit(1);
    }
    arena_end = arena_cur + block;
  }
  void *p = arena_cur;
  arena_cur += size;
  memset(p, 0, size);
  return p;
}

char *str_ndup(const char *s, size_t n) {
  char *p = arena_alloc(n + 1);
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

char *str_dup(const char *s) { return str_ndup(s, strlen(s)); }

char *str_fmt(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *p = arena_alloc((size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(p, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return p;
}

char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  for (;;) {
    if (n + 1 >= cap)
      buf = realloc(buf, cap *= 2);
    size_t got = fread(buf + n, 1, cap - n - 1, f);
    if (got == 0)
      break;
    n += got;
  }
  bool bad = ferror(f);
  fclose(f);
  if (bad) {
    free(buf);
    return NULL;
  }
  buf[n] = 0;
  if (len)
    *len = n;
  char *p = str_ndup(buf, n);
  free(buf);
  return p;
}

// ---------------------------------------------------------------------------------------------
// Source text, as lints and explanations quote it

const char *src_line(const char *src, int line) {
  const char *p = src;
  for (int l = 1; l < line && *p; p++)
    if (*p == '\n')
      l++;
  return p;
}

char *src_text(const char *p, const char *stop, bool stop_then) {
  char *out = arena_alloc(strlen(p) + 1), *o = out;
  bool in_str = false;
  const char *begin = p;
  for (; *p && *p != '\n' && *p != '\r' && (!stop || p < stop); p++) {
    if (*p == '"')
      in_str = !in_str;
    if (!in_str && *p == '#')
      break;
    if (!in_str && stop_then && !strncmp(p, "then", 4) &&
        (p == begin || p[-1] == ' ' || p[-1] == '\t') &&
        (p[4] == ' ' || p[4] == '\t' || p[4] == '\n' || p[4] == '\r' || !p[4]))
      break;
    if (*p == ' ' || *p == '\t') {
      if (o > out && o[-1] != ' ')
        *o++ = ' ';
      continue;
    }
    *o++ = *p;
  }
  while (o > out && o[-1] == ' ')
    o--;
  *o = 0;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Errors

static void vreport(Pos pos, const char *kind, const char *fmt, va_list ap) {
  fflush(stdout);
  fprintf(stderr, "%s:%d:%d: %s: ", pos.file ? pos.file : "<input>", pos.line, pos.col, kind);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  if (!pos.src || pos.line < 1)
    return;
  // Find the line and print it with a caret under the column.
  const char *p = pos.src;
  for (int l = 1; l < pos.line && *p; p++)
    if (*p == '\n')
      l++;
  const char *e = p;
  while (*e && *e != '\n')
    e++;
  if (e > p && e[-1] == '\r')
    e--;
  fprintf(stderr, "  %.*s\n  ", (int)(e - p), p);
  for (int i = 1; i < pos.col && p + i - 1 < e; i++)
    fputc(p[i - 1] == '\t' ? '\t' : ' ', stderr);
  fprintf(stderr, "^\n");
}

static void report(Pos pos, const char *kind, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport(pos, kind, fmt, ap);
  va_end(ap);
}

static struct {
  bool on;
  Pos at;
  const char *prefix;
} ctx;

void error_context(Pos at, const char *prefix) { ctx.on = true, ctx.at = at, ctx.prefix = prefix; }
void error_context_clear(void) { ctx.on = false; }

void error_at(Pos pos, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (ctx.on && pos.file != ctx.at.file) {
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    error_context_clear();
    report(ctx.at, "error", "%s%s", ctx.prefix, msg);
    fprintf(stderr, "%s:%d:%d: note: in the definition used here\n", pos.file, pos.line, pos.col);
  } else {
    vreport(pos, "error", fmt, ap);
    if (ctx.on && (pos.line != ctx.at.line || pos.col != ctx.at.col)) {
      // an error in the script's own definition: also say where it was used
      size_t n = strlen(ctx.prefix);
      while (n && (ctx.prefix[n - 1] == ' ' || ctx.prefix[n - 1] == ':'))
        n--;
      fprintf(stderr, "%s:%d:%d: note: %.*s, used here\n", ctx.at.file, ctx.at.line,
              ctx.at.col, (int)n, ctx.prefix);
    }
  }
  va_end(ap);
  exit(1);
}

void warn_at(Pos pos, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport(pos, "warning", fmt, ap);
  va_end(ap);
}

void fatal(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fflush(stdout);
  fprintf(stderr, "keel: error: ");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

void die_at(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fflush(stdout);
  fprintf(stderr, "keel: internal error at %s:%d: ", file, line);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  abort();
}
