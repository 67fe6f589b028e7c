// test_runtime.c — unit tests of Keel's runtime library (runtime/*.c, the ABI of keelrt.h).
//
// Key idea: every number the runtime produces is a pure function of the seed, so the tests
// pin exact values, and every error path runs in a child (check_capture) so its message is
// compared word for word. Files are written into a fresh mkdtemp folder; CSV fixtures live in
// tests/data/. Run from the repository root.

#include "check.h"
#include "keelrt.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <sys/stat.h>
#include <zlib.h>

static char tmp[64];  // this run's temporary folder

static char *path_in(const char *name) {
  static char buf[8][256];
  static int k;
  char *p = buf[k++ % 8];
  snprintf(p, 256, "%s/%s", tmp, name);
  return p;
}

static char *slurp(const char *path, long *len) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = calloc(1, (size_t)n + 1);
  if (fread(s, 1, (size_t)n, f) != (size_t)n)
    n = -1;
  fclose(f);
  if (len)
    *len = n;
  return s;
}

static void spit(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  fwrite(data, 1, n, f);
  fclose(f);
}

// Files in tmp whose name contains part.
static int files_with(const char *dir, const char *part) {
  DIR *d = opendir(dir);
  int n = 0;
  for (struct dirent *e; d && (e = readdir(d));)
    n += strstr(e->d_name, part) != NULL;
  if (d)
    closedir(d);
  return n;
}

static char err[4096];

// Runs fn(arg) in a child and checks it failed with exactly "keel: error: <want>\n".
#define CHECK_FAIL(fn, arg, want)                                                            \
  do {                                                                                       \
    int st_ = check_capture(fn, arg, err, sizeof err);                                       \
    char w_[1024];                                                                           \
    snprintf(w_, sizeof w_, "keel: error: %s\n", want);                                      \
    CHECK(st_ == 1, "exit status %d", st_);                                                  \
    CHECK_STR(err, w_);                                                                      \
  } while (0)

// ---------------------------------------------------------------------------------------------
// rng

static void test_rng(void) {
  // key 0, counter 0 is the first output of splitmix64 seeded with 0
  CHECK(krt_hash(0, 0) == 0xE220A8397B1DCDAFull, "krt_hash(0, 0) = %016llx",
        (unsigned long long)krt_hash(0, 0));
  CHECK(krt_hash(42, 7) == 0xCCF635EE9E9E2FA4ull, "krt_hash(42, 7) = %016llx",
        (unsigned long long)krt_hash(42, 7));
  CHECK(krt_hash(42, 7) == krt_hash(42, 7) && krt_hash(42, 7) != krt_hash(43, 7) &&
            krt_hash(42, 7) != krt_hash(42, 8),
        "hash depends on key and counter");
  CHECK(krt_uniform(42, 7) == (float)(0xCCF635EE9E9E2FA4ull >> 40) / 16777216.0f,
        "uniform is the top 24 bits");
  CHECK(krt_uniform(42, 7) == 0xCCF635 / 16777216.0f, "uniform(42, 7) = %.9g",
        krt_uniform(42, 7));

  double sum = 0, nsum = 0, nsq = 0;
  int in_range = 1, exact = 1, finite = 1;
  const int N = 100000;
  for (int i = 0; i < N; i++) {
    float u = krt_uniform(7, (uint64_t)i);
    in_range &= u >= 0 && u < 1;
    exact &= u * 16777216.0f == floorf(u * 16777216.0f);
    sum += u;
    float z = krt_normal(7, (uint64_t)i);
    finite &= isfinite(z);
    nsum += z;
    nsq += (double)z * z;
  }
  double nmean = nsum / N, nstd = sqrt(nsq / N - nmean * nmean);
  CHECK(in_range && exact, "uniform in [0, 1) on the 2^-24 grid");
  CHECK(fabs(sum / N - 0.5) < 0.003, "uniform mean %g", sum / N);
  CHECK(finite, "normal is finite");
  CHECK(fabs(nmean) < 0.01, "normal mean %g", nmean);
  CHECK(fabs(nstd - 1) < 0.01, "normal std %g", nstd);
  // Box–Muller from counters 2c and 2c + 1
  double u1 = 1.0 - krt_uniform(9, 10), u2 = krt_uniform(9, 11);
  CHECK(krt_normal(9, 5) == (float)(sqrt(-2 * log(u1)) * cos(2 * M_PI * u2)), "normal(9, 5)");

  float fill[100];
  krt_rand_fill(fill, 100, 1234, 5, 17);
  uint64_t key = krt_hash(krt_hash(1234, 5), 17);
  int same = 1;
  for (int i = 0; i < 100; i++)
    same &= fill[i] == krt_uniform(key, (uint64_t)i);
  CHECK(same, "rand_fill keyed by hash(hash(seed, stream), step)");

  int64_t p[1000], q[1000], seen[1000] = {0};
  krt_permutation(p, 1000, 99);
  int ok = 1, moved = 0;
  for (int i = 0; i < 1000; i++) {
    ok &= p[i] >= 0 && p[i] < 1000 && !seen[p[i]];
    seen[p[i] < 0 || p[i] >= 1000 ? 0 : p[i]] = 1;
    moved += p[i] != i;
  }
  CHECK(ok, "permutation holds each index once");
  CHECK(moved > 900, "permutation moves most indices (%d)", moved);
  krt_permutation(q, 1000, 99);
  CHECK(memcmp(p, q, sizeof p) == 0, "permutation is deterministic");
  krt_permutation(q, 1000, 100);
  CHECK(memcmp(p, q, sizeof p) != 0, "permutation depends on the key");
  krt_permutation(q, 1, 5);
  CHECK(q[0] == 0, "permutation of one");
  krt_permutation(q, 0, 5);  // nothing to do, nothing touched
}

