// explain.c — `keel explain FILE`: every safety mechanism of a script, in plain words.
//
// One paragraph per mechanism, in a fixed order: the validation split, each dropout, each
// batchnorm, weight decay, gradient clipping, the schedule, early stopping, on_plateau, the
// divergence guard, the seed. Each paragraph starts with the setting as the script writes it
// (taken from the source text where the program records a position) and says, with the
// script's own numbers, what the mechanism does and what it protects against. The reader has
// trained a network before but may not know why each rail matters. Mechanisms the script does
// not use are left out, except the validation split (its absence is the point), the schedule
// (a constant rate is a choice too), the guard and the seed (always on).
//
// Paragraphs are wrapped at 92 columns with a blank line between them.

#include "keel.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { WIDTH = 92 };

// A space the wrapping never breaks at, inside short formulas ("1 − lr × 0.01").
#define NB "\x01"

// ---------------------------------------------------------------------------------------------
// Output

typedef struct {
  FILE *out;
  int paragraphs;
} Explain;

// Display width of a word: UTF-8 continuation bytes take no column.
static int columns(const char *s, size_t n) {
  int c = 0;
  for (size_t i = 0; i < n; i++)
    c += ((unsigned char)s[i] & 0xC0) != 0x80;
  return c;
}

// Prints text wrapped at WIDTH columns, after a blank line unless it is the first paragraph.
static void paragraph(Explain *e, const char *text) {
  if (e->paragraphs++)
    fputc('\n', e->out);
  int col = 0;
  for (const char *p = text; *p;) {
    while (*p == ' ')
      p++;
    if (!*p)
      break;
    size_t n = strcspn(p, " ");
    int w = columns(p, n);
    if (col > 0 && col + 1 + w > WIDTH) {
      fputc('\n', e->out);
      col = 0;
    } else if (col > 0) {
      fputc(' ', e->out);
      col++;
    }
    for (size_t i = 0; i < n; i++)
      fputc(p[i] == NB[0] ? ' ' : p[i], e->out);
    col += w;
    p += n;
  }
  fputc('\n', e->out);
}

// ---------------------------------------------------------------------------------------------
// Numbers and source text

static bool is(const char *a, const char *b) { return a && !strcmp(a, b); }

static const char *num(double v) {
  if (v == floor(v) && fabs(v) < 1e15)
    return str_fmt("%.0f", v);
  return str_fmt("%.8g", v);
}

static const char *percent(double f) { return str_fmt("%s%%", num(round(f * 1e6) / 1e4)); }

static const Arg *find_arg(const Arg *args, int nargs, const char *name) {
  for (int i = 0; i < nargs; i++)
    if (!strcmp(args[i].name, name))
      return &args[i];
  return NULL;
}

static double arg_value(const Arg *args, int nargs, const char *name, double dflt) {
  const Arg *a = find_arg(args, nargs, name);
  return a ? a->value : dflt;
}

// A count with its unit as written: "500 steps", "2 epochs", "1 epoch".
static const char *duration(const Arg *a) {
  const char *unit = a && a->epochs ? "epoch" : "step";
  double v = a ? a->value : 0;
  return str_fmt("%s %s%s", num(v), unit, v == 1 ? "" : "s");
}

// The whole line of the script at pos, as written ("clip norm=1.0").
static const char *line_text(Pos pos) {
  if (!pos.src || pos.line < 1)
    return NULL;
  const char *t = src_text(src_line(pos.src, pos.line), NULL, false);
  return *t ? t : NULL;
}

// The first line of src whose first word is `word` and that is not an assignment
// ("seed 42", "guard spike=5"), as written; NULL when there is none.
static const char *find_line(const char *src, const char *word) {
  if (!src)
    return NULL;
  size_t n = strlen(word);
  for (const char *p = src; *p;) {
    const char *q = p;
    while (*q == ' ' || *q == '\t')
      q++;
    if (!strncmp(q, word, n) && (q[n] == ' ' || q[n] == '\t' || q[n] == '\n' || !q[n])) {
      const char *r = q + n;
      while (*r == ' ' || *r == '\t')
        r++;
      if (*r != '=')
        return src_text(q, NULL, false);
    }
    p = strchr(p, '\n');
    if (!p)
      break;
    p++;
  }
  return NULL;
}

