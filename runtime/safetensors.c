// safetensors.c — checkpoints in the safetensors format, readable by PyTorch, JAX and numpy.
//
// A file is an 8-byte little-endian header length N, N bytes of JSON describing each tensor
// ({"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...,
// "__metadata__": {...}}), then the raw little-endian data; offsets count from the end of the
// header. Key idea: the reader trusts nothing. It validates the whole header (lengths, JSON,
// every entry's dtype, shape and offsets against the file size) before it copies any data,
// and every error names the file and the tensor. krt_st_read fills the model's tensors by
// name; krt_st_load hands back the whole file (every tensor and the metadata), for a
// checkpoint that holds more than the model asks for. The writer pads the header with spaces
// so the data starts 8-byte aligned, and writes through krt_write_atomic.

#include "keelrt.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "safetensors data is little-endian; this writer stores floats as they are");

static int64_t numel(int rank, const int64_t *dim) {
  int64_t n = 1;
  for (int i = 0; i < rank; i++)
    n *= dim[i];
  return n;
}

// ---------------------------------------------------------------------------------------------
// writing

typedef struct {
  const KrtNamedTensor *t;
  int count;
  const char *header;  // JSON, already padded
  size_t header_len;
} StWrite;

static void write_st(FILE *f, void *ctx) {
  const StWrite *w = ctx;
  uint8_t len[8];
  for (int i = 0; i < 8; i++)
    len[i] = (uint8_t)((uint64_t)w->header_len >> (8 * i));
  fwrite(len, 1, 8, f);
  fwrite(w->header, 1, w->header_len, f);
  for (int i = 0; i < w->count; i++) {
    size_t n = (size_t)numel(w->t[i].rank, w->t[i].dim);
    if (n && fwrite(w->t[i].data, sizeof(float), n, f) != n)
      return;  // ferror is set; krt_write_atomic reports it
  }
}

void krt_st_write(const char *path, const KrtNamedTensor *t, int count, const char **meta,
                  int nmeta) {
  char *header = NULL;
  size_t header_len = 0;
  FILE *h = open_memstream(&header, &header_len);
  if (!h)
    krt_fail("%s: cannot write: %s", path, strerror(errno));
  fputc('{', h);
  int64_t offset = 0;
  for (int i = 0; i < count; i++) {
    int64_t bytes = numel(t[i].rank, t[i].dim) * (int64_t)sizeof(float);
    fputs(i ? "," : "", h);
    krt_json_string(h, t[i].name);
    fputs(":{\"dtype\":\"F32\",\"shape\":[", h);
    for (int d = 0; d < t[i].rank; d++)
      fprintf(h, "%s%lld", d ? "," : "", (long long)t[i].dim[d]);
    fprintf(h, "],\"data_offsets\":[%lld,%lld]}", (long long)offset, (long long)(offset + bytes));
    offset += bytes;
  }
  if (nmeta > 0) {
    fputs(count ? ",\"__metadata__\":{" : "\"__metadata__\":{", h);
    for (int i = 0; i < nmeta; i++) {
      fputs(i ? "," : "", h);
      krt_json_string(h, meta[2 * i]);
      fputc(':', h);
      krt_json_string(h, meta[2 * i + 1]);
    }
    fputc('}', h);
  }
  fputc('}', h);
  // pad with spaces (valid JSON whitespace) so the data starts at a multiple of 8
  while ((8 + ftell(h)) % 8)
    fputc(' ', h);
  if (fclose(h) != 0)
    krt_fail("%s: cannot write: out of memory", path);
  StWrite w = {t, count, header, header_len};
  krt_write_atomic(path, write_st, &w);
  free(header);
}

// ---------------------------------------------------------------------------------------------
// reading

