#!/usr/bin/env bash
# Zaremba, Sutskever & Vinyals (2014), the non-regularized "small" LSTM on Penn Treebank:
# 2 layers of 200, embedding 200, batch 20, unroll 20, 13 epochs, SGD lr 1 for epochs 1-4 then
# halved before each later epoch, global gradient-norm clip 5, every parameter uniform(+-0.1),
# no dropout, loss = per-step batch mean summed over the unrolled steps (--loss batch_mean).
# Published: valid 120.7, test 114.5 (test evaluated sequentially, batch 1).
#
# Usage: bench/ptb_small.sh PTB_DIR [OUT_DIR] [extra lstmgrad train flags]
#   PTB_DIR holds ptb.train.txt, ptb.valid.txt, ptb.test.txt (Mikolov's preprocessed PTB; not
#   distributed with lstmgrad). Results: OUT_DIR/results.json, OUT_DIR/metrics.jsonl.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 PTB_DIR [OUT_DIR] [extra lstmgrad train flags]" >&2
  exit 2
fi
ptb=$1
out=${2:-runs/ptb_small}
shift $(( $# >= 2 ? 2 : 1 ))
lstmgrad=${LSTMGRAD:-"$(dirname "$0")/../build/lstmgrad"}
start=$(date +%s)
"$lstmgrad" train --data "$ptb" --level word \
  --layers 2 --hidden 200 --embed 200 --batch 20 --seq 20 --epochs 13 \
  --optimizer sgd --lr 1 --decay-after 4 --lr-decay 2 --clip 5 --init 0.1 --dropout 0 \
  --loss batch_mean --seed 0 --out "$out" "$@"
end=$(date +%s)
echo "wall time: $((end - start)) s on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
cat "$out/results.json"
