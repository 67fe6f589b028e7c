#!/usr/bin/env bash
# bench/run.sh — Keel against PyTorch on the same models, data and batch sizes (`make bench`).
#
#   bash bench/run.sh            # everything, about 6-8 minutes on 2 cores
#   BENCH_QUICK=1 bash bench/run.sh   # 1 round, fewer steps: a smoke test of the harness
#
# What it does, in order:
#   1. builds and runs bench/peak_fma.c: the FP32 FMA peak on 1 core and on all cores;
#   2. writes the toy set of the tiny network (bench/gen_spirals.py) if it is missing;
#   3. for each row (Fashion MLP at batch 32, 128, 512; the tiny 2-16-1 network at batch 16;
#      the Fashion CNN at batch 128 when Keel compiles it), ROUNDS rounds that alternate Keel
#      and PyTorch runs: Keel --threads 1, PyTorch T1, Keel --threads 2, PyTorch T2o, PyTorch
#      Tdef (bench/torch_bench.py explains the thread configurations). Every run is a fresh
#      process under /usr/bin/time, which gives its peak RSS;
#   4. per model and round, Keel evaluation runs (see "Keel's evaluation throughput" below);
#   5. three `keel run --profile --threads 2` per row (build/bench/profile/ROW/N/): for each
#      target not met, the summary shows the fastest one's view of where the step's time goes,
#      and what the target would take;
#   6. bench/summarize.py turns the runs into one table (printed, and written with the raw
#      numbers to build/bench/): the median of each configuration over the rounds, the best
#      thread setting of each side, the ratios, and whether each target of the issue is met.
#
# Keel's numbers come from the report.json of each run: samples_per_second (training time
# only: batch gathering, forward, backward and update, from the first batch of an epoch to its
# last step) and compile_seconds. PyTorch's come from the JSON line torch_bench.py prints.
#
# Keel's evaluation throughput: `keel run` reports none, so it is measured from a copy of the
# script whose `test` line reads `val` (build/bench/models/*_eval.nn): every epoch then ends
# with an evaluation pass over the test set, at the run's batch size, which metrics.csv's
# `seconds` column includes and samples_per_second excludes. The copy runs at --batch 1000
# (PyTorch evaluates at batch 1000 too) with as little training as possible (--steps 1 for the
# Fashion models; for the tiny network, whose 1,000 test points take microseconds, 20 epochs of
# 4 steps, so 20 passes), and eval time = Σ seconds − training time (the training samples
# divided by samples_per_second). The CNN evaluates about 1,000 images/s, so both sides
# evaluate it on the first CNN_EVAL (2,000) test images, once.
#
# Environment: ROUNDS (default 3), BENCH_QUICK=1, KEEL (default ./build/keel),
# BENCH_OUT (default build/bench).

set -euo pipefail
cd "$(dirname "$0")/.."

# Every Keel run compiles from scratch: an empty KEEL_CACHE_DIR turns the object cache off,
# so compile_seconds and the peak RSS are those of a first run (with the cache, every run
# after the first loads its object in about 0.01 s).
export KEEL_CACHE_DIR=

KEEL=${KEEL:-./build/keel}
OUT=${BENCH_OUT:-build/bench}
PY=/usr/bin/python3
ROUNDS=${ROUNDS:-3}
QUICK=${BENCH_QUICK:-0}
TIME=/usr/bin/time

# epochs/steps per run; each row's runs take about the same time on both sides
MLP_EPOCHS=1          # Keel and PyTorch: one epoch (60,000 samples) per run
TINY_KEEL_EPOCHS=500  # 4,000 points per epoch: 500 Keel epochs take 0.2-1 s of training,
TINY_TORCH_EPOCHS=3   # 3 PyTorch epochs ≈ 0.2 s
CNN_KEEL_STEPS=25     # the CNN is measured per step: 25 steps (3,200 samples) per Keel run,
CNN_TORCH_STEPS=10    # PyTorch 1 untimed + 3 timed chunks of 10 steps
CNN_TORCH_CHUNKS=3
CNN_EVAL=2000         # the CNN evaluates ~1,000 samples/s: both sides use the first 2,000 test
                      # images (one pass each, batch 1000), not all 10,000
