// lint.c — the safety lints: warnings about a script that runs but trains badly.
//
// Each lint is one warning through warn_at, at the place in the script to change: a short
// statement of the problem with the script's own values, then after a colon one plain
// sentence of why it matters and what to do. Lints never stop a run (--Werror does that in
// the driver). Two sets:
//
//   lint_program   what the compiled program shows: the order of dropout and batchnorm, a
//                  batch too small for batchnorm, no held-out data, a learning rate far above
//                  what the optimizer tolerates, softmax before cross_entropy, coupled L2 with
//                  adam, early_stop or on_plateau without validation data
//   lint_schedule  what needs the data's size (the number of steps): a schedule whose parts
//                  joined by `then` outlast training, a warmup longer than training, a decay
//                  whose first change comes after the last step
//
// Only the stdlib's own layers, optimizers and schedules are judged by name; a definition of
// the script's own gets no lint that depends on what it computes.

#include "keel.h"

#include <math.h>
#include <string.h>

// The value of a definition's argument, or dflt when it has none of that name.
static double arg_value(const Arg *args, int nargs, const char *name, double dflt) {
  for (int i = 0; i < nargs; i++)
    if (!strcmp(args[i].name, name))
      return args[i].value;
  return dflt;
}

static const Arg *find_arg(const Use *u, const char *name) {
  for (int i = 0; i < u->nargs; i++)
    if (!strcmp(u->args[i].name, name))
      return &u->args[i];
  return NULL;
}

static bool is(const char *a, const char *b) { return a && !strcmp(a, b); }

// A number as a person writes it: 1000, 0.001, 1e-05.
static const char *num(double v) {
  if (v == floor(v) && fabs(v) < 1e15)
    return str_fmt("%.0f", v);
  return str_fmt("%g", v);
}

// The script's text from pos to the end of its line, without a comment, with runs of blanks
// as one space; with stop_then, only up to the word `then` (one part of a schedule).
static const char *source_text(Pos pos, bool stop_then) {
  if (!pos.src || pos.line < 1)
    return "";
  const char *p = src_line(pos.src, pos.line);
  for (int c = 1; c < pos.col && *p && *p != '\n'; c++)
    p++;
  return src_text(p, NULL, stop_then);
}

// The name at pos ("fashion" at a data block's name).
static const char *word_at(Pos pos) {
  const char *t = source_text(pos, false);
  size_t n = 0;
  while (t[n] && (t[n] == '_' || (t[n] >= '0' && t[n] <= '9') || (t[n] >= 'a' && t[n] <= 'z') ||
                  (t[n] >= 'A' && t[n] <= 'Z')))
    n++;
  return str_ndup(t, n);
}

// ---------------------------------------------------------------------------------------------
// Compile-time lints

// The learning rate above which a stdlib optimizer is lint-worthy, and the usual start.
static bool lr_limit(const char *opt, double *limit, const char **usual, const char **why) {
  if (is(opt, "adam") || is(opt, "adamw")) {
    *limit = 0.01, *usual = "0.001";
    *why = str_fmt("%s moves every weight by about lr per step, so steps this large make the "
                   "loss jump or diverge", opt);
  } else if (is(opt, "rmsprop")) {
    *limit = 0.1, *usual = "0.001 to 0.01";
    *why = "rmsprop moves every weight by about lr per step, so steps this large make the loss "
           "jump or diverge";
  } else if (is(opt, "adagrad")) {
    *limit = 1, *usual = "0.01";
    *why = "adagrad's first steps move every weight by about lr, so steps this large make the "
           "loss jump or diverge";
  } else if (is(opt, "sgd")) {
    *limit = 1, *usual = "0.01 to 0.1";
    *why = "steps this large overshoot the minimum, so the loss grows or diverges";
  } else {
    return false;
  }
  return true;
}

