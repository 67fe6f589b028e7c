// data.c — data sets in memory: IDX and CSV loaders, scaling, a seeded holdout split, and the
// search for data files.
//
// Key idea: a data set is two dense float matrices (x: n × features, y: n × ydim) that the
// training loop copies batches out of. Loaders check everything they read and fail with the
// file, line and column of the problem, so a bad data file never reaches training. Files are
// read whole: the data sets Keel trains on fit in memory.

#include "keelrt.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

// Growing arrays of floats, for loaders that do not know the size in advance.
typedef struct {
  float *v;
  int64_t len, cap;
} FloatVec;

static void fvec_push(FloatVec *a, float x) {
  if (a->len == a->cap) {
    a->cap = a->cap ? 2 * a->cap : 1024;
    a->v = realloc(a->v, (size_t)a->cap * sizeof(float));
    if (!a->v)
      krt_fail("out of memory allocating %zu bytes", (size_t)a->cap * sizeof(float));
  }
  a->v[a->len++] = x;
}

static char *xstrdup(const char *s) {
  size_t n = strlen(s) + 1;
  return memcpy(krt_xmalloc(n), s, n);
}

// classes = 1 + the largest label when every label is a non-negative integer, else 0.
static int64_t count_classes(const float *y, int64_t n) {
  int64_t classes = 0;
  for (int64_t i = 0; i < n; i++) {
    if (!(y[i] >= 0) || y[i] != floorf(y[i]) || y[i] >= 16777216.0f)
      return 0;
    if ((int64_t)y[i] + 1 > classes)
      classes = (int64_t)y[i] + 1;
  }
  return classes;
}

// ---------------------------------------------------------------------------------------------
// IDX (the MNIST format): 0x00 0x00, a type byte, a dimension count, the sizes as big-endian
// 32-bit integers, then the data. gzread reads gzip-compressed and plain files alike.

enum { IDX_MAX_DIMS = 8 };  // MNIST-like files have 1 to 4; more is surely a corrupt header

typedef struct {
  int ndims;
  int64_t dim[IDX_MAX_DIMS];
  int64_t size;    // product of dims: bytes of data
  uint8_t *data;
} IdxFile;

static int64_t idx_read(gzFile f, const char *path, void *buf, int64_t len) {
  int64_t got = 0;
  while (got < len) {
    int64_t chunk = len - got < (1 << 30) ? len - got : (1 << 30);
    int k = gzread(f, (char *)buf + got, (unsigned)chunk);
    if (k < 0) {
      int errnum;
      const char *msg = gzerror(f, &errnum);
      krt_fail("%s: read error: %s", path, errnum == Z_ERRNO ? strerror(errno) : msg);
    }
    if (k == 0)
      break;
    got += k;
  }
  return got;
}

// Reads an IDX file of unsigned bytes with min_dims..max_dims dimensions.
static IdxFile idx_load(const char *path, int min_dims, int max_dims, const char *what) {
  IdxFile idx = {0};
  gzFile f = gzopen(path, "rb");
  if (!f)
    krt_fail("%s: cannot open: %s", path, strerror(errno ? errno : ENOMEM));
  uint8_t head[4];
  if (idx_read(f, path, head, 4) < 4 || head[0] != 0 || head[1] != 0)
    krt_fail("%s: not an IDX file (bad magic number)", path);
  if (head[2] != 0x08)
    krt_fail("%s: IDX type 0x%02X is not supported (only unsigned bytes)", path, head[2]);
  idx.ndims = head[3];
  if (idx.ndims < min_dims || idx.ndims > max_dims) {
    if (min_dims == max_dims)
      krt_fail("%s: IDX %s must have %d dimension, found %d", path, what, min_dims, idx.ndims);
    krt_fail("%s: IDX %s must have %d to %d dimensions, found %d", path, what, min_dims,
             max_dims, idx.ndims);
  }
  uint8_t dims[4 * IDX_MAX_DIMS];
  if (idx_read(f, path, dims, 4 * idx.ndims) < 4 * idx.ndims)
    krt_fail("%s: truncated: the header ends before its %d dimension sizes", path, idx.ndims);
  idx.size = 1;
  for (int i = 0; i < idx.ndims; i++) {
    const uint8_t *d = dims + 4 * i;
    idx.dim[i] = (int64_t)d[0] << 24 | (int64_t)d[1] << 16 | (int64_t)d[2] << 8 | d[3];
    // 2^32 per dimension; the product is checked against a 2^46-byte ceiling as it grows
    if (idx.dim[i] != 0 && idx.size > ((int64_t)1 << 46) / idx.dim[i])
      krt_fail("%s: not an IDX file (the sizes in the header are too large)", path);
    idx.size *= idx.dim[i];
  }
  // Grow the buffer as data arrives, so a corrupt header that claims terabytes reports
  // "truncated" instead of running out of memory.
  int64_t cap = idx.size < (1 << 20) ? idx.size : (1 << 20), got = 0;
  idx.data = krt_xmalloc((size_t)cap);
  for (;;) {
    got += idx_read(f, path, idx.data + got, cap - got);
    if (got < cap || cap == idx.size)
      break;
    cap = cap > idx.size / 2 ? idx.size : 2 * cap;
    idx.data = realloc(idx.data, (size_t)cap);
    if (!idx.data)
      krt_fail("out of memory allocating %lld bytes", (long long)cap);
  }
  gzclose(f);
  if (got < idx.size)
    krt_fail("%s: truncated: expected %lld bytes of data, found %lld", path,
             (long long)idx.size, (long long)got);
  return idx;
}