// Layer i as written on its layer line: "dropout 0.3", "batchnorm momentum=0.01".
static const char *layer_text(Prog *p, int i) {
  LayerInfo *l = &p->layers[i];
  if (!l->pos.src)
    return l->kind;
  const char *start = src_line(l->pos.src, l->pos.line) + l->pos.col - 1, *stop = NULL;
  if (i + 1 < p->nlayers && p->layers[i + 1].pos.line == l->pos.line &&
      p->layers[i + 1].pos.src == l->pos.src && p->layers[i + 1].pos.col > l->pos.col)
    stop = src_line(l->pos.src, l->pos.line) + p->layers[i + 1].pos.col - 1;
  const char *t = src_text(start, stop, false);
  return *t ? t : l->kind;
}

// What feeds layer i: "after dense1 (256 units)" or "on the input (784 values)".
static const char *feeder(Prog *p, int i, const char *noun) {
  int64_t k = shape_numel(p->layers[i].in, 1);
  Shape in = p->layers[i].in;
  if (in.rank == 4)  // images: channels of height × width
    return str_fmt("%s%s (%lld channels of %lld" NB "×" NB "%lld)", i ? "after " : "on the input",
                   i ? p->layers[i - 1].name : "", (long long)in.dim[1], (long long)in.dim[2],
                   (long long)in.dim[3]);
  if (i == 0)
    return str_fmt("on the input (%lld values)", (long long)k);
  return str_fmt("after %s (%lld %s)", p->layers[i - 1].name, (long long)k, noun);
}

static bool adam_like(const char *opt) { return is(opt, "adam") || is(opt, "adamw"); }

// ---------------------------------------------------------------------------------------------
// The mechanisms

static void explain_validation(Explain *e, Prog *p) {
  const char *gap = "a gap that widens, with the training loss still falling while the "
                    "validation loss stalls or rises, means the network is memorizing the "
                    "training set rather than learning what carries over to new data";
  if (p->holdout > 0) {
    const char *as = find_line(p->data_pos.src, "holdout");
    paragraph(e, str_fmt(
        "%s: before training, %s of the training samples are set aside as a validation set, "
        "picked by a shuffle fixed by the seed (every run holds out the same samples)%s, and "
        "the network never trains on them. The validation loss is measured at the end of every "
        "epoch, next to the training loss: %s.",
        as ? as : str_fmt("holdout %s", num(p->holdout)), percent(p->holdout),
        p->classify ? " and taking the same share of every class" : "", gap));
  } else if (p->has_val) {
    const char *as = line_text(p->val_src.pos);
    paragraph(e, str_fmt(
        "%s: the network is measured on this separate set at the end of every epoch and never "
        "trains on it. Its loss is reported next to the training loss: %s.",
        as ? as : "val", gap));
  } else {
    paragraph(e, str_fmt(
        "no holdout, no val: nothing is held out, so the only measure during training is the "
        "training loss, which keeps falling even while the network memorizes the training "
        "set, and overfitting cannot be seen%s. Add 'holdout 0.1' to the data block to set "
        "aside 10%% of the training samples and measure them every epoch.",
        p->has_test ? " (the test set is measured only once, at the end)" : ""));
  }
}

static void explain_dropout(Explain *e, Prog *p, int i) {
  LayerInfo *l = &p->layers[i];
  double rate = arg_value(l->args, l->nargs, "p", 0);
  int64_t k = shape_numel(l->in, 1);
  if (!(rate > 0 && rate < 1)) {
    paragraph(e, str_fmt("%s %s: with p=%s it %s.", layer_text(p, i),
                         feeder(p, i, "units"), num(rate),
                         rate <= 0 ? "drops nothing and has no effect"
                                   : "drops every value in training"));
    return;
  }
  double scale = 1 / (1 - rate);
  const char *shown = str_fmt("%.3g", scale);
  bool exact = atof(shown) == scale;
  paragraph(e, str_fmt(
      "%s %s zeroes a random %s of those %lld values in every training step and "
      "multiplies the rest by 1/(1" NB "−" NB "%s)" NB "%s" NB "%s, so the next layer cannot "
      "lean on any single %s; at evaluation it is off, and the scaling keeps the values' "
      "expected size the same in both modes.",
      layer_text(p, i), feeder(p, i, "units"), percent(rate), (long long)k, num(rate),
      exact ? "=" : "≈", shown, i == 0 ? "input" : "unit"));
}

