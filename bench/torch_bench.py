#!/usr/bin/python3
"""bench/torch_bench.py — the PyTorch side of `make bench` (Debian's python3-torch 1.13).

    /usr/bin/python3 bench/torch_bench.py --model mlp --batch 128 --config T1 --epochs 2
    /usr/bin/python3 bench/torch_bench.py --model cnn --batch 128 --config T2o --steps 30
    /usr/bin/python3 bench/torch_bench.py --model tiny --batch 16 --config best --epochs 5

One process trains one model at one batch size under one thread configuration and prints one
line of JSON (the last line of stdout), so that bench/run.sh can run every configuration in a
fresh process (peak RSS is then per model) and alternate it with Keel's runs. `--config best`
runs T1, T2o and Tdef one after the other, each in its own process, and prints the fastest.

The models, data and method follow ../shared/design/perf-anchors.md §2 and the Keel scripts
in bench/models/:

- mlp:  784-256-128-10, [Linear → BatchNorm1d → ReLU → Dropout(0.3)] ×2 → Linear,
        AdamW(lr 1e-3, weight_decay 0.01), cross-entropy.
- cnn:  Conv(32, 3×3, pad 1) → BN → ReLU → MaxPool 2, Conv(64, 3×3, pad 1) → BN → ReLU →
        MaxPool 2, Flatten, Linear 128 → ReLU → Dropout(0.3), Linear 10; AdamW as the MLP.
- tiny: 2-16-1, Linear → Tanh → Linear, BCEWithLogitsLoss, Adam(lr 1e-2), on the two spirals
        of bench/data/spirals_*.csv (bench/gen_spirals.py).

Data: Fashion-MNIST from the IDX files of Debian's dataset-fashion-mnist, scaled by 1/255 and
preloaded as float32 tensors. Each epoch draws a fresh randperm; gathering each minibatch
(x[idx]) and reading the loss (loss.item(), as Keel's loop reads each step's loss) count as
training time. The last partial batch is kept, as Keel keeps it. An epoch that runs past
--max-seconds ends early (its samples/s are still exact; the JSON says truncated_epochs):
with OpenMP threads and a busy machine an epoch can take minutes.

Numbers: training samples/s of every epoch (or, with --steps, of every chunk of --steps
steps after one untimed warm-up chunk); evaluation samples/s, the median of 3 passes
(--eval-passes) over the test set (or its first --eval-samples) at batch 1000 in eval() /
no_grad; the test accuracy (or, for the tiny network, the
test loss) after training; peak RSS from getrusage (ru_maxrss, the counter /usr/bin/time -v
reports).

Thread configurations (perf-anchors.md §1):
- T1:   torch.set_num_threads(1), OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1.
- T2o:  torch.set_num_threads(2), OMP_NUM_THREADS=2, OPENBLAS_NUM_THREADS=2, and the OpenMP
        build of OpenBLAS (LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp, from the
        package libopenblas0-openmp), so torch and BLAS share one libgomp pool.
- Tdef: nothing set: torch's default intra-op threads, OpenBLAS's default threads.
- T2n (torch 2 threads with the pthread OpenBLAS: two pools fighting over two cores, 2-3×
  slower) is available but never chosen by `best`.
The environment must be in place before torch (and its BLAS) is loaded, so the script
re-executes itself with it.
"""
import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FASHION = os.environ.get("FASHION_DIR", "/usr/share/datasets/fashion-mnist")
OPENMP_BLAS = "/usr/lib/x86_64-linux-gnu/openblas-openmp"
CONFIGS = ("T1", "T2o", "Tdef", "T2n")
BEST_OF = ("T1", "T2o", "Tdef")