static KrtSet idx_set(const char *images, const char *labels);

KrtSet krt_load_idx(const char *images, const char *labels) {
  if (!images || !labels)
    krt_fail("IDX data needs an images file and a labels file");
  return idx_set(images, labels);
}

// For prediction: images without labels (y is all zeros).
KrtSet krt_load_idx_images(const char *images) { return idx_set(images, NULL); }

static KrtSet idx_set(const char *images, const char *labels) {
  IdxFile im = idx_load(images, 2, IDX_MAX_DIMS, "images");
  IdxFile lb = labels ? idx_load(labels, 1, 1, "labels")
                      : (IdxFile){.dim = {im.dim[0]}, .data = krt_xmalloc((size_t)im.dim[0] + 1)};
  if (im.dim[0] != lb.dim[0])
    krt_fail("%s: has %lld images but %s has %lld labels", images, (long long)im.dim[0], labels,
             (long long)lb.dim[0]);
  KrtSet s = {0};
  s.n = im.dim[0];
  s.features = 1;
  for (int i = 1; i < im.ndims; i++)
    s.features *= im.dim[i];
  s.ydim = 1;
  s.x8 = im.data, s.x8_scale = 1;  // the pixels stay bytes
  im.data = NULL;
  s.y = krt_xmalloc((size_t)s.n * sizeof(float));
  for (int64_t i = 0; i < s.n; i++)
    s.y[i] = lb.data[i];
  s.classes = count_classes(s.y, s.n);
  free(im.data);
  free(lb.data);
  return s;
}

// ---------------------------------------------------------------------------------------------
// CSV: a header row of column names, then rows of numbers, all with the same number of cells.
// No quoting inside data rows (the cells are numbers); header names may be quoted.

static char *read_text(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f)
    krt_fail("%s: cannot open: %s", path, strerror(errno));
  size_t len = 0, cap = 1 << 16;
  char *text = krt_xmalloc(cap);
  size_t k;
  while ((k = fread(text + len, 1, cap - 1 - len, f)) > 0) {
    len += k;
    if (len == cap - 1) {
      cap *= 2;
      text = realloc(text, cap);
      if (!text)
        krt_fail("out of memory allocating %zu bytes", cap);
    }
  }
  if (ferror(f))
    krt_fail("%s: read error: %s", path, strerror(errno));
  fclose(f);
  text[len] = 0;
  return text;
}

// Cuts the next line out of *p (NUL-terminating it, dropping a trailing '\r').
static char *next_line(char **p) {
  if (!**p)
    return NULL;
  char *line = *p, *end = strchr(line, '\n');
  if (end) {
    *end = 0;
    *p = end + 1;
  } else {
    *p = line + strlen(line);
    end = *p;
  }
  if (end > line && end[-1] == '\r')
    end[-1] = 0;
  return line;
}

// Splits line at commas in place; cells[] get the trimmed cells. Returns the cell count.
static int split_cells(char *line, char ***cells, int *cap) {
  int n = 0;
  for (char *c = line;; c++) {
    char *end = c + strcspn(c, ",");
    int last = !*end;
    *end = 0;
    while (*c == ' ' || *c == '\t')
      c++;
    for (char *e = c + strlen(c); e > c && (e[-1] == ' ' || e[-1] == '\t');)
      *--e = 0;
    if (n == *cap) {
      *cap = *cap ? 2 * *cap : 16;
      *cells = realloc(*cells, (size_t)*cap * sizeof(char *));
      if (!*cells)
        krt_fail("out of memory allocating %zu bytes", (size_t)*cap * sizeof(char *));
    }
    (*cells)[n++] = c;
    if (last)
      return n;
    c = end;
  }
}

