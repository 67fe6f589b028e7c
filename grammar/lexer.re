// lexer.re — the re2c lexer of .nn scripts (re2c 3.0; build/lexer.c is generated from it).
//
// yylex hands grammar/parser.y one token at a time from a NUL-terminated text in memory
// (no refilling: the terminating NUL is the sentinel). The state — cursor, line, nesting —
// lives in the Parser struct (build/parser.h), so there are no globals.
//
// What it does beyond splitting tokens:
//   - positions: every token's Pos is its first byte (line and byte column from 1);
//   - newlines are tokens (T_NEWLINE) except inside ( ) and [ ], so calls may span lines;
//   - `#` starts a comment to the end of the line; spaces and tabs separate tokens; a line
//     may end in \r\n;
//   - keywords are reserved; any other [a-zA-Z_][a-zA-Z0-9_]* is a T_IDENT;
//   - `1x28x28` is one T_DIMS token (a shape literal), not a number and a name;
//   - string escapes \" \\ \n \t are resolved here;
//   - for syntax messages (yyreport_syntax_error in parser.y): the brackets open now and the
//     line of each (`expected '}' to close the block opened at line 3`), whether a comparison
//     follows another at the same level (`a < b < c`), and where the last token ends (end of
//     file is reported there, not on the empty line after a final newline).
// Bad input (a stray character, an unterminated string) goes through error_at.

#include "keel.h"
#include "parser.h"

#include <ctype.h>
#include <stdlib.h>

// The position of p, a pointer into the current line.
static Pos pos_of(Parser *ps, const char *p) {
  return (Pos){ps->file, ps->src, ps->line, (int)(p - ps->line_start) + 1};
}

// A bracket opens: remember its line, and start a new level for comparisons.
static void open_bracket(Parser *ps, char ch) {
  if (ps->nopen == ps->capopen) {
    int cap = ps->capopen ? 2 * ps->capopen : 16;
    OpenBracket *a = arena_alloc((size_t)cap * sizeof *a);
    for (int i = 0; i < ps->nopen; i++)
      a[i] = ps->open[i];
    ps->open = a;
    ps->capopen = cap;
  }
  ps->open[ps->nopen++] = (OpenBracket){ch, ps->line, ps->cmp};
  ps->cmp = false;
}

// A bracket closes. One that does not match the innermost open bracket is left to the parser
// to report (the grammar nests them, so it is always a syntax error there).
static void close_bracket(Parser *ps, char open_ch) {
  if (ps->nopen > 0 && ps->open[ps->nopen - 1].ch == open_ch)
    ps->cmp = ps->open[--ps->nopen].cmp;
  else
    ps->cmp = false;
}

// Records the token just read: where it ends, and whether it is a comparison that follows
// another one at the same level (`a < b < c`). kind: 'c' a comparison, 'e' a token that may
// sit inside an expression (a name, a value, an arithmetic operator), 0 any other token,
// which ends the expression.
static int token(Parser *ps, int tok, char kind) {
  ps->tok_end = (Pos){ps->file, ps->src, ps->line, (int)(ps->cur - ps->line_start) + 1};
  ps->chained = kind == 'c' && ps->cmp;
  if (kind == 'c')
    ps->cmp = true;
  else if (kind == 0)
    ps->cmp = false;
  return tok;
}

// A byte as it reads in a message: 'a', or '\x01' when it is not printable.
static const char *char_name(unsigned char c) {
  return isprint(c) ? str_fmt("'%c'", c) : str_fmt("'\\x%02x'", c);
}

// The contents of the string literal [s, e) (quotes included), escapes resolved.
static const char *unescape(Parser *ps, const char *s, const char *e) {
  char *buf = arena_alloc((size_t)(e - s));
  char *q = buf;
  for (const char *p = s + 1; p < e - 1; p++) {
    if (*p != '\\') {
      *q++ = *p;
      continue;
    }
    p++;
    switch (*p) {
    case '"': *q++ = '"'; break;
    case '\\': *q++ = '\\'; break;
    case 'n': *q++ = '\n'; break;
    case 't': *q++ = '\t'; break;
    default:
      error_at(pos_of(ps, p - 1), "unknown escape '\\%s' in a string",
               isprint((unsigned char)*p) ? str_fmt("%c", *p)
                                          : str_fmt("x%02x", (unsigned char)*p));
    }
  }
  *q = 0;
  return buf;
}

