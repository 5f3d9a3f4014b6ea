#!/usr/bin/env bash
# Peak memory (VmHWM, MB) of lstmgrad and oneDNN on every preset and mode, float32 and bf16, each
# case in a fresh process (docs/benchmarks.md, "Peak memory"). Memory does not depend on the
# machine's load, so this may run beside other work; the timings it prints are not used.
#
#   bench/peak_memory.sh [BUILD_DIR]      (PRESETS, MODES, DTYPES, THREADS override the lists)
source "$(dirname "$0")/bench_env.sh" "${1:-}" 1
presets=${PRESETS:-zaremba-small zaremba-medium char-rnn throughput large}
modes=${MODES:-fwd infer fwdbwd}
dtypes=${DTYPES:-f32 bf16}
threads=${THREADS:-2}
peak() { /usr/bin/python3 -c 'import json, sys; print("%.1f" % json.load(sys.stdin)[0]["peak_rss_mb"])'; }
echo "| preset | mode | dtype | lstmgrad MB | oneDNN MB | lstmgrad / oneDNN |"
echo "|---|---|---|---|---|---|"
for p in $presets; do
  for m in $modes; do
    for d in $dtypes; do
      a=$("$LSTMGRAD" bench --preset "$p" --mode "$m" --precision "$d" --runs 2 --warmup 1 \
        --threads "$threads" --json | peak)
      if [ -x "$ONEDNN" ]; then
        b=$("$ONEDNN" --preset "$p" --mode "$m" --dtype "$d" --runs 2 --warmup 1 \
          --threads "$threads" --json | peak)
        r=$(/usr/bin/python3 -c "print(f'{$a / $b:.2f}')")
      else
        b="(no oneDNN)" r=""
      fi
      echo "| $p | $m | $d | $a | $b | $r |"
    done
  done
done