static void explain_batchnorm(Explain *e, Prog *p, int i) {
  LayerInfo *l = &p->layers[i];
  double m = arg_value(l->args, l->nargs, "momentum", 0.1);
  int64_t f = l->in.rank >= 2 ? l->in.dim[1] : 1;
  if (l->in.rank == 4) {  // images: per channel, over the batch and every pixel
    paragraph(e, str_fmt(
        "%s %s, batch %lld: in training it shifts and scales each of the %lld channels to "
        "mean 0 and variance 1 over the current batch, all %lld" NB "×" NB "%lld" NB "×" NB
        "%lld of that channel's values, then applies a trained scale and shift per channel, "
        "which keeps the next layer's inputs in a steady range while the weights before it "
        "change. It also keeps running averages of each channel's mean and variance (each "
        "step moves them %s of the way, momentum=%s); evaluation uses these instead of batch "
        "statistics, so an image's prediction does not depend on the other images in its "
        "batch.",
        layer_text(p, i), feeder(p, i, "channels"), (long long)p->batch, (long long)f,
        (long long)p->batch, (long long)l->in.dim[2], (long long)l->in.dim[3], percent(m),
        num(m)));
    return;
  }
  paragraph(e, str_fmt(
      "%s %s, batch %lld: in training it shifts and scales each of the %lld features to "
      "mean 0 and variance 1 over the current batch of %lld samples, then applies a trained "
      "scale and shift, which keeps the next layer's inputs in a steady range while the "
      "weights before it change. It also keeps running averages of each feature's mean and "
      "variance (each step moves them %s of the way, momentum=%s); evaluation uses these "
      "instead of batch statistics, so a sample's prediction does not depend on the other "
      "samples in its batch.",
      layer_text(p, i), feeder(p, i, "features"), (long long)p->batch, (long long)f,
      (long long)p->batch, percent(m), num(m)));
}

static void explain_weight_decay(Explain *e, Prog *p) {
  const Arg *a = find_arg(p->opt.args, p->opt.nargs, "weight_decay");
  if (!a || !(a->value > 0))
    return;
  const char *as = line_text(p->opt.pos);
  as = as ? as : str_fmt("optimizer %s", p->opt.name);
  const char *wd = num(a->value), *opt = p->opt.name;
  const char *small = "Small weights make a smoother function that is less able to memorize "
                      "the training set";
  if (is(opt, "adamw")) {
    paragraph(e, str_fmt(
        "%s: every step first multiplies each weight by 1" NB "−" NB "lr" NB "×" NB "%s "
        "(%s at lr=%s), pulling it toward 0 apart from the gradient, then takes adam's step "
        "(decoupled weight decay). %s; because the decay does not pass through adam's "
        "per-weight scaling, it acts the same on every weight.",
        as, wd, num(1 - p->base_lr * a->value), num(p->base_lr), small));
  } else if (is(opt, "sgd") || is(opt, "adam") || is(opt, "rmsprop") || is(opt, "adagrad")) {
    const char *scaled =
        is(opt, "sgd") ? ""
                       : str_fmt(" Since %s then divides the gradient by its own running "
                                 "scale, weights with large gradients are decayed less than "
                                 "the others%s.",
                                 opt, is(opt, "adam") ? "; adamw decouples the decay" : "");
    paragraph(e, str_fmt(
        "%s: every step adds %s" NB "×" NB "w to each weight's gradient (coupled L2 weight "
        "decay), so each weight is pulled toward 0 in proportion to its size unless the data "
        "keeps it large. %s.%s",
        as, wd, small, scaled));
  } else {
    paragraph(e, str_fmt("%s: weight_decay=%s, applied as optimizer '%s' defines it; weight "
                         "decay keeps the weights small, which makes the network less able "
                         "to memorize the training set.",
                         as, wd, opt));
  }
}

