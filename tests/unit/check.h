// check.h — the tiny assertion kit of Keel's C unit tests (tests/unit/test_*.c).
//
// Each test binary counts its checks and ends with check_summary(), which prints
// "N passed, N failed" (tests/run.sh adds these up) and returns the exit status.
// check_capture() runs a function in a child process and captures its stderr and exit
// status, so error paths that exit (error_at, krt_fail) can be tested word for word.

#ifndef CHECK_H
#define CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int check_passed, check_failed;

#define CHECK(cond, ...)                                                                     \
  do {                                                                                       \
    if (cond) {                                                                              \
      check_passed++;                                                                        \
    } else {                                                                                 \
      check_failed++;                                                                        \
      printf("FAIL %s:%d: ", __FILE__, __LINE__);                                            \
      printf(__VA_ARGS__);                                                                   \
      printf("\n");                                                                          \
    }                                                                                        \
  } while (0)

#define CHECK_STR(got, want)                                                                 \
  CHECK(strcmp((got), (want)) == 0, "got:\n%s\nwant:\n%s", (got), (want))

static inline int check_summary(void) {
  printf("%d passed, %d failed\n", check_passed, check_failed);
  return check_failed != 0;
}

// Runs fn(arg) in a child; stderr goes into err (NUL-terminated, at most n - 1 bytes).
// Returns the child's exit status, or 128 + signal when it crashed.
static inline int check_capture(void (*fn)(void *), void *arg, char *err, size_t n) {
  int fds[2];
  if (pipe(fds) != 0)
    return -1;
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], 2);
    fn(arg);
    fflush(stderr);
    _exit(0);
  }
  close(fds[1]);
  size_t len = 0;
  ssize_t got;
  while ((got = read(fds[0], err + len, n - 1 - len)) > 0 && len + (size_t)got < n - 1)
    len += (size_t)got;
  if (got > 0)
    len += (size_t)got;
  err[len] = 0;
  close(fds[0]);
  int status;
  waitpid(pid, &status, 0);
  if (WIFSIGNALED(status))
    return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

#endif