static size_t dtype_size(const char *dtype) {
  static const struct {
    const char *name;
    size_t size;
  } sizes[] = {{"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"U64", 8},
               {"I32", 4}, {"U32", 4}, {"I16", 2}, {"U16", 2},  {"I8", 1},  {"U8", 1},
               {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    if (strcmp(dtype, sizes[i].name) == 0)
      return sizes[i].size;
  return 0;  // unknown: its size cannot be checked, and it cannot be loaded either
}

// A JSON number that is a whole number in [0, 2^53] (exact in a double).
static int get_count(const cJSON *j, int64_t *v) {
  if (!cJSON_IsNumber(j))
    return 0;
  double d = j->valuedouble;
  if (!(d >= 0 && d <= 9007199254740992.0 && d == floor(d)))
    return 0;
  *v = (int64_t)d;
  return 1;
}

enum { ST_MAX_RANK = KRT_ST_MAX_RANK };  // the model's tensors have rank ≤ 4

typedef struct {
  const char *dtype;
  int rank;
  int64_t dim[ST_MAX_RANK];
  int64_t begin, end;
} StEntry;

// Checks one header entry against the data size; fails naming the file and tensor.
static StEntry check_entry(const char *path, const cJSON *e, int64_t data_size) {
  StEntry s = {0};
  const char *name = e->string;
  if (!cJSON_IsObject(e))
    krt_fail("%s: bad header: tensor %s is not an object", path, name);
  const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(e, "dtype");
  const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
  const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
  if (!cJSON_IsString(dtype))
    krt_fail("%s: bad header: tensor %s has no dtype", path, name);
  s.dtype = dtype->valuestring;
  if (!cJSON_IsArray(shape) || cJSON_GetArraySize(shape) > ST_MAX_RANK)
    krt_fail("%s: bad header: tensor %s has no valid shape", path, name);
  int64_t count = 1;
  int overflow = 0;
  for (const cJSON *d = shape->child; d; d = d->next) {
    if (!get_count(d, &s.dim[s.rank]))
      krt_fail("%s: bad header: tensor %s has no valid shape", path, name);
    overflow |= __builtin_mul_overflow(count, s.dim[s.rank], &count);
    s.rank++;
  }
  if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
      !get_count(offs->child, &s.begin) || !get_count(offs->child->next, &s.end) ||
      s.begin > s.end)
    krt_fail("%s: bad header: tensor %s has no valid data_offsets", path, name);
  if (s.end > data_size)
    krt_fail("%s: bad header: tensor %s ends at byte %lld, past the %lld bytes of data", path,
             name, (long long)s.end, (long long)data_size);
  size_t esize = dtype_size(s.dtype);
  int64_t bytes;
  if (esize && (overflow || __builtin_mul_overflow(count, (int64_t)esize, &bytes) ||
                bytes != s.end - s.begin)) {
    char buf[160];
    krt_fail("%s: bad header: tensor %s has shape %s of %s but %lld bytes of data", path, name,
             krt_shape_text(buf, sizeof buf, s.rank, s.dim), s.dtype, (long long)(s.end - s.begin));
  }
  return s;
}

static uint8_t *read_file(const char *path, int64_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f)
    krt_fail("%s: cannot open: %s", path, strerror(errno));
  if (fseeko(f, 0, SEEK_END) != 0 || (*size = ftello(f)) < 0 || fseeko(f, 0, SEEK_SET) != 0)
    krt_fail("%s: cannot read: %s", path, strerror(errno));
  uint8_t *buf = krt_xmalloc((size_t)*size + 1);
  if (fread(buf, 1, (size_t)*size, f) != (size_t)*size)
    krt_fail("%s: cannot read: %s", path, ferror(f) ? strerror(errno) : "the file shrank");
  fclose(f);
  return buf;
}

typedef struct {
  uint8_t *buf;        // the whole file
  cJSON *root;         // its header
  const uint8_t *data; // where the data starts
  int64_t data_size;
} StParsed;

// Reads path and checks its whole header (every entry against the data) before anything is
// trusted.
static StParsed parse_file(const char *path) {
  int64_t size;
  uint8_t *buf = read_file(path, &size);
  if (size < 8)
    krt_fail("%s: not a safetensors file (%lld bytes, too short for a header)", path,
             (long long)size);
  uint64_t n = 0;
  for (int i = 0; i < 8; i++)
    n |= (uint64_t)buf[i] << (8 * i);
  if (n > (uint64_t)size - 8)
    krt_fail("%s: not a safetensors file (header length %llu exceeds file size %lld)", path,
             (unsigned long long)n, (long long)size);
  cJSON *root = cJSON_ParseWithLength((const char *)buf + 8, (size_t)n);
  if (!cJSON_IsObject(root))
    krt_fail("%s: not a safetensors file (the header is not a JSON object)", path);
  StParsed p = {buf, root, buf + 8 + n, size - 8 - (int64_t)n};
  for (const cJSON *e = root->child; e; e = e->next)
    if (strcmp(e->string, "__metadata__") != 0)
      check_entry(path, e, p.data_size);
  return p;
}

void krt_st_read(const char *path, KrtNamedTensor *t, int count) {
  StParsed p = parse_file(path);
  // everything is consistent: fill the model's tensors by name
  for (int i = 0; i < count; i++) {
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(p.root, t[i].name);
    if (!e || strcmp(t[i].name, "__metadata__") == 0)
      krt_fail("%s: no tensor named '%s'", path, t[i].name);
    StEntry s = check_entry(path, e, p.data_size);
    if (strcmp(s.dtype, "F32") != 0)
      krt_fail("%s: tensor %s has dtype %s, expected F32", path, t[i].name, s.dtype);
    int same = s.rank == t[i].rank;
    for (int d = 0; same && d < s.rank; d++)
      same = s.dim[d] == t[i].dim[d];
    if (!same) {
      char got[160], want[160];
      krt_fail("%s: tensor %s has shape %s, the model expects %s", path, t[i].name,
               krt_shape_text(got, sizeof got, s.rank, s.dim),
               krt_shape_text(want, sizeof want, t[i].rank, t[i].dim));
    }
    memcpy(t[i].data, p.data + s.begin, (size_t)(s.end - s.begin));
  }
  cJSON_Delete(p.root);
  free(p.buf);
}

KrtStFile krt_st_load(const char *path) {
  StParsed p = parse_file(path);
  KrtStFile f = {.file_ = p.buf, .header_ = p.root};
  int n = 0, nm = 0;
  const cJSON *meta = NULL;
  for (const cJSON *e = p.root->child; e; e = e->next) {
    if (strcmp(e->string, "__metadata__") == 0)
      meta = cJSON_IsObject(e) ? e : NULL;  // the format's metadata: strings only
    else
      n++;
  }
  for (const cJSON *m = meta ? meta->child : NULL; m; m = m->next)
    nm += cJSON_IsString(m);
  f.t = krt_xmalloc((size_t)(n ? n : 1) * sizeof(KrtStTensor));
  f.meta = krt_xmalloc((size_t)(2 * nm + 1) * sizeof(const char *));
  for (const cJSON *e = p.root->child; e; e = e->next) {
    if (strcmp(e->string, "__metadata__") == 0)
      continue;
    StEntry s = check_entry(path, e, p.data_size);
    KrtStTensor *t = &f.t[f.count++];
    *t = (KrtStTensor){.name = e->string, .dtype = s.dtype, .rank = s.rank,
                       .data = p.data + s.begin, .bytes = s.end - s.begin};
    memcpy(t->dim, s.dim, sizeof s.dim);
  }
  for (const cJSON *m = meta ? meta->child : NULL; m; m = m->next) {
    if (!cJSON_IsString(m))
      continue;  // not the format's, and never keel's
    f.meta[2 * f.nmeta] = m->string;
    f.meta[2 * f.nmeta + 1] = m->valuestring;
    f.nmeta++;
  }
  return f;
}

const KrtStTensor *krt_st_find(const KrtStFile *f, const char *name) {
  for (int i = 0; i < f->count; i++)
    if (strcmp(f->t[i].name, name) == 0)
      return &f->t[i];
  return NULL;
}

const char *krt_st_meta(const KrtStFile *f, const char *key) {
  for (int i = 0; i < f->nmeta; i++)
    if (strcmp(f->meta[2 * i], key) == 0)
      return f->meta[2 * i + 1];
  return NULL;
}

void krt_st_close(KrtStFile *f) {
  cJSON_Delete(f->header_);
  free(f->file_);
  free(f->t);
  free(f->meta);
  *f = (KrtStFile){0};
}
