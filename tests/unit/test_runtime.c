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
#include <signal.h>
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
    same &= krt_set_value(&s, i) == pix[i];
  for (int i = 0; i < 5; i++)
    same &= s.y[i] == lab[i];
  CHECK(same, "idx values");
  krt_set_scale(&s, 1.0f / 255);
  CHECK(krt_set_value(&s, 29) == 232.0f * (1.0f / 255), "scaled %g", krt_set_value(&s, 29));
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
      max = krt_set_value(&s, i) > max ? krt_set_value(&s, i) : max;
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

static cJSON *report_of(const char *dir, char **text) {
  char name[128];
  snprintf(name, sizeof name, "%s/report.json", dir);
  *text = slurp(path_in(name), NULL);
  cJSON *j = cJSON_Parse(*text ? *text : "");
  CHECK(j != NULL, "%s parses:\n%s", name, *text ? *text : "(none)");
  return j;
}

static int str_is(cJSON *j, const char *key, const char *want) {
  cJSON *v = cJSON_GetObjectItem(j, key);
  return cJSON_IsString(v) && strcmp(v->valuestring, want) == 0;
}

// Rows of a JSON array of arrays of numbers, compared with want (rows × cols).
static int matrix_is(cJSON *m, const double *want, int rows, int cols) {
  if (!cJSON_IsArray(m) || cJSON_GetArraySize(m) != rows)
    return 0;
  for (int i = 0; i < rows; i++) {
    cJSON *row = cJSON_GetArrayItem(m, i);
    if (cJSON_GetArraySize(row) != cols)
      return 0;
    for (int j = 0; j < cols; j++)
      if (!cJSON_IsNumber(cJSON_GetArrayItem(row, j)) ||
          cJSON_GetArrayItem(row, j)->valuedouble != want[i * cols + j])
        return 0;
  }
  return 1;
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
  // the summary: no val set, so the best epoch is by train_loss; the test set's confusion
  // matrix (a perfect answer), rows true class, columns predicted, per-class accuracy last
  const char *summary =
      "best epoch: 1 of 2 (train_loss 1.0000)\n"
      "no validation data: overfitting cannot be seen (`holdout 0.1` in the data block would "
      "show it)\n"
      "confusion matrix of the test set (rows: true class, columns: predicted class):\n"
      "     0  1  2  accuracy\n"
      "  0  4  0  0    1.0000\n"
      "  1  0  3  0    1.0000\n"
      "  2  0  0  3    1.0000\n";
  p = strstr(out, want);
  CHECK(p && strcmp(p + strlen(want), summary) == 0, "summary:\n%s", p ? p : out);
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
  double diag[] = {4, 0, 0, 0, 3, 0, 0, 0, 3};
  cJSON *pca = cJSON_GetObjectItem(rep, "per_class_accuracy");
  CHECK(matrix_is(cJSON_GetObjectItem(rep, "confusion_matrix"), diag, 3, 3) &&
            cJSON_GetArraySize(pca) == 3 && cJSON_GetArrayItem(pca, 2)->valuedouble == 1 &&
            num(rep, "best_epoch") == 1 && cJSON_IsFalse(cJSON_GetObjectItem(rep, "early_stopped")) &&
            cJSON_IsNull(cJSON_GetObjectItem(rep, "train_val_gap")),
        "report.json's new keys:\n%s", json);
  CHECK(access(path_in("runs/smoke/best.safetensors"), F_OK) != 0, "no best.safetensors");
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


// ---------------------------------------------------------------------------------------------
// the safety rails: drop_last, early stopping, on_plateau, the guard, the report

static void test_drop_last(void) {
  KrtConfig cfg = base_config();
  cfg.drop_last = true;
  KrtRun *r = krt_run_new(&cfg);
  CHECK(krt_epoch_begin(r, 0) == 2 && krt_total_steps(r) == 4, "drop_last: 10 samples, batch 4");
  float x[8], y[4];
  CHECK(krt_train_batch(r, 0, x, y) == 4 && krt_train_batch(r, 1, x, y) == 4, "full batches");
  CHECK(krt_eval_begin(r, KRT_TEST) == 3, "evaluation keeps every sample");
  krt_run_free(r);
  cfg.epochs = 0;
  cfg.steps = 5;
  r = krt_run_new(&cfg);
  CHECK(krt_epochs(r) == 3 && krt_total_steps(r) == 5, "drop_last with steps %lld %lld",
        (long long)krt_epochs(r), (long long)krt_total_steps(r));
  krt_run_free(r);
  cfg = base_config();
  cfg.drop_last = true;
  cfg.batch = 10;
  r = krt_run_new(&cfg);
  CHECK(krt_epoch_begin(r, 0) == 1, "batch = samples: one batch");
  krt_run_free(r);
  cfg.drop_last = false;
  cfg.batch = 12;
  r = krt_run_new(&cfg);
  CHECK(krt_epoch_begin(r, 0) == 1, "without drop_last a small set is one partial batch");
  krt_run_free(r);

  run_cfg = base_config();
  run_cfg.drop_last = true;
  run_cfg.batch = 12;
  CHECK_FAIL(run_new_child, NULL,
             "drop_last with batch 12 leaves no batch: the training set has 10 samples");
  run_cfg.batch = 128;
  run_cfg.holdout = 0.2;  // what the holdout leaves
  CHECK_FAIL(run_new_child, NULL,
             "drop_last with batch 128 leaves no batch: the training set has 7 samples");
}

static KrtRun *batch_run;
static void train_batch_child(void *arg) {
  float x[8], y[4];
  krt_epoch_begin(batch_run, 0);
  krt_train_batch(batch_run, *(int64_t *)arg, x, y);
}

static void test_drop_last_batch(void) {
  KrtConfig cfg = base_config();
  cfg.drop_last = true;
  batch_run = krt_run_new(&cfg);
  int64_t b = 2;
  CHECK_FAIL(train_batch_child, &b,
             "training batch 2 does not exist (10 samples in 2 full batches of 4; drop_last "
             "drops the rest)");
  krt_run_free(batch_run);
}

// The fake network of the rails tests answers a sample (x = its id) right when id < right,
// else with the next class.
static void fake_out(const float *x, const float *y, int64_t n, int right, float *out) {
  for (int64_t i = 0; i < n; i++) {
    int id = (int)x[2 * i], truth = (int)y[i], pred = id < right ? truth : (truth + 1) % 3;
    for (int c = 0; c < 3; c++)
      out[3 * i + c] = c == pred;
  }
}

// Every tensor gets values that name the epoch: 1000·epoch + 10·tensor + index.
static float pattern(int epoch, int t, int j) {
  return (float)(1000 * epoch + 10 * t + j);
}
static const int desc_size[] = {6, 6, 3, 3};
static void fill_tensors(KrtRun *r, int epoch) {
  for (int t = 0; t < 4; t++)
    for (int j = 0; j < desc_size[t]; j++)
      krt_tensor(r, t)[j] = pattern(epoch, t, j);
}
static int tensors_are(KrtRun *r, int epoch) {
  int ok = 1;
  for (int t = 0; t < 4; t++)
    for (int j = 0; j < desc_size[t]; j++)
      ok &= krt_tensor(r, t)[j] == pattern(epoch, t, j);
  return ok;
}

typedef struct {
  KrtRun *r;
  int n;                // epochs scripted
  float tl[12], vl[12];  // train and val loss of each epoch
  int tr[12], vr[12];    // the fake network is right below these ids (train, val)
  int stopped_at;       // the epoch (from 1) whose krt_epoch_end returned 1; 0 = none
  float scale[12];      // krt_lr_scale after each epoch
  int finish, status;   // run krt_finish too; what it returned
} Script;

// Epochs by hand, as the generated loop runs them; the tensors change every epoch.
static void run_script(void *arg) {
  Script *s = arg;
  KrtRun *r = s->r;
  float x[8], y[4], out[12];
  for (int e = 0; e < s->n; e++) {
    int64_t nb = krt_epoch_begin(r, e);
    for (int64_t b = 0; b < nb; b++) {
      int64_t n = krt_train_batch(r, b, x, y);
      fake_out(x, y, n, s->tr[e], out);
      krt_train_step_end(r, s->tl[e], out, y, n, 0.01f * krt_lr_scale(r));
    }
    fill_tensors(r, e + 1);
    int64_t nv = krt_eval_begin(r, KRT_VAL);
    for (int64_t b = 0; b < nv; b++) {
      int64_t n = krt_eval_batch(r, KRT_VAL, b, x, y);
      fake_out(x, y, n, s->vr[e], out);
      krt_eval_step_end(r, KRT_VAL, s->vl[e], out, y, n);
    }
    int stop = krt_epoch_end(r);
    s->scale[e] = krt_lr_scale(r);
    if (stop) {
      s->stopped_at = e + 1;
      break;
    }
  }
  krt_train_end(r);
  if (s->finish)
    s->status = krt_finish(r);
}

static KrtConfig rails_config(const char *out) {
  KrtConfig cfg = base_config();
  cfg.out_dir = path_in(out);
  cfg.val_kind = 2;
  cfg.val_path = "small.csv";
  cfg.test_kind = 0;
  cfg.epochs = 10;
  return cfg;
}

static void test_early_stop(void) {
  // val_loss 1.0, 0.8 (best), 0.9, 0.85: patience 2 runs out after epoch 4
  KrtConfig cfg = rails_config("runs/es");
  cfg.early_patience = 2;
  Script s = {.n = 6, .tl = {1.2f, 0.7f, 0.5f, 0.25f, 0.2f, 0.1f},
              .vl = {1.0f, 0.8f, 0.9f, 0.85f, 0.7f, 0.6f}, .tr = {3, 6, 8, 9, 10, 10},
              .vr = {2, 5, 5, 3, 10, 10}, .finish = 1};
  s.r = krt_run_new(&cfg);
  char *out = stdout_of(run_script, &s);
  CHECK(s.stopped_at == 4 && s.status == 0, "stopped at epoch %d, status %d", s.stopped_at,
        s.status);
  CHECK(tensors_are(s.r, 2), "krt_train_end restored every tensor of epoch 2");
  char want[4096];
  snprintf(want, sizeof want,
           "early stopping: val_loss has not improved for 2 epochs (best 0.8000 at epoch 2)\n"
           "early stopping: restored the weights of epoch 2 (val_loss 0.8000); wrote "
           "%s/best.safetensors\n",
           path_in("runs/es"));
  const char *p = strstr(out, "early stopping: ");
  CHECK(p && strncmp(p, want, strlen(want)) == 0 && strstr(out, "epoch  4/10") &&
            !strstr(out, "epoch  5/10"),
        "early stopping lines in:\n%s", out);
  // the summary: the gap widened after epoch 2 (train 0.6 − val 0.5 → train 0.9 − val 0.3);
  // the confusion matrix is the val set's at epoch 2 (right below id 5)
  snprintf(want, sizeof want,
           "wrote %s/final.safetensors, metrics.csv, report.json\n"
           "best epoch: 2 of 4 (val_loss 0.8000, val_accuracy 0.5000)\n"
           "the gap between training and validation widened from 0.10 to 0.60 after epoch 2: the "
           "network started to memorise the training data (overfitting); early stopping kept the "
           "weights of epoch 2\n"
           "early stopping fired after epoch 4: val_loss had not improved for 2 epochs; the "
           "weights of epoch 2 were restored\n"
           "confusion matrix of the validation set at epoch 2, the restored weights (rows: true "
           "class, columns: predicted class):\n"
           "     0  1  2  accuracy\n"
           "  0  2  2  0    0.5000\n"
           "  1  0  2  1    0.6667\n"
           "  2  2  0  1    0.3333\n",
           path_in("runs/es"));
  p = strstr(out, "\nwrote ");
  p = p ? p + 1 : NULL;
  CHECK(p && strcmp(p, want) == 0, "summary:\n%s\nwant:\n%s", p ? p : out, want);
  free(out);

  // best.safetensors: params and buffers of epoch 2
  float w[6], bias[3], bn[3];
  KrtNamedTensor t[3] = {
      {.name = "dense.weight", .rank = 2, .dim = {3, 2}, .data = w},
      {.name = "dense.bias", .rank = 1, .dim = {3}, .data = bias},
      {.name = "bn.mean", .rank = 1, .dim = {3}, .data = bn},
  };
  krt_st_read(path_in("runs/es/best.safetensors"), t, 3);
  CHECK(w[5] == pattern(2, 0, 5) && bias[2] == pattern(2, 2, 2) && bn[0] == pattern(2, 3, 0),
        "best.safetensors holds epoch 2");
  KrtNamedTensor m = {.name = "adam.m", .rank = 2, .dim = {3, 2}, .data = w};
  st_path = path_in("runs/es/best.safetensors");
  st_t = &m;
  st_n = 1;
  char msg[512];
  snprintf(msg, sizeof msg, "%s: no tensor named 'adam.m'", st_path);
  CHECK_FAIL(st_read_child, NULL, msg);
  CHECK(files_with(path_in("runs/es"), ".tmp.") == 0, "no temporary files");

  char *json;
  cJSON *rep = report_of("runs/es", &json);
  double cm[] = {2, 2, 0, 0, 2, 1, 2, 0, 1};
  cJSON *pca = cJSON_GetObjectItem(rep, "per_class_accuracy");
  cJSON *gap = cJSON_GetObjectItem(rep, "train_val_gap");
  cJSON *gb = cJSON_GetObjectItem(gap, "best_epoch"), *gl = cJSON_GetObjectItem(gap, "last_epoch");
  CHECK(num(rep, "best_epoch") == 2 && cJSON_IsTrue(cJSON_GetObjectItem(rep, "early_stopped")) &&
            str_is(rep, "stopped", "early_stop") && num(rep, "epochs") == 4 &&
            fabs(num(rep, "val_loss") - 0.85) < 1e-6 &&
            matrix_is(cJSON_GetObjectItem(rep, "confusion_matrix"), cm, 3, 3) &&
            cJSON_GetArraySize(pca) == 3 && cJSON_GetArrayItem(pca, 0)->valuedouble == 0.5 &&
            fabs(cJSON_GetArrayItem(pca, 1)->valuedouble - 2.0 / 3) < 1e-8 &&
            fabs(num(gb, "accuracy") - 0.1) < 1e-6 && fabs(num(gl, "accuracy") - 0.6) < 1e-6 &&
            fabs(num(gb, "loss") - (0.8 - 0.7)) < 1e-6 &&
            fabs(num(gl, "loss") - (0.85 - 0.25)) < 1e-6 &&
            cJSON_GetArraySize(cJSON_GetObjectItem(rep, "guard_events")) == 0 &&
            cJSON_GetArraySize(cJSON_GetObjectItem(rep, "lr_reductions")) == 0,
        "report.json:\n%s", json);
  const char *head = "{\n  \"epochs\": 4,\n  \"steps\": 12,\n  \"stopped\": \"early_stop\",\n";
  CHECK(json && strncmp(json, head, strlen(head)) == 0,
        "existing keys first:\n%s", json);
  cJSON_Delete(rep);
  free(json);
  krt_run_free(s.r);

  // min_delta: 0.95 and 0.92 beat 1.0, but not by more than 0.1
  cfg = rails_config("runs/es_delta");
  cfg.early_patience = 2;
  cfg.early_min_delta = 0.1;
  s = (Script){.n = 6, .tl = {1, 1, 1, 1, 1, 1}, .vl = {1.0f, 0.95f, 0.92f, 0.5f, 0.5f, 0.5f},
               .tr = {3, 3, 3, 3, 3, 3}, .vr = {3, 3, 3, 3, 3, 3}};
  s.r = krt_run_new(&cfg);
  out = stdout_of(run_script, &s);
  CHECK(s.stopped_at == 3 && tensors_are(s.r, 1), "min_delta: stopped at %d", s.stopped_at);
  CHECK(strstr(out, "early stopping: val_loss has not improved by more than 0.1 for 2 epochs "
                    "(best 1.0000 at epoch 1)\n"),
        "min_delta line in:\n%s", out);
  free(out);
  krt_run_free(s.r);
  cfg.early_min_delta = 0;  // without it every epoch improves
  s.stopped_at = 0;
  s.r = krt_run_new(&cfg);
  free(stdout_of(run_script, &s));
  CHECK(s.stopped_at == 6 && tensors_are(s.r, 4), "no min_delta: stopped at %d, best epoch 4",
        s.stopped_at);
  krt_run_free(s.r);

  // val_accuracy (higher is better): 0.3, 0.5 (best), 0.5, 0.4 while val_loss only grows
  cfg = rails_config("runs/es_acc");
  cfg.early_patience = 2;
  cfg.early_monitor = KRT_MONITOR_VAL_ACCURACY;
  s = (Script){.n = 6, .tl = {1, 1, 1, 1, 1, 1}, .vl = {1, 2, 3, 4, 5, 6},
               .tr = {3, 3, 3, 3, 3, 3}, .vr = {3, 5, 5, 4, 9, 9}, .finish = 1};
  s.r = krt_run_new(&cfg);
  out = stdout_of(run_script, &s);
  CHECK(s.stopped_at == 4 && tensors_are(s.r, 2), "val_accuracy: stopped at %d", s.stopped_at);
  CHECK(strstr(out, "early stopping: val_accuracy has not improved for 2 epochs (best 0.5000 at "
                    "epoch 2)\n") &&
            strstr(out, "\nbest epoch: 2 of 4 (val_loss 2.0000, val_accuracy 0.5000)\n") &&
            strstr(out, "\nearly stopping fired after epoch 4: val_accuracy had not improved for "
                        "2 epochs; the weights of epoch 2 were restored\n"),
        "val_accuracy lines in:\n%s", out);
  free(out);
  krt_run_free(s.r);

  // no val set: train_loss is monitored
  cfg = rails_config("runs/es_train");
  cfg.val_kind = 0;
  cfg.early_patience = 1;
  s = (Script){.n = 6, .tl = {2, 1, 1.5f, 0.5f, 0.5f, 0.5f}, .tr = {3, 3, 3, 3, 3, 3},
               .finish = 1};
  s.r = krt_run_new(&cfg);
  out = stdout_of(run_script, &s);
  CHECK(s.stopped_at == 3 && tensors_are(s.r, 2), "train_loss: stopped at %d", s.stopped_at);
  CHECK(strstr(out, "early stopping: train_loss has not improved for 1 epoch (best 1.0000 at "
                    "epoch 2)\n") &&
            strstr(out, "\nbest epoch: 2 of 3 (train_loss 1.0000)\nno validation data: "
                        "overfitting cannot be seen (`holdout 0.1` in the data block would "
                        "show it)\n"),
        "train_loss lines in:\n%s", out);
  free(out);
  rep = report_of("runs/es_train", &json);
  CHECK(cJSON_IsNull(cJSON_GetObjectItem(rep, "train_val_gap")) && num(rep, "best_epoch") == 2 &&
            cJSON_IsNull(cJSON_GetObjectItem(rep, "confusion_matrix")) &&
            cJSON_IsNull(cJSON_GetObjectItem(rep, "per_class_accuracy")),
        "report.json without val or test:\n%s", json);
  cJSON_Delete(rep);
  free(json);
  krt_run_free(s.r);

  // early stopping off: the best epoch is still reported, nothing is restored or written
  cfg = rails_config("runs/es_off");
  s = (Script){.n = 4, .tl = {1, 0.5f, 0.3f, 0.2f}, .vl = {1, 0.8f, 0.9f, 0.95f},
               .tr = {3, 6, 9, 10}, .vr = {3, 5, 5, 5}, .finish = 1};
  cfg.epochs = 4;
  s.r = krt_run_new(&cfg);
  out = stdout_of(run_script, &s);
  CHECK(s.stopped_at == 4 && tensors_are(s.r, 4), "off: the last weights stay");
  CHECK(access(path_in("runs/es_off/best.safetensors"), F_OK) != 0, "off: no best.safetensors");
  CHECK(strstr(out, "\nbest epoch: 2 of 4 (val_loss 0.8000, val_accuracy 0.5000)\nthe gap between "
                    "training and validation widened from 0.10 to 0.50 after epoch 2: the network "
                    "started to memorise the training data (overfitting); the saved weights are "
                    "those of the last epoch (early stopping would keep those of epoch 2)\n"
                    "confusion matrix of the validation set after epoch 4 (rows: true class, "
                    "columns: predicted class):\n") &&
            !strstr(out, "early stopping:"),
        "off:\n%s", out);
  free(out);
  rep = report_of("runs/es_off", &json);
  CHECK(num(rep, "best_epoch") == 2 && cJSON_IsFalse(cJSON_GetObjectItem(rep, "early_stopped")) &&
            str_is(rep, "stopped", "epochs"),
        "off: report.json:\n%s", json);
  cJSON_Delete(rep);
  free(json);
  krt_run_free(s.r);

  // a gap that stays small, and early stopping that never fires
  cfg = rails_config("runs/es_small_gap");
  cfg.epochs = 3;
  cfg.early_patience = 5;
  s = (Script){.n = 3, .tl = {1, 0.9f, 0.8f}, .vl = {1.1f, 1.0f, 0.95f}, .tr = {3, 4, 5},
               .vr = {3, 4, 4}, .finish = 1};
  s.r = krt_run_new(&cfg);
  out = stdout_of(run_script, &s);
  CHECK(strstr(out, "early stopping: kept the weights of epoch 3 (val_loss 0.9500); wrote ") &&
            strstr(out, "\nthe gap between training and validation is 0.10 at epoch 3, the best "
                        "and the last\nearly stopping did not fire; the weights of epoch 3 were "
                        "kept\nconfusion matrix of the validation set at epoch 3, the restored "
                        "weights"),
        "small gap:\n%s", out);
  free(out);
  krt_run_free(s.r);
}

static void test_plateau(void) {
  // torch's ReduceLROnPlateau(patience=2, factor=0.5): the 3rd epoch in a row without a
  // relative improvement of 1e-4 reduces the rate; 0.49999 does not beat 0.5 by 1e-4
  KrtConfig cfg = rails_config("runs/plateau");
  cfg.plateau_patience = 2;
  cfg.plateau_factor = 0.5;
  Script s = {.n = 10, .tl = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1},
              .vl = {1, 1, 1, 1, 0.5f, 0.5f, 0.5f, 0.49999f, 0.4f, 0.4f},
              .tr = {3, 3, 3, 3, 3, 3, 3, 3, 3, 3}, .vr = {3, 3, 3, 3, 3, 3, 3, 3, 3, 3},
              .finish = 1};
  s.r = krt_run_new(&cfg);
  CHECK(krt_lr_scale(s.r) == 1, "scale starts at 1");
  char *out = stdout_of(run_script, &s);
  const float want[] = {1, 1, 1, 0.5f, 0.5f, 0.5f, 0.5f, 0.25f, 0.25f, 0.25f};
  int same = 1;
  for (int i = 0; i < 10; i++)
    same &= s.scale[i] == want[i];
  CHECK(same, "scales %g %g %g %g %g %g %g %g %g %g", s.scale[0], s.scale[1], s.scale[2],
        s.scale[3], s.scale[4], s.scale[5], s.scale[6], s.scale[7], s.scale[8], s.scale[9]);
  CHECK(strstr(out, "\non_plateau: val_loss has not improved for 3 epochs: learning rate reduced "
                    "to 0.005\nepoch  5/10") &&
            strstr(out, "\non_plateau: val_loss has not improved for 3 epochs: learning rate "
                        "reduced to 0.0025\nepoch  9/10") &&
            strstr(out, "\non_plateau reduced the learning rate after epochs 4, 8; it ends at "
                        "0.25× the schedule's\n"),
        "plateau lines:\n%s", out);
  free(out);
  char *csv = slurp(path_in("runs/plateau/metrics.csv"), NULL);
  CHECK(csv && strstr(csv, "\n4,12,0.01,") && strstr(csv, "\n5,15,0.005,") &&
            strstr(csv, "\n9,27,0.0025,"),
        "the rates of metrics.csv:\n%s", csv);
  free(csv);
  char *json;
  cJSON *rep = report_of("runs/plateau", &json);
  cJSON *red = cJSON_GetObjectItem(rep, "lr_reductions");
  CHECK(cJSON_GetArraySize(red) == 2 && num(cJSON_GetArrayItem(red, 0), "epoch") == 4 &&
            num(cJSON_GetArrayItem(red, 0), "lr_scale") == 0.5 &&
            num(cJSON_GetArrayItem(red, 1), "epoch") == 8 &&
            num(cJSON_GetArrayItem(red, 1), "lr_scale") == 0.25,
        "lr_reductions:\n%s", json);
  cJSON_Delete(rep);
  free(json);
  krt_run_free(s.r);
}