// ---------------------------------------------------------------------------------------------
// IDX

// Writes an IDX file: magic 00 00 type ndims, big-endian sizes, then nbytes of data.
static void write_idx(const char *path, int gz, int type, int ndims, const uint32_t *dims,
                      const uint8_t *data, size_t nbytes) {
  uint8_t head[4 + 4 * 8] = {0, 0, (uint8_t)type, (uint8_t)ndims};
  for (int i = 0; i < ndims; i++)
    for (int b = 0; b < 4; b++)
      head[4 + 4 * i + b] = (uint8_t)(dims[i] >> (24 - 8 * b));
  if (gz) {
    gzFile f = gzopen(path, "wb");
    gzwrite(f, head, (unsigned)(4 + 4 * ndims));
    if (nbytes)
      gzwrite(f, data, (unsigned)nbytes);
    gzclose(f);
  } else {
    FILE *f = fopen(path, "wb");
    fwrite(head, 1, (size_t)(4 + 4 * ndims), f);
    fwrite(data, 1, nbytes, f);
    fclose(f);
  }
}

static const char *idx_args[2];
static void load_idx_child(void *arg) {
  (void)arg;
  krt_load_idx(idx_args[0], idx_args[1]);
}

static void expect_idx_error(const char *images, const char *labels, const char *want) {
  idx_args[0] = images;
  idx_args[1] = labels;
  CHECK_FAIL(load_idx_child, NULL, want);
}

static void test_idx(void) {
  uint8_t pix[30], lab[5] = {3, 0, 1, 3, 2};
  for (int i = 0; i < 30; i++)
    pix[i] = (uint8_t)(i * 8);
  uint32_t idims[] = {5, 3, 2}, ldims[] = {5};
  char *im = path_in("im.gz"), *lb = path_in("lb.gz"), *lbraw = path_in("lb.raw");
  write_idx(im, 1, 8, 3, idims, pix, 30);
  write_idx(lb, 1, 8, 1, ldims, lab, 5);
  write_idx(lbraw, 0, 8, 1, ldims, lab, 5);
  KrtSet s = krt_load_idx(im, lb);
  CHECK(s.n == 5 && s.features == 6 && s.ydim == 1 && s.classes == 4, "idx %lld %lld %lld %lld",
        (long long)s.n, (long long)s.features, (long long)s.ydim, (long long)s.classes);
  int same = 1;
  for (int i = 0; i < 30; i++)
    same &= s.x[i] == pix[i];
  for (int i = 0; i < 5; i++)
    same &= s.y[i] == lab[i];
  CHECK(same, "idx values");
  krt_set_scale(&s, 1.0f / 255);
  CHECK(s.x[29] == 232.0f * (1.0f / 255), "scaled %g", s.x[29]);
  krt_set_free(&s);
  s = krt_load_idx(im, lbraw);  // gzread reads uncompressed files too
  CHECK(s.n == 5 && s.y[0] == 3, "plain idx labels");
  krt_set_free(&s);

  char want[512];
  char *bad = path_in("bad.gz");
  uint8_t junk[] = {1, 2, 3, 4, 5, 6, 7, 8};
  spit(bad, junk, sizeof junk);
  snprintf(want, sizeof want, "%s: not an IDX file (bad magic number)", bad);
  expect_idx_error(bad, lb, want);
  expect_idx_error("tests/data/nope.gz", lb,
                   "tests/data/nope.gz: cannot open: No such file or directory");
  char *trunc = path_in("trunc.gz");
  write_idx(trunc, 1, 8, 3, idims, pix, 10);
  snprintf(want, sizeof want, "%s: truncated: expected 30 bytes of data, found 10", trunc);
  expect_idx_error(trunc, lb, want);
  char *lb4 = path_in("lb4.gz");
  uint32_t four[] = {4};
  write_idx(lb4, 1, 8, 1, four, lab, 4);
  snprintf(want, sizeof want, "%s: has 5 images but %s has 4 labels", im, lb4);
  expect_idx_error(im, lb4, want);
  char *f32 = path_in("f32.gz");
  write_idx(f32, 1, 0x0D, 1, ldims, pix, 20);
  snprintf(want, sizeof want, "%s: IDX type 0x0D is not supported (only unsigned bytes)", f32);
  expect_idx_error(im, f32, want);
  snprintf(want, sizeof want, "%s: IDX labels must have 1 dimension, found 3", im);
  expect_idx_error(im, im, want);
  snprintf(want, sizeof want, "%s: IDX images must have 2 to 8 dimensions, found 1", lb);
  expect_idx_error(lb, lb, want);

  const char *real_im = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
  const char *real_lb = "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz";
  if (access(real_im, R_OK) == 0 && access(real_lb, R_OK) == 0) {
    s = krt_load_idx(real_im, real_lb);
    float max = 0;
    for (int64_t i = 0; i < s.n * s.features; i++)
      max = s.x[i] > max ? s.x[i] : max;
    CHECK(s.n == 10000 && s.features == 784 && s.classes == 10 && max == 255,
          "fashion-mnist t10k: %lld × %lld, %lld classes, max %g", (long long)s.n,
          (long long)s.features, (long long)s.classes, max);
    krt_set_free(&s);
  } else {
    printf("skipped: %s is not installed\n", real_im);
  }
}