int lint_program(Prog *p) {
  int count = 0;
  bool has_val = p->has_val || p->holdout > 0;

  // 1. dropout right before batchnorm
  for (int i = 0; i + 1 < p->nlayers; i++) {
    LayerInfo *d = &p->layers[i], *b = &p->layers[i + 1];
    if (is(d->kind, "dropout") && is(b->kind, "batchnorm") &&
        arg_value(d->args, d->nargs, "p", 0) > 0) {
      warn_at(b->pos,
              "dropout %s right before batchnorm (variance shift): batchnorm's running "
              "statistics come from dropout's training output, whose variance differs at "
              "evaluation; put the dropout after the batchnorm",
              num(arg_value(d->args, d->nargs, "p", 0)));
      count++;
    }
  }

  // 2. batchnorm with a tiny batch (once, at the first batchnorm)
  for (int i = 0; i < p->nlayers; i++) {
    if (!is(p->layers[i].kind, "batchnorm"))
      continue;
    if (p->batch == 1) {
      warn_at(p->layers[i].pos,
              "batchnorm with batch 1: a single sample has no variance, so the layer outputs "
              "a constant and its running variance becomes NaN; use a batch of at least 8");
      count++;
    } else if (p->batch < 8) {
      warn_at(p->layers[i].pos,
              "batchnorm with batch %lld: the mean and variance of %lld samples are noisy, so "
              "training is erratic and the evaluation statistics are poor; use a batch of at "
              "least 8 (32 or more is usual)",
              (long long)p->batch, (long long)p->batch);
      count++;
    }
    break;
  }

  // 3. no held-out data
  if (!has_val) {
    warn_at(p->data_pos,
            "data '%s' has no validation data (no 'val' source, no 'holdout'): overfitting "
            "cannot be seen, because the training loss keeps falling while the network "
            "memorizes; add 'holdout 0.1' to this block",
            word_at(p->data_pos));
    count++;
  }

  // 4. a learning rate far above what the optimizer tolerates
  double limit;
  const char *usual, *why;
  if (lr_limit(p->opt.name, &limit, &usual, &why) && p->base_lr > limit) {
    warn_at(p->opt.pos, "lr=%s is above what %s tolerates (%s): %s; the usual starting rate "
            "is %s", num(p->base_lr), p->opt.name, num(limit), why, usual);
    count++;
  }

  // 5. softmax as the last layer before cross_entropy
  if (p->nlayers > 0 && is(p->layers[p->nlayers - 1].kind, "softmax") &&
      is(p->loss.name, "cross_entropy")) {
    warn_at(p->layers[p->nlayers - 1].pos,
            "the network ends in softmax, but cross_entropy applies softmax itself: applied "
            "twice, the gradients shrink and the network learns slowly; remove this layer");
    count++;
  }

  // 6. adam with weight decay: coupled L2
  double wd = arg_value(p->opt.args, p->opt.nargs, "weight_decay", 0);
  if (is(p->opt.name, "adam") && wd > 0) {
    warn_at(p->opt.pos,
            "adam with weight_decay=%s is coupled L2: adam divides the decay by its per-weight "
            "scale along with the gradient, so weights with large gradients are barely "
            "decayed; use adamw, which decays the weights directly",
            num(wd));
    count++;
  }

  // 7. early_stop and on_plateau without validation data
  if (p->early_patience > 0 && !has_val) {
    warn_at(p->early_pos,
            "%s has no validation data to watch: the training loss it would watch keeps "
            "falling while the network overfits, so it stops late or never; add 'holdout 0.1' "
            "to the data block",
            source_text(p->early_pos, false));
    count++;
  }
  if (p->plateau_patience > 0 && !has_val) {
    warn_at(p->plateau_pos,
            "%s has no validation data to watch: the training loss it would watch keeps "
            "falling while the network overfits, so it cuts the rate at the wrong time; add "
            "'holdout 0.1' to the data block",
            source_text(p->plateau_pos, false));
    count++;
  }
  return count;
}

// ---------------------------------------------------------------------------------------------
// Run-time lints: the schedule against the number of steps

// An argument of a schedule part in steps (a count in epochs times the steps per epoch).
static double in_steps(const Arg *a, int64_t steps_per_epoch) {
  return a->epochs ? a->value * (double)steps_per_epoch : a->value;
}

// " (30000 steps)" after a value written in epochs, else "".
static const char *steps_note(const Arg *a, int64_t steps_per_epoch) {
  return a->epochs ? str_fmt(" (%s steps)", num(in_steps(a, steps_per_epoch))) : "";
}

