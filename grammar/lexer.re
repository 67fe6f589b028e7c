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
//   - string escapes \" \\ \n \t are resolved here.
// Bad input (a stray character, an unterminated string) goes through error_at.

#include "keel.h"
#include "parser.h"

#include <ctype.h>
#include <stdlib.h>

// The position of p, a pointer into the current line.
static Pos pos_of(Parser *ps, const char *p) {
  return (Pos){ps->file, ps->src, ps->line, (int)(p - ps->line_start) + 1};
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
        return YYEOF;
      }

      newline {
        ps->line++;
        ps->line_start = ps->cur;
        if (ps->depth > 0)
          continue;
        return T_NEWLINE;
      }
      space | comment { continue; }

      "data"      { return T_DATA; }
      "network"   { return T_NETWORK; }
      "layer"     { return T_LAYER; }
      "loss"      { return T_LOSS; }
      "optimizer" { return T_OPTIMIZER; }
      "schedule"  { return T_SCHEDULE; }
      "train"     { return T_TRAIN; }
      "eval"      { return T_EVAL; }
      "on"        { return T_ON; }
      "then"      { return T_THEN; }
      "param"     { return T_PARAM; }
      "buffer"    { return T_BUFFER; }
      "state"     { return T_STATE; }
      "init"      { return T_INIT; }

      ident  { lval->str = str_ndup(tok, (size_t)(ps->cur - tok)); return T_IDENT; }
      dims   { lval->str = str_ndup(tok, (size_t)(ps->cur - tok)); return T_DIMS; }
      number { lval->num = strtod(str_ndup(tok, (size_t)(ps->cur - tok)), NULL); return T_NUMBER; }
      string { lval->str = unescape(ps, tok, ps->cur); return T_STRING; }
      "\"" strchar* { error_at(*loc, "unterminated string"); }

      "==" { return T_EQ; }
      "!=" { return T_NE; }
      "<=" { return T_LE; }
      ">=" { return T_GE; }
      [([] { ps->depth++; return *tok; }
      [)\]] { if (ps->depth > 0) ps->depth--; return *tok; }
      [-+*/@^<>=?:,{}] { return *tok; }

      * { error_at(*loc, "unexpected character %s", char_name((unsigned char)*tok)); }
    */
  }
}