static void plateau_child(void *arg) {
  KrtConfig cfg = rails_config("runs/plateau_bad");
  cfg.plateau_patience = 1;
  cfg.plateau_factor = *(double *)arg;
  krt_run_new(&cfg);
}

static void test_plateau_factor(void) {
  double f = 1;
  CHECK_FAIL(plateau_child, &f, "on_plateau's factor must be between 0 and 1, not 1");
}

// The guard, step by step; the probes are the fake network's output (2 floats a row) and a
// gradient (6 floats).
static float probe_out[8], probe_grad[6];
static const KrtProbe probes[] = {
    {.what = "the output of dense1", .data = probe_out, .count = 2, .per_row = true},
    {.what = "the gradient of dense1.weight", .data = probe_grad, .count = 6},
};

typedef struct {
  KrtRun *r;
  int ok[32], stop[32];   // krt_guard's and krt_train_step_end's answers, by step from 1
  float scale[32];        // krt_lr_scale after each step
  int epoch_stop, status;
} GuardScript;

// Steps 1..19 good (loss 1); step 20 loss 50 (too early for the spike check); step 21 loss 11
// spikes (median 1); step 22 good; step 23 NaN (NaN in the second probe only); step 24 inf
// (an inf in the first probe beyond its 2 rows); step 25 an infinite gradient (the same inf,
// now inside its 3 rows): the third in a row stops training.
static void guard_script(void *arg) {
  GuardScript *g = arg;
  KrtRun *r = g->r;
  memset(probe_out, 0, sizeof probe_out);
  memset(probe_grad, 0, sizeof probe_grad);
  krt_epoch_begin(r, 0);
  for (int step = 1; step <= 30; step++) {
    float loss = 1, grad_sq = 4;
    int64_t n = 2;
    if (step == 20)
      loss = 50;
    if (step == 21)
      loss = 11;
    if (step == 23) {
      loss = NAN;
      probe_grad[3] = NAN;
    }
    if (step == 24) {
      loss = INFINITY;
      probe_grad[3] = 0;
      probe_out[5] = INFINITY;
    }
    if (step == 25) {
      grad_sq = INFINITY;
      n = 3;
    }
    CHECK(krt_step(r) == step - 1, "step %d: krt_step %lld", step, (long long)krt_step(r));
    float lr = 0.01f * krt_lr_scale(r);
    g->ok[step] = krt_guard(r, loss, grad_sq, n);
    g->stop[step] = krt_train_step_end(r, loss, NULL, NULL, n, lr);
    g->scale[step] = krt_lr_scale(r);
    if (g->stop[step])
      break;
  }
  g->epoch_stop = krt_epoch_end(r);
  krt_train_end(r);
  g->status = krt_finish(r);
}

