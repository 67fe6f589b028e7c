#!/usr/bin/env bash
# tests/run.sh — every test `make test` runs, and one summary line: "N passed, N failed".
#
#   unit       build/test/test_* (C unit tests: parser, gradients, runtime, ...); each prints
#              its own "N passed, N failed", which is added up here
#   parity     tests/parity/NAME.nn trains from PyTorch's initial weights and must end within a
#              relative error of 1e-4 of PyTorch's weights (written by tests/parity/gen.py)
#   schedules  `keel schedule` of tests/parity/schedules/NAME.nn must follow PyTorch's
#              scheduler (NAME.lr.csv, from tests/parity/gen_schedules.py) within 1e-5
#   aot        each script trains through the JIT and through a `keel build` trainer: the same
#              weights byte for byte; predict matches the run's accuracy; cross objects
#   errors     tests/errors/NAME.nn must fail `keel check` with exit status 1 and print
#              exactly tests/errors/NAME.err on stderr (also under AddressSanitizer/UBSan)
#   lints      tests/lints/NAME.nn: the warnings of `keel check` (or of a short run) exactly
#   explain    tests/explain/NAME.nn and examples/fashion_mlp.nn: `keel explain` exactly
#   e2e        the examples train through the JIT and reach their accuracy (the CNN briefly);
#              the same seed gives byte-identical weights; the guard stops a diverging run;
#              early stopping restores the best epoch; the emit commands show each stage
#
# Run from the repository root after `make`. `tests/run.sh errors` runs one group (unit,
# parity, schedules, aot, errors, lints, explain, e2e).
set -u
cd "$(dirname "$0")/.."
KEEL=${KEEL:-./build/keel}
KEEL_ABS=$(cd "$(dirname "$KEEL")" && pwd)/$(basename "$KEEL")
ASAN_KEEL=$PWD/build/asan/keel
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export KEEL_CACHE_DIR="$TMP/cache"  # the tests' own object cache, not the user's
passed=0 failed=0
ok() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
only=${1:-all}

# json FILE KEY: the value of a top-level key of report.json
json() { sed -n "s/^  \"$2\": \([^,]*\),\{0,1\}$/\1/p" "$1"; }
# at_least VALUE MIN: exit status 0 when VALUE >= MIN
at_least() { awk -v v="$1" -v m="$2" 'BEGIN { exit !(v != "" && v != "null" && v + 0 >= m + 0) }'; }

