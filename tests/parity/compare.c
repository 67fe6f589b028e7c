// compare.c — compares two safetensors files tensor by tensor (build/test/st_compare).
//
//   st_compare EXPECTED ACTUAL [RTOL]
//   st_compare --finite FILE
//
// For every tensor of EXPECTED, ACTUAL must hold a tensor of the same name and shape whose
// relative error max|a - e| / max(max|e|, 1e-6) is at most RTOL (default 1e-4). Prints one
// line per tensor and exits 1 on any difference. The parity tests use it to check Keel's
// weights after N steps against PyTorch's (tests/parity/gen.py writes the expected files).

#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  char *bytes;
  size_t len;
  cJSON *header;
  size_t data;  // offset of the data section
} File;

static File load(const char *path) {
  File f = {0};
  FILE *fp = fopen(path, "rb");
  if (!fp) {
    fprintf(stderr, "st_compare: cannot open %s\n", path);
    exit(2);
  }
  fseek(fp, 0, SEEK_END);
  f.len = (size_t)ftell(fp);
  fseek(fp, 0, SEEK_SET);
  f.bytes = malloc(f.len + 1);
  if (fread(f.bytes, 1, f.len, fp) != f.len || f.len < 8) {
    fprintf(stderr, "st_compare: cannot read %s\n", path);
    exit(2);
  }
  fclose(fp);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--)
    n = n << 8 | (uint8_t)f.bytes[i];
  if (n > f.len - 8) {
    fprintf(stderr, "st_compare: %s: bad header length\n", path);
    exit(2);
  }
  f.header = cJSON_ParseWithLength(f.bytes + 8, (size_t)n);
  if (!f.header) {
    fprintf(stderr, "st_compare: %s: bad header\n", path);
    exit(2);
  }
  f.data = 8 + (size_t)n;
  return f;
}

// The tensor's floats and count; NULL when absent.
static const float *tensor(File *f, const char *name, cJSON **shape, size_t *count) {
  cJSON *t = cJSON_GetObjectItemCaseSensitive(f->header, name);
  if (!t)
    return NULL;
  cJSON *off = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
  *shape = cJSON_GetObjectItemCaseSensitive(t, "shape");
  size_t b = (size_t)cJSON_GetArrayItem(off, 0)->valuedouble;
  size_t e = (size_t)cJSON_GetArrayItem(off, 1)->valuedouble;
  *count = (e - b) / 4;
  return (const float *)(f->bytes + f->data + b);
}

// st_compare --finite FILE: every value of every tensor is finite (no NaN, no infinity).
static int all_finite(const char *path) {
  File f = load(path);
  int bad = 0, n = 0;
  for (cJSON *t = f.header->child; t; t = t->next) {
    if (!strcmp(t->string, "__metadata__"))
      continue;
    cJSON *shape;
    size_t count;
    const float *v = tensor(&f, t->string, &shape, &count);
    n++;
    for (size_t i = 0; i < count; i++) {
      float x;
      memcpy(&x, v + i, 4);
      if (!isfinite(x)) {
        printf("%s[%zu] is %g\n", t->string, i, x);
        bad++;
        break;
      }
    }
  }
  return bad || !n;
}

int main(int argc, char **argv) {
  if (argc == 3 && !strcmp(argv[1], "--finite"))
    return all_finite(argv[2]);
  if (argc < 3) {
    fprintf(stderr, "usage: st_compare EXPECTED ACTUAL [RTOL] | st_compare --finite FILE\n");
    return 2;
  }
  double rtol = argc > 3 ? atof(argv[3]) : 1e-4;
  File want = load(argv[1]), got = load(argv[2]);
  int bad = 0, n = 0;
  for (cJSON *t = want.header->child; t; t = t->next) {
    if (!strcmp(t->string, "__metadata__"))
      continue;
    n++;
    cJSON *ws, *gs;
    size_t wc, gc;
    const float *w = tensor(&want, t->string, &ws, &wc);
    const float *g = tensor(&got, t->string, &gs, &gc);
    if (!g) {
      printf("%-32s missing\n", t->string);
      bad++;
      continue;
    }
    char *a = cJSON_PrintUnformatted(ws), *b = cJSON_PrintUnformatted(gs);
    if (strcmp(a, b) || wc != gc) {
      printf("%-32s shape %s, expected %s\n", t->string, b, a);
      bad++;
      continue;
    }
    double maxe = 0, maxd = 0;
    for (size_t i = 0; i < wc; i++) {
      float x, y;
      memcpy(&x, w + i, 4), memcpy(&y, g + i, 4);
      maxe = fmax(maxe, fabs(x));
      maxd = isfinite(y) ? fmax(maxd, fabs((double)x - y)) : INFINITY;
    }
    double rel = maxd / fmax(maxe, 1e-6);
    printf("%-32s relative error %.2e%s\n", t->string, rel, rel <= rtol ? "" : "  FAIL");
    bad += !(rel <= rtol);
    free(a), free(b);
  }
  if (n == 0) {
    printf("no tensors in %s\n", argv[1]);
    return 1;
  }
  return bad != 0;
}