static void explain_clip(Explain *e, Prog *p) {
  if (!(p->clip_norm > 0) && !(p->clip_value > 0))
    return;
  const char *as = line_text(p->clip_pos);
  const char *n = num(p->clip_norm), *v = num(p->clip_value);
  if (p->clip_value > 0 && p->clip_norm > 0) {
    paragraph(e, str_fmt(
        "%s: after the backward pass every gradient element is first clamped to [−%s," NB "%s]; "
        "then, when the clamped gradients of all parameters taken together have a length (L2 "
        "norm) above %s, they are all scaled down by the same factor to length %s. One bad "
        "batch with huge gradients therefore cannot throw the weights far.",
        as ? as : "clip", v, v, n, n));
  } else if (p->clip_norm > 0) {
    paragraph(e, str_fmt(
        "%s: after the backward pass the gradients of all parameters are measured together as "
        "one vector; when its length (L2 norm) is above %s, every gradient is scaled down by "
        "the same factor to bring it to %s, so one bad batch cannot throw the weights far, and "
        "the direction of the step stays the same. Below %s the gradients pass unchanged.",
        as ? as : "clip", n, n, n));
  } else {
    paragraph(e, str_fmt(
        "%s: every element of every gradient is clamped to [−%s," NB "%s] before the update, "
        "so no single weight can take a huge step from one bad batch; unlike clipping by norm, "
        "this can change the direction of the step.",
        as ? as : "clip", v, v));
  }
}

// One sentence about part i of n of the schedule (base: the optimizer's lr).
static const char *schedule_part(Prog *p, int i, int n) {
  Use *u = &p->segments[i];
  const char *base = num(p->base_lr);
  const char *over = n == 1 ? "over the whole run" : "over the remaining steps";
  const char *lead = i == 0 ? "" : "Then ";  // the first part follows "schedule ...:"
  const char *name = u->name;
  const char *settle = "so the last steps are small and settle into a minimum instead of "
                       "bouncing around it";
  const Arg *a;
#define V(nm, d) arg_value(u->args, u->nargs, nm, d)
  if (is(name, "constant"))
    return str_fmt("%sthe rate stays at lr=%s.", lead, base);
  if (is(name, "warmup")) {
    a = find_arg(u->args, u->nargs, "duration");
    double d = a ? a->value : 1;
    const char *from = a && !a->epochs
                           ? str_fmt("lr/%s" NB "=" NB "%s", num(d), num(p->base_lr / d))
                           : "nearly 0";
    return str_fmt(
        "%s %s the rate climbs in a straight line from %s to lr=%s: the weights "
        "start random, so the first gradients are large and point in unreliable directions%s, "
        "and small early steps keep them from throwing the network somewhere it cannot "
        "recover from%s.",
        i == 0 ? "for the first" : "Then for", duration(a), from, base,
        adam_like(p->opt.name) ? " (and adam's running averages have not settled yet)" : "",
        i + 1 == n ? str_fmt("; after that the rate stays at lr=%s", base) : "");
  }
  if (is(name, "linear")) {
    a = find_arg(u->args, u->nargs, "duration");
    double s = V("start", 1.0 / 3), t = V("end", 1);
    return str_fmt(
        "%sover %s the rate moves in a straight line from %s" NB "×" NB "lr" NB "=" NB "%s to "
        "%s" NB "×" NB "lr" NB "=" NB "%s%s%s.",
        lead, duration(a), num(s), num(s * p->base_lr), num(t),
        num(t * p->base_lr), s < t ? ", a gentle start while the weights are still random"
                           : s > t ? ", a gradual decay" : "",
        i + 1 == n ? ", and then stays there" : "");
  }
  if (is(name, "linear_decay")) {
    double t = V("end", 0);
    return str_fmt("%sthe rate falls in a straight line from lr=%s to %s %s, %s.", lead, base,
                   t == 0 ? "0"
                          : str_fmt("%s" NB "×" NB "lr" NB "=" NB "%s", num(t),
                                    num(t * p->base_lr)),
                   over, settle);
  }
  if (is(name, "step_decay") || is(name, "exponential")) {
    a = find_arg(u->args, u->nargs, "every");
    double g = V("gamma", 0.1);
    const char *every = a && a->value == 1 ? (a->epochs ? "epoch" : "step") : duration(a);
    return str_fmt("%sthe rate is multiplied by %s every %s (lr=%s, then %s, then %s, ...): "
                   "large steps early make fast progress, and the smaller later steps let the "
                   "weights settle into a minimum instead of bouncing around it.",
                   lead, num(g), every, base, num(p->base_lr * g),
                   num(p->base_lr * g * g));
  }
  if (is(name, "multistep")) {
    char list[512] = "";
    const char *ms[] = {"m1", "m2", "m3", "m4"};
    int count = 0;
    for (int k = 0; k < 4; k++) {
      a = find_arg(u->args, u->nargs, ms[k]);
      if (a && a->value < 1e29)
        count++;
    }
    for (int k = 0, j = 0; k < 4; k++) {
      a = find_arg(u->args, u->nargs, ms[k]);
      if (!a || a->value >= 1e29)
        continue;
      snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s",
               j == 0 ? "" : j + 1 < count ? ", " : " and ", duration(a));
      j++;
    }
    return str_fmt("%sthe rate is multiplied by %s after %s: large steps early make fast "
                   "progress, and the smaller later steps let the weights settle into a "
                   "minimum instead of bouncing around it.",
                   lead, num(V("gamma", 0.1)), list);
  }
  if (is(name, "cosine")) {
    double m = V("min_lr", 0);
    return str_fmt("%sthe rate falls from lr=%s to %s along half a cosine %s: slowly at first, "
                   "fastest in the middle and gently at the end, %s.",
                   lead, base, m == 0 ? "0" : str_fmt("min_lr=%s", num(m)),
                   over, settle);
  }
  if (is(name, "cosine_restarts")) {
    a = find_arg(u->args, u->nargs, "period");
    double mult = V("mult", 1), m = V("min_lr", 0);
    return str_fmt("%sthe rate runs in cosine cycles of %s%s, each falling from lr=%s to %s "
                   "and jumping back to lr at the restart: every cycle ends with small steps "
                   "that settle, and the restarts can shake the weights out of a poor minimum.",
                   lead, duration(a),
                   mult == 1 ? "" : str_fmt(", each %s times longer than the one before",
                                            num(mult)),
                   base, m == 0 ? "0" : str_fmt("min_lr=%s", num(m)));
  }
  if (is(name, "polynomial")) {
    return str_fmt("%sthe rate falls from lr=%s to 0 as "
                   "lr" NB "×" NB "(1" NB "−" NB "step/steps)^%s %s, %s.",
                   lead, base, num(V("power", 1)), over, settle);
  }
  if (is(name, "one_cycle")) {
    double peak = V("peak", 0), pct = V("pct", 0.3), div = V("div", 25);
    double fdiv = V("final_div", 1e4);
    if (peak == 0)
      peak = p->base_lr;
    return str_fmt("%sthe rate rises from %s to a peak of %s over the first %s of %s steps, "
                   "then falls along a cosine to %s: the low start works as a warmup for the "
                   "random weights, and the long fall lets the weights settle.",
                   lead, num(peak / div), num(peak), percent(pct), n == 1 ? "the" : "its",
                   num(peak / (div * fdiv)));
  }
  if (is(name, "inverse_sqrt")) {
    a = find_arg(u->args, u->nargs, "warmup");
    return str_fmt("%sthe rate rises in a straight line to lr=%s over the first %s, then falls "
                   "as lr" NB "×" NB "√(warmup/(step+1)), halving each time the step count "
                   "quadruples: a warmup for the random weights, then a slow decay.",
                   lead, base, duration(a));
  }