def config_env(config):
    """The environment variables of a thread configuration (None: leave unset)."""
    env = {"OMP_NUM_THREADS": None, "OPENBLAS_NUM_THREADS": None, "LD_LIBRARY_PATH": None}
    if config == "T1":
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    elif config in ("T2o", "T2n"):
        env.update(OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
        if config == "T2o":
            env["LD_LIBRARY_PATH"] = OPENMP_BLAS
    return env


def torch_threads(config):
    return {"T1": 1, "T2o": 2, "T2n": 2}.get(config)


def env_matches(config):
    for k, v in config_env(config).items():
        if os.environ.get(k) != v:
            return False
    return True


def reexec(config):
    env = dict(os.environ)
    for k, v in config_env(config).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    env["TORCH_BENCH_CHILD"] = config
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


# --------------------------------------------------------------------------------------------
# data

def read_idx(path):
    import numpy as np
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion(torch, image_shape):
    def load(images, labels):
        x = torch.from_numpy(read_idx(os.path.join(FASHION, images)).astype("float32") / 255.0)
        y = torch.from_numpy(read_idx(os.path.join(FASHION, labels)).astype("int64"))
        return x.reshape((x.shape[0],) + image_shape).contiguous(), y
    xtr, ytr = load("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
    xte, yte = load("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    return xtr, ytr, xte, yte


def spirals(torch):
    import csv

    def load(name):
        with open(os.path.join(HERE, "data", name)) as f:
            rows = list(csv.DictReader(f))
        x = torch.tensor([[float(r["x"]), float(r["y"])] for r in rows], dtype=torch.float32)
        y = torch.tensor([[float(r["label"])] for r in rows], dtype=torch.float32)
        return x, y
    xtr, ytr = load("spirals_train.csv")
    xte, yte = load("spirals_test.csv")
    return xtr, ytr, xte, yte


# --------------------------------------------------------------------------------------------
# models

def build(torch, model):
    nn = torch.nn
    if model == "mlp":
        net = nn.Sequential(
            nn.Linear(784, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(128, 10))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
        return net, opt, nn.CrossEntropyLoss()
    if model == "cnn":
        net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(128, 10))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
        return net, opt, nn.CrossEntropyLoss()
    if model == "tiny":
        net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        return net, opt, nn.BCEWithLogitsLoss()
    raise SystemExit(f"unknown model {model}")


def blas_library():
    """The BLAS library this process actually mapped (perf-anchors.md: check, don't assume)."""
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if "blas" in path:
                    libs.add(os.path.realpath(path))
    except OSError:
        pass
    return sorted(libs)


# --------------------------------------------------------------------------------------------
# one configuration, in this process

def bench(args):
    import torch
    config = os.environ.get("TORCH_BENCH_CHILD", args.config)
    if torch_threads(config):
        torch.set_num_threads(torch_threads(config))
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    if args.model == "tiny":
        xtr, ytr, xte, yte = spirals(torch)
    else:
        xtr, ytr, xte, yte = fashion(torch, (1, 28, 28) if args.model == "cnn" else (784,))
    load_seconds = time.perf_counter() - t0
    net, opt, lossf = build(torch, args.model)
    n, B = xtr.shape[0], args.batch

    def train_steps(perm, first, count, deadline=None):
        """count steps from position `first` of perm (fewer if the clock passes deadline);
        returns (samples, loss sum)."""
        samples, total = 0, 0.0
        for s in range(count):
            if deadline and time.perf_counter() > deadline:
                break
            idx = perm[(first + s) * B:(first + s + 1) * B]
            xb, yb = xtr[idx], ytr[idx]
            opt.zero_grad(set_to_none=True)
            loss = lossf(net(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * xb.shape[0]
            samples += xb.shape[0]
        return samples, total

    net.train()
    rates, train_loss, steps_done, truncated = [], None, 0, False
    nb = (n + B - 1) // B
    if args.steps:
        # chunks of --steps steps, the first one untimed (warm-up: allocator, oneDNN kernels)
        perm = torch.randperm(n)
        pos = 0
        for chunk in range(args.chunks + 1):
            if pos + args.steps > nb:
                perm, pos = torch.randperm(n), 0
            t = time.perf_counter()
            samples, total = train_steps(perm, pos, args.steps)
            dt = time.perf_counter() - t
            pos += args.steps
            steps_done += args.steps
            if chunk > 0:
                rates.append(samples / dt)
            train_loss = total / samples
    else:
        for epoch in range(args.epochs):
            t = time.perf_counter()
            perm = torch.randperm(n)
            samples, total = train_steps(perm, 0, nb, t + args.max_seconds)
            dt = time.perf_counter() - t
            steps_done += (samples + B - 1) // B
            truncated = truncated or samples < n
            rates.append(samples / dt)
            train_loss = total / samples

    # evaluation: the test set (its first --eval-samples) at batch 1000 in eval() / no_grad,
    # --eval-passes passes, the median
    net.eval()
    xte, yte = xte[:args.eval_samples], yte[:args.eval_samples]
    eval_rates, correct, loss_sum = [], 0, 0.0
    with torch.no_grad():
        for p in range(args.eval_passes):
            t = time.perf_counter()
            c, ls = 0, 0.0
            for i in range(0, xte.shape[0], 1000):
                out = net(xte[i:i + 1000])
                if args.model == "tiny":
                    ls += lossf(out, yte[i:i + 1000]).item() * out.shape[0]
                else:
                    c += int((out.argmax(1) == yte[i:i + 1000]).sum())
            eval_rates.append(xte.shape[0] / (time.perf_counter() - t))
            correct, loss_sum = c, ls

    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "framework": "pytorch", "torch": torch.__version__, "model": args.model,
        "batch": B, "config": config, "truncated_epochs": truncated, "torch_threads": torch.get_num_threads(),
        "omp": os.environ.get("OMP_NUM_THREADS"), "openblas": os.environ.get("OPENBLAS_NUM_THREADS"),
        "blas": blas_library(), "steps": steps_done,
        "train_rates": [round(r, 1) for r in rates],
        "train_sps": round(statistics.median(rates), 1),
        "eval_rates": [round(r, 1) for r in eval_rates],
        "eval_sps": round(statistics.median(eval_rates), 1),
        "train_loss": round(train_loss, 5),
        "test_accuracy": None if args.model == "tiny" else correct / xte.shape[0],
        "eval_samples": xte.shape[0],
        "test_loss": round(loss_sum / xte.shape[0], 5) if args.model == "tiny" else None,
        "load_seconds": round(load_seconds, 2), "peak_rss_mb": round(rss_kb / 1024, 1),
    }
    print(json.dumps(result))
    sys.stdout.flush()


def best(args):
    """Each of T1, T2o, Tdef in its own process; print every result and the fastest."""
    results = []
    for config in BEST_OF:
        if config == "T2o" and not os.path.isdir(OPENMP_BLAS):
            print(f"T2o skipped: {OPENMP_BLAS} missing (make bench-deps installs "
                  "libopenblas0-openmp)", file=sys.stderr)
            continue
        argv = [sys.executable, os.path.abspath(__file__)] + [
            a for a in sys.argv[1:] if a != "best"]
        argv[argv.index("--config") + 1] = config
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(r), file=sys.stderr)
        results.append(r)
    fastest = max(results, key=lambda r: r["train_sps"])
    fastest["tried"] = {r["config"]: r["train_sps"] for r in results}
    print(json.dumps(fastest))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("mlp", "cnn", "tiny"), required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--config", choices=CONFIGS + ("best",), default="best")
    ap.add_argument("--epochs", type=int, default=1, help="timed epochs (without --steps)")
    ap.add_argument("--steps", type=int, default=0, help="time chunks of this many steps")
    ap.add_argument("--chunks", type=int, default=3, help="timed chunks with --steps")
    ap.add_argument("--max-seconds", type=float, default=60,
                    help="end an epoch early after this long (samples/s stays exact): a bound "
                         "on the run time when another process competes for the cores")
    ap.add_argument("--eval-samples", type=int, default=10000,
                    help="evaluate on the first N test samples (the CNN uses 2,000)")
    ap.add_argument("--eval-passes", type=int, default=3)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    if args.config == "best" and "TORCH_BENCH_CHILD" not in os.environ:
        return best(args)
    if "TORCH_BENCH_CHILD" not in os.environ or not env_matches(args.config):
        reexec(args.config)
    bench(args)


if __name__ == "__main__":
    main()