int lint_schedule(Prog *p, int64_t total_steps, int64_t steps_per_epoch) {
  int count = 0, n = p->nsegments;
  if (n == 0 || total_steps <= 0)
    return 0;
  double total = (double)total_steps;
  const char *rate = num(p->base_lr);

  // 8. parts joined by `then` that last at least as long as training: the later parts never
  // run (reported at the part that reaches the end)
  double start = 0;
  int fits = n;  // parts that start before the end of training
  for (int i = 0; i + 1 < n; i++) {
    Use *u = &p->segments[i];
    const Arg *d = find_arg(u, "duration");
    if (!d)
      break;
    double end = start + in_steps(d, steps_per_epoch);
    if (end >= total) {
      char later[512] = "";
      for (int j = i + 1; j < n; j++)
        snprintf(later + strlen(later), sizeof later - strlen(later), "%s%s",
                 j == i + 1 ? "" : j + 1 < n ? ", " : " and ", p->segments[j].name);
      warn_at(u->pos,
              "%s%s ends at step %s, but training has only %lld steps: %s after it never "
              "run%s; shorten it or train for longer",
              source_text(u->pos, true), steps_note(d, steps_per_epoch), num(end),
              (long long)total_steps, later, n - i - 1 == 1 ? "s" : "");
      count++;
      fits = i + 1;
      break;
    }
    start = end;
  }

  // 9. a warmup (or any duration) longer than the training it has: it never finishes. Only
  // the last part can be cut short this way (an earlier one ends where the next starts), and
  // only when every part runs (else 8 has said it).
  if (fits == n) {
    Use *u = &p->segments[n - 1];
    start = 0;
    for (int i = 0; i + 1 < n; i++)
      start += in_steps(find_arg(&p->segments[i], "duration"), steps_per_epoch);
    const Arg *d = find_arg(u, is(u->name, "inverse_sqrt") ? "warmup" : "duration");
    if (d && start + in_steps(d, steps_per_epoch) > total) {
      const char *effect = is(u->name, "warmup")
                               ? str_fmt("the rate never reaches lr=%s", rate)
                           : is(u->name, "inverse_sqrt")
                               ? "the rate only rises and never decays"
                               : "the rate never reaches its final value";
      const char *span = start > 0 ? str_fmt(", starting at step %s, is longer than the %s "
                                             "steps of training left", num(start),
                                             num(total - start))
                                   : str_fmt(" is longer than training (%lld steps)",
                                             (long long)total_steps);
      warn_at(u->pos, "%s%s%s: it never finishes, so %s; shorten it or train for longer",
              source_text(u->pos, true), steps_note(d, steps_per_epoch), span, effect);
      count++;
    }
  }

  // 10. a decay whose first change comes at or after the last step: the rate never changes
  start = 0;
  for (int i = 0; i < fits; i++) {
    Use *u = &p->segments[i];
    const Arg *a = NULL;
    if (is(u->name, "step_decay") || is(u->name, "exponential"))
      a = find_arg(u, "every");
    else if (is(u->name, "multistep"))
      a = find_arg(u, "m1");
    else if (is(u->name, "cosine_restarts"))
      a = find_arg(u, "period");
    if (a && start + in_steps(a, steps_per_epoch) >= total) {
      bool restarts = is(u->name, "cosine_restarts");
      warn_at(u->pos,
              "%s first %s the rate at step %s, at or beyond the end of training (%lld "
              "steps): %s; %s",
              source_text(u->pos, true), restarts ? "restarts" : "changes",
              num(start + in_steps(a, steps_per_epoch)), (long long)total_steps,
              restarts ? "it never restarts and is a plain cosine"
                       : str_fmt("the rate stays at lr=%s throughout", rate),
              restarts ? "use a shorter period or 'cosine'"
              : is(u->name, "multistep") ? "move the milestones into training or drop the schedule"
                                         : "use a smaller 'every' or drop the schedule");
      count++;
    }
    const Arg *dur = find_arg(u, "duration");
    if (dur)
      start += in_steps(dur, steps_per_epoch);
  }
  return count;
}