static void test_guard(void) {
  KrtConfig cfg = base_config();
  cfg.out_dir = path_in("runs/guard");
  cfg.test_kind = 0;
  cfg.epochs = 3;
  cfg.spike_factor = 10;
  cfg.probes = probes;
  cfg.nprobes = 2;
  GuardScript g = {0};
  g.r = krt_run_new(&cfg);
  char *out = stdout_of(guard_script, &g);
  int good = 1;
  for (int step = 1; step <= 25; step++)
    good &= g.ok[step] == (step != 21 && step < 23) && g.stop[step] == (step == 25);
  CHECK(good && krt_step(g.r) == 25, "guard answers, stopped after step %lld",
        (long long)krt_step(g.r));
  CHECK(g.scale[20] == 1 && g.scale[21] == 0.5f && g.scale[22] == 0.5f && g.scale[23] == 0.25f &&
            g.scale[24] == 0.125f && g.scale[25] == 0.0625f,
        "halvings %g %g %g %g %g", g.scale[21], g.scale[22], g.scale[23], g.scale[24],
        g.scale[25]);
  CHECK(g.epoch_stop == 1 && g.status == 3, "epoch_end %d, krt_finish %d", g.epoch_stop,
        g.status);
  const char *lines =
      "guard: step 21 discarded: the loss spiked to 11, more than 10× the recent median 1; "
      "learning rate halved to 0.005\n"
      "guard: step 23 discarded: the loss was NaN (first non-finite value: the gradient of "
      "dense1.weight); learning rate halved to 0.0025\n"
      "guard: step 24 discarded: the loss was infinite; learning rate halved to 0.00125\n"
      "guard: step 25 discarded: a gradient was not finite (first non-finite value: the output "
      "of dense1); 3 steps in a row discarded: training stops\n"
      // the epoch's sums leave the discarded steps out: (19 + 50 + 1) / 21
      "epoch 1/3  loss 3.3333  acc 0.0000  lr 0.00125  ";
  CHECK(strncmp(out, lines, strlen(lines)) == 0, "guard lines:\n%s\nwant:\n%s", out, lines);
  char want[4096];
  snprintf(want, sizeof want,
           "wrote %s/final.safetensors, metrics.csv, report.json\n"
           "best epoch: 1 of 1 (train_loss 3.3333)\n"
           "no validation data: overfitting cannot be seen (`holdout 0.1` in the data block "
           "would show it)\n"
           "\n"
           "training stopped at step 25 (epoch 1): 3 steps in a row were discarded (the last: a "
           "gradient was not finite; first non-finite value: the output of dense1).\n"
           "What happened: the numbers blew up. The loss or the gradients became NaN or "
           "infinite, or the loss jumped far above its recent values, and halving the learning "
           "rate 2 times did not help. No discarded step changed the weights.\n"
           "The saved weights are the last good ones, from before step 23, and hold no NaN or "
           "infinity.\n"
           "What to try:\n"
           "  - a lower learning rate (a tenth of this one is a good start)\n"
           "  - gradient clipping: add `clip norm=1.0` to the train block\n"
           "  - a warmup schedule, e.g. `schedule warmup 500 then cosine`\n"
           "  - checking the data for extreme values (huge inputs or targets, or pixels that "
           "need `scale 1/255`)\n",
           path_in("runs/guard"));
  const char *p = strstr(out, "\nwrote ");
  CHECK(p && strcmp(p + 1, want) == 0, "krt_finish:\n%s\nwant:\n%s", p ? p + 1 : out, want);
  free(out);

  char *json;
  cJSON *rep = report_of("runs/guard", &json);
  cJSON *ev = cJSON_GetObjectItem(rep, "guard_events");
  const struct {
    int step;
    const char *reason, *where;
    double scale;
  } events[] = {
      {21, "the loss spiked to 11, more than 10× the recent median 1", NULL, 0.5},
      {23, "the loss was NaN", "the gradient of dense1.weight", 0.25},
      {24, "the loss was infinite", NULL, 0.125},
      {25, "a gradient was not finite", "the output of dense1", 0.0625},
  };
  int ok = cJSON_GetArraySize(ev) == 4;
  for (int i = 0; ok && i < 4; i++) {
    cJSON *e = cJSON_GetArrayItem(ev, i), *where = cJSON_GetObjectItem(e, "where");
    ok &= num(e, "step") == events[i].step && num(e, "epoch") == 1 &&
          str_is(e, "reason", events[i].reason) && num(e, "lr_scale_after") == events[i].scale &&
          (events[i].where ? cJSON_IsString(where) && !strcmp(where->valuestring, events[i].where)
                           : cJSON_IsNull(where));
  }
  CHECK(ok && str_is(rep, "stopped", "guard") && num(rep, "steps") == 25 &&
            cJSON_IsFalse(cJSON_GetObjectItem(rep, "early_stopped")),
        "report.json:\n%s", json);
  cJSON_Delete(rep);
  free(json);
  krt_run_free(g.r);

  // no spike check without spike_factor; guard_limit 1 stops at the first event; with early
  // stopping on, the guard's stop still restores the best epoch
  cfg.spike_factor = 0;
  cfg.guard_limit = 1;
  cfg.early_patience = 3;
  cfg.out_dir = path_in("runs/guard1");
  g = (GuardScript){0};
  g.r = krt_run_new(&cfg);
  out = stdout_of(guard_script, &g);
  CHECK(g.ok[21] && g.ok[22] && !g.ok[23] && g.stop[23] && krt_step(g.r) == 23 && g.status == 3,
        "limit 1:\n%s", out);
  CHECK(strstr(out, "guard: step 23 discarded: the loss was NaN (first non-finite value: the "
                    "gradient of dense1.weight); 1 step in a row discarded: training stops\n") &&
            strstr(out, "\nearly stopping: kept the weights of epoch 1 (train_loss 3.6818); wrote ") &&
            strstr(out, "\ntraining stopped at step 23 (epoch 1): the step was discarded (the "
                        "loss was NaN; first non-finite value: the gradient of dense1.weight).\n"
                        "What happened: the numbers blew up. The loss or the gradients became "
                        "NaN or infinite, or the loss jumped far above its recent values. No "
                        "discarded step changed the weights.\n") &&
            strstr(out, "\nThe saved weights are those of epoch 1, the best epoch, and hold no NaN "
                        "or infinity.\n"),
        "limit 1 lines:\n%s", out);
  free(out);
  krt_run_free(g.r);
}

