#!/usr/bin/python3
"""bench/summarize.py — the table of `make bench`, from the runs bench/run.sh recorded.

    /usr/bin/python3 bench/summarize.py --out build/bench --command "make bench" --cpu "AMD EPYC"

Reads OUT/runs.tsv (one line per run: row, framework, config, kind, peak RSS in KiB, status,
folder), each Keel run's report.json and metrics.csv, each PyTorch run's result.json, and
OUT/peak.json (bench/peak_fma.c). Prints the table and the targets as Markdown, and writes
them to OUT/results.md, with every number behind them in OUT/results.json.

Per row and configuration the number is the median over the rounds; each side is then shown
at its best thread setting (the highest median training throughput), named in the cell.
"""
import argparse
import csv
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

ROWS = [  # row, model, label
    ("mlp32", "mlp", "Fashion MLP, batch 32"),
    ("mlp128", "mlp", "Fashion MLP, batch 128"),
    ("mlp512", "mlp", "Fashion MLP, batch 512"),
    ("tiny16", "tiny", "tiny 2-16-1 tanh, batch 16"),
    ("cnn128", "cnn", "Fashion CNN, batch 128"),
]

MLP_PARAMS = 784 * 256 + 256 + 2 * 256 + 256 * 128 + 128 + 2 * 128 + 128 * 10 + 10  # 235,914
TINY_PARAMS = 2 * 16 + 16 + 16 + 1  # 65
# The CNN's training FLOPs: 3 × the forward pass's multiply-adds × 2, less conv1's input
# gradient, which is not computed (perf-anchors.md §3f: 25.0 MFLOP per sample). 6 × its
# 421,834 parameters would undercount a convolution's weight reuse by 10×.
CNN_FWD = 2 * (28 * 28 * 32 * 9 * 1 + 14 * 14 * 64 * 9 * 32 + 3136 * 128 + 128 * 10)
CNN_FLOP = 3 * CNN_FWD - 2 * 28 * 28 * 32 * 9 * 1
FLOP_PER_SAMPLE = {"mlp": 6 * MLP_PARAMS, "tiny": 6 * TINY_PARAMS, "cnn": CNN_FLOP}
FLOP_NOTE = {"mlp": "6 × 235,914 parameters", "tiny": "6 × 65 parameters",
             "cnn": f"{CNN_FLOP / 1e6:.1f} MFLOP (3 × forward − conv1's input gradient)"}

TARGETS = {"mlp32": 5.0, "mlp128": 3.0, "mlp512": 1.5, "tiny16": 20.0, "cnn128": 1.5}
RSS_TARGET = 0.25
PEAK_TARGET = 0.50       # MLP batch 512, of the FP32 peak, 6 × parameters FLOPs per sample
COMPILE_TARGET = 0.3     # seconds


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


CNN_EVAL = int(os.environ.get("CNN_EVAL", "2000"))  # bench/run.sh: the CNN's eval subset


def read_peak(path):
    """peak.json holds one line per bench/peak_fma run (at the start and at the end of the
    bench): the highest of each number counts. When the all-core number is below 90 % of
    cores × the 1-core number, other processes held some cores while it ran (each core has its
    own FMA units): the peak is then taken as cores × the 1-core peak, and said so."""
    with open(path) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    peak = {k: max(r[k] for r in runs) for k in ("ghz_1", "gflops_1", "gflops_all")}
    peak["threads"] = runs[0]["threads"]
    peak["flop_per_cycle_1"] = max(r["flop_per_cycle_1"] for r in runs)
    peak["measured_all"] = peak["gflops_all"]
    peak["all_from_1"] = peak["gflops_all"] < 0.9 * peak["threads"] * peak["gflops_1"]
    if peak["all_from_1"]:
        peak["gflops_all"] = peak["threads"] * peak["gflops_1"]
    peak["runs"] = runs
    return peak


def eval_points(model):
    if model == "tiny":
        with open(os.path.join(HERE, "data", "spirals_test.csv")) as f:
            return sum(1 for line in f if line.strip()) - 1
    return CNN_EVAL if model == "cnn" else 10000