TORCH_MAX_SECONDS=20  # an epoch that takes longer ends early (torch_bench.py --max-seconds)
if [ "$QUICK" = 1 ]; then
  ROUNDS=1 TINY_KEEL_EPOCHS=20 TINY_TORCH_EPOCHS=1 CNN_KEEL_STEPS=5 CNN_TORCH_STEPS=3 CNN_TORCH_CHUNKS=1
fi

for f in "$KEEL" "$PY" "$TIME"; do
  [ -x "$f" ] || { echo "bench: $f is missing (make all bench-deps)" >&2; exit 1; }
done
"$PY" -c "import torch" 2>/dev/null || { echo "bench: /usr/bin/python3 cannot import torch (make bench-deps)" >&2; exit 1; }

rm -rf "$OUT/runs" "$OUT/models"
mkdir -p "$OUT/runs" "$OUT/models"
# every run uses this copy, so a rebuild of build/keel during the bench changes nothing
cp -p "$KEEL" "$OUT/keel"
KEEL="$OUT/keel"
"$KEEL" --version > /dev/null

# CPU time of the whole machine (/proc/stat) against our own (bash's `times`): what other
# processes took while the bench ran goes into the report as a measure of the noise
cpu_busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
BUSY0=$(cpu_busy)
T0=$(date +%s.%N)
RUNS="$OUT/runs.tsv"   # one line per run: row framework config kind rss_kb status path
: > "$RUNS"

echo "== machine"
CPU=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
FAM=$(lscpu | sed -n 's/^CPU family: *//p' | head -1)
MODEL=$(lscpu | sed -n 's/^Model: *//p' | head -1)
echo "$CPU, family $FAM model $MODEL, $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

# which Keel this is: the commit, and the files changed since (bench/ and the docs aside)
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$( (git status --porcelain 2>/dev/null || true) | { grep -v -e ' bench/' -e ' docs/' -e ' README.md' -e ' Makefile' || true; } | awk '{print $2}' | paste -sd' ')
echo "keel: commit $REV${DIRTY:+, with uncommitted changes in: $DIRTY}; binary built $(date -r "$KEEL" '+%F %T')"
printf '{"commit": "%s", "dirty": "%s", "built": "%s"}\n' "$REV" "$DIRTY" "$(date -r "$KEEL" '+%F %T')" > "$OUT/keel.json"

echo "== FP32 FMA peak (bench/peak_fma.c)"
cc -O2 -mavx2 -mfma -pthread -o "$OUT/peak_fma" bench/peak_fma.c
"$OUT/peak_fma" --json > "$OUT/peak.json"
cat "$OUT/peak.json"

[ -f bench/data/spirals_train.csv ] && [ -f bench/data/spirals_test.csv ] || "$PY" bench/gen_spirals.py bench/data

# the evaluation copies of the scripts: `test` becomes `val`; relative data paths are found
# through KEEL_DATA_PATH (the folder of the original script). The CNN's copy evaluates the
# first CNN_EVAL test images, written as IDX files into $OUT/data/fashion-mnist/.
for m in fashion_mlp tiny_spirals fashion_cnn; do
  sed 's/^\(  \)test /\1val  /' "bench/models/$m.nn" > "$OUT/models/${m}_eval.nn"
done
mkdir -p "$OUT/data/fashion-mnist"
"$PY" - "$OUT/data/fashion-mnist" "$CNN_EVAL" <<'PYEOF'
import gzip, sys
out, n = sys.argv[1], int(sys.argv[2])
for kind, header in (("images-idx3", 16), ("labels-idx1", 8)):
    with gzip.open(f"/usr/share/datasets/fashion-mnist/t10k-{kind}-ubyte.gz") as f:
        data = f.read()
    item = 28 * 28 if kind.startswith("images") else 1
    head = bytearray(data[:header])
    head[4:8] = n.to_bytes(4, "big")
    with gzip.open(f"{out}/t10k-first{n}-{kind}-ubyte.gz", "wb") as f:
        f.write(bytes(head) + data[header:header + n * item])
PYEOF
sed -i "s/t10k-\(images-idx3\|labels-idx1\)/t10k-first$CNN_EVAL-\1/g" "$OUT/models/fashion_cnn_eval.nn"
export KEEL_DATA_PATH="$PWD/bench/models:$(cd "$OUT/data" && pwd)"