// A guard that sees only good steps says so; one that discards a few without stopping lists
// them. nan_steps: which of 8 steps (from 0) have a NaN loss, as a bit mask.
static void guard_epoch(void *arg) {
  KrtRun *r = ((void **)arg)[0];
  int mask = *(int *)((void **)arg)[1];
  krt_epoch_begin(r, 0);
  for (int i = 0; i < 8; i++) {
    int bad = mask >> i & 1;
    float lr = 0.1f * krt_lr_scale(r);  // as the generated loop: the rate, then the step
    CHECK(krt_guard(r, bad ? NAN : 1, 1, 1) == !bad, "step %d", i);
    krt_train_step_end(r, 1, NULL, NULL, 1, lr);
  }
  krt_epoch_end(r);
  krt_finish(r);
}

static void test_guard_summary(void) {
  KrtConfig cfg = base_config();
  cfg.out_dir = path_in("runs/guard_some");
  cfg.test_kind = 0;
  cfg.epochs = 1;
  int mask = 1 << 2 | 1 << 5;
  KrtRun *r = krt_run_new(&cfg);
  void *args[] = {r, &mask};
  char *out = stdout_of(guard_epoch, args);
  CHECK(strstr(out, "guard: step 3 discarded: the loss was NaN; learning rate halved to 0.05\n"
                    "guard: step 6 discarded: the loss was NaN; learning rate halved to 0.025\n") &&
            strstr(out, "\nguard: 2 steps discarded (steps 3, 6); the learning rate ends at 0.25× "
                        "the schedule's\n"),
        "guard summary:\n%s", out);
  free(out);
  krt_run_free(r);

  cfg.out_dir = path_in("runs/guard_none");
  mask = 0;
  r = krt_run_new(&cfg);
  args[0] = r;
  out = stdout_of(guard_epoch, args);
  CHECK(strstr(out, "\nguard: no step was discarded\n"), "guard summary:\n%s", out);
  free(out);
  krt_run_free(r);
}

// Regression has no confusion matrix; a run without early stopping writes no best.safetensors.
static void test_regression_report(void) {
  KrtConfig cfg = base_config();
  cfg.out_dir = path_in("runs/regression");
  cfg.classes = 0;
  cfg.val_kind = 2;
  cfg.val_path = "small.csv";
  cfg.epochs = 2;
  Script s = {.n = 2, .tl = {1, 0.5f}, .vl = {1, 2}, .finish = 1};
  s.r = krt_run_new(&cfg);
  char *out = stdout_of(run_script, &s);
  CHECK(strstr(out, "\nbest epoch: 1 of 2 (val_loss 1.0000)\nthe gap between training and "
                    "validation loss widened from 0.0000 to 1.5000 after epoch 1: the network "
                    "started to memorise the training data (overfitting); the saved weights are "
                    "those of the last epoch (early stopping would keep those of epoch 1)\n") &&
            !strstr(out, "confusion"),
        "regression:\n%s", out);
  free(out);
  char *json;
  cJSON *rep = report_of("runs/regression", &json);
  cJSON *gap = cJSON_GetObjectItem(rep, "train_val_gap");
  CHECK(cJSON_IsNull(cJSON_GetObjectItem(rep, "confusion_matrix")) &&
            cJSON_IsNull(cJSON_GetObjectItem(rep, "per_class_accuracy")) &&
            num(cJSON_GetObjectItem(gap, "last_epoch"), "loss") == 1.5 &&
            cJSON_IsNull(cJSON_GetObjectItem(cJSON_GetObjectItem(gap, "last_epoch"), "accuracy")),
        "regression report.json:\n%s", json);
  cJSON_Delete(rep);
  free(json);
  krt_run_free(s.r);
}

// ---------------------------------------------------------------------------------------------
// exact checkpoints, interruption and resume
//
// A tiny softmax regression trained by hand through the loop the compiler generates: a
// momentum optimizer (state tensors), a running-mean buffer, "dropout" noise keyed by the
// step, a schedule over the total steps, a NaN step and a spike for the guard, on_plateau, a
// holdout for validation. Every weight depends on the order and count of the steps, so a
// resumed run that missed or repeated anything would not end byte-identical.

static const KrtTensorDesc sim_descs[] = {
    {.name = "dense.weight", .kind = KRT_PARAM, .rank = 2, .dim = {3, 2}, .init = KRT_UNIFORM,
     .a = -0.5, .b = 0.5},
    {.name = "dense.bias", .kind = KRT_PARAM, .rank = 1, .dim = {3}, .init = KRT_CONST, .a = 0.1},
    {.name = "bn.mean", .kind = KRT_BUFFER, .rank = 1, .dim = {3}, .init = KRT_CONST},
    {.name = "dense.weight.exp_avg", .kind = KRT_STATE, .rank = 2, .dim = {3, 2}},
    {.name = "dense.bias.exp_avg", .kind = KRT_STATE, .rank = 1, .dim = {3}},
};

static KrtConfig sim_config(const char *out) {
  return (KrtConfig){
      .script = "tests/data/smoke.nn", .out_dir = path_in(out),
      .train_kind = 2, .train_path = "small.csv", .holdout = 0.2,
      .test_kind = 2, .test_path = "small.csv",
      .features = 2, .ydim = 1, .classes = 3,
      .batch = 2, .epochs = 8, .seed = 11, .shuffle = true, .threads = 1,
      .tensors = sim_descs, .ntensors = 5, .parameters = 9,
      .program_hash = "prog-1", .resume_hint = "keel run smoke.nn",
      .spike_factor = 3, .plateau_patience = 1, .plateau_factor = 0.5,
  };
}

enum { AT_NONE, AT_START, AT_STEP, AT_VAL, AT_END };

typedef struct {
  KrtConfig cfg;
  const char *resume;  // krt_resume from this file; NULL: init from the seed
  int at, sig;         // raise sig AT_START (before the loop), AT_STEP (during step `when`),
  int64_t when;        // AT_VAL (during the val evaluation of epoch `when`) or AT_END
  int twice;           // raise it twice (the second one kills)
  int64_t kill_at;     // raise SIGKILL during this step; -1: never
} Sim;

static void sim_forward(KrtRun *r, const float *x, int64_t n, float *out) {
  const float *w = krt_tensor(r, 0), *b = krt_tensor(r, 1);
  for (int64_t i = 0; i < n; i++)
    for (int c = 0; c < 3; c++)
      out[3 * i + c] = 0.1f * (w[2 * c] * x[2 * i] + w[2 * c + 1] * x[2 * i + 1]) + b[c];
}

// Mean cross-entropy; g (when given) gets d loss / d out.
static float sim_loss(const float *out, const float *y, int64_t n, float *g) {
  double loss = 0;
  for (int64_t i = 0; i < n; i++) {
    const float *o = out + 3 * i;
    float m = fmaxf(o[0], fmaxf(o[1], o[2]));
    double z = exp(o[0] - m) + exp(o[1] - m) + exp(o[2] - m);
    loss += log(z) + m - o[(int)y[i]];
    for (int c = 0; g && c < 3; c++)
      g[3 * i + c] = (float)((exp(o[c] - m) / z - (c == (int)y[i])) / (double)n);
  }
  return (float)(loss / (double)n);
}

static void sim_step(KrtRun *r, uint64_t seed, const float *x, const float *y, int64_t n,
                     int64_t step, float lr, float *out, float *loss) {
  float *w = krt_tensor(r, 0), *b = krt_tensor(r, 1), *bn = krt_tensor(r, 2);
  float *mw = krt_tensor(r, 3), *mb = krt_tensor(r, 4);
  float g[6], gw[6] = {0}, gb[3] = {0}, noise[9];
  sim_forward(r, x, n, out);
  *loss = sim_loss(out, y, n, g);
  krt_rand_fill(noise, 9, seed, 7, (uint64_t)step);  // "dropout": keyed by the step
  for (int64_t i = 0; i < n; i++)
    for (int c = 0; c < 3; c++) {
      gw[2 * c] += 0.1f * g[3 * i + c] * x[2 * i];
      gw[2 * c + 1] += 0.1f * g[3 * i + c] * x[2 * i + 1];
      gb[c] += g[3 * i + c];
    }
  float grad_sq = 0;
  for (int j = 0; j < 9; j++) {
    float *gj = j < 6 ? &gw[j] : &gb[j - 6];
    *gj += 0.01f * (noise[j] - 0.5f);
    grad_sq += *gj * *gj;
  }
  if (step == 5)
    *loss = NAN;  // discarded by the guard
  if (step == 26)
    *loss *= 50;  // a spike: the guard needs the window of recent losses to see it
  if (!krt_guard(r, *loss, grad_sq, n))
    return;
  for (int j = 0; j < 6; j++) {
    mw[j] = 0.9f * mw[j] + gw[j];
    w[j] -= lr * mw[j];
  }
  for (int c = 0; c < 3; c++) {
    mb[c] = 0.9f * mb[c] + gb[c];
    b[c] -= lr * mb[c];
    bn[c] = 0.9f * bn[c] + 0.1f * out[c];
  }
}