def keel_train(path):
    rep = read_json(os.path.join(path, "report.json"))
    if not rep:
        return None
    return {"sps": rep.get("samples_per_second"), "compile": rep.get("compile_seconds"),
            "test_accuracy": rep.get("test_accuracy"), "test_loss": rep.get("test_loss"),
            "steps": rep.get("steps")}


def keel_eval(path, model):
    """Evaluation samples/s of a run of a *_eval.nn copy (bench/run.sh explains)."""
    rep = read_json(os.path.join(path, "report.json"))
    if not rep or not rep.get("samples_per_second"):
        return None
    with open(os.path.join(path, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    total = sum(float(r["seconds"]) for r in rows)
    train_seconds = rep["steps"] * rep["batch"] / rep["samples_per_second"]
    eval_seconds = total - train_seconds
    if eval_seconds <= 0:
        return None
    return {"eval_sps": len(rows) * eval_points(model) / eval_seconds,
            "passes": len(rows), "eval_seconds": eval_seconds, "compile": rep.get("compile_seconds")}


def load_runs(out):
    runs = []
    with open(os.path.join(out, "runs.tsv")) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 7:
                continue
            row, fw, config, kind, rss, status, path = parts
            r = {"row": row, "framework": fw, "config": config, "kind": kind,
                 "rss_mb": int(rss) / 1024 if rss else None, "status": status, "path": path}
            if status == "ok":
                if fw == "torch":
                    res = read_json(os.path.join(path, "result.json")) or {}
                    r.update(sps=res.get("train_sps"), eval_sps=res.get("eval_sps"),
                             truncated=res.get("truncated_epochs"),
                             test_accuracy=res.get("test_accuracy"), test_loss=res.get("test_loss"),
                             torch_threads=res.get("torch_threads"), blas=res.get("blas"))
                elif kind == "train":
                    r.update(keel_train(path) or {})
                else:
                    r.update(keel_eval(path, row) or {})
            runs.append(r)
    return runs


def by_config(runs, key, spread=False):
    """{config: median of key over the runs of that config}, for ok runs only; with spread,
    {config: (median, min, max)}."""
    cfg = {}
    for r in runs:
        if r["status"] == "ok" and r.get(key) is not None:
            cfg.setdefault(r["config"], []).append(r[key])
    if spread:
        return {c: (med(v), min(v), max(v)) for c, v in cfg.items()}
    return {c: med(v) for c, v in cfg.items()}


def best_config(runs, key):
    m = by_config(runs, key)
    if not m:
        return None, None, m
    c = max(m, key=m.get)
    return c, m[c], m


def keel_threads(cfg):
    return "--threads " + cfg[1:] if cfg else "?"


def fmt(x, digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def summarize(runs, peak, cnn_keel):
    rows = []
    for row, model, label in ROWS:
        kr = [r for r in runs if r["row"] == row and r["framework"] == "keel" and r["kind"] == "train"]
        tr = [r for r in runs if r["row"] == row and r["framework"] == "torch"]
        if not kr and not tr:
            continue
        k_cfg, k_sps, k_all = best_config(kr, "sps")
        t_cfg, t_sps, t_all = best_config(tr, "sps")
        ke = [r for r in runs if r["row"] == model and r["framework"] == "keel" and r["kind"] == "eval"]
        te = [r for r in runs if r["framework"] == "torch" and
              next((m for rw, m, _ in ROWS if rw == r["row"]), None) == model]
        ke_cfg, ke_sps, ke_all = best_config(ke, "eval_sps")
        te_cfg, te_sps, te_all = best_config(te, "eval_sps")
        k_runs = [r for r in kr if r["config"] == k_cfg]
        t_runs = [r for r in tr if r["config"] == t_cfg]
        flop = FLOP_PER_SAMPLE[model]
        failed = [r for r in kr if r["status"] != "ok"]
        rows.append({
            "row": row, "model": model, "label": label,
            "keel_threads": k_cfg, "keel_train_sps": k_sps,
            "keel_train_by_threads": by_config(kr, "sps", True),
            "torch_config": t_cfg, "torch_train_sps": t_sps,
            "torch_train_by_config": by_config(tr, "sps", True),
            "ratio": k_sps / t_sps if k_sps and t_sps else None,
            "keel_eval_threads": ke_cfg, "keel_eval_sps": ke_sps, "keel_eval_by_threads": ke_all,
            "torch_eval_config": te_cfg, "torch_eval_sps": te_sps, "torch_eval_by_config": te_all,
            "eval_ratio": ke_sps / te_sps if ke_sps and te_sps else None,
            "keel_rss_mb": med(r["rss_mb"] for r in k_runs),
            "torch_rss_mb": med(r["rss_mb"] for r in t_runs),
            "keel_compile_s": med(r.get("compile") for r in kr if r["status"] == "ok"),
            "flop_per_sample": flop,
            "keel_gflops": k_sps * flop / 1e9 if k_sps else None,
            "torch_gflops": t_sps * flop / 1e9 if t_sps else None,
            "keel_test": med(r.get("test_accuracy") if model != "tiny" else r.get("test_loss")
                             for r in k_runs),
            "torch_test": med(r.get("test_accuracy") if model != "tiny" else r.get("test_loss")
                              for r in t_runs),
            "keel_runs": len([r for r in kr if r["status"] == "ok"]), "keel_failed": len(failed),
            "torch_runs": len([r for r in tr if r["status"] == "ok"]),
            "keel_not_run": model == "cnn" and not cnn_keel,
        })
    for r in rows:
        r["rss_ratio"] = (r["keel_rss_mb"] / r["torch_rss_mb"]
                          if r["keel_rss_mb"] and r["torch_rss_mb"] else None)
        for side in ("keel", "torch"):
            g = r[side + "_gflops"]
            r[side + "_peak_all"] = g / peak["gflops_all"] if g else None
            r[side + "_peak_1"] = g / peak["gflops_1"] if g else None
    return rows


def table(rows, peak):
    P = peak["threads"]
    out = []
    out.append("| model | Keel train samples/s | PyTorch train samples/s | Keel / PyTorch "
               "| Keel eval samples/s | PyTorch eval samples/s | eval ratio "
               "| Keel peak RSS | PyTorch peak RSS | Keel compile "
               f"| Keel GFLOP/s (% of {P}-core peak) | PyTorch GFLOP/s (% of {P}-core peak) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def g(side):
            if not r[side + "_gflops"]:
                return "–"
            return f"{r[side + '_gflops']:.1f} ({100 * r[side + '_peak_all']:.0f} %)"
        if r["keel_not_run"]:
            keel_train = "not run (does not compile yet)"
        elif r["keel_train_sps"]:
            keel_train = f"**{fmt(r['keel_train_sps'])}** ({keel_threads(r['keel_threads'])})"
        else:
            keel_train = "failed"
        torch_train = (f"**{fmt(r['torch_train_sps'])}** ({r['torch_config']})"
                       if r["torch_train_sps"] else "–")
        keel_eval = (f"{fmt(r['keel_eval_sps'])} ({keel_threads(r['keel_eval_threads'])})"
                     if r["keel_eval_sps"] else "–")
        torch_eval = (f"{fmt(r['torch_eval_sps'])} ({r['torch_eval_config']})"
                      if r["torch_eval_sps"] else "–")
        ratio = f"**{r['ratio']:.2f}×**" if r["ratio"] else "–"
        eratio = f"{r['eval_ratio']:.2f}×" if r["eval_ratio"] else "–"
        krss = f"{r['keel_rss_mb']:.0f} MB" if r["keel_rss_mb"] and not r["keel_not_run"] else "–"
        trss = f"{r['torch_rss_mb']:.0f} MB" if r["torch_rss_mb"] else "–"
        comp = f"{r['keel_compile_s']:.2f} s" if r["keel_compile_s"] else "–"
        out.append(f"| {r['label']} | {keel_train} | {torch_train} | {ratio} | {keel_eval} "
                   f"| {torch_eval} | {eratio} | {krss} | {trss} | {comp} | {g('keel')} | {g('torch')} |")
    return out


def targets(rows, peak):
    out = ["| target | measured | met? |", "|---|---|---|"]
    by = {r["row"]: r for r in rows}
    verdicts = []

    def line(what, measured, ok):
        verdicts.append(ok)
        out.append(f"| {what} | {measured} | {'yes' if ok else ('**no**' if ok is False else 'not measured')} |")

    names = {"mlp32": "Fashion MLP training, batch 32", "mlp128": "Fashion MLP training, batch 128",
             "mlp512": "Fashion MLP training, batch 512", "tiny16": "tiny network training, batch 16",
             "cnn128": "Fashion CNN training, batch 128"}
    for row, t in TARGETS.items():
        r = by.get(row)
        if r and r["ratio"]:
            line(f"{names[row]} ≥ {t:g}× PyTorch", f"{r['ratio']:.2f}×", r["ratio"] >= t)
        else:
            why = "Keel does not compile the CNN yet" if row == "cnn128" else "no result"
            line(f"{names[row]} ≥ {t:g}× PyTorch", why, None)
    rss = [(r["rss_ratio"], r["label"]) for r in rows if r["rss_ratio"] and not r["keel_not_run"]]
    if rss:
        worst = max(rss)
        line("peak RSS ≤ ¼ of PyTorch's (every row)",
             f"worst {worst[0]:.2f} ({worst[1]}); best {min(rss)[0]:.2f}", worst[0] <= RSS_TARGET)
    r = by.get("mlp512")
    if r and r["keel_peak_all"]:
        line(f"MLP batch 512 ≥ {PEAK_TARGET:.0%} of FP32 peak (6 × parameters FLOP/sample)",
             f"{100 * r['keel_peak_all']:.1f} % of the {peak['threads']}-core peak "
             f"({r['keel_gflops']:.1f} of {peak['gflops_all']:.1f} GFLOP/s; "
             f"{100 * r['keel_peak_1']:.1f} % of 1 core's {peak['gflops_1']:.1f})",
             r["keel_peak_all"] >= PEAK_TARGET)
    comp = [(r["keel_compile_s"], r["label"]) for r in rows if r["keel_compile_s"] and r["model"] == "mlp"]
    others = ", ".join(f"{r['label'].split(',')[0]} {r['keel_compile_s']:.2f} s" for r in rows
                       if r["keel_compile_s"] and r["model"] != "mlp")
    if comp:
        worst = max(comp)
        line(f"`keel run` compile time for the Fashion MLP ≤ {COMPILE_TARGET} s (from scratch)",
             f"{worst[0]:.2f} s" + (f" (not targets: {others})" if others else ""),
             worst[0] <= COMPILE_TARGET)
    return out, verdicts


# --- where the time goes, for each speed target not met (bench/run.sh's profiled runs) -------

def kernel_kind(name):
    """products, pooling, optimizer update, or the rest (elementwise loops and reductions)."""
    if name.startswith(("matmul", "conv2d")):
        return "products (matmul, conv2d)"
    if name.startswith(("maxpool", "avgpool")):
        return "pooling"
    tags = name[name.find("(") + 1:name.find(")")] if "(" in name else ""
    if any(t.strip().endswith((".weight", ".bias")) for t in tags.split(",")):
        return "optimizer updates"
    return "elementwise loops and reductions"


def read_profile(out, row):
    """The fastest profiled run of a row (bench/run.sh makes three): its kernels
    (profile.csv), report.json and folder, or None."""
    best = None
    base = os.path.join(out, "profile", row)
    for t in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        d = os.path.join(base, t)
        rep = read_json(os.path.join(d, "report.json"))
        try:
            with open(os.path.join(d, "profile.csv")) as f:
                kernels = [{"kernel": k["kernel"], "seconds": float(k["seconds"]),
                            "calls": int(k["calls"]), "gflops": float(k["gflops"])}
                           for k in csv.DictReader(f)]
        except (OSError, ValueError, KeyError):
            continue
        if rep and rep.get("samples_per_second") and kernels and (
                not best or rep["samples_per_second"] > best["report"]["samples_per_second"]):
            best = {"kernels": kernels, "report": rep, "threads": PROFILE_THREADS,
                    "dir": d}
    return best


PROFILE_THREADS = 2


def profile_notes(rows, peak, out):
    """For each training-speed target not met: where the step's time goes and what the target
    would take, computed from the profiled run (keel run --profile)."""
    md = []
    for r in rows:
        t = TARGETS.get(r["row"])
        if not t or not r["ratio"] or r["ratio"] >= t:
            continue
        p = read_profile(out, r["row"])
        if not p:
            md += ["", f"### {r['label']}: {r['ratio']:.2f}× of {t:g}× (no profile: "
                   f"build/bench/profile/{r['row']} is missing)"]
            continue
        rep, ks = p["report"], p["kernels"]
        steps, batch = rep["steps"], rep["batch"]
        samples = steps * batch
        train_s = samples / rep["samples_per_second"]
        kern_s = sum(k["seconds"] for k in ks)
        kinds = {}
        for k in ks:
            kinds.setdefault(kernel_kind(k["kernel"]), []).append(k)
        ms = lambda s: 1000 * s / steps  # per step
        need = t * r["torch_train_sps"]
        prod = kinds.get("products (matmul, conv2d)", [])
        prod_s = sum(k["seconds"] for k in prod)
        prod_gf = sum(k["gflops"] * k["seconds"] for k in prod) / prod_s if prod_s else 0
        md += ["", f"### {r['label']}: {r['ratio']:.2f}× PyTorch, the target is {t:g}×", "",
               f"`keel run --profile --threads {p['threads']}`, the fastest of three runs "
               f"(bench/run.sh; {p['dir']}/profile.csv): {rep['samples_per_second']:,.0f} "
               f"samples/s, {ms(train_s):.3f} ms per step of {batch}." + slow_note(r, rep), "",
               "| where | ms per step | share of training time |", "|---|---|---|"]
        for kind, kk in sorted(kinds.items(), key=lambda kv: -sum(k["seconds"] for k in kv[1])):
            s = sum(k["seconds"] for k in kk)
            md.append(f"| {kind} ({len(kk)} kernels) | {ms(s):.3f} | {100 * s / train_s:.0f} % |")
        rest = max(train_s - kern_s, 0)
        md.append(f"| outside the kernels (gathering the batch, the runtime's bookkeeping) "
                  f"| {ms(rest):.3f} | {100 * rest / train_s:.0f} % |")
        md += ["", "The largest kernels: " + "; ".join(
            f"{k['kernel']} {ms(k['seconds']):.3f} ms ({k['gflops']:.0f} GFLOP/s)"
            for k in sorted(ks, key=lambda k: -k["seconds"])[:5]) + ".", ""]
        need_step = samples / need
        prod_sps = samples / prod_s if prod_s else None
        say = (f"**What would close it.** {t:g}× PyTorch's {r['torch_train_sps']:,.0f} samples/s "
               f"({r['torch_config']}) is {need:,.0f} samples/s: {ms(need_step):.3f} ms per step "
               f"against {ms(train_s):.3f} now. ")
        if prod_s:
            say += (f"The products alone take {ms(prod_s):.3f} ms at {prod_gf:.0f} GFLOP/s "
                    f"({100 * prod_gf / peak['gflops_all']:.0f} % of the {peak['threads']}-core "
                    f"peak); with everything else at zero time they would give "
                    f"{prod_sps:,.0f} samples/s ({prod_sps / r['torch_train_sps']:.2f}× PyTorch). ")
        if prod_s and prod_sps < need:
            speed = prod_s / need_step
            say += (f"So no work on the other kernels can reach the target: the products must "
                    f"run at least {speed:.2f}× faster ({speed * prod_gf:.0f} GFLOP/s, "
                    f"{100 * speed * prod_gf / peak['gflops_all']:.0f} % of the peak) and "
                    f"everything else take no time. That needs a better matrix product at these "
                    f"shapes than single-threaded OpenBLAS calls (which pack the weights anew in "
                    f"every call and are least efficient at the small dimension: the batch, or "
                    f"a convolution's 14 × 14 positions).")
        else:
            other = train_s - prod_s
            cut = other - (need_step - prod_s)
            parts = [(sum(k["seconds"] for k in kk), kind) for kind, kk in kinds.items()
                     if not kind.startswith("products")] + [(rest, "outside")]
            say += (f"So it is within reach only if the rest of the step shrinks from "
                    f"{ms(other):.3f} to {ms(need_step - prod_s):.3f} ms, {100 * cut / other:.0f} % "
                    f"less. The rest, largest first: " + "; ".join(
                        f"{REMEDY[kind].format(ms=ms(s))}" for s, kind in sorted(parts, reverse=True)
                        if s > 0) + ".")
        md.append(say)
    return md


def slow_note(r, rep):
    """A warning when the profiled run was much slower than the timed runs at its setting."""
    timed = r["keel_train_by_threads"].get("t%d" % PROFILE_THREADS)
    med = timed[0] if isinstance(timed, tuple) else timed
    if not med or rep["samples_per_second"] >= 0.85 * med:
        return ""
    return (f" **All three profiled runs were slower than the timed runs' median at "
            f"`--threads {PROFILE_THREADS}` ({med:,.0f} samples/s): the second thread lost its "
            f"core during them, and the shares below show that more than the code.**")


REMEDY = {  # what each part of the step is, and what would make it smaller
    "optimizer updates": "the optimizer's updates, {ms:.3f} ms (one pass over every weight and "
                         "both of AdamW's moments per step, whatever the batch; its square root "
                         "and division per weight bound it, and an approximate reciprocal square "
                         "root would no longer give PyTorch's numbers)",
    "elementwise loops and reductions": "elementwise loops and reductions, {ms:.3f} ms (fewer "
                                        "passes over the activations: a batchnorm's backward "
                                        "pass and its two sums in one loop instead of four or "
                                        "five)",
    "pooling": "pooling, {ms:.3f} ms (the maximum's position kept from the forward pass)",
    "outside": "outside the kernels, {ms:.3f} ms (gathering the batch, the runtime's "
               "bookkeeping, waking the second thread)",
}


def details(rows):
    out = ["| row | Keel training by --threads (median samples/s, min–max over the rounds) "
           "| PyTorch training by config (median, min–max) "
           "| Keel eval by --threads | PyTorch eval by config | runs (Keel / PyTorch) "
           "| test accuracy after the run, Keel / PyTorch (tiny: test loss, after unequal epochs) |",
           "|---|---|---|---|---|---|---|"]

    def d(m, keel=False):
        def v(x):
            return f"{fmt(x[0])} ({fmt(x[1])}–{fmt(x[2])})" if isinstance(x, tuple) else fmt(x)
        return ", ".join(f"{keel_threads(k) if keel else k}: {v(x)}" for k, x in sorted(m.items())) or "–"
    for r in rows:
        kt = f"{r['keel_test']:.4f}" if r["keel_test"] is not None else "–"
        tt = f"{r['torch_test']:.4f}" if r["torch_test"] is not None else "–"
        fail = f" ({r['keel_failed']} failed)" if r["keel_failed"] else ""
        out.append(f"| {r['label']} | {d(r['keel_train_by_threads'], True)} | {d(r['torch_train_by_config'])} "
                   f"| {d(r['keel_eval_by_threads'], True)} | {d(r['torch_eval_by_config'])} "
                   f"| {r['keel_runs']}{fail} / {r['torch_runs']} | {kt} / {tt} |")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="build/bench")
    ap.add_argument("--command", default="make bench")
    ap.add_argument("--cpu", default="")
    args = ap.parse_args()
    peak = read_peak(os.path.join(args.out, "peak.json"))
    cnn_keel = True
    try:
        with open(os.path.join(args.out, "cnn_status")) as f:
            cnn_keel = f.read().strip().endswith("1")
    except OSError:
        pass
    runs = load_runs(args.out)
    rows = summarize(runs, peak, cnn_keel)
    tgt, verdicts = targets(rows, peak)
    torch_blas = sorted({b for r in runs if r.get("blas") for b in r["blas"] if "libblas" in b})
    kv = read_json(os.path.join(args.out, "keel.json")) or {}
    keel_line = (f"Keel: commit {kv.get('commit', '?')}"
                 + (f" with uncommitted changes in {kv['dirty']}" if kv.get("dirty") else "")
                 + f", built {kv.get('built', '?')}. ")
    md = [keel_line + f"Command: `{args.command}`. Machine: {args.cpu}, {peak['threads']} cores; "
          f"measured FP32 FMA peak (bench/peak_fma.c) {peak['gflops_1']:.1f} GFLOP/s on 1 core, "
          f"{peak['gflops_all']:.1f} GFLOP/s on {peak['threads']} cores "
          f"({peak['flop_per_cycle_1']:.1f} FLOP/cycle at {peak['ghz_1']:.2f} GHz)"
          + (f"; the all-core run measured only {peak['measured_all']:.1f} GFLOP/s because other "
             f"processes held cores, so the {peak['threads']}-core peak is taken as "
             f"{peak['threads']} × the 1-core peak" if peak["all_from_1"] else "") + ".",
          "",
          "Each number is the median over the rounds of the best thread setting, which is "
          "named in the cell (Keel: `--threads`; PyTorch: T1 = 1 thread, T2o = 2 threads "
          "sharing one OpenMP pool with the OpenMP OpenBLAS, Tdef = the defaults). Training "
          "samples/s count training time only; evaluation is the test set at batch 1000 "
          f"(the CNN: its first {CNN_EVAL:,} images). "
          "GFLOP/s count " + "; ".join(f"{m}: {FLOP_NOTE[m]}" for m in ("mlp", "tiny", "cnn"))
          + " per training sample.",
          ""] + table(rows, peak) + ["", "Targets (issue; ratios from this one run):", ""] + tgt + [
          "", "Every configuration (medians):", ""] + details(rows)
    notes = profile_notes(rows, peak, args.out)
    if notes:
        md += ["", "## Where the time goes, for each target not met"] + notes
    md += [
          "", "PyTorch's BLAS, as mapped by its processes: " + ", ".join(torch_blas)]
    if any("/blas/" in b for b in torch_blas):
        md.append("**Warning: PyTorch ran with the netlib reference BLAS (10× slower than "
                  "OpenBLAS); `make bench-deps` installs libopenblas0-pthread.**")
    trunc = [r for r in runs if r.get("truncated")]
    if trunc:
        md.append(f"Note: {len(trunc)} PyTorch runs ended their epoch early (--max-seconds).")
    noise = read_json(os.path.join(args.out, "noise.json"))
    if noise:
        share = noise["other_core_s"] / (noise["wall_s"] * noise["cores"])
        md.append(f"Other processes on the machine used {noise['other_core_s']:.0f} core-seconds "
                  f"while the bench ran ({noise['wall_s']:.0f} s on {noise['cores']} cores: "
                  f"{100 * share:.0f} % of the machine){'; the numbers are noisy' if share > 0.05 else ''}.")
    text = "\n".join(md) + "\n"
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"command": args.command, "cpu": args.cpu, "peak": peak, "noise": noise,
                   "rows": rows, "runs": runs}, f, indent=1)
    print()
    print(text)
    met = sum(1 for v in verdicts if v)
    print(f"targets met: {met} of {len(verdicts)} "
          f"({sum(1 for v in verdicts if v is None)} not measured); "
          f"raw numbers in {args.out}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
