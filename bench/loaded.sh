#!/bin/bash
# The engine on a busy machine: a CPU-bound process pinned to one core (the last) for the whole
# run, and beside it lstmgrad with its default threads (the team adapts, cpu/team.hpp), lstmgrad
# pinned to one thread (--threads 1), and PyTorch 1.13 at every torch x BLAS thread setting
# (1, 2 x 1, 2; its best is the anchor). docs/benchmarks.md, "On a busy machine".
#
#   bench/loaded.sh [BUILD_DIR] [ROUNDS]     (defaults: build, 3)
#
# lstmgrad's two settings alternate, ROUNDS times, in fresh processes (--runs 25 each, the
# median); PyTorch runs once per setting (it is several times slower; its spread does not decide
# anything). The same environment as bench/compare.sh: OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
# unset for both sides, glibc keeping freed memory for both.
source "$(dirname "$0")/bench_env.sh"
PRESETS="zaremba-small zaremba-medium char-rnn"
CORE=$(($(nproc) - 1))
taskset -c "$CORE" bash -c 'while :; do :; done' &
HOG=$!
trap 'kill $HOG; rm -rf "$OUT"' EXIT
sleep 1

for round in $(seq "$ROUNDS"); do
  for p in $PRESETS; do
    echo "round $round: $p" >&2
    "$LSTMGRAD" bench --preset "$p" --runs 25 --warmup 5 --json >"$OUT/lstmgrad.$p.auto.$round.json"
    "$LSTMGRAD" bench --preset "$p" --threads 1 --runs 25 --warmup 5 --json \
      >"$OUT/lstmgrad.$p.one.$round.json"
  done
done
if [ -z "${NO_TORCH:-}" ]; then
  for p in $PRESETS; do
    echo "PyTorch: $p" >&2
    for tt in 1 2; do
      for bt in 1 2; do
        OPENBLAS_NUM_THREADS=$bt $TORCH --preset "$p" --threads $tt --json \
          >"$OUT/torch.$p.$tt.$bt.json"
      done
    done
  done
fi

/usr/bin/python3 - "$OUT" "$CORE" <<'PY'
import glob, json, statistics, sys
out, core = sys.argv[1], sys.argv[2]
def load(pattern):
    rows = []
    for f in sorted(glob.glob(f"{out}/{pattern}")):
        rows += json.load(open(f))
    return rows
def med(rows):
    return statistics.median(r["tokens_per_s"] for r in rows)
print(f"a CPU-bound process pinned to core {core}; tokens/s, medians of the rounds")
print(f"{'preset':<15} {'mode':<8} {'default':>9} {'--threads 1':>11} {'ratio':>6} "
      f"{'torch best':>10} {'(tt x bt)':>9} {'ratio':>6}")
auto, one, torch = load("lstmgrad.*.auto.*.json"), load("lstmgrad.*.one.*.json"), load("torch.*")
for p in ["zaremba-small", "zaremba-medium", "char-rnn"]:
    for m in ["fwd", "fwdbwd", "lm_step"]:
        a = [r for r in auto if (r["preset"], r["mode"]) == (p, m)]
        o = [r for r in one if (r["preset"], r["mode"]) == (p, m)]
        if not a:
            continue
        line = f"{p:<15} {m:<8} {med(a):>9.0f} {med(o):>11.0f} {med(a) / med(o):>6.2f}"
        best = None
        for tt in (1, 2):
            for bt in (1, 2):
                t = [r for r in torch if (r["preset"], r["mode"], r["threads"], r["blas_threads"])
                     == (p, m, tt, bt)]
                if t and (best is None or med(t) > best[0]):
                    best = (med(t), tt, bt)
        if best:
            line += f" {best[0]:>10.0f} {best[1]:>4} x {best[2]:<2} {med(a) / best[0]:>6.2f}"
        print(line)
PY