// The whole run, as the generated loop and the driver run it; returns krt_finish's status.
static int sim(void *arg) {
  const Sim *s = arg;
  KrtRun *r = krt_run_new(&s->cfg);
  if (s->resume)
    krt_resume(r, s->resume);
  else
    krt_init_tensors(r);
  if (s->at == AT_START)
    raise(s->sig);
  float x[4], y[2], out[6], loss;
  int64_t epochs = krt_epochs(r), total = krt_total_steps(r);
  for (int64_t e = krt_first_epoch(r); e < epochs; e++) {
    int64_t nb = krt_epoch_begin(r, e);
    for (int64_t b = krt_first_batch(r); b < nb; b++) {
      int64_t n = krt_train_batch(r, b, x, y);
      int64_t step = krt_step(r);
      if (step == s->kill_at)
        raise(SIGKILL);
      if (s->at == AT_STEP && step == s->when) {
        raise(s->sig);
        if (s->twice)
          raise(s->sig);
      }
      float lr = 0.5f * (1 - (float)step / (float)total) * krt_lr_scale(r);
      sim_step(r, s->cfg.seed, x, y, n, step, lr, out, &loss);
      if (krt_train_step_end(r, loss, out, y, n, lr))
        break;
    }
    int64_t nv = krt_eval_begin(r, KRT_VAL);
    for (int64_t b = 0; b < nv; b++) {
      if (s->at == AT_VAL && e == s->when && b == 0)
        raise(s->sig);
      int64_t n = krt_eval_batch(r, KRT_VAL, b, x, y);
      sim_forward(r, x, n, out);
      krt_eval_step_end(r, KRT_VAL, sim_loss(out, y, n, NULL), out, y, n);
    }
    if (krt_epoch_end(r))
      break;
  }
  if (s->at == AT_END)
    raise(s->sig);
  krt_train_end(r);
  int64_t nt = krt_eval_begin(r, KRT_TEST);
  for (int64_t b = 0; b < nt; b++) {
    int64_t n = krt_eval_batch(r, KRT_TEST, b, x, y);
    sim_forward(r, x, n, out);
    krt_eval_step_end(r, KRT_TEST, sim_loss(out, y, n, NULL), out, y, n);
  }
  int status = krt_finish(r);
  krt_run_free(r);
  return status;
}

static char sim_stdout[256];

// Runs the simulation in a child (stdout into sim_stdout's file, stderr beside it); returns
// its exit status, or 1000 + the signal that ended it.
static int run_sim(Sim s) {
  snprintf(sim_stdout, sizeof sim_stdout, "%s/sim_stdout.txt", tmp);
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    char errp[300];
    snprintf(errp, sizeof errp, "%s.err", sim_stdout);
    int fd = open(sim_stdout, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int fe = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fe, 2);
    int status = sim(&s);
    fflush(stdout);
    _exit(status);
  }
  int status;
  waitpid(pid, &status, 0);
  return WIFSIGNALED(status) ? 1000 + WTERMSIG(status) : WEXITSTATUS(status);
}

static Sim sim_of(const char *out) {
  return (Sim){.cfg = sim_config(out), .kill_at = -1};
}

static int same_file(const char *a, const char *b) {
  long la, lb;
  char *x = slurp(a, &la), *y = slurp(b, &lb);
  int same = x && y && la == lb && memcmp(x, y, (size_t)la) == 0;
  free(x);
  free(y);
  return same;
}

// metrics.csv without its last column (seconds); report.json without samples_per_second.
static char *metrics_sans_seconds(const char *dir) {
  char name[128];
  snprintf(name, sizeof name, "%s/metrics.csv", dir);
  char *csv = slurp(path_in(name), NULL), *out = calloc(1, csv ? strlen(csv) + 1 : 1);
  size_t k = 0;
  for (char *line = csv; line && *line;) {
    char *end = strchr(line, '\n'), *comma = line;
    for (char *c = line; c < end; c++)
      if (*c == ',')
        comma = c;
    memcpy(out + k, line, (size_t)(comma - line));
    k += (size_t)(comma - line);
    out[k++] = '\n';
    line = end + 1;
  }
  free(csv);
  return out;
}

static char *report_sans_speed(const char *dir) {
  char name[128];
  snprintf(name, sizeof name, "%s/report.json", dir);
  char *json = slurp(path_in(name), NULL);
  char *p = json ? strstr(json, "  \"samples_per_second\"") : NULL;
  if (p)
    memmove(p, strchr(p, '\n') + 1, strlen(strchr(p, '\n') + 1) + 1);
  return json;
}

// The run in dir ended as the uninterrupted one in want_dir: the same weights byte for byte
// (and best.safetensors with early stopping), the same metrics and report.
static void check_same_run(const char *dir, const char *want_dir, const char *what) {
  char a[128], b[128];
  const char *files[] = {"final.safetensors", "best.safetensors"};
  for (int i = 0; i < 2; i++) {
    snprintf(a, sizeof a, "%s/%s", dir, files[i]);
    snprintf(b, sizeof b, "%s/%s", want_dir, files[i]);
    char *pa = path_in(a), *pb = path_in(b);
    int has = access(pb, F_OK) == 0;
    CHECK(has == (access(pa, F_OK) == 0) && (!has || same_file(pa, pb)),
          "%s: %s differs from the uninterrupted run's", what, files[i]);
  }
  char *m1 = metrics_sans_seconds(dir), *m2 = metrics_sans_seconds(want_dir);
  CHECK(strcmp(m1, m2) == 0, "%s: metrics.csv:\n%s\nwant:\n%s", what, m1, m2);
  char *r1 = report_sans_speed(dir), *r2 = report_sans_speed(want_dir);
  CHECK(r1 && r2 && strcmp(r1, r2) == 0, "%s: report.json:\n%s\nwant:\n%s", what, r1, r2);
  free(m1);
  free(m2);
  free(r1);
  free(r2);
}

// The progress lines "epoch k/8 ..." up to the rate (the seconds differ).
static char *epoch_lines(const char *out) {
  char *lines = calloc(1, strlen(out) + 1);
  for (const char *p = out; (p = strstr(p, "epoch ")) != NULL; p++) {
    if (!(p == out || p[-1] == '\n') || !strchr(p, '/') || strchr(p, '/') > strchr(p, ' ') + 4)
      continue;
    const char *end = strstr(p, "  lr ");
    end = end ? strchr(end + 5, ' ') : NULL;
    if (end)
      strncat(lines, p, (size_t)(end - p + 1));
  }
  return lines;
}

static cJSON *state_of(const char *path, KrtStFile *f) {
  *f = krt_st_load(path);
  const char *text = krt_st_meta(f, "keel_state");
  return cJSON_Parse(text ? text : "");
}

static char *interrupted_line(const char *dir, int64_t step, const char *where) {
  static char buf[600];
  snprintf(buf, sizeof buf,
           "\ninterrupted at step %lld (%s); to continue: keel run smoke.nn --resume "
           "%s/last.safetensors\n", (long long)step, where, path_in(dir));
  return buf;
}