n=0
# keel ROW KIND THREADS SCRIPT ARGS...: one Keel run, recorded in runs.tsv
keel() {
  local row=$1 kind=$2 threads=$3 script=$4; shift 4
  n=$((n + 1))
  local dir="$OUT/runs/$n-keel-$row-$kind-t$threads" status=ok
  mkdir -p "$dir"
  if ! "$TIME" -f %M -o "$dir/rss_kb" "$KEEL" run "$script" --threads "$threads" --out "$dir" "$@" \
       > "$dir/stdout" 2> "$dir/stderr"; then
    status=failed
  fi
  printf '%s\tkeel\tt%s\t%s\t%s\t%s\t%s\n' "$row" "$threads" "$kind" \
    "$(tail -1 "$dir/rss_kb" | tr -dc 0-9)" "$status" "$dir" >> "$RUNS"
  if [ "$status" = ok ]; then
    printf '  keel  %-7s %-5s --threads %s  %s\n' "$row" "$kind" "$threads" \
      "$(sed -n 's/^trained.*s, \([0-9]* samples\/s\)$/\1/p' "$dir/stdout")"
  else
    printf '  keel  %-7s %-5s --threads %s  FAILED: %s\n' "$row" "$kind" "$threads" \
      "$(grep -m1 -i error "$dir/stderr" "$dir/stdout" | cut -c1-160)"
  fi
}

# torch ROW CONFIG ARGS...: one PyTorch run (torch_bench.py), recorded in runs.tsv
torch() {
  local row=$1 config=$2; shift 2
  n=$((n + 1))
  local dir="$OUT/runs/$n-torch-$row-$config" status=ok
  mkdir -p "$dir"
  if ! "$TIME" -f %M -o "$dir/rss_kb" "$PY" bench/torch_bench.py --config "$config" \
       --max-seconds "$TORCH_MAX_SECONDS" "$@" \
       > "$dir/stdout" 2> "$dir/stderr"; then
    status=failed
  fi
  tail -1 "$dir/stdout" > "$dir/result.json"
  printf '%s\ttorch\t%s\ttrain\t%s\t%s\t%s\n' "$row" "$config" \
    "$(tail -1 "$dir/rss_kb" | tr -dc 0-9)" "$status" "$dir" >> "$RUNS"
  if [ "$status" = ok ]; then
    printf '  torch %-7s train %-5s %s samples/s\n' "$row" "$config" \
      "$("$PY" -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["train_sps"]))' "$dir/result.json")"
  else
    printf '  torch %-7s train %-5s FAILED: %s\n' "$row" "$config" "$(tail -1 "$dir/stderr" | cut -c1-160)"
  fi
}

TORCH_CONFIGS="T1 T2o Tdef"
[ -d /usr/lib/x86_64-linux-gnu/openblas-openmp ] || {
  echo "note: libopenblas0-openmp is missing, PyTorch's T2o is skipped (make bench-deps installs it)"
  TORCH_CONFIGS="T1 Tdef"
}

# one round of a row: Keel and PyTorch alternate
round() {
  local row=$1 script=$2 keel_args=$3 torch_args=$4 t=0
  local -a cfgs=($TORCH_CONFIGS)
  for threads in 1 2; do
    # shellcheck disable=SC2086
    keel "$row" train "$threads" "$script" $keel_args
    # shellcheck disable=SC2086
    torch "$row" "${cfgs[$t]}" $torch_args
    t=$((t + 1))
  done
  while [ "$t" -lt "${#cfgs[@]}" ]; do
    # shellcheck disable=SC2086
    torch "$row" "${cfgs[$t]}" $torch_args
    t=$((t + 1))
  done
}

# The CNN runs only when Keel compiles it (the conv layers are newer than the rest).
CNN=1
if ! "$KEEL" check bench/models/fashion_cnn.nn > "$OUT/cnn_check.txt" 2>&1; then
  CNN=0
  echo "note: keel does not compile bench/models/fashion_cnn.nn yet; the CNN row is PyTorch only:"
  grep -m1 error "$OUT/cnn_check.txt" | sed 's/^/  /' || true
fi
echo "cnn_keel=$CNN" > "$OUT/cnn_status"