// ---------------------------------------------------------------------------------------------
// CSV

static const char *csv_args[2];
static void load_csv_child(void *arg) {
  (void)arg;
  krt_load_csv(csv_args[0], csv_args[1]);
}

static void expect_csv_error(const char *path, const char *label, const char *want) {
  csv_args[0] = path;
  csv_args[1] = label;
  CHECK_FAIL(load_csv_child, NULL, want);
}

static void test_csv(void) {
  KrtSet s = krt_load_csv("tests/data/small.csv", NULL);
  CHECK(s.n == 10 && s.features == 2 && s.ydim == 1 && s.classes == 3, "small.csv shape");
  CHECK(s.x[0] == 0 && s.x[1] == 0.5f && s.x[18] == 9 && s.x[19] == 9.5f && s.y[2] == 2 &&
            s.y[9] == 0,
        "small.csv values");
  krt_set_free(&s);
  s = krt_load_csv("tests/data/small.csv", "a");  // label in the first column
  CHECK(s.features == 2 && s.x[2] == 1.5f && s.x[3] == 1 && s.y[9] == 9 && s.classes == 10,
        "label column a");
  krt_set_free(&s);
  // quoted names, spaces around cells, CRLF, a blank line, non-integer labels (regression)
  s = krt_load_csv("tests/data/spaces.csv", "target");
  CHECK(s.n == 2 && s.features == 2 && s.classes == 0, "spaces.csv shape %lld %lld %lld",
        (long long)s.n, (long long)s.features, (long long)s.classes);
  CHECK(s.x[0] == 1.5f && s.x[1] == -2 && s.x[2] == 2 && s.x[3] == 3 && s.y[0] == 0.25f &&
            s.y[1] == 0.001f,
        "spaces.csv values");
  krt_set_free(&s);

  expect_csv_error("tests/data/bad_number.csv", NULL,
                   "tests/data/bad_number.csv:4: column 'b': 'abc' is not a number");
  expect_csv_error("tests/data/short_row.csv", NULL,
                   "tests/data/short_row.csv:3: expected 3 values, found 2");
  expect_csv_error("tests/data/small.csv", "y",
                   "tests/data/small.csv: no column named 'y' (columns: a, b, label)");
  expect_csv_error("tests/data/header_only.csv", NULL, "tests/data/header_only.csv: no data rows");
  expect_csv_error("tests/data/no_header.csv", NULL,
                   "tests/data/no_header.csv:1: the first row holds numbers, not column names "
                   "(a header row is needed)");
  expect_csv_error("tests/data/missing.csv", NULL,
                   "tests/data/missing.csv: cannot open: No such file or directory");
}

// ---------------------------------------------------------------------------------------------
// holdout and finding data

// 100 samples: x = the sample's id, y = class 0 (50), 1 (30), 2 (20).
static KrtSet make_set(int classes) {
  KrtSet s = {.n = 100, .features = 1, .ydim = 1, .classes = classes ? 3 : 0};
  s.x = krt_xmalloc(100 * sizeof(float));
  s.y = krt_xmalloc(100 * sizeof(float));
  for (int i = 0; i < 100; i++) {
    s.x[i] = (float)i;
    s.y[i] = classes ? (float)(i % 10 < 5 ? 0 : i % 10 < 8 ? 1 : 2) : 0.5f * (float)i;
  }
  return s;
}