static int blank(const char *line) {
  return line[strspn(line, " \t")] == 0;
}

static int parse_number(const char *cell, double *v) {
  char *end;
  errno = 0;
  *v = strtod(cell, &end);
  return *cell && !*end && isfinite(*v);  // cells are already trimmed
}

static KrtSet load_csv(const char *path, const char *label, int64_t features);

KrtSet krt_load_csv(const char *path, const char *label) { return load_csv(path, label, -1); }

// For prediction: a CSV of `features` columns is all features; with one more column, the
// label column (by name, or the last) is left out.
KrtSet krt_load_csv_features(const char *path, const char *label, int64_t features) {
  return load_csv(path, label, features);
}

// features < 0: training data, the label column is required.
static KrtSet load_csv(const char *path, const char *label, int64_t features) {
  char *text = read_text(path), *p = text, *line;
  int lineno = 0;
  // the header: the first line that is not blank
  while ((line = next_line(&p)) && (lineno++, blank(line)))
    ;
  if (!line)
    krt_fail("%s: empty file (expected a header row of column names)", path);
  int header_line = lineno, cap = 0;
  char **cells = NULL;
  int ncols = split_cells(line, &cells, &cap);
  char **names = krt_xmalloc((size_t)ncols * sizeof(char *));
  int numeric = 1;
  for (int i = 0; i < ncols; i++) {
    char *c = cells[i];
    size_t len = strlen(c);
    if (len >= 2 && c[0] == '"' && c[len - 1] == '"') {
      c[len - 1] = 0;
      c++;
    }
    names[i] = c;
    double v;
    numeric &= parse_number(c, &v);
  }
  if (numeric)
    krt_fail("%s:%d: the first row holds numbers, not column names (a header row is needed)",
             path, header_line);
  int ycol = ncols - 1;
  if (features >= 0 && ncols == features) {
    ycol = -1;  // prediction input without labels
  } else if (label) {
    ycol = -1;
    for (int i = 0; i < ncols && ycol < 0; i++)
      if (strcmp(names[i], label) == 0)
        ycol = i;
    if (ycol < 0) {
      size_t len = 64;
      for (int i = 0; i < ncols; i++)
        len += strlen(names[i]) + 2;
      char *list = krt_xmalloc(len);
      for (int i = 0; i < ncols; i++)
        strcat(strcat(list, i ? ", " : ""), names[i]);
      krt_fail("%s: no column named '%s' (columns: %s)", path, label, list);
    }
  }
  if (ycol >= 0 && ncols < 2)
    krt_fail("%s: needs at least one column besides the label '%s'", path, names[ycol]);

  // the rows, one number per cell
  FloatVec x = {0}, y = {0};
  int64_t n = 0;
  while ((line = next_line(&p))) {
    lineno++;
    if (blank(line))
      continue;
    int k = split_cells(line, &cells, &cap);
    if (k != ncols)
      krt_fail("%s:%d: expected %d values, found %d", path, lineno, ncols, k);
    for (int i = 0; i < ncols; i++) {
      double v;
      if (!parse_number(cells[i], &v))
        krt_fail("%s:%d: column '%s': '%.40s' is not a number", path, lineno, names[i],
                 cells[i]);
      fvec_push(i == ycol ? &y : &x, (float)v);
    }
    n++;
  }
  if (n == 0)
    krt_fail("%s: no data rows", path);
  if (ycol < 0)
    y.v = krt_xmalloc(sizeof(float) * (size_t)n);
  KrtSet s = {.x = x.v, .y = y.v, .n = n, .features = ycol < 0 ? ncols : ncols - 1, .ydim = 1};
  s.classes = count_classes(s.y, s.n);
  free(names);
  free(cells);
  free(text);
  return s;
}

// ---------------------------------------------------------------------------------------------
// transformations

void krt_set_scale(KrtSet *s, float scale) {
  if (s->x8) {
    s->x8_scale *= scale;
    return;
  }
  for (int64_t i = 0; i < s->n * s->features; i++)
    s->x[i] *= scale;
}

float krt_set_value(const KrtSet *s, int64_t i) {
  return s->x8 ? (float)s->x8[i] * s->x8_scale : s->x[i];
}

// (a batch's gathering: bytes to floats, vectorized, AVX2 where the CPU has it)
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("default", "arch=x86-64-v3"), optimize("tree-vectorize")))
#endif
void krt_set_row(const KrtSet *s, int64_t row, float *out) {
  if (!s->x8) {
    memcpy(out, s->x + row * s->features, sizeof(float) * (size_t)s->features);
    return;
  }
  const uint8_t *in = s->x8 + row * s->features;
  for (int64_t j = 0; j < s->features; j++)
    out[j] = (float)in[j] * s->x8_scale;
}