#undef V
  return str_fmt("%s%s sets the rate by its own formula.", i ? "Then " : "", name);
}

static void explain_schedule(Explain *e, Prog *p) {
  if (p->nsegments == 0) {
    paragraph(e, str_fmt("no schedule: the learning rate stays at lr=%s for the whole run%s.",
                         num(p->base_lr),
                         p->plateau_patience > 0 ? " unless on_plateau or the guard lowers it"
                                                 : " unless the guard lowers it"));
    return;
  }
  const char *as = line_text(p->segments[0].pos);
  char *text = str_fmt("%s:", as ? as : "schedule");
  for (int i = 0; i < p->nsegments; i++)
    text = str_fmt("%s %s", text, schedule_part(p, i, p->nsegments));
  text = str_fmt("%s 'keel schedule %s' prints the rate of every step.", text, p->script);
  paragraph(e, text);
}

static void explain_early_stop(Explain *e, Prog *p) {
  if (p->early_patience <= 0)
    return;
  bool val = p->has_val || p->holdout > 0;
  bool acc = val && p->early_monitor_accuracy && p->classify;
  const char *as = line_text(p->early_pos);
  const char *watched =
      !val ? "the training loss (there is no validation data, and the training loss keeps "
             "falling while the network overfits, so this may stop late or never)"
      : acc ? "val_accuracy" : "val_loss";
  const char *better = p->early_min_delta > 0
                           ? str_fmt("%s by more than %s", acc ? "risen" : "fallen",
                                     num(p->early_min_delta))
                           : "improved";
  paragraph(e, str_fmt(
      "%s: at the end of every epoch %s is compared with the best so far, and when it has not "
      "%s for %d epoch%s in a row, training stops, since the network has most likely begun to "
      "overfit. Whatever ends training (this, the last epoch, --steps or the guard), the "
      "weights of the best epoch are put back %s and written to best.safetensors, so the "
      "result is the network from before it started to overfit.",
      as ? as : "early_stop", watched, better, p->early_patience,
      p->early_patience == 1 ? "" : "s",
      p->has_test ? "before the test evaluation" : "when training ends"));
}

