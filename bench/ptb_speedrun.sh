#!/usr/bin/env bash
# Zaremba et al. (2014)'s "medium" regularized LSTM on Penn Treebank, on two CPU cores, with two
# changes of ours: bfloat16 GEMM operands (float32 sums, cell state, weights and optimizer) and the
# embedding tied to the readout (Press and Wolf 2017; Inan et al. 2017).
# The paper's recipe otherwise: 2 layers of 650, embedding 650, batch 20, unroll 35, 39 epochs,
# SGD lr 1 for epochs 1-6 then divided by 1.2 before each later epoch, global gradient-norm clip 5,
# every parameter uniform(+-0.05), dropout 0.5 on the non-recurrent connections, loss = per-step
# batch mean summed over the unrolled steps (--loss batch_mean).
# Published (untied, float32): valid 86.2, test 82.7. Issue 14's bar: test <= 82.7 in at most
# 150 minutes of wall time on this machine, training and sequential test evaluation included.
#
# Usage: bench/ptb_speedrun.sh PTB_DIR [OUT_DIR] [extra lstmgrad train flags]
#   A run stopped part way continues with: lstmgrad train --resume OUT_DIR (the wall time is then
#   the sum of the parts; metrics.jsonl keeps each epoch's time).
#   Results: OUT_DIR/results.json, OUT_DIR/metrics.jsonl.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 PTB_DIR [OUT_DIR] [extra lstmgrad train flags]" >&2
  exit 2
fi
ptb=$1
out=${2:-runs/ptb_speedrun}
shift $(( $# >= 2 ? 2 : 1 ))
lstmgrad=${LSTMGRAD:-"$(dirname "$0")/../build/lstmgrad"}
start=$(date +%s)
"$lstmgrad" train --data "$ptb" --level word \
  --layers 2 --hidden 650 --embed 650 --tie-weights --batch 20 --seq 35 --epochs 39 \
  --optimizer sgd --lr 1 --decay-after 6 --lr-decay 1.2 --clip 5 --init 0.05 --dropout 0.5 \
  --loss batch_mean --precision bf16 --threads 2 --seed 0 --out "$out" "$@"
end=$(date +%s)
echo "wall time: $((end - start)) s on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
cat "$out/results.json"