static int64_t round_count(double frac, int64_t n) {
  int64_t k = (int64_t)llround(frac * (double)n);
  return k < 0 ? 0 : k > n ? n : k;
}

// Marks round(frac · m) of the m samples idx[0..m) for validation, by a shuffle keyed by key.
static void pick(const int64_t *idx, int64_t m, double frac, uint64_t key, char *to_val) {
  int64_t *perm = krt_xmalloc((size_t)(m ? m : 1) * sizeof(int64_t));
  krt_permutation(perm, m, key);
  for (int64_t i = 0; i < round_count(frac, m); i++)
    to_val[idx[perm[i]]] = 1;
  free(perm);
}

void krt_set_holdout(KrtSet *s, KrtSet *val, double frac, uint64_t seed) {
  if (!(frac > 0 && frac < 1))
    krt_fail("holdout fraction %g is not between 0 and 1", frac);
  uint64_t key = krt_hash(seed, 3000);
  char *to_val = krt_xmalloc((size_t)(s->n ? s->n : 1));
  int64_t *idx = krt_xmalloc((size_t)(s->n ? s->n : 1) * sizeof(int64_t));
  if (s->classes > 0 && s->ydim == 1) {
    // stratified: each class gives the same fraction, so val has train's class balance
    for (int64_t c = 0; c < s->classes; c++) {
      int64_t m = 0;
      for (int64_t i = 0; i < s->n; i++)
        if ((int64_t)s->y[i] == c)
          idx[m++] = i;
      pick(idx, m, frac, krt_hash(key, (uint64_t)c), to_val);
    }
  } else {
    for (int64_t i = 0; i < s->n; i++)
      idx[i] = i;
    pick(idx, s->n, frac, key, to_val);
  }
  int64_t nval = 0;
  for (int64_t i = 0; i < s->n; i++)
    nval += to_val[i];
  *val = (KrtSet){.n = nval, .features = s->features, .ydim = s->ydim, .classes = s->classes,
                  .x8_scale = s->x8_scale};
  // samples are floats or bytes; rows move as bytes either way
  size_t xrow = (size_t)s->features * (s->x8 ? 1 : sizeof(float)), yrow = (size_t)s->ydim * sizeof(float);
  char *sx = s->x8 ? (char *)s->x8 : (char *)s->x;
  char *vx = krt_xmalloc((size_t)(nval ? nval : 1) * xrow);
  if (s->x8)
    val->x8 = (uint8_t *)vx;
  else
    val->x = (float *)vx;
  val->y = krt_xmalloc((size_t)(nval ? nval : 1) * yrow);
  // both parts keep the file's order; s is compacted in place
  int64_t kt = 0, kv = 0;
  for (int64_t i = 0; i < s->n; i++) {
    const char *xi = sx + (size_t)i * xrow;
    const float *yi = s->y + i * s->ydim;
    if (to_val[i]) {
      memcpy(vx + (size_t)kv * xrow, xi, xrow);
      memcpy(val->y + kv * s->ydim, yi, yrow);
      kv++;
    } else {
      memmove(sx + (size_t)kt * xrow, xi, xrow);
      memmove(s->y + kt * s->ydim, yi, yrow);
      kt++;
    }
  }
  s->n = kt;
  free(to_val);
  free(idx);
}

void krt_set_free(KrtSet *s) {
  free(s->x);
  free(s->x8);
  free(s->y);
  *s = (KrtSet){0};
}

// ---------------------------------------------------------------------------------------------
// finding data files

static char *join(const char *dir, const char *name) {
  size_t len = strlen(dir) + strlen(name) + 2;
  char *path = krt_xmalloc(len);
  if (!*dir || strcmp(dir, ".") == 0)
    snprintf(path, len, "%s", name);
  else
    snprintf(path, len, "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", name);
  return path;
}

static int is_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && !S_ISDIR(st.st_mode);
}

static char *found(char *path) {
  if (is_file(path))
    return path;
  free(path);
  return NULL;
}

char *krt_find_data(const char *name, const char *script_dir) {
  if (name[0] == '/')
    return found(xstrdup(name));
  char *path = found(join(script_dir ? script_dir : "", name));
  const char *env = getenv("KEEL_DATA_PATH");
  if (!path && env) {
    char *dirs = xstrdup(env), *save = NULL;
    for (char *d = strtok_r(dirs, ":", &save); d && !path; d = strtok_r(NULL, ":", &save))
      path = found(join(d, name));
    free(dirs);
  }
  if (!path)
    path = found(join("/usr/share/datasets", name));
  return path;
}
