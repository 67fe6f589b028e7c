// util.c — the runtime's small services: fatal errors, zeroed allocation, a monotonic clock,
// and atomic file writes.
//
// Key idea: every runtime failure goes through krt_fail, which prints one "keel: error: ..."
// line and exits 1, so callers never handle errors and tests can match messages word for
// word. Files are written through krt_write_atomic (temporary file, fsync, rename), so a
// crash or a full disk never leaves a half-written checkpoint or report behind.

#include "keelrt.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

_Noreturn void krt_fail(const char *fmt, ...) {
  fflush(stdout);  // whatever progress was printed comes before the error
  va_list ap;
  va_start(ap, fmt);
  fputs("keel: error: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

void *krt_xmalloc(size_t size) {
  void *p = calloc(1, size ? size : 1);  // calloc(0) may return NULL; never treat that as failure
  if (!p)
    krt_fail("out of memory allocating %zu bytes", size);
  return p;
}

double krt_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

// ---------------------------------------------------------------------------------------------
// Shapes

const char *krt_shape_text(char *buf, size_t size, int rank, const int64_t *dim) {
  size_t len = (size_t)snprintf(buf, size, "[");
  for (int i = 0; i < rank && len < size; i++)
    len += (size_t)snprintf(buf + len, size - len, "%s%lld", i ? ", " : "", (long long)dim[i]);
  if (len < size)
    snprintf(buf + len, size - len, "]");
  return buf;
}

// ---------------------------------------------------------------------------------------------
// JSON

void krt_json_string(FILE *f, const char *s) {
  if (!s) {
    fputs("null", f);
    return;
  }
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\')
      fprintf(f, "\\%c", *p);
    else if (*p < 0x20)
      fprintf(f, "\\u%04x", *p);
    else
      fputc(*p, f);
  }
  fputc('"', f);
}

// ---------------------------------------------------------------------------------------------
// atomic writes

void krt_write_atomic(const char *path, void (*write)(FILE *f, void *ctx), void *ctx) {
  // The temporary file sits in the same folder as path, so rename() never crosses file
  // systems and replaces the old file in one step.
  size_t len = strlen(path) + 32;
  char *tmp = krt_xmalloc(len);
  snprintf(tmp, len, "%s.tmp.%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    int err = errno;
    free(tmp);
    krt_fail("%s: cannot write: %s", path, strerror(err));
  }
  write(f, ctx);
  int err = 0;
  if (ferror(f) || fflush(f) != 0 || fsync(fileno(f)) != 0)
    err = errno ? errno : EIO;
  if (fclose(f) != 0 && !err)
    err = errno ? errno : EIO;
  if (!err && rename(tmp, path) != 0)
    err = errno;
  if (err) {
    remove(tmp);
    free(tmp);
    krt_fail("%s: cannot write: %s", path, strerror(err));
  }
  free(tmp);
  // the rename itself reaches the disk when the folder is synced
  char *dir = krt_xmalloc(strlen(path) + 2);
  strcpy(dir, path);
  char *slash = strrchr(dir, '/');
  if (!slash)
    strcpy(dir, ".");
  else if (slash == dir)
    dir[1] = 0;  // the root folder
  else
    *slash = 0;
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
  free(dir);
}
