#!/bin/bash
# lstmgrad vs PyTorch 1.13 and oneDNN 2.6 on the same machine, in one go (docs/benchmarks.md).
#
#   bench/compare.sh [BUILD_DIR] [ROUNDS]     (defaults: build, 3)
#
# Every side runs in the same environment: OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset for
# all (OpenBLAS picks its AVX-512 kernels; the test environment's Haswell setting is left alone
# everywhere else), and glibc keeps freed memory for all (MALLOC_*_THRESHOLD_, without which
# PyTorch pays a page fault per re-allocated page). Each preset runs in fresh processes (peak
# memory per preset and, for lstmgrad and oneDNN, per mode), lstmgrad, oneDNN and PyTorch
# alternating, ROUNDS times; lstmgrad and oneDNN
# (bench/onednn_lstm, where the build has it) try 1 and 2 threads, PyTorch torch threads 1, 2 x
# BLAS threads 1, 2; each side's best median per preset and mode is compared: lstmgrad's
# tokens/s over PyTorch's and over oneDNN's. Modes: fwd (a forward that keeps what backward
# needs; oneDNN forward_training; PyTorch's no_grad forward), infer (lstmgrad's and oneDNN's
# inference forwards; PyTorch's no_grad forward again), fwdbwd (with dL/dx on every side), lm_step
# (lstmgrad and PyTorch).
# Then the sgemm ceiling (1 and 2 threads, square 2048 and the presets' GEMM shapes) and the
# cores' multiply-add peak (build/fma_peak).
source "$(dirname "$0")/bench_env.sh"
trap 'rm -rf "$OUT"' EXIT
PRESETS=${PRESETS:-"zaremba-small zaremba-medium char-rnn throughput large"}  # env: a subset

for round in $(seq "$ROUNDS"); do
  for p in $PRESETS; do
    echo "round $round: $p" >&2
    # One process per mode: with glibc keeping freed memory, a mode's peak would otherwise count
    # the mode before it (infer after fwd). PyTorch's fwd, the one light mode, runs first.
    for m in fwd infer fwdbwd lm_step; do
      for lt in 1 2; do
        "$LSTMGRAD" bench --preset "$p" --mode $m --threads $lt --json \
          >"$OUT/lstmgrad.$p.$m.$lt.$round.json"
      done
      if [ -x "$ONEDNN" ] && [ $m != lm_step ]; then
        for ot in 1 2; do
          "$ONEDNN" --preset "$p" --mode $m --threads $ot --json >"$OUT/onednn.$p.$m.$ot.$round.json"
        done
      fi
    done
    for tt in 1 2; do
      for bt in 1 2; do
        OPENBLAS_NUM_THREADS=$bt $TORCH --preset "$p" --threads $tt --json \
          >"$OUT/torch.$p.$tt.$bt.$round.json"
      done
    done
  done
done
for t in 1 2; do "$LSTMGRAD" bench --gemm --threads $t --json >"$OUT/gemm.$t.json"; done
# And the cores' multiply-add peak, the bound of every GFLOP/s (bench/fma_peak.cpp).
if [ -x "$BUILD/fma_peak" ]; then "$BUILD/fma_peak" 1 2 >"$OUT/peak.txt"; fi

/usr/bin/python3 - "$OUT" <<'PY'
import glob, json, statistics, sys
out = sys.argv[1]
def load(pattern):
    rows = []
    for f in sorted(glob.glob(f"{out}/{pattern}")):
        rows += json.load(open(f))
    return rows
def med(rows, key):
    return statistics.median(r[key] for r in rows)
ours, torch, onednn = load("lstmgrad.*.json"), load("torch.*.json"), load("onednn.*.json")
gemm = {(g["gemm"], g["threads"]): g["gflops"] for g in load("gemm.*.json")}
ceiling2 = gemm[("square-2048", 2)]
print(f"GEMM ceiling (sgemm 2048^2): {gemm[('square-2048', 1)]:.0f} GFLOP/s on 1 thread, "
      f"{ceiling2:.0f} on 2")
print(f"{'preset':<15} {'mode':<7} {'lstmgrad tok/s':>14} {'thr':>3} {'GFLOP/s':>8} {'MB':>6} "
      f"{'torch best tok/s':>16} {'(tt x bt)':>9} {'MB':>6} {'ratio':>6} "
      f"{'oneDNN tok/s':>12} {'thr':>3} {'MB':>6} {'ratio':>6} {'ceiling':>8}")
PRESET_ORDER = ["zaremba-small", "zaremba-medium", "char-rnn", "throughput", "large"]
MODE_ORDER = ["fwd", "infer", "fwdbwd", "lm_step"]
keys = sorted({(r["preset"], r["mode"]) for r in ours if r["mode"] in MODE_ORDER},
              key=lambda k: (PRESET_ORDER.index(k[0]), MODE_ORDER.index(k[1])))
def best_threads(rows, p, m):
    """The runs of the best thread count (by median tokens/s) of one side, preset and mode."""
    runs = [[r for r in rows if (r["preset"], r["mode"], r["threads"]) == (p, m, t)]
            for t in (1, 2)]
    runs = [rs for rs in runs if rs]
    return max(runs, key=lambda rs: med(rs, "tokens_per_s")) if runs else None
for p, m in keys:
    mine = best_threads(ours, p, m)
    tm = "fwd" if m == "infer" else m  # PyTorch's fwd is its no_grad (inference) forward
    best = None
    for tt in (1, 2):
        for bt in (1, 2):
            rs = [r for r in torch if (r["preset"], r["mode"], r["threads"], r["blas_threads"])
                  == (p, tm, tt, bt)]
            if rs and (best is None or med(rs, "tokens_per_s") > best[0]):
                best = (med(rs, "tokens_per_s"), tt, bt, med(rs, "peak_rss_mb"))
    dnn = best_threads(onednn, p, m)
    tps, gf, mb = med(mine, "tokens_per_s"), med(mine, "gflops"), med(mine, "peak_rss_mb")
    share = gf / ceiling2 if m != "lm_step" else float("nan")
    line = f"{p:<15} {m:<7} {tps:>14.0f} {mine[0]['threads']:>3} {gf:>8.1f} {mb:>6.0f} "
    line += (f"{best[0]:>16.0f} {best[1]:>4} x {best[2]:<2} {best[3]:>6.0f} {tps / best[0]:>6.2f} "
             if best else f"{'-':>16} {'':>9} {'':>6} {'':>6} ")
    if dnn:
        d = med(dnn, "tokens_per_s")
        line += (f"{d:>12.0f} {dnn[0]['threads']:>3} {med(dnn, 'peak_rss_mb'):>6.0f} "
                 f"{tps / d:>6.2f} ")
    else:
        line += f"{'-':>12} {'':>3} {'':>6} {'':>6} "
    print(line + f"{share:>8.0%}")
print("ratio: lstmgrad's tokens/s over the other side's (above 1: lstmgrad faster); '-': not run")
print("\nsgemm at the presets' shapes, GFLOP/s (1 thread / 2 threads):")
for (name, t), g in sorted(gemm.items()):
    if t == 1:
        print(f"  {name:<26} {g:>7.1f} / {gemm[(name, 2)]:>7.1f}")
PY
if [ -f "$OUT/peak.txt" ]; then
  printf "\nThe cores' multiply-add peak (build/fma_peak):\n"
  cat "$OUT/peak.txt"
fi