static void explain_plateau(Explain *e, Prog *p) {
  if (p->plateau_patience <= 0)
    return;
  bool val = p->has_val || p->holdout > 0;
  const char *as = line_text(p->plateau_pos);
  int k = p->plateau_patience + 1;
  paragraph(e, str_fmt(
      "%s: when %s has not improved (fallen by more than 0.01%%) for %d epochs in a row, "
      "more than the patience of %d as in PyTorch's ReduceLROnPlateau, the learning rate is "
      "multiplied by %s on top of the schedule, and again after every further %d such epochs; "
      "training that has stalled, often because its steps are too large to settle, then "
      "continues with smaller ones.",
      as ? as : "on_plateau", val ? "val_loss" : "the training loss", k, p->plateau_patience,
      num(p->plateau_factor), k));
}

static void explain_guard(Explain *e, Prog *p) {
  const char *as = find_line(p->data_pos.src, "guard");
  const char *head =
      as ? as : str_fmt("guard spike=%s limit=%d (the default; always on)", num(p->guard_spike),
                        p->guard_limit);
  const char *spike =
      p->guard_spike > 0
          ? str_fmt(", or whose loss is more than %s times the median of the last 50 good "
                    "steps (checked once 20 steps went well),",
                    num(p->guard_spike))
          : " (spike=0 turns off the check for loss spikes)";
  bool bn = false;
  for (int i = 0; i < p->nlayers; i++)
    bn |= is(p->layers[i].kind, "batchnorm");
  paragraph(e, str_fmt(
      "%s: before a step writes anything, its loss and gradients are checked; a step whose "
      "loss or gradients are NaN or infinite%s is discarded and the learning rate is halved, "
      "so the weights%s never take in a NaN. %s training stops with exit status 3; when a "
      "value was not finite, the report names the first layer output or gradient that held "
      "it.",
      head, spike, bn ? ", the optimizer's state and the batchnorm statistics"
                      : " and the optimizer's state",
      p->guard_limit == 1 ? "At the first discarded step"
                          : str_fmt("After %d discarded steps in a row", p->guard_limit)));
}

static void explain_seed(Explain *e, Prog *p) {
  const char *as = find_line(p->data_pos.src, "seed");
  bool dropout = false;
  for (int i = 0; i < p->nlayers; i++)
    dropout |= is(p->layers[i].kind, "dropout");
  const char *items[4] = {"the initial weights", "the shuffle of every epoch"};
  int n = 2;
  if (p->holdout > 0)
    items[n++] = "the holdout split";
  if (dropout)
    items[n++] = "the dropout masks";
  const char *what = items[0];
  for (int i = 1; i < n; i++)
    what = str_fmt("%s%s%s", what, i + 1 < n ? ", " : " and ", items[i]);
  paragraph(e, str_fmt(
      "%s: %s %s from a counter-based random generator keyed by the seed, so the same "
      "script, seed and --threads give bit-identical weights, run after run, through the JIT or a trainer built with the same --cpu. "
      "To tell a real improvement from luck, compare runs with a few seeds (--seed overrides "
      "this one).",
      as ? as : str_fmt("no seed line (seed %llu)", (unsigned long long)p->seed), what,
      n == 2 ? "both come" : "all come"));
}

void explain_program(FILE *out, Prog *p) {
  Explain e = {out, 0};
  explain_validation(&e, p);
  for (int i = 0; i < p->nlayers; i++)
    if (is(p->layers[i].kind, "dropout"))
      explain_dropout(&e, p, i);
  for (int i = 0; i < p->nlayers; i++)
    if (is(p->layers[i].kind, "batchnorm"))
      explain_batchnorm(&e, p, i);
  explain_weight_decay(&e, p);
  explain_clip(&e, p);
  explain_schedule(&e, p);
  explain_early_stop(&e, p);
  explain_plateau(&e, p);
  explain_guard(&e, p);
  explain_seed(&e, p);
}