static void test_holdout(void) {
  KrtSet s = make_set(1), v;
  krt_set_holdout(&s, &v, 0.2, 7);
  CHECK(s.n == 80 && v.n == 20 && v.features == 1 && v.classes == 3, "holdout sizes %lld %lld",
        (long long)s.n, (long long)v.n);
  int per[3] = {0}, seen[100] = {0}, ordered = 1, consistent = 1;
  for (int64_t i = 0; i < v.n; i++) {
    per[(int)v.y[i]]++;
    seen[(int)v.x[i]]++;
  }
  for (int64_t i = 0; i < s.n; i++) {
    seen[(int)s.x[i]]++;
    ordered &= i == 0 || s.x[i] > s.x[i - 1];
  }
  for (int64_t i = 0; i < v.n; i++) {
    int id = (int)v.x[i];
    consistent &= v.y[i] == (id % 10 < 5 ? 0 : id % 10 < 8 ? 1 : 2);
  }
  int all_once = 1;
  for (int i = 0; i < 100; i++)
    all_once &= seen[i] == 1;
  CHECK(per[0] == 10 && per[1] == 6 && per[2] == 4, "stratified %d %d %d", per[0], per[1],
        per[2]);
  CHECK(all_once, "train and val are disjoint and cover every sample");
  CHECK(ordered, "train keeps the original order");
  CHECK(consistent, "labels travel with their samples");
  // is it a shuffle, not the last part? the 20 val ids are not 80..99
  int tail = 0;
  for (int64_t i = 0; i < v.n; i++)
    tail += v.x[i] >= 80;
  CHECK(tail < 20, "val is not the tail of the file");

  KrtSet s2 = make_set(1), v2, s3 = make_set(1), v3;
  krt_set_holdout(&s2, &v2, 0.2, 7);
  krt_set_holdout(&s3, &v3, 0.2, 8);
  CHECK(v2.n == v.n && memcmp(v2.x, v.x, 20 * sizeof(float)) == 0, "same seed, same split");
  CHECK(v3.n == v.n && memcmp(v3.x, v.x, 20 * sizeof(float)) != 0, "other seed, other split");
  krt_set_free(&s);
  krt_set_free(&v);
  krt_set_free(&s2);
  krt_set_free(&v2);
  krt_set_free(&s3);
  krt_set_free(&v3);

  s = make_set(0);  // regression: a plain shuffle
  krt_set_holdout(&s, &v, 0.25, 1);
  CHECK(s.n == 75 && v.n == 25 && v.classes == 0, "plain holdout sizes");
  int ok = 1;
  for (int64_t i = 0; i < v.n; i++)
    ok &= v.y[i] == 0.5f * v.x[i];
  CHECK(ok, "plain holdout keeps pairs");
  krt_set_free(&s);
  krt_set_free(&v);
}

static void test_find_data(void) {
  unsetenv("KEEL_DATA_PATH");
  char *p = krt_find_data("small.csv", "tests/data");
  CHECK(p && strcmp(p, "tests/data/small.csv") == 0, "found in the script's folder: %s", p);
  free(p);
  p = krt_find_data("tests/data/small.csv", ".");
  CHECK(p && strcmp(p, "tests/data/small.csv") == 0, "relative to '.': %s", p);
  free(p);
  CHECK(krt_find_data("small.csv", tmp) == NULL, "not found");
  char env[512];
  snprintf(env, sizeof env, "/nonexistent::%s:tests/data", tmp);
  setenv("KEEL_DATA_PATH", env, 1);
  p = krt_find_data("small.csv", tmp);
  CHECK(p && strcmp(p, "tests/data/small.csv") == 0, "found on KEEL_DATA_PATH: %s", p);
  free(p);
  p = krt_find_data("lb.gz", "/nonexistent");
  CHECK(p && strcmp(p, path_in("lb.gz")) == 0, "first KEEL_DATA_PATH entry that has it");
  free(p);
  unsetenv("KEEL_DATA_PATH");
  p = krt_find_data(path_in("lb.gz"), "tests/data");
  CHECK(p && strcmp(p, path_in("lb.gz")) == 0, "absolute path as is");
  free(p);
  CHECK(krt_find_data("/nonexistent/x.csv", ".") == NULL, "absolute, missing");
  const char *fm = "fashion-mnist/t10k-labels-idx1-ubyte.gz";
  if (access("/usr/share/datasets/fashion-mnist", F_OK) == 0) {
    p = krt_find_data(fm, "tests/data");
    CHECK(p && strcmp(p, "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz") == 0,
          "found under /usr/share/datasets");
    free(p);
  }
}

// ---------------------------------------------------------------------------------------------
// safetensors

static const char *st_path;
static KrtNamedTensor *st_t;
static int st_n;
static void st_read_child(void *arg) {
  (void)arg;
  krt_st_read(st_path, st_t, st_n);
}
static void st_write_child(void *arg) {
  (void)arg;
  krt_st_write(st_path, st_t, st_n, NULL, 0);
}

// A file with the given JSON header (unpadded) and n bytes of zero data.
static void write_st_by_hand(const char *path, const char *json, size_t n) {
  size_t hl = strlen(json);
  uint8_t *b = calloc(1, 8 + hl + n);
  for (int i = 0; i < 8; i++)
    b[i] = (uint8_t)((uint64_t)hl >> (8 * i));
  memcpy(b + 8, json, hl);
  spit(path, b, 8 + hl + n);
  free(b);
}