static void test_resume(void) {
  // A: the uninterrupted run
  Sim a = sim_of("runs/A");
  CHECK(run_sim(a) == 0, "run A");
  char *out_a = slurp(sim_stdout, NULL);
  char *lines_a = epoch_lines(out_a);
  CHECK(strstr(out_a, "guard: step 6 discarded: the loss was NaN") &&
            strstr(out_a, "guard: step 27 discarded: the loss spiked") &&
            strstr(out_a, "on_plateau reduced the learning rate after epoch"),
        "run A exercises the guard and on_plateau:\n%s", out_a);
  CHECK(access(path_in("runs/A/last.safetensors"), F_OK) == 0, "run A wrote last.safetensors");

  // B: interrupted (SIGINT) during step 14 of 32, in epoch 4 (4 batches an epoch)
  Sim b = sim_of("runs/B");
  b.at = AT_STEP, b.sig = SIGINT, b.when = 13;
  int st = run_sim(b);
  char *out = slurp(sim_stdout, NULL);
  char *err_text = NULL;
  {
    char errp[300];
    snprintf(errp, sizeof errp, "%s.err", sim_stdout);
    err_text = slurp(errp, NULL);
  }
  CHECK(st == 130, "interrupted run: exit status %d", st);
  CHECK(strstr(out, interrupted_line("runs/B", 14, "epoch 4")) != NULL,
        "interrupted line in:\n%s", out);
  CHECK(err_text && strstr(err_text, "keel: interrupted: the current step finishes, then "
                                     "last.safetensors is written (press Ctrl-C again to stop "
                                     "at once)\n"),
        "the handler's line:\n%s", err_text ? err_text : "");
  free(err_text);
  char want[600];
  snprintf(want, sizeof want, "\nwrote %s/last.safetensors, metrics.csv, report.json\n",
           path_in("runs/B"));
  CHECK(strstr(out, want) != NULL && strstr(out, "trained 3 epochs (14 steps) in "),
        "interrupted run's output:\n%s", out);
  free(out);
  CHECK(access(path_in("runs/B/final.safetensors"), F_OK) != 0,
        "an interrupted run writes no final.safetensors");
  CHECK(files_with(path_in("runs/B"), ".tmp.") == 0, "no temporary files");
  char *json;
  cJSON *rep = report_of("runs/B", &json);
  CHECK(str_is(rep, "stopped", "interrupted") && num(rep, "steps") == 14 &&
            num(rep, "epochs") == 3,
        "interrupted report.json:\n%s", json);
  cJSON_Delete(rep);
  free(json);
  char *csv = slurp(path_in("runs/B/metrics.csv"), NULL);
  int nlines = 0;
  for (const char *c = csv; c && *c; c++)
    nlines += *c == '\n';
  CHECK(nlines == 4, "metrics.csv of the interrupted run has its 3 epochs:\n%s", csv);
  free(csv);
  KrtStFile f;
  cJSON *state = state_of(path_in("runs/B/last.safetensors"), &f);
  cJSON *sums = cJSON_GetObjectItem(state, "epoch_sums");
  CHECK(num(state, "step") == 14 && num(state, "epoch") == 3 && num(state, "batch") == 2 &&
            num(state, "epochs_done") == 3 && num(sums, "samples") == 4 &&
            cJSON_GetArraySize(cJSON_GetObjectItem(state, "rows")) == 3,
        "the mid-epoch state: %s", krt_st_meta(&f, "keel_state"));
  cJSON_Delete(state);
  krt_st_close(&f);

  // B, resumed: the same weights byte for byte, the same metrics and report
  b = sim_of("runs/B");
  b.resume = path_in("runs/B/last.safetensors");
  CHECK(run_sim(b) == 0, "resumed run");
  out = slurp(sim_stdout, NULL);
  snprintf(want, sizeof want, "resuming from %s: epoch 4, batch 2 of 4 (step 14)\n",
           path_in("runs/B/last.safetensors"));
  CHECK(strncmp(out, want, strlen(want)) == 0, "resumed run's first line:\n%s", out);
  // the resumed epoch's line is the uninterrupted run's (its sums went on)
  char *lines_b = epoch_lines(out);
  const char *e4 = strstr(lines_a, "epoch 4/8");
  CHECK(e4 && strcmp(lines_b, e4) == 0, "epoch lines after resuming:\n%s\nwant:\n%s", lines_b,
        e4 ? e4 : lines_a);
  free(lines_b);
  free(out);
  check_same_run("runs/B", "runs/A", "resumed mid-epoch");

  // C: interrupted during the val evaluation of epoch 2: the epoch closes, the checkpoint is
  // at the boundary
  Sim c = sim_of("runs/C");
  c.at = AT_VAL, c.sig = SIGINT, c.when = 1;
  st = run_sim(c);
  out = slurp(sim_stdout, NULL);
  CHECK(st == 130 && strstr(out, interrupted_line("runs/C", 8, "after epoch 2")),
        "interrupted in the val evaluation (%d):\n%s", st, out);
  free(out);
  state = state_of(path_in("runs/C/last.safetensors"), &f);
  sums = cJSON_GetObjectItem(state, "epoch_sums");
  const char *names[] = {"dense.weight", "dense.bias", "bn.mean", "dense.weight.exp_avg",
                         "dense.bias.exp_avg"};
  int names_ok = f.count == 5;
  for (int i = 0; names_ok && i < 5; i++)
    names_ok &= strcmp(f.t[i].name, names[i]) == 0 && strcmp(f.t[i].dtype, "F32") == 0;
  cJSON *opt = cJSON_GetObjectItem(state, "optimizer_state");
  CHECK(names_ok && f.t[0].rank == 2 && f.t[0].dim[0] == 3 && f.t[0].dim[1] == 2 &&
            f.t[0].bytes == 24,
        "the checkpoint's tensors: params, buffers, optimizer state");
  CHECK(strcmp(krt_st_meta(&f, "format"), "pt") == 0 &&
            strcmp(krt_st_meta(&f, "producer"), "keel") == 0 &&
            strcmp(krt_st_meta(&f, "keel_program"), "prog-1") == 0,
        "the checkpoint's metadata");
  CHECK(state && num(state, "version") == 2 && str_is(state, "seed", "11") &&
            num(state, "batch_size") == 2 && num(state, "step") == 8 &&
            num(state, "epoch") == 2 && num(state, "batch") == 0 &&
            num(state, "epochs_done") == 2 && num(sums, "samples") == 0 &&
            num(sums, "loss") == 0 && num(state, "best_epoch") >= 1 &&
            cJSON_GetArraySize(cJSON_GetObjectItem(state, "rows")) == 2 &&
            cJSON_GetArraySize(opt) == 2 &&
            strcmp(cJSON_GetArrayItem(opt, 0)->valuestring, "dense.weight.exp_avg") == 0 &&
            num(cJSON_GetObjectItem(state, "guard"), "good_steps") == 7 &&
            cJSON_GetArraySize(cJSON_GetObjectItem(cJSON_GetObjectItem(state, "guard"),
                                                   "events")) == 1 &&
            num(state, "lr_scale") <= 0.5,
        "the boundary state: %s", krt_st_meta(&f, "keel_state"));
  cJSON_Delete(state);
  krt_st_close(&f);
  c = sim_of("runs/C");
  c.resume = path_in("runs/C/last.safetensors");
  CHECK(run_sim(c) == 0, "resumed from a boundary");
  out = slurp(sim_stdout, NULL);
  snprintf(want, sizeof want, "resuming from %s after epoch 2 (step 8)\n",
           path_in("runs/C/last.safetensors"));
  CHECK(strncmp(out, want, strlen(want)) == 0, "resumed run's first line:\n%s", out);
  free(out);
  check_same_run("runs/C", "runs/A", "resumed at a boundary");

  // D: SIGTERM during the last step of epoch 3 (its val evaluation is left for the resumed
  // run), then SIGINT during step 23 of the resumed run, then to the end
  Sim d = sim_of("runs/D");
  d.at = AT_STEP, d.sig = SIGTERM, d.when = 11;
  st = run_sim(d);
  out = slurp(sim_stdout, NULL);
  CHECK(st == 130 && strstr(out, interrupted_line("runs/D", 12, "epoch 3")),
        "SIGTERM (%d):\n%s", st, out);
  free(out);
  state = state_of(path_in("runs/D/last.safetensors"), &f);
  CHECK(num(state, "epoch") == 2 && num(state, "batch") == 4 && num(state, "epochs_done") == 2,
        "the val evaluation is still to do: %s", krt_st_meta(&f, "keel_state"));
  cJSON_Delete(state);
  krt_st_close(&f);
  d = sim_of("runs/D");
  d.resume = path_in("runs/D/last.safetensors");
  d.at = AT_STEP, d.sig = SIGINT, d.when = 22;
  st = run_sim(d);
  out = slurp(sim_stdout, NULL);
  CHECK(st == 130 && strstr(out, interrupted_line("runs/D", 23, "epoch 6")) &&
            strstr(out, "resuming from ") == out && strstr(out, ": epoch 3, batch 4 of 4 (step 12)\n"),
        "interrupted again (%d):\n%s", st, out);
  free(out);
  d = sim_of("runs/D");
  d.resume = path_in("runs/D/last.safetensors");
  CHECK(run_sim(d) == 0, "resumed twice");
  check_same_run("runs/D", "runs/A", "interrupted twice");

  // K: killed (SIGKILL) during step 19: last.safetensors is that of epoch 4's end
  Sim k = sim_of("runs/K");
  k.kill_at = 18;
  st = run_sim(k);
  CHECK(st == 1000 + SIGKILL, "killed: %d", st);
  state = state_of(path_in("runs/K/last.safetensors"), &f);
  CHECK(num(state, "step") == 16 && num(state, "epoch") == 4 && num(state, "batch") == 0,
        "after SIGKILL: %s", krt_st_meta(&f, "keel_state"));
  cJSON_Delete(state);
  krt_st_close(&f);
  k = sim_of("runs/K");
  k.resume = path_in("runs/K/last.safetensors");
  CHECK(run_sim(k) == 0, "resumed after SIGKILL");
  check_same_run("runs/K", "runs/A", "killed mid-epoch");

  // S: interrupted before the first step, and E: after the last epoch, before krt_train_end
  Sim s = sim_of("runs/S");
  s.at = AT_START, s.sig = SIGINT;
  st = run_sim(s);
  out = slurp(sim_stdout, NULL);
  CHECK(st == 130 && strstr(out, interrupted_line("runs/S", 0, "epoch 1")) &&
            !strstr(out, "epoch 1/8"),
        "interrupted before the first step (%d):\n%s", st, out);
  free(out);
  s = sim_of("runs/S");
  s.resume = path_in("runs/S/last.safetensors");
  CHECK(run_sim(s) == 0, "resumed from the start");
  check_same_run("runs/S", "runs/A", "interrupted before the first step");
  // (without a test set, the report's confusion matrix is the last val evaluation's: it
  // travels in the checkpoint too)
  Sim e = sim_of("runs/EA");
  e.cfg.test_kind = 0;
  CHECK(run_sim(e) == 0, "run without a test set");
  e.cfg.out_dir = path_in("runs/E");
  e.at = AT_END, e.sig = SIGINT;
  st = run_sim(e);
  out = slurp(sim_stdout, NULL);
  CHECK(st == 130 && strstr(out, interrupted_line("runs/E", 32, "after epoch 8")),
        "interrupted after the last epoch (%d):\n%s", st, out);
  free(out);
  e.at = AT_NONE;
  e.resume = path_in("runs/E/last.safetensors");
  CHECK(run_sim(e) == 0, "resumed after the last epoch");
  out = slurp(sim_stdout, NULL);
  CHECK(!strstr(out, "\nepoch ") &&
            strstr(out, "\nconfusion matrix of the validation set after epoch 8 "),
        "nothing left to train:\n%s", out);
  free(out);
  check_same_run("runs/E", "runs/EA", "interrupted after the last epoch");

  // a finished run's last.safetensors, resumed, only finishes again
  Sim again = sim_of("runs/again");
  again.resume = path_in("runs/A/last.safetensors");
  CHECK(run_sim(again) == 0, "resumed a finished run");
  check_same_run("runs/again", "runs/A", "a finished run resumed");

  // more epochs than the checkpoint's run planned: allowed, with a note
  Sim more = sim_of("runs/more");
  more.cfg.epochs = 9;
  more.cfg.threads = 2;
  more.resume = path_in("runs/C/last.safetensors");
  CHECK(run_sim(more) == 0, "resumed with more epochs");
  out = slurp(sim_stdout, NULL);
  CHECK(strstr(out, " after epoch 8 (step 32)\nnote: the checkpoint's run was to train 32 "
                    "steps, this one 36; a schedule over the whole run follows the new count\n"
                    "note: the checkpoint's run used --threads 1, this one 2; the weights will "
                    "not be bit-identical to an uninterrupted run's\nepoch 9/9 "),
        "more epochs:\n%s", out);
  free(out);

  // a second Ctrl-C ends the process at once (the default action)
  Sim twice = sim_of("runs/twice");
  twice.at = AT_STEP, twice.sig = SIGINT, twice.when = 3, twice.twice = 1;
  st = run_sim(twice);
  CHECK(st == 1000 + SIGINT, "a second SIGINT kills: %d", st);

  // with early stopping: the best epoch's copies travel in the checkpoint ("best/<name>")
  Sim es = sim_of("runs/esA");
  es.cfg.test_kind = 0;  // the report shows the val set's matrix of the best epoch
  es.cfg.early_min_delta = 0.02;
  es.cfg.early_patience = 4;
  CHECK(run_sim(es) == 0, "early stopping run");
  out = slurp(sim_stdout, NULL);
  CHECK(strstr(out, "early stopping: val_loss has not improved by more than 0.02 for 4 epochs "
                    "(best 1.2221 at epoch 1)\n") &&
            strstr(out, "early stopping: restored the weights of epoch 1") &&
            strstr(out, "\nconfusion matrix of the validation set at epoch 1, the restored "),
        "early stopping fires after epoch 5 and restores epoch 1:\n%s", out);
  free(out);
  es.cfg.out_dir = path_in("runs/esB");
  es.at = AT_STEP, es.sig = SIGINT, es.when = 13;  // in epoch 4
  CHECK(run_sim(es) == 130, "early stopping run, interrupted");
  f = krt_st_load(path_in("runs/esB/last.safetensors"));
  CHECK(f.count == 10 && strcmp(f.t[5].name, "best/dense.weight") == 0 &&
            strcmp(f.t[9].name, "best/dense.bias.exp_avg") == 0,
        "best/ copies: %d tensors", f.count);
  krt_st_close(&f);
  es.at = AT_NONE;
  es.resume = path_in("runs/esB/last.safetensors");
  CHECK(run_sim(es) == 0, "early stopping run, resumed");
  check_same_run("runs/esB", "runs/esA", "early stopping, resumed");
  free(lines_a);
  free(out_a);
}

