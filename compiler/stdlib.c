// stdlib.c — the standard library's .nn sources, compiled into the binary.
//
// build/stdlib.inc is generated from stdlib/*.nn by tools/embed.sh, so `keel` needs no files
// at run time and a built trainer carries the same definitions.

#include "keel.h"

const StdlibFile stdlib_files[] = {
#include "stdlib.inc"
};
const int stdlib_count = (int)(sizeof stdlib_files / sizeof stdlib_files[0]);