for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r of $ROUNDS (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  for b in 32 128 512; do
    round "mlp$b" bench/models/fashion_mlp.nn "--batch $b --epochs $MLP_EPOCHS" \
          "--model mlp --batch $b --epochs $MLP_EPOCHS"
  done
  round tiny16 bench/models/tiny_spirals.nn "--batch 16 --epochs $TINY_KEEL_EPOCHS" \
        "--model tiny --batch 16 --epochs $TINY_TORCH_EPOCHS"
  if [ "$CNN" = 1 ]; then
    round cnn128 bench/models/fashion_cnn.nn "--batch 128 --steps $CNN_KEEL_STEPS" \
          "--model cnn --batch 128 --steps $CNN_TORCH_STEPS --chunks $CNN_TORCH_CHUNKS --eval-samples $CNN_EVAL --eval-passes 1"
  elif [ "$r" = 1 ]; then
    for c in $TORCH_CONFIGS; do
      torch cnn128 "$c" --model cnn --batch 128 --steps "$CNN_TORCH_STEPS" --chunks "$CNN_TORCH_CHUNKS" \
            --eval-samples "$CNN_EVAL" --eval-passes 1
    done
  fi
  # Keel's evaluation throughput, batch 1000 (see the top of this file)
  for threads in 1 2; do
    keel mlp eval "$threads" "$OUT/models/fashion_mlp_eval.nn" --batch 1000 --steps 1
    keel tiny eval "$threads" "$OUT/models/tiny_spirals_eval.nn" --batch 1000 --epochs 20
    [ "$CNN" = 0 ] || keel cnn eval "$threads" "$OUT/models/fashion_cnn_eval.nn" --batch 1000 --steps 1
  done
done

# Where Keel's time goes: runs with --profile at --threads 2, three per row (bench/summarize.py
# shows the fastest, and what each target not met would take, under the table: a run whose
# second thread lost its core shows that instead of where the time goes)
echo "== keel run --profile, --threads 2"
prof() {
  local row=$1 script=$2; shift 2
  rm -rf "$OUT/profile/$row"
  for try in 1 2 3; do
    local dir="$OUT/profile/$row/$try"
    mkdir -p "$dir"
    if "$KEEL" run "$script" --threads 2 --profile --out "$dir" "$@" > "$dir/stdout" 2> "$dir/stderr"; then
      printf '  keel  %-7s %s\n' "$row" "$(sed -n 's/^trained.*s, \([0-9]* samples\/s\)$/\1/p' "$dir/stdout")"
    else
      printf '  keel  %-7s FAILED: %s\n' "$row" "$(grep -m1 -i error "$dir/stderr" "$dir/stdout" | cut -c1-160)"
    fi
  done
}
for b in 32 128 512; do
  prof "mlp$b" bench/models/fashion_mlp.nn --batch "$b" --epochs "$MLP_EPOCHS"
done
prof tiny16 bench/models/tiny_spirals.nn --batch 16 --epochs "$TINY_KEEL_EPOCHS"
[ "$CNN" = 0 ] || prof cnn128 bench/models/fashion_cnn.nn --batch 128 --steps "$CNN_KEEL_STEPS"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
BUSY1=$(cpu_busy)
T1=$(date +%s.%N)
# children's user and system time, as bash's `times` prints them (second line: 0m1.5s 0m0.2s)
times > "$OUT/times.txt"  # in this shell: in $(…) it would be a subshell's, with no children
OURS=$(tail -1 "$OUT/times.txt" | awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] } print s }')
"$PY" - "$BUSY0" "$BUSY1" "$T0" "$T1" "$OURS" "$(getconf CLK_TCK)" "$(nproc)" > "$OUT/noise.json" <<'PYEOF'
import json, sys
b0, b1, t0, t1, ours, hz, cores = map(float, sys.argv[1:])
busy = (b1 - b0) / hz
print(json.dumps({"wall_s": round(t1 - t0, 1), "machine_busy_core_s": round(busy, 1),
                  "bench_core_s": round(ours, 1), "other_core_s": round(max(busy - ours, 0), 1),
                  "cores": int(cores)}))
PYEOF
cat "$OUT/noise.json"
echo "== FP32 FMA peak again (the higher of the two measurements counts)"
"$OUT/peak_fma" --json >> "$OUT/peak.json"
tail -1 "$OUT/peak.json"

COMMAND="make bench"
[ "$QUICK" = 1 ] && COMMAND="BENCH_QUICK=1 make bench"
CNN_EVAL=$CNN_EVAL "$PY" bench/summarize.py --out "$OUT" --command "$COMMAND" --cpu "$CPU (family $FAM, model $MODEL)"