// Refusals: another model, another optimizer, another program, other data.
static KrtConfig refuse_cfg;
static const char *refuse_path;
static void resume_child(void *arg) {
  (void)arg;
  KrtRun *r = krt_run_new(&refuse_cfg);
  krt_resume(r, refuse_path);
}

static void expect_refusal(KrtConfig cfg, const char *path, const char *why) {
  refuse_cfg = cfg;
  refuse_path = path;
  char want[900];
  snprintf(want, sizeof want, "%s: %s", path, why);
  CHECK_FAIL(resume_child, NULL, want);
}

// A checkpoint of a run of these tensors, after an epoch without steps.
static void empty_epoch(void *arg) {
  KrtRun *r = arg;
  krt_init_tensors(r);
  krt_epoch_begin(r, 0);
  krt_epoch_end(r);
}

static void write_checkpoint_of(const KrtTensorDesc *d, int n, const char *out) {
  KrtConfig cfg = sim_config(out);
  cfg.tensors = d;
  cfg.ntensors = n;
  KrtRun *r = krt_run_new(&cfg);
  free(stdout_of(empty_epoch, r));
  krt_run_free(r);
}

static void test_resume_refused(void) {
  char ckpt[256];  // from test_resume
  snprintf(ckpt, sizeof ckpt, "%s", path_in("runs/C/last.safetensors"));
  KrtConfig cfg = sim_config("runs/refused");
  KrtTensorDesc d[6];
  memcpy(d, sim_descs, sizeof sim_descs);
  d[0].dim[0] = d[3].dim[0] = 4;
  cfg.tensors = d;
  expect_refusal(cfg, ckpt,
                 "the checkpoint's dense.weight is [3, 2] but this network's is [4, 2] (a "
                 "different model)");
  memcpy(d, sim_descs, sizeof sim_descs);
  d[5] = (KrtTensorDesc){.name = "dense2.weight", .kind = KRT_PARAM, .rank = 1, .dim = {3}};
  cfg.ntensors = 6;
  expect_refusal(cfg, ckpt, "this network has dense2.weight, which the checkpoint lacks (a "
                            "different model)");
  cfg.ntensors = 5;
  d[2] = d[4];  // no bn.mean
  cfg.ntensors = 4;
  d[2] = sim_descs[3], d[3] = sim_descs[4];
  expect_refusal(cfg, ckpt, "the checkpoint has bn.mean, which this network lacks (a different "
                            "model)");
  // the optimizer: SGD with momentum, Adam's second moment, plain SGD
  memcpy(d, sim_descs, sizeof sim_descs);
  cfg.ntensors = 5;
  d[3].name = "dense.weight.momentum_buffer";
  d[4].name = "dense.bias.momentum_buffer";
  expect_refusal(cfg, ckpt,
                 "this program needs the optimizer state dense.weight.momentum_buffer, which the "
                 "checkpoint lacks (it was trained with another optimizer; it has "
                 "dense.weight.exp_avg)");
  write_checkpoint_of(d, 5, "runs/momentum");
  memcpy(d, sim_descs, sizeof sim_descs);
  expect_refusal(cfg, path_in("runs/momentum/last.safetensors"),
                 "this program needs the optimizer state dense.weight.exp_avg, which the "
                 "checkpoint lacks (it was trained with another optimizer; it has "
                 "dense.weight.momentum_buffer)");
  d[5] = (KrtTensorDesc){.name = "dense.weight.exp_avg_sq", .kind = KRT_STATE, .rank = 2,
                         .dim = {3, 2}};
  cfg.ntensors = 6;
  expect_refusal(cfg, ckpt,
                 "this program needs the optimizer state dense.weight.exp_avg_sq, which the "
                 "checkpoint lacks (it was trained with another optimizer; it has "
                 "dense.weight.exp_avg)");
  cfg.ntensors = 3;  // plain SGD: no state
  expect_refusal(cfg, ckpt,
                 "the checkpoint has the optimizer state dense.weight.exp_avg, which this program "
                 "does not use (it was trained with another optimizer)");
  write_checkpoint_of(sim_descs, 3, "runs/sgd");
  cfg.ntensors = 5;
  expect_refusal(cfg, path_in("runs/sgd/last.safetensors"),
                 "this program needs the optimizer state dense.weight.exp_avg, which the "
                 "checkpoint lacks (it was trained with another optimizer, which keeps no "
                 "state)");

  // the same tensors: another program, seed, batch or data
  cfg = sim_config("runs/refused");
  cfg.program_hash = "prog-2";
  expect_refusal(cfg, ckpt, "written by a different program (the same tensors, but the loss, "
                            "schedule or settings differ)");
  cfg.program_hash = NULL;
  expect_refusal(cfg, ckpt, "written by a different program (the same tensors, but the loss, "
                            "schedule or settings differ)");
  cfg = sim_config("runs/refused");
  cfg.seed = 12;
  expect_refusal(cfg, ckpt, "the checkpoint was trained with seed 11, this run has seed 12 (a "
                            "resumed run must keep its seed)");
  cfg = sim_config("runs/refused");
  cfg.batch = 4;
  expect_refusal(cfg, ckpt, "the checkpoint was trained with batch 2, this run has batch 4 (a "
                            "resumed run must keep its batch size)");
  cfg = sim_config("runs/refused");
  cfg.holdout = 0.5;
  expect_refusal(cfg, ckpt, "the checkpoint was trained on other data (7 training samples, this "
                            "run has 4)");
  cfg = sim_config("runs/refused");
  cfg.scale = 0.5;
  expect_refusal(cfg, ckpt, "the checkpoint was trained on other data (as many training "
                            "samples, 7, but other values)");

  // not a checkpoint to resume from, or a broken one
  cfg = sim_config("runs/refused");
  expect_refusal(cfg, path_in("runs/A/final.safetensors"),
                 "not a checkpoint to resume from (its metadata has no keel_state; "
                 "final.safetensors and best.safetensors hold weights only, which --init starts "
                 "a new run from)");
  expect_refusal(cfg, path_in("runs/none.safetensors"), "cannot open: No such file or directory");
  const char *meta[] = {"keel_state", "{\"version\": 2}"};
  char *broken = path_in("broken.safetensors");
  krt_st_write(broken, NULL, 0, meta, 1);
  expect_refusal(cfg, broken, "bad checkpoint state: 'optimizer_state' is missing or malformed");
  meta[1] = "{\"version\": 1}";  // before the data fingerprint in lanes
  krt_st_write(broken, NULL, 0, meta, 1);
  expect_refusal(cfg, broken, "checkpoint state version 1; this runtime reads version 2");
  meta[1] = "[1, 2";
  krt_st_write(broken, NULL, 0, meta, 1);
  expect_refusal(cfg, broken, "bad checkpoint state: keel_state is not a JSON object");
  // a refused resume writes nothing
  CHECK(access(path_in("runs/refused"), F_OK) != 0, "a refused resume wrote into its out_dir");
  CHECK(files_with(tmp, ".tmp.") == 0 && files_with(path_in("runs/C"), ".tmp.") == 0,
        "no temporary files");
}

// The thread pool: every element of [0, n) in exactly one chunk, the chunks where they are
// for the same n and thread count, and krt_sgemm in pieces equal to one product.
static int hits[1000];
static int64_t chunk_lo[8];
static void mark(void *ctx, int64_t lo, int64_t hi, int t) {
  (void)ctx;
  for (int64_t i = lo; i < hi; i++)
    __atomic_add_fetch(&hits[i], 1, __ATOMIC_RELAXED);
  chunk_lo[t] = lo;
}

// op(A) op(B) + add for row-major A and B, in double
static void gemm_want(int ta, int tb, int m, int n, int K, const float *a, int lda, const float *b,
                      int ldb, float *want, float add) {
  for (int i = 0; i < m; i++)
    for (int j = 0; j < n; j++) {
      double sum = 0;
      for (int p = 0; p < K; p++)
        sum += (double)a[ta ? p * lda + i : i * lda + p] * b[tb ? j * ldb + p : p * ldb + j];
      want[i * n + j] = (float)sum + add;
    }
}

