#!/bin/bash
# bfloat16 against float32 and against oneDNN's bf16 LSTM, on the same machine in one go
# (docs/benchmarks.md, "bfloat16").
#
#   bench/bf16_compare.sh [BUILD_DIR] [ROUNDS]     (defaults: build, 3)
#
# The environment of compare.sh (bench_env.sh). For each preset and mode (fwd, infer, fwdbwd
# with dL/dx), fresh processes alternate: lstmgrad --precision f32, lstmgrad --precision bf16,
# oneDNN --dtype bf16 and oneDNN --dtype f32, each at 1 and 2 threads, ROUNDS times. Each side's
# best thread count by median tokens/s is compared: lstmgrad bf16 over its own f32, over oneDNN's
# bf16 and over oneDNN's f32. Where the CPU has no AVX512_BF16, both bf16 sides say so and stop.
source "$(dirname "$0")/bench_env.sh"
trap 'rm -rf "$OUT"' EXIT
PRESETS=${PRESETS:-"zaremba-small zaremba-medium char-rnn throughput large"}  # env: a subset
MODES=${MODES:-"fwd infer fwdbwd"}

for round in $(seq "$ROUNDS"); do
  for p in $PRESETS; do
    echo "round $round: $p" >&2
    for m in $MODES; do
      for t in 1 2; do
        for pr in f32 bf16; do
          "$LSTMGRAD" bench --preset "$p" --mode $m --threads $t --precision $pr --json \
            >"$OUT/lstmgrad.$pr.$p.$m.$t.$round.json"
          "$ONEDNN" --preset "$p" --mode $m --threads $t --dtype $pr --json \
            >"$OUT/onednn.$pr.$p.$m.$t.$round.json"
        done
      done
    done
  done
done

/usr/bin/python3 - "$OUT" <<'PY'
import glob, json, statistics, sys
out = sys.argv[1]
def load(pattern):
    rows = []
    for f in sorted(glob.glob(f"{out}/{pattern}")):
        rows += json.load(open(f))
    return rows
def best(rows, p, m):
    """(median tokens/s, threads, median peak MB) of the best thread count."""
    found = []
    for t in (1, 2):
        rs = [r for r in rows if (r["preset"], r["mode"], r["threads"]) == (p, m, t)]
        if rs:
            found.append((statistics.median(r["tokens_per_s"] for r in rs), t,
                          statistics.median(r["peak_rss_mb"] for r in rs)))
    return max(found) if found else None
sides = {k: load(f"{k}.*.json") for k in
         ("lstmgrad.f32", "lstmgrad.bf16", "onednn.bf16", "onednn.f32")}
print(f"{'preset':<15} {'mode':<7} {'f32 tok/s':>10} {'bf16 tok/s':>11} {'MB':>5} "
      f"{'oneDNN bf16':>11} {'MB':>5} {'oneDNN f32':>10} "
      f"{'bf16/f32':>8} {'/oneDNN bf16':>12} {'/oneDNN f32':>11}")
PRESET_ORDER = ["zaremba-small", "zaremba-medium", "char-rnn", "throughput", "large"]
keys = sorted({(r["preset"], r["mode"]) for r in sides["lstmgrad.bf16"]},
              key=lambda k: (PRESET_ORDER.index(k[0]), k[1]))
for p, m in keys:
    f, b, db, df = (best(sides[k], p, m) for k in sides)
    cell = lambda x: f"{x[0]:>8.0f}({x[1]})" if x else f"{'-':>11}"
    print(f"{p:<15} {m:<7} {cell(f):>10} {cell(b):>11} {b[2]:>5.0f} {cell(db):>11} "
          f"{(db[2] if db else 0):>5.0f} {cell(df):>10} {b[0] / f[0]:>8.2f} "
          f"{(b[0] / db[0] if db else float('nan')):>12.2f} "
          f"{(b[0] / df[0] if df else float('nan')):>11.2f}")
print("tokens/s medians (threads); ratios: lstmgrad bf16 over each side (above 1: faster)")
PY
