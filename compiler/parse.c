// parse.c — the glue between the re2c lexer (grammar/lexer.re) and the Bison parser
// (grammar/parser.y): it sets up the Parser state they share and runs yyparse.
//
// Both generated files live in build/; this file is the front end's one entry point.
// Syntax errors never come back here: the lexer and parser report them through error_at,
// which exits.

#include "keel.h"
#include "parser.h"

#include <string.h>

Node *parse_file(const char *filename, const char *src) {
  Parser ps = {
      .file = filename,
      .src = src,
      .lim = src + strlen(src),
      .cur = src,
      .line_start = src,
      .line = 1,
  };
  if (yyparse(&ps) != 0)
    die("yyparse returned without reporting an error");
  return ps.result;
}
