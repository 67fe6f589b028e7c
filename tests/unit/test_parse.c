// test_parse.c — unit tests of the front end: grammar/lexer.re, grammar/parser.y, parse.c and
// ast.c.
//
// Valid inputs are parsed and compared with their ast_dump text (the format is documented at
// the top of ast.c). Invalid inputs are parsed in a child process (check_capture), and the
// whole of stderr — message, source line, caret — and the exit status are pinned.

#include "keel.h"

#include "check.h"

// ---------------------------------------------------------------------------------------------
// Helpers

// The ast_dump text of src.
static char *dump(const char *src) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  ast_dump(f, parse_file("t.nn", src));
  fclose(f);
  return buf;
}

// The dump of `loss f() = EXPR`, reduced to the expression's own text.
static char *dump_expr(const char *expr) {
  char *text = dump(str_fmt("loss f() = %s\n", expr));
  const char *prefix = "(lossdef f (params) ";
  if (strncmp(text, prefix, strlen(prefix)) != 0)
    return text;
  char *e = text + strlen(prefix);
  e[strlen(e) - 2] = 0;  // the definition's ")\n"
  return e;
}

static void parse_src(void *src) { parse_file("t.nn", src); }

// Parses src in a child; checks the exit status (1) and the whole of stderr.
#define CHECK_ERROR(src, want)                                           \
  do {                                                                   \
    char err_[4096];                                                     \
    int st_ = check_capture(parse_src, (void *)(src), err_, sizeof err_); \
    CHECK(st_ == 1, "exit status %d for %s", st_, #src);                \
    CHECK_STR(err_, want);                                               \
  } while (0)

// ---------------------------------------------------------------------------------------------
// The sample script of the brief: every form at once

static const char *sample =
    "data fashion {\n"
    "  train idx(\"fashion-mnist/train-images-idx3-ubyte.gz\", "
    "\"fashion-mnist/train-labels-idx1-ubyte.gz\")\n"
    "  test  csv(\"test.csv\", label=\"y\")\n"
    "  scale 1/255\n"
    "  holdout 0.1\n"
    "}\n"
    "\n"
    "network mlp {\n"
    "  input 784          # or a shape literal: input 1x28x28\n"
    "  layer dense 256 relu batchnorm dropout 0.3\n"
    "  layer dense 10\n"
    "}\n"
    "\n"
    "layer dense(units) {\n"
    "  param weight[units, in] init uniform(-1/sqrt(in), 1/sqrt(in))\n"
    "  param bias[units]       init uniform(-1/sqrt(in), 1/sqrt(in))\n"
    "  out = x @ transpose(weight) + bias\n"
    "}\n"
    "layer relu() { out = max(x, 0) }\n"
    "layer dropout(p) {\n"
    "  train { out = x * (rand(shape(x)) >= p) / (1 - p) }\n"
    "  eval  { out = x }\n"
    "}\n"
    "layer batchnorm(momentum=0.1, eps=1e-5) {\n"
    "  param  weight[in] init 1\n"
    "  buffer running_mean[in] init 0\n"
    "  train {\n"
    "    mu  = mean(x, axis=0)\n"
    "    running_mean = (1 - momentum) * running_mean + momentum * mu\n"
    "    out = (x - mu) / sqrt(var + eps) * weight + bias\n"
    "  }\n"
    "  eval { out = x }\n"
    "}\n"
    "\n"
    "loss cross_entropy(logits, labels) = mean(logsumexp(logits, axis=1) - pick(logits, "
    "labels))\n"
    "\n"
    "optimizer sgd(lr, momentum=0, nesterov=0, weight_decay=0) {\n"
    "  state buf = 0\n"
    "  state m = 0, v = 0\n"
    "  g   = g + weight_decay * w\n"
    "  buf = t == 1 ? g : momentum * buf + g\n"
    "  w   = w - lr * (nesterov ? g + momentum * buf : buf)\n"
    "}\n"
    "\n"
    "schedule constant() = base\n"
    "schedule warmup(duration) = base * min(1, (step + 1) / duration)\n"
    "\n"
    "train mlp on fashion {\n"
    "  loss       cross_entropy\n"
    "  optimizer  adamw lr=1e-3 weight_decay=0.01\n"
    "  schedule   warmup 500 then cosine\n"
    "  batch      128\n"
    "  epochs     20\n"
    "  seed       42\n"
    "}\n";

static void test_sample(void) {
  Node *prog = parse_file("t.nn", sample);
  const char *want[] = {"data",     "network", "layerdef", "layerdef", "layerdef", "layerdef",
                        "lossdef",  "optdef",  "scheddef", "scheddef", "train"};
  int i = 0;
  for (Node *n = prog; n; n = n->next, i++)
    CHECK(i < 11 && strcmp(ast_kind_name(n->kind), want[i]) == 0, "definition %d is a %s", i,
          ast_kind_name(n->kind));
  CHECK(i == 11, "%d definitions", i);

  CHECK_STR(dump(sample),
            "(data fashion\n"
            "  (line train (call idx \"fashion-mnist/train-images-idx3-ubyte.gz\" "
            "\"fashion-mnist/train-labels-idx1-ubyte.gz\"))\n"
            "  (line test (call csv \"test.csv\" (= label \"y\")))\n"
            "  (line scale (/ 1 255))\n"
            "  (line holdout 0.1))\n"
            "(network mlp\n"
            "  (line input 784)\n"
            "  (line layer dense 256 relu batchnorm dropout 0.3)\n"
            "  (line layer dense 10))\n"
            "(layerdef dense (params units)\n"
            "  (param weight (dims units in) (init (call uniform (/ (- 1) (call sqrt in)) "
            "(/ 1 (call sqrt in)))))\n"
            "  (param bias (dims units) (init (call uniform (/ (- 1) (call sqrt in)) "
            "(/ 1 (call sqrt in)))))\n"
            "  (assign out (+ (@ x (call transpose weight)) bias)))\n"
            "(layerdef relu (params)\n"
            "  (assign out (call max x 0)))\n"
            "(layerdef dropout (params p)\n"
            "  (mode train\n"
            "    (assign out (/ (* x (>= (call rand (call shape x)) p)) (- 1 p))))\n"
            "  (mode eval\n"
            "    (assign out x)))\n"
            "(layerdef batchnorm (params (= momentum 0.1) (= eps 1e-05))\n"
            "  (param weight (dims in) (init 1))\n"
            "  (buffer running_mean (dims in) (init 0))\n"
            "  (mode train\n"
            "    (assign mu (call mean x (= axis 0)))\n"
            "    (assign running_mean (+ (* (- 1 momentum) running_mean) (* momentum mu)))\n"
            "    (assign out (+ (* (/ (- x mu) (call sqrt (+ var eps))) weight) bias)))\n"
            "  (mode eval\n"
            "    (assign out x)))\n"
            "(lossdef cross_entropy (params logits labels) (call mean (- (call logsumexp logits "
            "(= axis 1)) (call pick logits labels))))\n"
            "(optdef sgd (params lr (= momentum 0) (= nesterov 0) (= weight_decay 0))\n"
            "  (state buf 0)\n"
            "  (state m 0)\n"
            "  (state v 0)\n"
            "  (assign g (+ g (* weight_decay w)))\n"
            "  (assign buf (? (== t 1) g (+ (* momentum buf) g)))\n"
            "  (assign w (- w (* lr (? nesterov (+ g (* momentum buf)) buf)))))\n"
            "(scheddef constant (params) base)\n"
            "(scheddef warmup (params duration) (* base (call min 1 (/ (+ step 1) duration))))\n"
            "(train mlp fashion\n"
            "  (line loss cross_entropy)\n"
            "  (line optimizer adamw (= lr 0.001) (= weight_decay 0.01))\n"
            "  (line schedule warmup 500 then cosine)\n"
            "  (line batch 128)\n"
            "  (line epochs 20)\n"
            "  (line seed 42))\n");
}

// ---------------------------------------------------------------------------------------------
// Top-level forms

static void test_definitions(void) {
  CHECK_STR(dump("data d {\n  train csv(\"a.csv\")\n}\n"),
            "(data d\n  (line train (call csv \"a.csv\")))\n");
  CHECK_STR(dump("network n {\n  input 784\n}\n"), "(network n\n  (line input 784))\n");
  CHECK_STR(dump("train n on d {\n  epochs 3\n}\n"), "(train n d\n  (line epochs 3))\n");
  CHECK_STR(dump("layer id() {\n  out = x\n}\n"), "(layerdef id (params)\n  (assign out x))\n");
  CHECK_STR(dump("optimizer plain(lr) {\n  w = w - lr * g\n}\n"),
            "(optdef plain (params lr)\n  (assign w (- w (* lr g))))\n");
  CHECK_STR(dump("loss mse(pred, target) = mean((pred - target)^2)\n"),
            "(lossdef mse (params pred target) (call mean (^ (- pred target) 2)))\n");
  CHECK_STR(dump("schedule step_decay(every, gamma=0.1) = base * gamma ^ floor(epoch / every)"),
            "(scheddef step_decay (params every (= gamma 0.1)) "
            "(* base (^ gamma (call floor (/ epoch every)))))\n");
  // Empty blocks, on one line or two; a parameter list may span lines.
  CHECK_STR(dump("network n {}\nnetwork m {\n}\nlayer f() { }\n"),
            "(network n)\n(network m)\n(layerdef f (params))\n");
  CHECK_STR(dump("layer f(a,\n        b=1,\n        c) {}\n"),
            "(layerdef f (params a (= b 1) c))\n");
  // An empty file, or one with only comments and blank lines, has no definitions.
  CHECK(parse_file("t.nn", "") == NULL, "empty file");
  CHECK(parse_file("t.nn", "\n\n# nothing here\n   \n# at all") == NULL, "comments only");
}

// ---------------------------------------------------------------------------------------------
// Statements

static void test_statements(void) {
  CHECK_STR(dump("layer l(k) {\n"
                 "  param w[k, in] init normal(0, 1)\n"
                 "  param b[k]\n"
                 "  buffer count[1] init 0\n"
                 "  buffer avg[in, k]\n"
                 "  h = x @ w\n"
                 "  train {\n"
                 "    out = h + b\n"
                 "    count = count + 1\n"
                 "  }\n"
                 "  eval { out = h }\n"
                 "}\n"),
            "(layerdef l (params k)\n"
            "  (param w (dims k in) (init (call normal 0 1)))\n"
            "  (param b (dims k))\n"
            "  (buffer count (dims 1) (init 0))\n"
            "  (buffer avg (dims in k))\n"
            "  (assign h (@ x w))\n"
            "  (mode train\n"
            "    (assign out (+ h b))\n"
            "    (assign count (+ count 1)))\n"
            "  (mode eval\n"
            "    (assign out h)))\n");
  // One ND_STATE per name, in order, chained with the statements around them.
  CHECK_STR(dump("optimizer o() {\n  state a = 0\n  state m = 0, v = 1, u = a\n  w = w\n}\n"),
            "(optdef o (params)\n"
            "  (state a 0)\n"
            "  (state m 0)\n"
            "  (state v 1)\n"
            "  (state u a)\n"
            "  (assign w w))\n");
  // One-line bodies, and empty mode blocks.
  CHECK_STR(dump("layer relu() { out = max(x, 0) }\n"),
            "(layerdef relu (params)\n  (assign out (call max x 0)))\n");
  CHECK_STR(dump("layer d(p) { train { out = x * p }\n  eval { } }\n"),
            "(layerdef d (params p)\n  (mode train\n    (assign out (* x p)))\n  (mode eval))\n");
  CHECK_STR(dump("layer d(p) {\n  train {\n  }\n  eval { out = x }}\n"),
            "(layerdef d (params p)\n  (mode train)\n  (mode eval\n    (assign out x)))\n");
}

// ---------------------------------------------------------------------------------------------
// Expressions: precedence, associativity, primaries

static void test_precedence(void) {
  CHECK_STR(dump_expr("-x^2"), "(- (^ x 2))");
  CHECK_STR(dump_expr("a-b-c"), "(- (- a b) c)");
  CHECK_STR(dump_expr("a/b*c"), "(* (/ a b) c)");
  CHECK_STR(dump_expr("a^b^c"), "(^ a (^ b c))");
  CHECK_STR(dump_expr("a+b*c@d"), "(+ a (@ (* b c) d))");
  CHECK_STR(dump_expr("c ? a : b ? d : e"), "(? c a (? b d e))");
  CHECK_STR(dump_expr("a ? b ? c : d : e"), "(? a (? b c d) e)");
  CHECK_STR(dump_expr("t == 1 ? g : m * b + g"), "(? (== t 1) g (+ (* m b) g))");
  CHECK_STR(dump_expr("2^-1"), "(^ 2 (- 1))");
  CHECK_STR(dump_expr("-a*b"), "(* (- a) b)");
  CHECK_STR(dump_expr("--a"), "(- (- a))");
  CHECK_STR(dump_expr("(a+b)*c"), "(* (+ a b) c)");
  CHECK_STR(dump_expr("a + 1 < b * 2"), "(< (+ a 1) (* b 2))");
  CHECK_STR(dump_expr("a > b"), "(> a b)");
  CHECK_STR(dump_expr("a == b"), "(== a b)");
  CHECK_STR(dump_expr("a != b"), "(!= a b)");
  CHECK_STR(dump_expr("a <= b"), "(<= a b)");
  CHECK_STR(dump_expr("a >= -b"), "(>= a (- b))");
  CHECK_STR(dump_expr("(a < b) < c"), "(< (< a b) c)");
}

static void test_primaries(void) {
  CHECK_STR(dump_expr("1 + 0.5 + .5 + 1e-3 + 2.5E+4 + 3. + 7e2"),
            "(+ (+ (+ (+ (+ (+ 1 0.5) 0.5) 0.001) 25000) 3) 700)");
  CHECK_STR(dump_expr("\"a \\\"q\\\" b\\\\c\\nd\""), "\"a \\\"q\\\" b\\\\c\\nd\"");
  CHECK_STR(dump_expr("1x28x28"), "1x28x28");
  CHECK_STR(dump_expr("f()"), "(call f)");
  CHECK_STR(dump_expr("f(a, b=2, g(c))"), "(call f a (= b 2) (call g c))");
  CHECK_STR(dump_expr("f (a)"), "(call f a)");
  // Keywords are reserved; other words, `in` and `out` included, are names.
  CHECK_STR(dump_expr("in + out + input + batch + data_2 + _x"),
            "(+ (+ (+ (+ (+ in out) input) batch) data_2) _x)");

  Node *n = parse_file("t.nn", "loss f() = \"a\\\"b\\\\c\\nd\"\n");
  CHECK(n->lhs->kind == ND_STR && strcmp(n->lhs->name, "a\"b\\c\nd") == 0, "escapes resolved");
  n = parse_file("t.nn", "loss f() = 2.5E+4\n");
  CHECK(n->lhs->kind == ND_NUM && n->lhs->num == 25000, "2.5E+4");
  n = parse_file("t.nn", "loss f() = 1x28x28\n");
  CHECK(n->lhs->kind == ND_DIMS && strcmp(n->lhs->name, "1x28x28") == 0, "shape literal");
}

// Newlines inside ( ) and [ ] are not tokens: calls and dims may span lines.
static void test_spanning(void) {
  CHECK_STR(dump("layer l(k) {\n"
                 "  param w[k,\n"
                 "          in]\n"
                 "  out = max(x,   # the input\n"
                 "\n"
                 "            0) + (1 +\n"
                 "  2)\n"
                 "}\n"),
            "(layerdef l (params k)\n"
            "  (param w (dims k in))\n"
            "  (assign out (+ (call max x 0) (+ 1 2))))\n");
  CHECK_STR(dump("data d {\n  train idx(\n    \"a\",\n    \"b\"\n  )\n}\n"),
            "(data d\n  (line train (call idx \"a\" \"b\")))\n");
}

// ---------------------------------------------------------------------------------------------
// Lines and their items

static void test_lines(void) {
  CHECK_STR(dump("network n {\n"
                 "  layer dense 256 relu batchnorm dropout 0.3\n"
                 "  input 1x28x28\n"
                 "  layer conv2d 32 kernel=3 (-1) f(x) \"s\"\n"
                 "}\n"
                 "train n on d {\n"
                 "  optimizer adamw lr=1e-3 weight_decay=0.01\n"
                 "  schedule warmup 500 then cosine\n"
                 "  loss cross_entropy\n"
                 "  eval every=2\n"
                 "  train\n"
                 "}\n"
                 "data d {\n"
                 "  scale 1/255\n"
                 "  holdout 0.1\n"
                 "  limit 2*n-1 2^k a<b\n"
                 "}\n"),
            "(network n\n"
            "  (line layer dense 256 relu batchnorm dropout 0.3)\n"
            "  (line input 1x28x28)\n"
            "  (line layer conv2d 32 (= kernel 3) (- 1) (call f x) \"s\"))\n"
            "(train n d\n"
            "  (line optimizer adamw (= lr 0.001) (= weight_decay 0.01))\n"
            "  (line schedule warmup 500 then cosine)\n"
            "  (line loss cross_entropy)\n"
            "  (line eval (= every 2))\n"
            "  (line train))\n"
            "(data d\n"
            "  (line scale (/ 1 255))\n"
            "  (line holdout 0.1)\n"
            "  (line limit (- (* 2 n) 1) (^ 2 k) (< a b)))\n");
  // An operator between two items joins them: `a -1` is a - 1 (write `(-1)`), and a name
  // followed by '(' is a call.
  CHECK_STR(dump("network n { layer dense -1 relu (x) }"),
            "(network n\n  (line layer (- dense 1) (call relu x)))\n");
  // The last line may end at the `}`.
  CHECK_STR(dump("network n { input 784 }\n"), "(network n\n  (line input 784))\n");
  // A named item's value is a whole expression: `=` delimits it, so it may start with '-'
  // (and hold a ?:); what follows still joins by operators and starts the next item.
  CHECK_STR(dump("train n on d {\n"
                 "  optimizer sgd lr=0.1 weight_decay=-0.01 momentum = -x^2 -1 relu\n"
                 "  eval every=a ? 1 : 2 (-1) then\n"
                 "}\n"),
            "(train n d\n"
            "  (line optimizer sgd (= lr 0.1) (= weight_decay (- 0.01)) "
            "(= momentum (- (- (^ x 2)) 1)) relu)\n"
            "  (line eval (= every (? a 1 2)) (- 1) then))\n");
}

// ---------------------------------------------------------------------------------------------
// Layout: comments, blank lines, CRLF, tabs

static void test_layout(void) {
  const char *want = "(network n\n  (line input 784)\n  (line layer dense 10))\n"
                     "(layerdef f (params)\n  (assign out x))\n";
  CHECK_STR(dump("network n {\n  input 784\n  layer dense 10\n}\nlayer f() {\n  out = x\n}\n"),
            want);
  CHECK_STR(dump("# a script\n"
                 "\n"
                 "\n"
                 "network n {   # the model\n"
                 "\n"
                 "  # its input\n"
                 "  input 784\n"
                 "\n"
                 "\n"
                 "  layer dense 10   # the last layer\n"
                 "\n"
                 "}\n"
                 "# between\n"
                 "\n"
                 "layer f() {\n"
                 "\n"
                 "  out = x\n"
                 "# end of body\n"
                 "}\n"
                 "\n"
                 "# the end"),
            want);
  CHECK_STR(dump("network n {\r\n  input 784\r\n  layer dense 10\r\n}\r\n"
                 "layer f() {\r\n\r\n  out = x\r\n}\r\n"),
            want);
  CHECK_STR(dump("network\tn\t{\n\tinput\t784\n\tlayer dense 10}\nlayer f() {out=x}"), want);
}

// ---------------------------------------------------------------------------------------------
// Positions: each node's representative token

static void test_positions(void) {
  Node *prog = parse_file("t.nn",
                          "network n {\n"
                          "  layer dense 256\n"
                          "}\n"
                          "layer f(a, b=1) {\n"
                          "  param w[a] init 0\n"
                          "  state s = 1, u = 2\n"
                          "  train { out = c ? g(x) : a + -b }\n"
                          "}\n");
  Node *net = prog, *layer = prog->next;
  CHECK(net->pos.line == 1 && net->pos.col == 9, "network name at %d:%d", net->pos.line,
        net->pos.col);
  CHECK(strcmp(net->pos.file, "t.nn") == 0 && net->pos.src != NULL, "file and source");
  Node *line = net->body;
  CHECK(line->pos.line == 2 && line->pos.col == 3, "line word at %d:%d", line->pos.line,
        line->pos.col);
  CHECK(line->args->next->pos.col == 15, "item at %d", line->args->next->pos.col);
  CHECK(layer->pos.line == 4 && layer->pos.col == 7, "layer name");
  CHECK(layer->args->next->pos.col == 12, "named parameter at %d", layer->args->next->pos.col);
  Node *param = layer->body;
  CHECK(param->pos.line == 5 && param->pos.col == 9, "param name at %d:%d", param->pos.line,
        param->pos.col);
  Node *s = param->next, *u = s->next;
  CHECK(s->pos.line == 6 && s->pos.col == 9 && u->pos.col == 16, "state names at %d, %d",
        s->pos.col, u->pos.col);
  Node *mode = u->next;
  CHECK(mode->kind == ND_MODE && mode->pos.line == 7 && mode->pos.col == 3, "mode");
  Node *assign = mode->body, *tern = assign->lhs;
  CHECK(assign->pos.col == 11, "assign name at %d", assign->pos.col);
  CHECK(tern->kind == ND_TERNARY && tern->pos.col == 19, "ternary at its '?': %d",
        tern->pos.col);
  CHECK(tern->lhs->kind == ND_CALL && tern->lhs->pos.col == 21, "call at its name: %d",
        tern->lhs->pos.col);
  CHECK(tern->rhs->pos.col == 30, "binary at its operator: %d", tern->rhs->pos.col);
  CHECK(tern->rhs->rhs->kind == ND_UNARY && tern->rhs->rhs->pos.col == 32,
        "unary at its operator: %d", tern->rhs->rhs->pos.col);

  // Columns count bytes; lines count \n (a \r\n line end is one line).
  Node *crlf = parse_file("t.nn", "\r\n\r\n  loss f() =\t1 + x\r\n");
  CHECK(crlf->pos.line == 3 && crlf->pos.col == 8, "name after CRLF at %d:%d", crlf->pos.line,
        crlf->pos.col);
  CHECK(crlf->lhs->pos.col == 16, "operator after a tab at %d", crlf->lhs->pos.col);
}

// ---------------------------------------------------------------------------------------------
// Errors, word for word

static void test_errors(void) {
  // Unexpected tokens
  CHECK_ERROR("network n {\n  layer dense 256 relu\n  input = 3\n}\n",
              "t.nn:3:9: error: unexpected '='\n"
              "    input = 3\n"
              "          ^\n");
  CHECK_ERROR("layer f() { out = x }\n}\n",
              "t.nn:2:1: error: unexpected '}'\n"
              "  }\n"
              "  ^\n");
  CHECK_ERROR("train mlp fashion {\n}\n",
              "t.nn:1:11: error: unexpected 'fashion', expected 'on'\n"
              "  train mlp fashion {\n"
              "            ^\n");
  CHECK_ERROR("layer dense {\n}\n",
              "t.nn:1:13: error: unexpected '{', expected '('\n"
              "  layer dense {\n"
              "              ^\n");
  CHECK_ERROR("layer f(a b) {}\n",
              "t.nn:1:11: error: unexpected 'b', expected '=', ',' or ')'\n"
              "  layer f(a b) {}\n"
              "            ^\n");
  CHECK_ERROR("layer f() { param w init 1 }\n",
              "t.nn:1:21: error: unexpected 'init', expected '['\n"
              "  layer f() { param w init 1 }\n"
              "                      ^\n");
  CHECK_ERROR("network n { input 1 } network m { }\n",
              "t.nn:1:23: error: unexpected 'network', expected end of line or end of file\n"
              "  network n { input 1 } network m { }\n"
              "                        ^\n");
  CHECK_ERROR("layer f() { out = f(x,) }\n",
              "t.nn:1:23: error: unexpected ')', expected an expression\n"
              "  layer f() { out = f(x,) }\n"
              "                        ^\n");
  CHECK_ERROR("layer f() { out = g( }\n",
              "t.nn:1:22: error: unexpected '}', expected an expression or ')'\n"
              "  layer f() { out = g( }\n"
              "                       ^\n");
  CHECK_ERROR("layer f() { out = \"s\" \"t\" }\n",
              "t.nn:1:23: error: unexpected '\"t\"', expected end of line or '}'\n"
              "  layer f() { out = \"s\" \"t\" }\n"
              "                        ^\n");
  // A ?: cannot end an item: put it in parentheses.
  CHECK_ERROR("network n {\n  layer dense a ? b : c\n}\n",
              "t.nn:2:17: error: unexpected '?'\n"
              "    layer dense a ? b : c\n"
              "                  ^\n");
  // The header of a block ends on the line of its `{`.
  CHECK_ERROR("layer dense(units)\n{\n}\n",
              "t.nn:1:19: error: unexpected end of line, expected '{'\n"
              "  layer dense(units)\n"
              "                    ^\n");

  // Missing '='
  CHECK_ERROR("loss mse(a, b) mean(a)\n",
              "t.nn:1:16: error: unexpected 'mean', expected '='\n"
              "  loss mse(a, b) mean(a)\n"
              "                 ^\n");
  CHECK_ERROR("layer f() {\n  out x\n}\n",
              "t.nn:2:7: error: unexpected 'x', expected '='\n"
              "    out x\n"
              "        ^\n");
  CHECK_ERROR("optimizer o() {\n  state m\n}\n",
              "t.nn:2:10: error: unexpected end of line, expected '='\n"
              "    state m\n"
              "           ^\n");

  // Missing expressions
  CHECK_ERROR("layer f() {\n  out = x +\n}\n",
              "t.nn:2:12: error: unexpected end of line, expected an expression\n"
              "    out = x +\n"
              "             ^\n");
  CHECK_ERROR("loss f(a) = ",
              "t.nn:1:12: error: unexpected end of file, expected an expression\n"
              "  loss f(a) = \n"
              "             ^\n");

  // Unexpected end of file: its position is just past the last token (not on the empty line
  // after the last newline, nor after trailing comments).
  CHECK_ERROR("network n",
              "t.nn:1:10: error: unexpected end of file, expected '{'\n"
              "  network n\n"
              "           ^\n");
  CHECK_ERROR("loss f(a) = max(a,  # the rest\n\n\n# more\n\n",
              "t.nn:1:19: error: unexpected end of file, expected an expression; the parenthesis "
              "opened at line 1 is not closed\n"
              "  loss f(a) = max(a,  # the rest\n"
              "                    ^\n");
  CHECK_ERROR("network n {\r\n  input 3\r\n\r\n",
              "t.nn:2:10: error: unexpected end of file, expected '}' to close the block opened at "
              "line 1\n"
              "    input 3\n"
              "           ^\n");
  // ... and inside a bracket, it names the innermost one and the line it opened on.
  CHECK_ERROR("layer f() {\n  out = x\n",
              "t.nn:2:10: error: unexpected end of file, expected '}' to close the block opened at "
              "line 1\n"
              "    out = x\n"
              "           ^\n");
  CHECK_ERROR("network n {\n  input 3\n  layer dense 4\n\n",
              "t.nn:3:16: error: unexpected end of file, expected '}' to close the block opened at "
              "line 1\n"
              "    layer dense 4\n"
              "                 ^\n");
  CHECK_ERROR("layer f() {\n  train {\n    out = x }\n  eval {\n    out = x\n",
              "t.nn:5:12: error: unexpected end of file, expected '}' to close the block opened at "
              "line 4\n"
              "      out = x\n"
              "             ^\n");
  CHECK_ERROR("loss f(a) = mean((a -\n  1)\n",
              "t.nn:2:5: error: unexpected end of file, expected ')' to close the parenthesis "
              "opened at line 1\n"
              "    1)\n"
              "      ^\n");
  CHECK_ERROR("layer f(k) {\n  param w[k,\n    in\n",
              "t.nn:3:7: error: unexpected end of file, expected ']' to close the bracket opened "
              "at line 2\n"
              "      in\n"
              "        ^\n");
  // When something else must come before the closer, the open bracket is a note.
  CHECK_ERROR("layer f() { out = max(x,\n  # more to come\n",
              "t.nn:1:25: error: unexpected end of file, expected an expression; the parenthesis "
              "opened at line 1 is not closed\n"
              "  layer f() { out = max(x,\n"
              "                          ^\n");
  CHECK_ERROR("layer f() {\n  out = x +",
              "t.nn:2:12: error: unexpected end of file, expected an expression; the block opened "
              "at line 1 is not closed\n"
              "    out = x +\n"
              "             ^\n");

  // A closer of the wrong kind: the expected list leaves out the operators that could
  // continue the expression, so it names the closer.
  CHECK_ERROR("layer f() {\n  out = (x * 2 }\n",
              "t.nn:2:16: error: unexpected '}', expected ')'\n"
              "    out = (x * 2 }\n"
              "                 ^\n");
  CHECK_ERROR("layer f() {\n  out = (x * 2\n}\n",
              "t.nn:3:1: error: unexpected '}', expected ')'\n"
              "  }\n"
              "  ^\n");
  CHECK_ERROR("layer f() { out = max(x, 0 }\n",
              "t.nn:1:28: error: unexpected '}', expected ',' or ')'\n"
              "  layer f() { out = max(x, 0 }\n"
              "                             ^\n");
  CHECK_ERROR("layer f() { param w[3, 4) }\n",
              "t.nn:1:25: error: unexpected ')', expected ',' or ']'\n"
              "  layer f() { param w[3, 4) }\n"
              "                          ^\n");
  CHECK_ERROR("layer f() { out = c ? x }\n",
              "t.nn:1:25: error: unexpected '}', expected ':'\n"
              "  layer f() { out = c ? x }\n"
              "                          ^\n");

  // Comparisons do not chain: reported at the second operator of one level.
  CHECK_ERROR("loss f(a, b, c) = a < b < c\n",
              "t.nn:1:25: error: comparisons cannot be chained ('a < b < c'); "
              "write (a < b) * (b < c)\n"
              "  loss f(a, b, c) = a < b < c\n"
              "                          ^\n");
  CHECK_ERROR("loss f(a, b, c) = a == b != c\n",
              "t.nn:1:26: error: comparisons cannot be chained ('a < b < c'); "
              "write (a < b) * (b < c)\n"
              "  loss f(a, b, c) = a == b != c\n"
              "                           ^\n");
  CHECK_ERROR("layer f() {\n  out = x * (0 <= x + 1 < (1))\n}\n",
              "t.nn:2:25: error: comparisons cannot be chained ('a < b < c'); "
              "write (a < b) * (b < c)\n"
              "    out = x * (0 <= x + 1 < (1))\n"
              "                          ^\n");
  CHECK_ERROR("data d {\n  limit 0<x<1\n}\n",
              "t.nn:2:12: error: comparisons cannot be chained ('a < b < c'); "
              "write (a < b) * (b < c)\n"
              "    limit 0<x<1\n"
              "             ^\n");
  // A comparison after a bracket, a ',', a '?' or ':' or a line starts a new chain.
  CHECK_STR(dump_expr("(a < b) < c + f(a > b, b > c) * (a == b ? b < c : c <= a)"),
            "(< (< a b) (+ c (* (call f (> a b) (> b c)) (? (== a b) (< b c) (<= c a)))))");
  CHECK_STR(dump("data d {\n  limit a<b c<d\n  limit e>f\n}\n"),
            "(data d\n  (line limit (< a b) (< c d))\n  (line limit (> e f)))\n");
  // A '<' that does not follow another is still just unexpected.
  CHECK_ERROR("layer f(a < b) {}\n",
              "t.nn:1:11: error: unexpected '<', expected '=', ',' or ')'\n"
              "  layer f(a < b) {}\n"
              "            ^\n");

  // A line item cannot start with unary minus: say how to write it.
  CHECK_ERROR("train n on d {\n  epochs -1\n}\n",
              "t.nn:2:10: error: a value on a line cannot start with '-'; write it in parentheses: "
              "(-1)\n"
              "    epochs -1\n"
              "           ^\n");
  CHECK_ERROR("train n on d {\n  clip -max_norm   # a name\n}\n",
              "t.nn:2:8: error: a value on a line cannot start with '-'; write it in parentheses: "
              "(-max_norm)\n"
              "    clip -max_norm   # a name\n"
              "         ^\n");
  CHECK_ERROR("train n on d {\n  schedule warmup 5 then -2.5e-3 }\n",
              "t.nn:2:26: error: a value on a line cannot start with '-'; write it in parentheses: "
              "(-2.5e-3)\n"
              "    schedule warmup 5 then -2.5e-3 }\n"
              "                           ^\n");
  CHECK_ERROR("network n {\n  input -x^2\n}\n",
              "t.nn:2:9: error: a value on a line cannot start with '-'; write it in parentheses, "
              "e.g. (-1)\n"
              "    input -x^2\n"
              "          ^\n");
  // Elsewhere '-' is binary: `dense -1` is dense - 1 (see test_lines).
  CHECK_ERROR("network n {\n  input 3 -\n}\n",
              "t.nn:2:12: error: unexpected end of line, expected an expression\n"
              "    input 3 -\n"
              "             ^\n");

  // Lexer errors
  CHECK_ERROR("data d {\n  train idx(\"abc)\n}\n",
              "t.nn:2:13: error: unterminated string\n"
              "    train idx(\"abc)\n"
              "              ^\n");
  CHECK_ERROR("loss f() = \"abc\\",
              "t.nn:1:12: error: unterminated string\n"
              "  loss f() = \"abc\\\n"
              "             ^\n");
  CHECK_ERROR("data d {\n  scale $3\n}\n",
              "t.nn:2:9: error: unexpected character '$'\n"
              "    scale $3\n"
              "          ^\n");
  CHECK_ERROR("loss f() = a ! b\n",
              "t.nn:1:14: error: unexpected character '!'\n"
              "  loss f() = a ! b\n"
              "               ^\n");
  CHECK_ERROR("loss f() = a\x01\n",
              "t.nn:1:13: error: unexpected character '\\x01'\n"
              "  loss f() = a\x01\n"
              "              ^\n");
  CHECK_ERROR("loss f() = a\rb\n",
              "t.nn:1:13: error: unexpected character '\\x0d'\n"
              "  loss f() = a\rb\n"
              "              ^\n");
  CHECK_ERROR("loss f() = \"a\\qb\"\n",
              "t.nn:1:14: error: unknown escape '\\q' in a string\n"
              "  loss f() = \"a\\qb\"\n"
              "               ^\n");
}

// The first line of a captured error: "file:line:col: error: message".
static char *first_line(char *err) {
  char *nl = strchr(err, '\n');
  if (nl)
    *nl = 0;
  return err;
}

// Parses src in a child; checks the exit status (1) and the first line of stderr. The
// buffer holds a whole echoed source line of a few megabytes.
static void check_deep_error(const char *src, const char *want, int line) {
  static char err[8 << 20];
  int st = check_capture(parse_src, (void *)src, err, sizeof err);
  CHECK(st == 1, "line %d: exit status %d", line, st);
  CHECK(strcmp(first_line(err), want) == 0, "line %d: got: %.200s\nwant: %s", line, err, want);
}

// A string of n copies of s between head and tail.
static char *repeat(const char *head, const char *s, size_t n, const char *tail) {
  size_t hl = strlen(head), sl = strlen(s), tl = strlen(tail);
  char *out = malloc(hl + n * sl + tl + 1), *p = out;
  memcpy(p, head, hl);
  p += hl;
  for (size_t i = 0; i < n; i++, p += sl)
    memcpy(p, s, sl);
  memcpy(p, tail, tl + 1);
  return out;
}

// Expressions nest at most 1000 nodes deep (later passes walk them recursively); Bison's
// stack holds 10000 symbols. Deeper is an error, not a crash, in either direction.
static void test_deep(void) {
  // Parentheses make no nodes: 20000 of them fill Bison's stack first.
  size_t depth = 20000;
  char *src = malloc(2 * depth + 32);
  char *p = src + sprintf(src, "loss f() = ");
  memset(p, '(', depth);
  p += depth;
  p += sprintf(p, "x");
  memset(p, ')', depth);
  p[depth] = 0;
  check_deep_error(src, "t.nn:1:10003: error: expression nested too deeply", __LINE__);
  free(src);

  // A layer body `out = x + x + ...` of 200,000 terms is left-deep: the stack stays shallow,
  // and the 1000th '+' (at column 7 + 4 * 1000) makes the 1001st level.
  src = repeat("layer f() {\n  out = x", " + x", 200000, "\n}\n");
  check_deep_error(src,
                   "t.nn:2:4007: error: expression nested too deeply (more than 1000 levels)",
                   __LINE__);
  free(src);
  // 999 operators, 1000 levels, are fine, and dump.
  src = repeat("layer f() {\n  out = x", " + x", 999, "\n}\n");
  Node *n = parse_file("t.nn", src);
  CHECK(n->body->lhs->depth == 1000 && n->body->lhs->lhs->depth == 999, "depth %d",
        n->body->lhs->depth);
  char *text = dump(src);
  char *want = repeat("(layerdef f (params)\n  (assign out ", "(+ ", 999, "x");
  want = str_fmt("%s%s))\n", want, repeat("", " x)", 999, ""));
  CHECK(strcmp(text, want) == 0, "dump of 999 operators: %.100s", text);
  free(text);
  free(src);

  // Right-deep: `x^x^...^x` of 1500 operators reduces from the right; the 1000th operator
  // from the right (the 501st, at column 11 + 2 * 501) passes the limit.
  src = repeat("loss f() = x", "^x", 1500, "\n");
  check_deep_error(src,
                   "t.nn:1:1013: error: expression nested too deeply (more than 1000 levels)",
                   __LINE__);
  free(src);
  // 200,000 of them fill Bison's stack first (2 symbols each).
  src = repeat("loss f() = x", "^x", 200000, "\n");
  check_deep_error(src, "t.nn:1:10003: error: expression nested too deeply", __LINE__);
  free(src);
  // Unary minus, calls, ?: and named arguments count too.
  src = repeat("loss f() = ", "-", 1000, "x\n");
  check_deep_error(src, "t.nn:1:12: error: expression nested too deeply (more than 1000 levels)",
                   __LINE__);
  free(src);
  src = repeat("loss f() = ", "-", 999, "x\n");
  CHECK(parse_file("t.nn", src)->lhs->depth == 1000, "999 minus signs");
  free(src);
  // (1000 nested calls: the outermost is the 1001st level)
  src = repeat("loss f() = ", "g(0, ", 1000, repeat("x", ")", 1000, "\n"));
  check_deep_error(src, "t.nn:1:12: error: expression nested too deeply (more than 1000 levels)",
                   __LINE__);
  free(src);
  // (a call and a named argument are 2 levels: the outermost `a=` of 500 is the 1001st)
  src = repeat("loss f() = ", "g(a=", 500, repeat("-x", ")", 500, "\n"));
  check_deep_error(src, "t.nn:1:14: error: expression nested too deeply (more than 1000 levels)",
                   __LINE__);
  free(src);
  src = repeat("loss f() = ", "c ? 1 : ", 1000, "x\n");
  check_deep_error(src, "t.nn:1:14: error: expression nested too deeply (more than 1000 levels)",
                   __LINE__);
  free(src);
  // Items on a line and definition parameters are expressions like any other.
  src = repeat("network n {\n  layer dense x", "+x", 1000, "\n}\n");
  check_deep_error(src,
                   "t.nn:2:2014: error: expression nested too deeply (more than 1000 levels)",
                   __LINE__);
  free(src);
}

// Every prefix of the sample either parses or is reported; none crashes.
static void test_prefixes(void) {
  size_t len = strlen(sample);
  int bad = 0;
  for (size_t i = 0; i < len; i += 3) {
    char *src = str_ndup(sample, i);
    static char err[4096];
    int st = check_capture(parse_src, src, err, sizeof err);
    if (st != 0 && !(st == 1 && strstr(err, ": error: ")))
      bad++;
  }
  CHECK(bad == 0, "%d prefixes of the sample crashed", bad);
}

static void test_kind_names(void) {
  CHECK_STR(ast_kind_name(ND_NUM), "num");
  CHECK_STR(ast_kind_name(ND_MODE), "mode");
  CHECK_STR(ast_kind_name(ND_TRAIN), "train");
}

int main(void) {
  test_sample();
  test_definitions();
  test_statements();
  test_precedence();
  test_primaries();
  test_spanning();
  test_lines();
  test_layout();
  test_positions();
  test_errors();
  test_deep();
  test_prefixes();
  test_kind_names();
  return check_summary();
}
