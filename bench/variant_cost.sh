#!/usr/bin/env bash
# The training throughput of each cell variant and step-loop regulariser against the plain cell:
# PTB, 2 layers of H (default 200), seq 35, batch 20, float32, 2 threads, STEPS updates (300),
# each setting ROUNDS times (2), in bench_env.sh's environment (both sides alike: here, lstmgrad
# alone). Prints the tokens/s of metrics.jsonl's line at the --max-steps stop.
#   bench/variant_cost.sh PTB_DIR [BUILD_DIR] [ROUNDS]      (H=650 STEPS=60 for the medium shape)
# PRECISION=bf16 runs every setting with --precision bf16 (default f32).
# A quiet machine: nothing else heavy beside it (docs/benchmarks.md).
set -euo pipefail
PTB=${1:?usage: bench/variant_cost.sh PTB_DIR [BUILD_DIR] [ROUNDS]}
shift
source "$(dirname "$0")/bench_env.sh" "$@"
H=${H:-200}
STEPS=${STEPS:-300}
PRECISION=${PRECISION:-f32}
variants=("" "--dropout-rec 0.25" "--zoneout-h 0.05 --zoneout-s 0.05" "--layer-norm"
          "--layer-norm --dropout-rec 0.25 --zoneout-h 0.05 --zoneout-s 0.05"
          "--proj $((H / 2)) --clip 5")  # unclipped, SGD at lr 1 diverges with a projection
for v in "${variants[@]}"; do
  line="${v:-plain}:"
  for r in $(seq "$ROUNDS"); do
    rm -rf "$OUT/run"
    # shellcheck disable=SC2086
    "$LSTMGRAD" train --data "$PTB" --level word --layers 2 --hidden "$H" --embed "$H" --seq 35 \
      --batch 20 --threads 2 --max-steps "$STEPS" --precision "$PRECISION" --quiet \
      --out "$OUT/run" $v
    line+=" $(tail -1 "$OUT/run/metrics.jsonl" | /usr/bin/python3 -c \
      'import json, sys; print(round(json.load(sys.stdin)["tokens_per_s"]))')"
  done
  echo "$line"
done
rm -rf "$OUT"