static void test_threads(void) {
  krt_threads_start(3);
  CHECK(krt_threads() == 3, "threads %d", krt_threads());
  int64_t ns[] = {0, 1, 15, 16, 17, 100, 999, 1000};
  for (size_t k = 0; k < sizeof ns / sizeof *ns; k++)
    for (int align = 1; align <= 16; align *= 4) {
      memset(hits, 0, sizeof hits);
      krt_parallel(mark, NULL, ns[k], align, 1);
      bool once = true;
      for (int64_t i = 0; i < 1000; i++)
        once &= hits[i] == (i < ns[k]);
      CHECK(once, "n %lld, align %d: an element is not in exactly one chunk", (long long)ns[k], align);
    }
  memset(chunk_lo, -1, sizeof chunk_lo);
  krt_parallel(mark, NULL, 1000, 16, 1);
  CHECK(chunk_lo[0] == 0 && chunk_lo[1] == 336 && chunk_lo[2] == 672,
        "chunks start at %lld, %lld, %lld", (long long)chunk_lo[0], (long long)chunk_lo[1],
        (long long)chunk_lo[2]);
  memset(hits, 0, sizeof hits);
  krt_parallel(mark, NULL, 1000, 16, 600);  // too small to share
  CHECK(hits[0] == 1 && hits[999] == 1 && chunk_lo[0] == 0, "one chunk below 2 · min_chunk");
  // C = op(A) op(B) for each transpose, split by rows (m ≥ n) and by columns (m < n), and
  // with K = 800 in pieces of rows, K = 2000 in pieces of columns (on the CPUs whose OpenBLAS
  // has small-matrix kernels); krt_sgemm_serial adding to C (beta 1, the convolutions' weight
  // gradient)
  enum { M = 70, N = 90, KMAX = 2000 };
  static float a[M * KMAX], b[KMAX * N], c[M * N], want[M * N];
  for (int i = 0; i < M * KMAX; i++)
    a[i] = (float)((i * 37) % 17) / 8 - 1;
  for (int i = 0; i < KMAX * N; i++)
    b[i] = (float)((i * 11) % 13) / 6 - 1;
  for (int K = 80; K <= KMAX; K = K == 80 ? 800 : K == 800 ? 2000 : KMAX + 1)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++)
        for (int wide = 0; wide < 3; wide++) {
          int m = wide ? M / 2 : M, n = N, lda = ta ? m : K, ldb = tb ? K : n;
          if (!wide)
            n = M / 2;  // m > n: rows
          gemm_want(ta, tb, m, n, K, a, lda, b, ldb, want, wide == 2);
          for (int i = 0; i < m * n; i++)
            c[i] = 1;
          if (wide == 2)
            krt_sgemm_serial(ta, tb, m, n, K, 1, a, lda, b, ldb, 1, c, n);
          else
            krt_sgemm(ta, tb, m, n, K, 1, a, lda, b, ldb, 0, c, n);
          double worst = 0;
          for (int i = 0; i < m * n; i++)
            worst = fmax(worst, fabs(c[i] - want[i]) / (1 + fabs(want[i])));
          CHECK(worst < 1e-5, "sgemm%s ta %d tb %d %dx%dx%d: off by %g", wide == 2 ? "_serial" : "",
                ta, tb, m, n, K, worst);
        }
  // more rows than columns, with partial pieces at the edge (A·Bᵀ: pieces of columns, the
  // others bands of rows); the same bits on 3 threads as in one call of krt_sgemm_serial
  // (except A·B: krt_sgemm does it in two halves of k, krt_sgemm_serial not). And A·B with more
  // columns than rows (in halves of k) with beta 1.
  enum { TM = 130, TN = 200, TK = 100 };
  static float tc[TM * TN], tserial[TM * TN], twant[TM * TN];
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      int lda = ta ? TM : TK, ldb = tb ? TK : TN;
      gemm_want(ta, tb, TM, TN, TK, a, lda, b, ldb, twant, 0);
      krt_sgemm(ta, tb, TM, TN, TK, 1, a, lda, b, ldb, 0, tc, TN);
      krt_sgemm_serial(ta, tb, TM, TN, TK, 1, a, lda, b, ldb, 0, tserial, TN);
      double worst = 0;
      for (int i = 0; i < TM * TN; i++)
        worst = fmax(worst, fabs(tc[i] - twant[i]) / (1 + fabs(twant[i])));
      CHECK(worst < 1e-5 && (!ta && !tb ? true : !memcmp(tc, tserial, sizeof tc)),
            "sgemm ta %d tb %d %dx%dx%d: off by %g, or not the serial call's bits", ta, tb, TM, TN,
            TK, worst);
    }
  for (int i = 0; i < TM * TN; i++)
    tc[i] = 1;
  gemm_want(0, 0, TN / 2, TM, TK, a, TK, b, TM, twant, 1);
  krt_sgemm(0, 0, TN / 2, TM, TK, 1, a, TK, b, TM, 1, tc, TM);
  double worst = 0;
  for (int i = 0; i < TN / 2 * TM; i++)
    worst = fmax(worst, fabs(tc[i] - twant[i]) / (1 + fabs(twant[i])));
  CHECK(worst < 1e-5, "sgemm in halves of k, %dx%dx%d, beta 1: off by %g", TN / 2, TM, TK, worst);
}

// conv.c against direct loops (in double) for strides, paddings, dilations and odd sizes,
// on 1 and 3 threads: the forward pass, the input gradient and the weight gradient.
static void test_conv_kernels(void) {
  int cfg[][4] = {{3, 1, 1, 1}, {3, 2, 1, 1}, {3, 1, 0, 2}, {5, 1, 2, 1}, {2, 2, 0, 1}, {3, 3, 2, 1}};
  enum { N = 5, C = 3, H = 7, W = 6, O = 4 };
  static float x[N * C * H * W], wt[O * C * 5 * 5], y[N * O * H * W], dy[N * O * H * W],
      dx[N * C * H * W], dw[O * C * 5 * 5];
  for (int i = 0; i < N * C * H * W; i++)
    x[i] = (float)((i * 29) % 23) / 11 - 1;
  for (int i = 0; i < O * C * 25; i++)
    wt[i] = (float)((i * 7) % 19) / 9 - 1;
  for (int i = 0; i < N * O * H * W; i++)
    dy[i] = (float)((i * 13) % 17) / 8 - 1;
  for (int threads = 1; threads <= 3; threads += 2) {
    krt_threads_start(threads);
    for (size_t c = 0; c < sizeof cfg / sizeof *cfg; c++) {
      int k = cfg[c][0], st = cfg[c][1], pd = cfg[c][2], dl = cfg[c][3];
      int oh = (H + 2 * pd - dl * (k - 1) - 1) / st + 1, ow = (W + 2 * pd - dl * (k - 1) - 1) / st + 1;
      krt_conv2d(x, wt, y, N, C, H, W, O, k, k, st, pd, dl);
      krt_conv2d_dx(dy, wt, dx, N, C, H, W, O, k, k, st, pd, dl);
      krt_conv2d_dw(x, dy, dw, N, C, H, W, O, k, k, st, pd, dl);
      static double ry[N * O * H * W], rdx[N * C * H * W], rdw[O * C * 25];
      memset(ry, 0, sizeof ry), memset(rdx, 0, sizeof rdx), memset(rdw, 0, sizeof rdw);
      for (int n = 0; n < N; n++)
        for (int o = 0; o < O; o++)
          for (int r = 0; r < oh; r++)
            for (int q = 0; q < ow; q++)
              for (int ci = 0; ci < C; ci++)
                for (int i = 0; i < k; i++)
                  for (int j = 0; j < k; j++) {
                    int yy = r * st - pd + i * dl, xx = q * st - pd + j * dl;
                    if (yy < 0 || yy >= H || xx < 0 || xx >= W)
                      continue;
                    int xi = ((n * C + ci) * H + yy) * W + xx, wi = ((o * C + ci) * k + i) * k + j;
                    int yi = ((n * O + o) * oh + r) * ow + q;
                    ry[yi] += (double)x[xi] * wt[wi];
                    rdx[xi] += (double)dy[yi] * wt[wi];
                    rdw[wi] += (double)dy[yi] * x[xi];
                  }
      double ey = 0, edx = 0, edw = 0;
      for (int i = 0; i < N * O * oh * ow; i++)
        ey = fmax(ey, fabs(y[i] - ry[i]));
      for (int i = 0; i < N * C * H * W; i++)
        edx = fmax(edx, fabs(dx[i] - rdx[i]));
      for (int i = 0; i < O * C * k * k; i++)
        edw = fmax(edw, fabs(dw[i] - rdw[i]));
      CHECK(ey < 1e-4 && edx < 1e-4 && edw < 1e-4,
            "conv k %d stride %d pad %d dilation %d, %d threads: off by %g, %g, %g", k, st, pd, dl,
            threads, ey, edx, edw);
    }
  }
}

// Max pooling against direct loops, bit for bit: the maximum, and the gradient at each window's
// first maximum (a NaN wins, the first of them), with and without the relu mask (only where
// the maximum is above 0). Widths give rows of 2 to 17 windows (the kernels' vector paths take
// 8 or 4 windows at a time, overlapping at the row's end); values repeat (ties), some are 0,
// -0 or negative, and one plane holds NaNs.
static void test_pool_kernels(void) {
  enum { NC = 6, H = 8, WMAX = 34 };
  static float x[NC * H * WMAX], g[NC * H * WMAX], y[NC * H * WMAX], dx[NC * H * WMAX];
  int widths[] = {4, 6, 10, 14, 16, 22, 34}, cfg[][3] = {{2, 2, 0}, {3, 2, 1}};
  for (int threads = 1; threads <= 3; threads += 2) {
    krt_threads_start(threads);
    for (size_t wi = 0; wi < sizeof widths / sizeof *widths; wi++)
      for (size_t c = 0; c < sizeof cfg / sizeof *cfg; c++)
        for (int relu = 0; relu < 2; relu++) {
          int W = widths[wi], k = cfg[c][0], s = cfg[c][1], p = cfg[c][2];
          int oh = (H + 2 * p - k) / s + 1, ow = (W + 2 * p - k) / s + 1;
          for (int i = 0; i < NC * H * W; i++) {
            x[i] = (float)(krt_hash(7, (uint64_t)i) % 5) / 2 - 1;  // -1 .. 1: many ties
            if (relu)
              x[i] = x[i] > 0 ? x[i] : i % 3 ? 0.0f : -0.0f;
            if (i / (H * W) == 2 && i % 7 == 3)
              x[i] = NAN;
          }
          for (int i = 0; i < NC * oh * ow; i++)
            g[i] = (float)((i * 13) % 17) / 8 - 1;
          krt_maxpool(x, y, NC, H, W, k, s, p);
          krt_maxpool_dx(x, g, dx, NC, H, W, k, s, p, relu);
          int bad = 0;
          static float rdx[NC * H * WMAX];
          memset(rdx, 0, sizeof rdx);
          for (int m = 0; m < NC; m++)
            for (int r = 0; r < oh; r++)
              for (int q = 0; q < ow; q++) {
                int arg = -1;
                for (int i = 0; i < k; i++)
                  for (int j = 0; j < k; j++) {
                    int yy = r * s - p + i, xx = q * s - p + j;
                    if (yy < 0 || yy >= H || xx < 0 || xx >= W)
                      continue;
                    int e = (m * H + yy) * W + xx;
                    if (arg < 0 || x[e] > x[arg] || (isnan(x[e]) && !isnan(x[arg])))
                      arg = e;
                  }
                int o = (m * oh + r) * ow + q;
                bad += memcmp(&y[o], &x[arg], sizeof(float)) != 0;
                if (!relu || x[arg] > 0)
                  rdx[arg] += g[o];
              }
          for (int i = 0; i < NC * H * W; i++)
            bad += memcmp(&dx[i], &rdx[i], sizeof(float)) != 0;
          CHECK(bad == 0, "maxpool k %d stride %d pad %d on width %d%s, %d threads: %d values differ",
                k, s, p, W, relu ? ", relu mask" : "", threads, bad);
        }
  }
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
  test_drop_last();
  test_drop_last_batch();
  test_early_stop();
  test_plateau();
  test_plateau_factor();
  test_guard();
  test_guard_summary();
  test_regression_report();
  test_resume();
  test_resume_refused();
  test_conv_kernels();  // first: it starts with one thread
  test_pool_kernels();
  test_threads();
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
  if (system(cmd) != 0)
    printf("could not remove %s\n", tmp);
  return check_summary();
}