if [ "$only" = all ] || [ "$only" = unit ]; then
  for t in build/test/test_*; do
    [ -x "$t" ] || continue
    out=$("$t" 2>&1)
    status=$?
    line=$(printf '%s\n' "$out" | tail -n 1)
    p=$(printf '%s' "$line" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1/p')
    f=$(printf '%s' "$line" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\2/p')
    if [ -z "$p" ]; then
      fail "$t: no summary line (exit status $status)"
      printf '%s\n' "$out" | tail -n 20
      continue
    fi
    passed=$((passed + p)) failed=$((failed + f))
    if [ "$f" != 0 ] || [ $status != 0 ]; then
      printf '%s\n' "$out" | grep -E '^FAIL' | head -n 30
      [ "$f" != 0 ] || fail "$t: exit status $status"
    fi
    echo "$t: $line"
  done
fi

# exact NN WANT STREAM STATUS ASAN ARGS...: in NN's folder, `keel ARGS` must exit with STATUS
# and print exactly the file WANT on STREAM (out or err); with ASAN 1, the same again under
# AddressSanitizer and UBSan (build/asan/keel, when built), which must report nothing.
exact() {
  local nn=$1 want=$2 stream=$3 expect=$4 asan=$5 dir status
  shift 5
  dir=$(dirname "$nn")
  (cd "$dir" && "$KEEL_ABS" "$@") > "$TMP/out" 2> "$TMP/err"
  status=$?
  if [ $status != "$expect" ]; then
    fail "$nn: exit status $status, want $expect"
    head -n 10 "$TMP/err"
  elif ! cmp -s "$TMP/$stream" "$want"; then
    fail "$nn: std$stream differs from $want"
    diff "$want" "$TMP/$stream" | head -n 10
  else
    ok
  fi
  if [ "$asan" = 1 ] && [ -x build/asan/keel ]; then
    (cd "$dir" && ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1 \
      "$ASAN_KEEL" "$@") > "$TMP/out" 2> "$TMP/err"
    status=$?
    if [ $status = "$expect" ] && cmp -s "$TMP/$stream" "$want"; then ok; else
      fail "$nn under AddressSanitizer: exit status $status"; head -n 20 "$TMP/err"
    fi
  fi
}

if [ "$only" = all ] || [ "$only" = errors ]; then
  # tests/errors/NAME.nn: `keel check` exits 1 with exactly NAME.err on stderr
  n=0
  for nn in tests/errors/*.nn; do
    [ -e "$nn" ] || continue
    n=$((n + 1))
    exact "$nn" "${nn%.nn}.err" err 1 1 check "$(basename "$nn")"
  done
  echo "tests/errors: $n scripts"
fi

if [ "$only" = all ] || [ "$only" = lints ]; then
  # tests/lints/NAME.nn: the safety lints, one script each. The command must exit 0 and print
  # exactly tests/lints/NAME.out on stderr. Most scripts run `keel check NAME.nn` (the
  # compile-time lints). A script named run_*.nn runs `keel run NAME.nn --out DIR` instead: the
  # schedule lints need the number of steps, known once the data is loaded, and the script's
  # own tiny data and length are what they measure (--steps would change that length), so
  # such a script trains for real, in well under a second. run_clean.nn has every rail in
  # place and no lint: its .out is empty. The compile-time ones also run under ASan/UBSan.
  n=0
  for nn in tests/lints/*.nn; do
    [ -e "$nn" ] || continue
    n=$((n + 1))
    name=$(basename "$nn")
    case $name in
      run_*) exact "$nn" "${nn%.nn}.out" err 0 0 run "$name" --out "$TMP/lint-${name%.nn}" ;;
      *) exact "$nn" "${nn%.nn}.out" err 0 1 check "$name" ;;
    esac
  done
  echo "tests/lints: $n scripts"
fi

if [ "$only" = all ] || [ "$only" = explain ]; then
  # tests/explain/NAME.nn: `keel explain NAME.nn` must exit 0 and print exactly
  # tests/explain/NAME.out on stdout; also under AddressSanitizer and UBSan when built.
  n=0
  for nn in tests/explain/*.nn; do
    [ -e "$nn" ] || continue
    n=$((n + 1))
    exact "$nn" "${nn%.nn}.out" out 0 1 explain "$(basename "$nn")"
  done
  # the main example's explanation is part of what users read first
  "$KEEL" explain examples/fashion_mlp.nn > "$TMP/out" 2>&1
  cmp -s "$TMP/out" tests/explain/fashion_mlp.out && ok ||
    { fail "keel explain examples/fashion_mlp.nn differs from tests/explain/fashion_mlp.out";
      diff tests/explain/fashion_mlp.out "$TMP/out" | head -n 10; }
  echo "tests/explain: $n scripts and examples/fashion_mlp.nn"
fi

if [ "$only" = all ] || [ "$only" = parity ]; then
  # PyTorch reference cases (tests/parity/gen.py): weights after N steps, relative error 1e-4
  for nn in tests/parity/*.nn; do
    name=$(basename "${nn%.nn}")
    if (cd tests/parity && "$KEEL_ABS" run "$name.nn" --init "$name.init.safetensors" \
          --no-shuffle --out "$TMP/parity-$name") > "$TMP/parity.log" 2>&1 &&
       build/test/st_compare "tests/parity/$name.want.safetensors" \
          "$TMP/parity-$name/final.safetensors" 1e-4 > "$TMP/cmp.log"; then
      ok
    else
      fail "parity $name"; cat "$TMP/parity.log" "$TMP/cmp.log" | tail -n 12
    fi
    # eval mode: report.json's val_loss against PyTorch's in eval() (NAME.want.json), 1e-4
    if [ -e "tests/parity/$name.want.json" ]; then
      want=$(sed -n 's/.*"val_loss": *\([^,}]*\).*/\1/p' "tests/parity/$name.want.json")
      got=$(json "$TMP/parity-$name/report.json" val_loss 2> /dev/null)
      if awk -v g="$got" -v w="$want" 'BEGIN { d = g - w; if (d < 0) d = -d; m = w < 0 ? -w : w
             exit !(g != "" && g != "null" && w != "" && d <= 1e-4 * (m > 1e-6 ? m : 1e-6)) }'; then
        ok
      else
        fail "parity $name: val_loss ${got:-missing}, PyTorch $want (relative error above 1e-4)"
      fi
    fi
  done
fi

if [ "$only" = all ] || [ "$only" = schedules ]; then
  # learning-rate curves against torch.optim.lr_scheduler (tests/parity/gen_schedules.py)
  for nn in tests/parity/schedules/*.nn; do
    name=$(basename "${nn%.nn}")
    if (cd tests/parity/schedules && "$KEEL_ABS" schedule "$name.nn") > "$TMP/lr.csv" 2> "$TMP/lr.err" &&
       awk -F, 'NR == FNR { if (FNR > 1) want[$1] = $2; next }
                FNR > 1 { n++; d = $3 - want[$1]; if (d < 0) d = -d; m = want[$1] < 0 ? -want[$1] : want[$1];
                          if (!($1 in want) || d > 1e-5 * (m > 1e-3 ? m : 1e-3)) { print "step " $1 ": keel " $3 ", torch " want[$1]; bad++ } }
                END { exit bad > 0 || n != length(want) }' "tests/parity/schedules/$name.lr.csv" "$TMP/lr.csv" > "$TMP/lr.diff"; then
      ok
    else
      fail "schedule $name"; head -n 5 "$TMP/lr.diff" "$TMP/lr.err"
    fi
  done
fi

if [ "$only" = all ] || [ "$only" = aot ]; then
  # One corpus, two engines: each script trains through the JIT (keel run) and through a
  # built trainer (keel build), and both must leave byte-identical weights and the same
  # report (apart from timings). The trainer carries no LLVM.
  for case in "examples/xor.nn|" "examples/fashion_mlp.nn|--steps 120 --seed 3" \
              "tests/e2e/early_stop.nn|" "tests/e2e/diverge.nn|"; do
    nn=${case%%|*} args=${case#*|} name=$(basename "${nn%.nn}")
    dir=$(dirname "$nn")
    if ! $KEEL build "$nn" -o "$TMP/$name.trainer" > "$TMP/build.log" 2>&1; then
      fail "build $nn"; tail -n 5 "$TMP/build.log"; continue
    fi
    (cd "$dir" && "$KEEL_ABS" run "$(basename "$nn")" $args --out "$TMP/$name.jit") > /dev/null 2>&1
    s1=$?
    (cd "$dir" && "$TMP/$name.trainer" $args --out "$TMP/$name.aot") > /dev/null 2>&1
    s2=$?
    [ $s1 = $s2 ] && ok || fail "$nn: exit status $s1 through the JIT, $s2 through the trainer"
    cmp -s "$TMP/$name.jit/final.safetensors" "$TMP/$name.aot/final.safetensors" && ok ||
      fail "$nn: the JIT and the trainer trained different weights"
    strip() { grep -v -E '"(samples_per_second|compile_seconds)"' "$1"; }
    [ "$(strip "$TMP/$name.jit/report.json")" = "$(strip "$TMP/$name.aot/report.json")" ] && ok ||
      fail "$nn: report.json differs between the JIT and the trainer"
  done
  ldd "$TMP/xor.trainer" | grep -qi llvm && fail "the trainer links LLVM" || ok
  # --threads 2: the pool cuts every kernel (matrix products, convolutions, pooling, the
  # generated loops) at fixed places, so two runs and a trainer train the same bytes
  for nn in fashion_mlp fashion_cnn; do
    $KEEL build "examples/$nn.nn" -o "$TMP/$nn.t2" > /dev/null 2>&1
    for how in a b trainer; do
      if [ $how = trainer ]; then run=("$TMP/$nn.t2"); else run=("$KEEL_ABS" run "$nn.nn"); fi
      (cd examples && "${run[@]}" --steps 12 --batch 100 --threads 2 --out "$TMP/$nn.t2$how") > /dev/null 2>&1
    done
    cmp -s "$TMP/$nn.t2a/final.safetensors" "$TMP/$nn.t2b/final.safetensors" && ok ||
      fail "$nn --threads 2: two runs trained different weights"
    cmp -s "$TMP/$nn.t2a/final.safetensors" "$TMP/$nn.t2trainer/final.safetensors" && ok ||
      fail "$nn --threads 2: the JIT and the trainer trained different weights"
  done
  # and the same numbers as one thread, up to the rounding of products cut in pieces
  for t in 1 2; do
    (cd tests/e2e && "$KEEL_ABS" run threads.nn --steps 12 --threads $t --out "$TMP/threads$t") > /dev/null 2>&1
  done
  build/test/st_compare "$TMP/threads1/final.safetensors" "$TMP/threads2/final.safetensors" 1e-5 \
    > "$TMP/t2.log" 2>&1 && ok ||
    { fail "--threads 2 trained other numbers than --threads 1"; grep FAIL "$TMP/t2.log" | head -3; }
  # dropout masks: the numbers of krt_rand_fill, wherever the step computes them
  for t in 1 2; do
    (cd tests/e2e && "$KEEL_ABS" run dropout.nn --threads $t --out "$TMP/dropout$t") > /dev/null 2>&1
    build/test/st_compare tests/e2e/dropout.safetensors "$TMP/dropout$t/final.safetensors" 1e-5 \
      > "$TMP/dropout.log" 2>&1 && ok ||
      { fail "dropout.nn --threads $t: other masks than the runtime's"; grep FAIL "$TMP/dropout.log" | head -3; }
  done
  # --data swaps a source's file: the same rows in another place train the same weights;
  # other rows train others
  cp examples/xor.csv "$TMP/xor-copy.csv"
  "$TMP/xor.trainer" --data "train=$TMP/xor-copy.csv" --out "$TMP/xor.data" > /dev/null 2>&1
  cmp -s "$TMP/xor.data/final.safetensors" "$TMP/xor.aot/final.safetensors" && ok ||
    fail "trainer --data: the same rows elsewhere trained other weights"
  printf 'a,b,label\n0,0,1\n0,1,0\n1,0,0\n1,1,1\n' > "$TMP/xnor.csv"
  "$TMP/xor.trainer" --data "train=$TMP/xnor.csv" --out "$TMP/xnor" > /dev/null 2>&1
  cmp -s "$TMP/xnor/final.safetensors" "$TMP/xor.aot/final.safetensors" &&
    fail "trainer --data: other rows trained the same weights" || ok
  # a portable trainer (--cpu x86-64-v2) trains to the same bytes as the JIT with that --cpu
  $KEEL build tests/e2e/early_stop.nn -o "$TMP/es-v2" --cpu x86-64-v2 > /dev/null 2>&1
  (cd tests/e2e && "$TMP/es-v2" --out "$TMP/es-v2.aot" > /dev/null 2>&1)
  (cd tests/e2e && "$KEEL_ABS" run early_stop.nn --cpu x86-64-v2 --out "$TMP/es-v2.jit" > /dev/null 2>&1)
  cmp -s "$TMP/es-v2.aot/final.safetensors" "$TMP/es-v2.jit/final.safetensors" && ok ||
    fail "--cpu x86-64-v2: the JIT and the trainer differ"
  "$TMP/xor.trainer" --help | grep -Eq "^dense2 +dense +\[n, 2\] +18$" && ok ||
    fail "trainer --help does not show the layer table"
  # predictions: one row per test image, and the same accuracy as the run's test_accuracy
  "$TMP/fashion_mlp.trainer" predict --weights "$TMP/fashion_mlp.aot/final.safetensors" \
    /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz --out "$TMP/pred.csv" > /dev/null 2>&1
  [ "$(wc -l < "$TMP/pred.csv")" = 10001 ] && ok || fail "predict: not one row per test image"
  zcat /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz | od -An -v -tu1 -w1 -j8 |
    tr -d ' ' > "$TMP/labels.txt"
  acc=$(tail -n +2 "$TMP/pred.csv" | cut -d, -f1 | paste -d' ' - "$TMP/labels.txt" |
        awk '{ n++; ok += $1 == $2 } END { printf "%.4f", ok / n }')
  want=$(json "$TMP/fashion_mlp.aot/report.json" test_accuracy)
  awk -v a="$acc" -v b="$want" 'BEGIN { exit !(a == b + 0) }' && ok ||
    fail "predict: accuracy $acc, the run's test_accuracy $want"
  # CSV input: with or without the label column, one row per sample, XOR's four classes right
  "$TMP/xor.trainer" predict --weights "$TMP/xor.aot/final.safetensors" examples/xor.csv \
    --out "$TMP/xor-pred.csv" > /dev/null 2>&1
  cut -d, -f1,2 examples/xor.csv > "$TMP/xor-nolabel.csv"
  "$TMP/xor.trainer" predict --weights "$TMP/xor.aot/final.safetensors" "$TMP/xor-nolabel.csv" \
    --out "$TMP/xor-pred2.csv" > /dev/null 2>&1
  [ "$(tail -n +2 "$TMP/xor-pred.csv" | cut -d, -f1 | tr '\n' ' ')" = "0 1 1 0 " ] &&
    cmp -s "$TMP/xor-pred.csv" "$TMP/xor-pred2.csv" && ok ||
    fail "predict on CSV: not the XOR classes 0 1 1 0 with and without the label column"
  $KEEL predict examples/fashion_mlp.nn --weights "$TMP/fashion_mlp.aot/final.safetensors" \
    /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz --out "$TMP/pred2.csv" > /dev/null 2>&1
  cmp -s "$TMP/pred.csv" "$TMP/pred2.csv" && ok || fail "keel predict and trainer predict differ"
  # exact resume: a trainer killed with SIGKILL mid-epoch and resumed from last.safetensors
  # ends with the same bytes as an uninterrupted run; so does `keel run` stopped by Ctrl-C
  t="$TMP/fashion_mlp.trainer"
  "$t" --epochs 3 --seed 5 --out "$TMP/full" > /dev/null 2>&1
  "$t" --epochs 3 --seed 5 --out "$TMP/killed" > /dev/null 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do [ -e "$TMP/killed/last.safetensors" ] && break; sleep 0.05; done
  sleep 0.3
  kill -9 $pid 2> /dev/null
  wait $pid 2> /dev/null
  [ ! -e "$TMP/killed/final.safetensors" ] && ok || fail "resume: the run finished before it was killed"
  "$t" --epochs 3 --seed 5 --out "$TMP/killed" --resume "$TMP/killed/last.safetensors" > /dev/null 2>&1
  cmp -s "$TMP/full/final.safetensors" "$TMP/killed/final.safetensors" && ok ||
    fail "resume after SIGKILL: final.safetensors differs from the uninterrupted run's"
  # (job control on: a background job of a script would otherwise start with SIGINT ignored)
  status=$(set -m
    $KEEL run examples/fashion_mlp.nn --epochs 2 --seed 5 --out "$TMP/int" > /dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do [ -e "$TMP/int/last.safetensors" ] && break; sleep 0.05; done
    sleep 0.4
    kill -INT $pid 2> /dev/null
    wait $pid
    echo $?)
  [ $status = 130 ] && ok || fail "Ctrl-C: exit status $status, want 130"
  $KEEL run examples/fashion_mlp.nn --epochs 2 --seed 5 --out "$TMP/int" --resume "$TMP/int/last.safetensors" > /dev/null 2>&1
  $KEEL run examples/fashion_mlp.nn --epochs 2 --seed 5 --out "$TMP/int2" > /dev/null 2>&1
  cmp -s "$TMP/int/final.safetensors" "$TMP/int2/final.safetensors" && ok ||
    fail "resume after Ctrl-C: final.safetensors differs from the uninterrupted run's"
  # resuming into another model is refused, saying what differs
  $KEEL run examples/xor.nn --resume "$TMP/full/last.safetensors" --out "$TMP/wrong" > /dev/null 2> "$TMP/wrong.err"
  status=$?
  [ $status = 1 ] && grep -q "different model" "$TMP/wrong.err" && ok ||
    { fail "resume into another model: exit status $status"; cat "$TMP/wrong.err"; }

  # objects for this machine and for another architecture
  $KEEL build examples/xor.nn -o "$TMP/xor.o" --emit obj > /dev/null 2>&1 &&
    [ "$(od -An -tx1 -j18 -N2 "$TMP/xor.o" | tr -d ' ')" = 3e00 ] && ok || fail "build --emit obj (x86-64)"
  $KEEL build examples/xor.nn -o "$TMP/xor-arm.o" --emit obj --target aarch64-linux-gnu > /dev/null 2>&1 &&
    [ "$(od -An -tx1 -j18 -N2 "$TMP/xor-arm.o" | tr -d ' ')" = b700 ] && ok || fail "build --target aarch64 --emit obj"
fi

if [ "$only" = all ] || [ "$only" = e2e ]; then
  # XOR reaches train accuracy 1
  if $KEEL run examples/xor.nn --out "$TMP/xor" > "$TMP/xor.log" 2>&1; then
    acc=$(json "$TMP/xor/report.json" train_accuracy)
    at_least "$acc" 1 && ok || fail "xor: train_accuracy $acc, want 1"
  else
    fail "xor: keel run failed"; tail -n 5 "$TMP/xor.log"
  fi
  # the same seed twice: byte-identical weights
  $KEEL run examples/xor.nn --out "$TMP/xor2" > /dev/null 2>&1
  cmp -s "$TMP/xor/final.safetensors" "$TMP/xor2/final.safetensors" && ok ||
    fail "xor: two runs with the same seed differ"
  # another seed: other weights
  $KEEL run examples/xor.nn --seed 2 --out "$TMP/xor3" > /dev/null 2>&1
  cmp -s "$TMP/xor/final.safetensors" "$TMP/xor3/final.safetensors" &&
    fail "xor: --seed 2 gives the same weights as seed 1" || ok
  # --init continues from saved weights: loss starts where the first run ended
  $KEEL run examples/xor.nn --epochs 1 --init "$TMP/xor/final.safetensors" --out "$TMP/xor4" > /dev/null 2>&1
  acc=$(json "$TMP/xor4/report.json" train_accuracy)
  at_least "$acc" 1 && ok || fail "xor --init: train_accuracy $acc after one epoch, want 1"

  # Fashion-MNIST, one epoch: accuracy well above chance, and deterministic
  if $KEEL run examples/fashion_mlp.nn --epochs 1 --out "$TMP/fm" > "$TMP/fm.log" 2>&1; then
    acc=$(json "$TMP/fm/report.json" test_accuracy)
    at_least "$acc" 0.80 && ok || fail "fashion_mlp: test_accuracy $acc after 1 epoch, want >= 0.80"
    for k in epochs steps stopped train_loss train_accuracy val_loss val_accuracy test_loss \
             samples_per_second compile_seconds parameters; do
      [ -n "$(json "$TMP/fm/report.json" $k)" ] && ok || fail "fashion_mlp: report.json lacks $k"
    done
    [ "$(wc -l < "$TMP/fm/metrics.csv")" = 2 ] && ok || fail "fashion_mlp: metrics.csv should have a header and 1 row"
  else
    fail "fashion_mlp: keel run failed"; tail -n 5 "$TMP/fm.log"
  fi
  $KEEL run examples/fashion_mlp.nn --steps 50 --out "$TMP/fm2" > /dev/null 2>&1
  $KEEL run examples/fashion_mlp.nn --steps 50 --out "$TMP/fm3" > /dev/null 2>&1
  cmp -s "$TMP/fm2/final.safetensors" "$TMP/fm3/final.safetensors" && ok ||
    fail "fashion_mlp: two runs with the same seed differ"
  [ "$(json "$TMP/fm2/report.json" stopped)" = '"steps"' ] && ok || fail "fashion_mlp --steps 50: stopped is not \"steps\""
  [ "$(json "$TMP/fm2/report.json" steps)" = 50 ] && ok || fail "fashion_mlp --steps 50: steps is not 50"

  # the divergence guard: lr=50 blows up; bad steps are discarded, training stops with exit
  # status 3 and advice, and the saved weights are the last good ones, all finite
  (cd tests/e2e && "$KEEL_ABS" run diverge.nn --out "$TMP/dv") > "$TMP/dv.log" 2>&1
  status=$?
  [ $status = 3 ] && ok || fail "diverge: exit status $status, want 3"
  [ "$(json "$TMP/dv/report.json" stopped)" = '"guard"' ] && ok || fail "diverge: stopped is not \"guard\""
  grep -q '"reason": "the loss' "$TMP/dv/report.json" && ok || fail "diverge: no guard event in report.json"
  grep -q "^What to try:" "$TMP/dv.log" && grep -q "discarded" "$TMP/dv.log" && ok ||
    fail "diverge: no explanation printed"
  build/test/st_compare --finite "$TMP/dv/final.safetensors" > /dev/null && ok ||
    fail "diverge: final.safetensors holds a non-finite value"
  # a layer's output overflows: the guard names it as the first non-finite value
  (cd tests/e2e && "$KEEL_ABS" run overflow.nn --out "$TMP/of") > "$TMP/of.log" 2>&1
  grep -q "discarded: the loss was NaN (first non-finite value: the output of dense1)" "$TMP/of.log" &&
    ok || fail "overflow: the guard did not name the output of dense1"
  # the same for a convolution, whose probe is summed inside the loop that adds its bias, in
  # chunks when there are two threads
  for t in 1 2; do
    (cd tests/e2e && "$KEEL_ABS" run overflow_conv.nn --threads $t --out "$TMP/ofc") > "$TMP/ofc.log" 2>&1
    grep -q "discarded: the loss was NaN (first non-finite value: the output of conv1)" "$TMP/ofc.log" &&
      ok || fail "overflow_conv --threads $t: the guard did not name the output of conv1"
  done
  # early stopping on labels that are noise: it fires and the best epoch's weights come back
  (cd tests/e2e && "$KEEL_ABS" run early_stop.nn --out "$TMP/es") > "$TMP/es.log" 2>&1 && ok ||
    fail "early_stop: keel run failed"
  [ "$(json "$TMP/es/report.json" early_stopped)" = true ] && ok || fail "early_stop: did not fire"
  cmp -s "$TMP/es/final.safetensors" "$TMP/es/best.safetensors" && ok ||
    fail "early_stop: final.safetensors is not the best epoch's weights"
  grep -q "overfitting" "$TMP/es.log" && ok || fail "early_stop: the report does not mention overfitting"

  # cnn: the Fashion-MNIST CNN (examples/fashion_cnn.nn, IDX images as [n, 1, 28, 28])
  # learns in 40 steps (test accuracy 0.754 when measured; chance is 0.1), and keel check
  # lists its image shapes and parameter counts as torch counts them
  if $KEEL run examples/fashion_cnn.nn --steps 40 --out "$TMP/cnn" > "$TMP/cnn.log" 2>&1; then
    acc=$(json "$TMP/cnn/report.json" test_accuracy)
    at_least "$acc" 0.65 && ok || fail "fashion_cnn: test_accuracy $acc after 40 steps, want >= 0.65"
    [ "$(json "$TMP/cnn/report.json" parameters)" = 421834 ] && ok ||
      fail "fashion_cnn: report.json's parameters is not 421834"
  else
    fail "fashion_cnn: keel run failed"; tail -n 5 "$TMP/cnn.log"
  fi
  $KEEL check examples/fashion_cnn.nn > "$TMP/cnncheck" 2>&1
  for row in 'input +\[n, 1, 28, 28\]' 'conv1 +conv +\[n, 32, 28, 28\] +320' \
             'batchnorm1 +batchnorm +\[n, 32, 28, 28\] +64' 'maxpool1 +maxpool +\[n, 32, 14, 14\] +0' \
             'conv2 +conv +\[n, 64, 14, 14\] +18496' 'flatten1 +flatten +\[n, 3136\] +0' \
             'dense1 +dense +\[n, 128\] +401536' 'total +421834'; do
    grep -Eq "^$row *$" "$TMP/cnncheck" && ok || fail "check examples/fashion_cnn.nn: no row /$row/"
  done

  # the object cache: a second run of an unchanged script loads the first one's object; the
  # weights are the same with the cache, from it, and without it
  KEEL_CACHE_DIR="$TMP/oc" $KEEL run examples/xor.nn --out "$TMP/c1" > /dev/null 2>&1
  KEEL_CACHE_DIR="$TMP/oc" $KEEL run examples/xor.nn --out "$TMP/c2" > /dev/null 2>&1
  KEEL_CACHE_DIR= $KEEL run examples/xor.nn --out "$TMP/c3" > /dev/null 2>&1
  # (a program is two objects, compiled on two threads: NAME.0.o and NAME.1.o)
  [ "$(ls "$TMP/oc" | wc -l)" = 2 ] && [ "$(ls "$TMP"/oc/*.0.o | wc -l)" = 1 ] && ok ||
    fail "object cache: not one cached program after two runs"
  cmp -s "$TMP/c1/final.safetensors" "$TMP/c2/final.safetensors" &&
    cmp -s "$TMP/c1/final.safetensors" "$TMP/c3/final.safetensors" && ok ||
    fail "object cache: the weights differ between a compiled, a cached and an uncached run"
  # another program (here: other settings in its descriptor) gets its own entry
  KEEL_CACHE_DIR="$TMP/oc" $KEEL run examples/xor.nn --seed 9 --out "$TMP/c4" > /dev/null 2>&1
  [ "$(ls "$TMP"/oc/*.1.o | wc -l)" = 2 ] && ! cmp -s "$TMP/c1/final.safetensors" "$TMP/c4/final.safetensors" &&
    ok || fail "object cache: a run with another seed reused the first program"

  # the stages are visible
  $KEEL emit ir examples/xor.nn > "$TMP/ir" 2>&1
  grep -q "# backward (autodiff)" "$TMP/ir" && grep -q "pickgrad" "$TMP/ir" && ok ||
    fail "emit ir: no backward pass"
  $KEEL emit llvm examples/xor.nn > "$TMP/ll" 2>&1
  grep -q "define void @train_step" "$TMP/ll" && grep -q "krt_sgemm" "$TMP/ll" && ok ||
    fail "emit llvm: no train_step calling krt_sgemm"
  $KEEL check examples/fashion_mlp.nn > "$TMP/check" 2>&1
  grep -Eq "^total +235914$" "$TMP/check" && ok || fail "check: total parameters of fashion_mlp is not 235914 (as torch counts them)"
  $KEEL --version | grep -q '^keel ' && ok || fail "--version"
  $KEEL --help | grep -q 'keel run FILE' && ok || fail "--help"
fi

echo "$passed passed, $failed failed"
[ $failed = 0 ]