static void test_safetensors(void) {
  float w[6] = {1, -2, 3.5f, 4, 5, 6e-7f}, bias[1] = {0.25f}, sc[1] = {42};
  KrtNamedTensor t[3] = {
      {.name = "dense1.weight", .rank = 2, .dim = {2, 3}, .data = w},
      {.name = "dense1.bias", .rank = 1, .dim = {1}, .data = bias},
      {.name = "step \"q\"", .rank = 0, .data = sc},
  };
  const char *meta[] = {"format", "pt", "producer", "keel"};
  char *path = path_in("m.safetensors");
  krt_st_write(path, t, 3, meta, 2);
  CHECK(files_with(tmp, ".tmp.") == 0, "no temporary file is left");

  long len;
  uint8_t *f = (uint8_t *)slurp(path, &len);
  uint64_t n = 0;
  for (int i = 0; i < 8; i++)
    n |= (uint64_t)f[i] << (8 * i);
  CHECK((8 + n) % 8 == 0, "data starts 8-aligned (header %llu)", (unsigned long long)n);
  CHECK((long)(8 + n + 32) == len, "file size %ld", len);
  CHECK(f[8] == '{' && (f[8 + n - 1] == ' ' || f[8 + n - 1] == '}'), "header is padded JSON");
  cJSON *root = cJSON_ParseWithLength((char *)f + 8, n);
  CHECK(root != NULL, "header parses");
  const char *order[] = {"dense1.weight", "dense1.bias", "step \"q\"", "__metadata__"};
  int k = 0, in_order = 1;
  for (cJSON *e = root ? root->child : NULL; e; e = e->next, k++)
    in_order &= k < 4 && strcmp(e->string, order[k]) == 0;
  CHECK(in_order && k == 4, "entries in order, metadata last");
  cJSON *e = cJSON_GetObjectItem(root, "dense1.bias");
  cJSON *offs = cJSON_GetObjectItem(e, "data_offsets"), *shape = cJSON_GetObjectItem(e, "shape");
  CHECK(strcmp(cJSON_GetObjectItem(e, "dtype")->valuestring, "F32") == 0 &&
            cJSON_GetArrayItem(offs, 0)->valueint == 24 &&
            cJSON_GetArrayItem(offs, 1)->valueint == 28 && cJSON_GetArraySize(shape) == 1 &&
            cJSON_GetArrayItem(shape, 0)->valueint == 1,
        "dense1.bias entry");
  e = cJSON_GetObjectItem(root, "step \"q\"");
  CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(e, "shape")) == 0 &&
            cJSON_GetArrayItem(cJSON_GetObjectItem(e, "data_offsets"), 0)->valueint == 28,
        "scalar entry");
  cJSON *m = cJSON_GetObjectItem(root, "__metadata__");
  CHECK(m && strcmp(cJSON_GetObjectItem(m, "producer")->valuestring, "keel") == 0 &&
            strcmp(cJSON_GetObjectItem(m, "format")->valuestring, "pt") == 0,
        "metadata");
  cJSON_Delete(root);
  CHECK(memcmp(f + 8 + n, w, 24) == 0 && memcmp(f + 8 + n + 24, bias, 4) == 0 &&
            memcmp(f + 8 + n + 28, sc, 4) == 0,
        "raw little-endian data");
  free(f);

  // read back, in another order, skipping one the file has
  float w2[6], sc2[1];
  KrtNamedTensor r[2] = {
      {.name = "step \"q\"", .rank = 0, .data = sc2},
      {.name = "dense1.weight", .rank = 2, .dim = {2, 3}, .data = w2},
  };
  krt_st_read(path, r, 2);
  CHECK(memcmp(w, w2, sizeof w) == 0 && sc2[0] == 42, "round trip");

  // rewriting replaces the file atomically
  w[0] = 100;
  krt_st_write(path, t, 2, NULL, 0);
  krt_st_read(path, r + 1, 1);
  CHECK(w2[0] == 100 && files_with(tmp, ".tmp.") == 0, "rewrite");

  char want[512];
  st_path = path_in("none.safetensors");
  st_t = r;
  st_n = 2;
  snprintf(want, sizeof want, "%s: cannot open: No such file or directory", st_path);
  CHECK_FAIL(st_read_child, NULL, want);
  st_path = path;
  KrtNamedTensor missing = {.name = "dense2.bias", .rank = 1, .dim = {10}, .data = w2};
  st_t = &missing;
  st_n = 1;
  snprintf(want, sizeof want, "%s: no tensor named 'dense2.bias'", path);
  CHECK_FAIL(st_read_child, NULL, want);
  KrtNamedTensor wrong = {.name = "dense1.weight", .rank = 2, .dim = {3, 2}, .data = w2};
  st_t = &wrong;
  snprintf(want, sizeof want, "%s: tensor dense1.weight has shape [2, 3], the model expects [3, 2]",
           path);
  CHECK_FAIL(st_read_child, NULL, want);
  KrtNamedTensor scalar = {.name = "dense1.bias", .rank = 0, .data = w2};
  st_t = &scalar;
  snprintf(want, sizeof want, "%s: tensor dense1.bias has shape [1], the model expects []", path);
  CHECK_FAIL(st_read_child, NULL, want);

  char *half = path_in("half.safetensors");
  write_st_by_hand(half, "{\"x\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4);
  KrtNamedTensor x = {.name = "x", .rank = 1, .dim = {2}, .data = w2};
  st_path = half;
  st_t = &x;
  snprintf(want, sizeof want, "%s: tensor x has dtype F16, expected F32", half);
  CHECK_FAIL(st_read_child, NULL, want);

  char *big = path_in("big.safetensors");
  uint8_t hdr[100] = {0x15, 0xCD, 0x5B, 0x07};  // 123456789, little-endian
  spit(big, hdr, sizeof hdr);
  st_path = big;
  snprintf(want, sizeof want,
           "%s: not a safetensors file (header length 123456789 exceeds file size 100)", big);
  CHECK_FAIL(st_read_child, NULL, want);

  // malformed files: every entry is checked (even one the model does not ask for) before any
  // data is trusted
  static const struct {
    const char *json;
    size_t data;
    const char *want;
  } bad_files[] = {
      {"{\"x\": [1, 2", 0, "not a safetensors file (the header is not a JSON object)"},
      {"{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,20]}}",
       20, "bad header: tensor y has shape [2] of F32 but 12 bytes of data"},
      {"{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
       "bad header: tensor x ends at byte 8, past the 4 bytes of data"},
      {"{\"x\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
       "bad header: tensor x has no valid shape"},
      {"{\"x\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "bad header: tensor x has no dtype"},
      {"{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8]}}", 8,
       "bad header: tensor x has no valid data_offsets"},
  };
  char *bad = path_in("bad.safetensors");
  st_path = bad;
  for (size_t i = 0; i < sizeof bad_files / sizeof bad_files[0]; i++) {
    write_st_by_hand(bad, bad_files[i].json, bad_files[i].data);
    snprintf(want, sizeof want, "%s: %s", bad, bad_files[i].want);
    CHECK_FAIL(st_read_child, NULL, want);
  }
  spit(bad, "abc", 3);
  snprintf(want, sizeof want, "%s: not a safetensors file (3 bytes, too short for a header)", bad);
  CHECK_FAIL(st_read_child, NULL, want);

  // a failed write names the path and leaves nothing behind
  char *nodir = path_in("no/such/dir/x.safetensors");
  st_path = nodir;
  st_t = t;
  st_n = 1;
  snprintf(want, sizeof want, "%s: cannot write: No such file or directory", nodir);
  CHECK_FAIL(st_write_child, NULL, want);
}

// ---------------------------------------------------------------------------------------------
// a whole run, driven by hand like the generated loop

static const KrtTensorDesc descs[] = {
    {.name = "dense.weight", .kind = KRT_PARAM, .rank = 2, .dim = {3, 2}, .init = KRT_UNIFORM,
     .a = -0.5, .b = 0.5},
    {.name = "adam.m", .kind = KRT_STATE, .rank = 2, .dim = {3, 2}, .init = KRT_NORMAL, .a = 1,
     .b = 2},
    {.name = "dense.bias", .kind = KRT_PARAM, .rank = 1, .dim = {3}, .init = KRT_CONST, .a = 0.1},
    {.name = "bn.mean", .kind = KRT_BUFFER, .rank = 1, .dim = {3}, .init = KRT_CONST, .a = 0},
};

static KrtConfig base_config(void) {
  return (KrtConfig){
      .script = "tests/data/smoke.nn", .out_dir = path_in("runs/smoke"),
      .train_kind = 2, .train_path = "small.csv",
      .test_kind = 2, .test_path = "small.csv",
      .features = 2, .ydim = 1, .classes = 3,
      .batch = 4, .epochs = 2, .seed = 5, .shuffle = true, .threads = 1,
      .compile_seconds = 0.125, .tensors = descs, .ntensors = 4, .parameters = 9,
  };
}

static KrtConfig run_cfg;
static void run_new_child(void *arg) {
  (void)arg;
  krt_run_new(&run_cfg);
}

// Runs fn with stdout going into a file; returns what it printed.
static char *stdout_of(void (*fn)(void *), void *arg) {
  char *out = path_in("stdout.txt");
  fflush(stdout);
  int saved = dup(1), fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  dup2(fd, 1);
  close(fd);
  fn(arg);
  fflush(stdout);
  dup2(saved, 1);
  close(saved);
  return slurp(out, NULL);
}

// Two epochs; the fake network always answers class 0, so accuracy = share of label 0.
static void train(void *arg) {
  KrtRun *r = arg;
  float x[8], y[4], out[12] = {0};
  for (int i = 0; i < 4; i++)
    out[3 * i] = 1;
  int64_t epochs = krt_epochs(r);
  for (int64_t e = 0; e < epochs; e++) {
    int64_t nb = krt_epoch_begin(r, e);
    int stop = 0;
    for (int64_t b = 0; b < nb && !stop; b++) {
      int64_t n = krt_train_batch(r, b, x, y);
      stop = krt_train_step_end(r, 1.0f + (float)e, out, y, n, 0.01f);
    }
    int64_t nv = krt_eval_begin(r, KRT_VAL);  // once: it resets the set's sums
    for (int64_t b = 0; b < nv; b++) {
      int64_t n = krt_eval_batch(r, KRT_VAL, b, x, y);
      krt_eval_step_end(r, KRT_VAL, 3.0f, out, y, n);
    }
    if (krt_epoch_end(r))
      break;
  }
  int64_t nt = krt_eval_begin(r, KRT_TEST);
  for (int64_t b = 0; b < nt; b++) {
    int64_t n = krt_eval_batch(r, KRT_TEST, b, x, y);
    for (int i = 0; i < n; i++)  // a perfect answer on the test set
      for (int c = 0; c < 3; c++)
        out[3 * i + c] = c == (int)y[i];
    krt_eval_step_end(r, KRT_TEST, 0.5f, out, y, n);
  }
  krt_finish(r);
}

static double num(cJSON *j, const char *key) {
  cJSON *v = cJSON_GetObjectItem(j, key);
  return cJSON_IsNumber(v) ? v->valuedouble : cJSON_IsNull(v) ? -1 : -2;
}

static void test_run(void) {
  KrtConfig cfg = base_config();
  KrtRun *r = krt_run_new(&cfg);
  CHECK(krt_epochs(r) == 2 && krt_total_steps(r) == 6 && krt_step(r) == 0, "schedule");
  krt_init_tensors(r);
  float *wt = krt_tensor(r, 0), *m = krt_tensor(r, 1);
  float *b = krt_tensor(r, 2), *bn = krt_tensor(r, 3);
  CHECK(b == wt + 6, "params share one block, in order");
  CHECK(bn != wt + 9 && m != wt + 6, "buffers and states are separate blocks");
  int ok = 1;
  for (int j = 0; j < 6; j++) {
    ok &= wt[j] == (float)(-0.5 + 1.0 * krt_uniform(krt_hash(5, 1000), (uint64_t)j));
    ok &= m[j] == (float)(1 + 2.0 * krt_normal(krt_hash(5, 1001), (uint64_t)j));
  }
  CHECK(ok && b[0] == 0.1f && b[2] == 0.1f && bn[1] == 0, "init from the seed");

  // batches: each epoch visits every sample once; the last batch is partial
  float x[8], y[4];
  int seen[10] = {0}, rows_ok = 1;
  int64_t nb = krt_epoch_begin(r, 0);
  for (int64_t bi = 0; bi < nb; bi++) {
    int64_t n = krt_train_batch(r, bi, x, y);
    rows_ok &= n == (bi < 2 ? 4 : 2);
    for (int i = 0; i < n; i++) {
      seen[(int)x[2 * i]]++;
      rows_ok &= x[2 * i + 1] == x[2 * i] + 0.5f && y[i] == (float)((int)x[2 * i] % 3);
    }
  }
  int once = nb == 3;
  for (int i = 0; i < 10; i++)
    once &= seen[i] == 1;
  CHECK(rows_ok && once, "epoch 0 batches");
  krt_run_free(r);

  r = krt_run_new(&cfg);
  krt_init_tensors(r);
  float w0 = krt_tensor(r, 0)[0];
  char *out = stdout_of(train, r);
  const char *lines[] = {
      "epoch 1/2  loss 1.0000  acc 0.4000  lr 0.01  ",
      "epoch 2/2  loss 2.0000  acc 0.4000  lr 0.01  ",
      "trained 2 epochs (6 steps) in ",
      "train loss 2.0000  accuracy 0.4000\n",
      "test  loss 0.5000  accuracy 1.0000\n",
      "wrote ",
  };
  const char *p = out;
  for (int i = 0; i < 6; i++) {
    CHECK(p && strncmp(p, lines[i], strlen(lines[i])) == 0, "line %d of:\n%s", i, out);
    p = p ? strchr(p, '\n') : NULL;
    p = p ? p + 1 : NULL;
  }
  char want[512];
  snprintf(want, sizeof want, "wrote %s/final.safetensors, metrics.csv, report.json\n",
           path_in("runs/smoke"));
  CHECK(strstr(out, want) != NULL, "wrote line in:\n%s", out);
  free(out);
  CHECK(krt_step(r) == 6, "steps %lld", (long long)krt_step(r));

  char *csv = slurp(path_in("runs/smoke/metrics.csv"), NULL);
  CHECK(csv && strncmp(csv,
                       "epoch,step,lr,train_loss,train_accuracy,val_loss,val_accuracy,seconds\n"
                       "1,3,0.01,1,0.4,,,",
                       86) == 0,
        "metrics.csv:\n%s", csv ? csv : "(none)");
  const char *row2 = csv ? strstr(csv, "\n2,6,0.01,2,0.4,,,") : NULL;
  CHECK(row2 != NULL, "second row in:\n%s", csv ? csv : "(none)");
  int nlines = 0;
  for (const char *c = csv; c && *c; c++)
    nlines += *c == '\n';
  CHECK(nlines == 3, "metrics.csv has %d lines", nlines);
  free(csv);

  char *json = slurp(path_in("runs/smoke/report.json"), NULL);
  cJSON *rep = cJSON_Parse(json);
  CHECK(rep != NULL, "report.json parses:\n%s", json);
  CHECK(num(rep, "epochs") == 2 && num(rep, "steps") == 6 && num(rep, "train_loss") == 2 &&
            num(rep, "train_accuracy") == 0.4 && num(rep, "val_loss") == -1 &&
            num(rep, "val_accuracy") == -1 && num(rep, "test_loss") == 0.5 &&
            num(rep, "test_accuracy") == 1 && num(rep, "samples_per_second") > 0 &&
            num(rep, "compile_seconds") == 0.125 && num(rep, "parameters") == 9 &&
            num(rep, "seed") == 5 && num(rep, "batch") == 4,
        "report.json:\n%s", json);
  cJSON *stopped = cJSON_GetObjectItem(rep, "stopped");
  CHECK(cJSON_IsString(stopped) && strcmp(stopped->valuestring, "epochs") == 0, "stopped");
  CHECK(json && strncmp(json, "{\n  \"epochs\": 2,\n  \"steps\": 6,\n", 31) == 0, "pretty");
  cJSON_Delete(rep);
  free(json);
  CHECK(files_with(path_in("runs/smoke"), ".tmp.") == 0, "no temporary files");

  // final.safetensors holds params and buffers, not states; --init loads them back
  KrtRun *r2 = krt_run_new(&cfg);
  krt_load_init(r2, path_in("runs/smoke/final.safetensors"));
  CHECK(krt_tensor(r2, 0)[0] == w0 && krt_tensor(r2, 2)[1] == 0.1f && krt_tensor(r2, 1)[0] == 0,
        "load_init");
  krt_run_free(r2);
  float mm[6];
  KrtNamedTensor st = {.name = "adam.m", .rank = 2, .dim = {3, 2}, .data = mm};
  st_path = path_in("runs/smoke/final.safetensors");
  st_t = &st;
  st_n = 1;
  snprintf(want, sizeof want, "%s: no tensor named 'adam.m'", st_path);
  CHECK_FAIL(st_read_child, NULL, want);
  krt_run_free(r);

  // a step limit mid-epoch, a holdout for validation, regression-free classification
  cfg = base_config();
  cfg.out_dir = path_in("runs/steps");
  cfg.epochs = 0;
  cfg.steps = 4;
  cfg.holdout = 0.2;
  cfg.test_kind = 0;
  r = krt_run_new(&cfg);
  CHECK(krt_epochs(r) == 2 && krt_total_steps(r) == 4, "steps schedule %lld %lld",
        (long long)krt_epochs(r), (long long)krt_total_steps(r));
  CHECK(krt_eval_begin(r, KRT_VAL) == 1 && krt_eval_begin(r, KRT_TEST) == 0, "val from holdout");
  out = stdout_of(train, r);
  CHECK(strstr(out, "epoch 1/2  loss 1.0000  acc 0.4286  val_loss 3.0000  val_acc 0.3333  lr") ==
                out &&
            strstr(out, "\ntrained 2 epochs (4 steps) in ") && strstr(out, "\nval   loss 3.0000") &&
            !strstr(out, "\ntest "),
        "output:\n%s", out);
  free(out);
  json = slurp(path_in("runs/steps/report.json"), NULL);
  rep = cJSON_Parse(json);
  stopped = cJSON_GetObjectItem(rep, "stopped");
  CHECK(num(rep, "steps") == 4 && num(rep, "epochs") == 2 && num(rep, "val_loss") == 3 &&
            num(rep, "test_loss") == -1 && cJSON_IsString(stopped) &&
            strcmp(stopped->valuestring, "steps") == 0,
        "report.json:\n%s", json);
  cJSON_Delete(rep);
  free(json);
  csv = slurp(path_in("runs/steps/metrics.csv"), NULL);
  CHECK(csv && strstr(csv, "\n2,4,0.01,2,0.428571,3,0.333333,"), "metrics.csv:\n%s", csv);
  free(csv);
  krt_run_free(r);

  // a name the driver already resolved (relative to the current folder) is taken as it is
  cfg = base_config();
  cfg.train_path = "tests/data/small.csv";
  r = krt_run_new(&cfg);
  CHECK(krt_epoch_begin(r, 0) == 3, "resolved name");
  krt_run_free(r);

  // errors while loading
  run_cfg = base_config();
  run_cfg.train_path = "nope.csv";
  CHECK_FAIL(run_new_child, NULL,
             "cannot find data file 'nope.csv' (looked in tests/data, $KEEL_DATA_PATH and "
             "/usr/share/datasets)");
  run_cfg = base_config();
  run_cfg.features = 784;
  CHECK_FAIL(run_new_child, NULL,
             "tests/data/small.csv: samples have 2 values, the network's input expects 784");
  run_cfg = base_config();
  run_cfg.classes = 2;
  CHECK_FAIL(run_new_child, NULL,
             "tests/data/small.csv: label 2 is outside the network's 2 outputs");
  run_cfg = base_config();
  run_cfg.train_kind = 0;
  CHECK_FAIL(run_new_child, NULL, "no training data (the script names no train source)");
  run_cfg = base_config();
  run_cfg.test_path = "spaces.csv";
  run_cfg.test_label = "target";
  CHECK_FAIL(run_new_child, NULL,
             "tests/data/spaces.csv: label 0.25 is not a class number (the network has 3 outputs)");
}

int main(void) {
  snprintf(tmp, sizeof tmp, "/tmp/keel_test_runtime.XXXXXX");
  if (!mkdtemp(tmp)) {
    perror("mkdtemp");
    return 1;
  }
  test_rng();
  test_idx();
  test_csv();
  test_holdout();
  test_find_data();
  test_safetensors();
  test_run();
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
  if (system(cmd) != 0)
    printf("could not remove %s\n", tmp);
  return check_summary();
}
