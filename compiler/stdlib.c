// stdlib.c — the standard library's .nn sources, compiled into the binary.
//
// build/stdlib.inc is generated from stdlib/*.nn by tools/embed.sh, so `keel` needs no files
// at run time and a built trainer carries the same definitions.

#include "keel.h"

const StdlibFile stdlib_files[] = {
#include "stdlib.inc"
};
const int stdlib_count = (int)(sizeof stdlib_files / sizeof stdlib_files[0]);

// Every embedded file parsed, in order, as one list of definitions (which follow the
// script's: a script may redefine a stdlib layer).
Node *parse_stdlib(void) {
  Node head = {0}, *tail = &head;
  for (int i = 0; i < stdlib_count; i++) {
    tail->next = parse_file(stdlib_files[i].name, stdlib_files[i].src);
    while (tail->next)
      tail = tail->next;
  }
  return head.next;
}