/*!re2c
  re2c:define:YYCTYPE = "unsigned char";
  re2c:define:YYCURSOR = "ps->cur";
  re2c:define:YYMARKER = "ps->mar";
  re2c:yyfill:enable = 0;

  newline = "\r"? "\n";
  space   = [ \t]+;
  comment = "#" [^\n\x00]*;
  ident   = [a-zA-Z_] [a-zA-Z0-9_]*;
  digits  = [0-9]+;
  exp     = [eE] [+-]? digits;
  number  = digits ("." [0-9]*)? exp? | "." digits exp?;
  dims    = digits ("x" digits)+;
  strchar = [^"\\\n\x00] | "\\" [^\n\x00];
  string  = "\"" strchar* "\"";
*/

int yylex(YYSTYPE *lval, YYLTYPE *loc, Parser *ps) {
  for (;;) {
    const char *tok = ps->cur;
    ps->tok = tok;
    *loc = pos_of(ps, tok);
    /*!re2c
      "\x00" {
        if (tok < ps->lim)
          error_at(*loc, "unexpected character '\\x00'");
        ps->cur = tok;  // stay at the end: every later call is end of file again
        if (ps->tok_end.line > 0)
          *loc = ps->tok_end;  // just past the last token, on its line
        return YYEOF;
      }

      newline {
        ps->line++;
        ps->line_start = ps->cur;
        if (ps->depth > 0)
          continue;
        ps->cmp = ps->chained = false;
        return T_NEWLINE;
      }
      space | comment { continue; }

      "data"      { return token(ps, T_DATA, 0); }
      "network"   { return token(ps, T_NETWORK, 0); }
      "layer"     { return token(ps, T_LAYER, 0); }
      "loss"      { return token(ps, T_LOSS, 0); }
      "optimizer" { return token(ps, T_OPTIMIZER, 0); }
      "schedule"  { return token(ps, T_SCHEDULE, 0); }
      "train"     { return token(ps, T_TRAIN, 0); }
      "eval"      { return token(ps, T_EVAL, 0); }
      "on"        { return token(ps, T_ON, 0); }
      "then"      { return token(ps, T_THEN, 0); }
      "param"     { return token(ps, T_PARAM, 0); }
      "buffer"    { return token(ps, T_BUFFER, 0); }
      "state"     { return token(ps, T_STATE, 0); }
      "init"      { return token(ps, T_INIT, 0); }

      ident  { lval->str = str_ndup(tok, (size_t)(ps->cur - tok)); return token(ps, T_IDENT, 'e'); }
      dims   { lval->str = str_ndup(tok, (size_t)(ps->cur - tok)); return token(ps, T_DIMS, 'e'); }
      number {
        lval->num = strtod(str_ndup(tok, (size_t)(ps->cur - tok)), NULL);
        return token(ps, T_NUMBER, 'e');
      }
      string { lval->str = unescape(ps, tok, ps->cur); return token(ps, T_STRING, 'e'); }
      "\"" strchar* { error_at(*loc, "unterminated string"); }

      "==" { return token(ps, T_EQ, 'c'); }
      "!=" { return token(ps, T_NE, 'c'); }
      "<=" { return token(ps, T_LE, 'c'); }
      ">=" { return token(ps, T_GE, 'c'); }
      [<>] { return token(ps, *tok, 'c'); }
      [-+*/@^] { return token(ps, *tok, 'e'); }
      [=?:,] { return token(ps, *tok, 0); }
      [([{] {
        if (*tok != '{')
          ps->depth++;
        open_bracket(ps, *tok);
        return token(ps, *tok, 'e');
      }
      [)\]}] {
        if (*tok != '}' && ps->depth > 0)
          ps->depth--;
        close_bracket(ps, *tok == ')' ? '(' : *tok == ']' ? '[' : '{');
        return token(ps, *tok, 'e');
      }

      * { error_at(*loc, "unexpected character %s", char_name((unsigned char)*tok)); }
    */
  }
}
