#!/usr/bin/env bash
# AWD-LSTM's PTB recipe (Merity et al. 2017, salesforce/awd-lstm-lm, README's PTB command) on
# lstmgrad, and the same recipe on the PyTorch twin (bench/awd_twin_train.py) for comparison:
# embedding 400, 3 LSTM layers 1150/1150/400, tied weights; dropouts in 0.65 (dropouti), hid 0.3
# (dropouth), out 0.4 (dropout), embedding 0.1 (dropoute), weight drop 0.5 (wdrop); AR 2, TAR 1;
# weight decay 1.2e-6; batch 20 (README: 20 for PTB), BPTT 70 with jitter; SGD lr 30 switching to
# averaged SGD by the non-monotone rule (interval 5); clip 0.25; validation batch 10, test batch 1;
# AWD-LSTM's initialisation (--init-scheme awd: the LSTM uniform(+-1/sqrt(H)), the readout bias 0).
# Published (500 epochs, then finetuning): valid 60.0, test 57.3; without finetuning test 58.8.
#
# Usage: bench/awd_ptb.sh PTB_DIR [OUT_DIR] [EPOCHS] [TWIN]
#   EPOCHS  epochs of each side (default 2; the issue's comparison point)
#   TWIN    1 (default): also run the PyTorch twin for EPOCHS epochs after lstmgrad; 0: lstmgrad only
# Both sides run on the whole machine one after the other (nothing else should run: the times
# are compared). lstmgrad's per-epoch lines are OUT_DIR/metrics.jsonl; the twin's,
# OUT_DIR/twin.jsonl. Extra lstmgrad flags: LSTMGRAD_FLAGS (e.g. "--threads 2"); extra twin flags:
# TWIN_FLAGS (e.g. "--threads 1"). HIDDEN (default 1150,1150,400) sets the layers' sizes (one
# number: every layer). SEED (default 0) seeds both sides (their generators differ: the same seed
# is not the same draws).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 PTB_DIR [OUT_DIR] [EPOCHS] [TWIN]" >&2
  exit 2
fi
ptb=$1 out=${2:-runs/awd_ptb} epochs=${3:-2} twin=${4:-1}
root=$(cd "$(dirname "$0")/.." && pwd)
lstmgrad=${LSTMGRAD:-"$root/build/lstmgrad"}
hidden=${HIDDEN:-1150,1150,400}
seed=${SEED:-0}
twin_hidden=$hidden
[[ $hidden == *,* ]] || twin_hidden="$hidden,$hidden,$hidden"
recipe=(--embed 400 --hidden "$hidden" --layers 3 --tie-weights
        --dropout-in 0.65 --dropout-hid 0.3 --dropout-out 0.4 --dropout-emb 0.1 --weight-drop 0.5
        --ar 2 --tar 1 --weight-decay 1.2e-6 --batch 20 --seq 70 --bptt-jitter
        --optimizer nt-asgd --nonmono 5 --lr 30 --clip 0.25 --init 0.1 --init-scheme awd --loss mean
        --eval-batch 10)
start=$(date +%s)
# shellcheck disable=SC2086
"$lstmgrad" train --data "$ptb" --level word "${recipe[@]}" --epochs "$epochs" --seed "$seed" \
  --out "$out" ${LSTMGRAD_FLAGS:-}
echo "lstmgrad: $(( $(date +%s) - start )) s for $epochs epochs"
if [ "$twin" = 1 ]; then
  # shellcheck disable=SC2086
  /usr/bin/python3 "$root/bench/awd_twin_train.py" --data "$ptb" --epochs "$epochs" \
    --hidden "$twin_hidden" --init-scheme awd --seed "$seed" ${TWIN_FLAGS:-} | tee "$out/twin.jsonl"
  /usr/bin/python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
mine = [json.loads(l) for l in open(f"{out}/metrics.jsonl")]
twin = [json.loads(l) for l in open(f"{out}/twin.jsonl")]
print("| epoch | lstmgrad valid ppl | twin valid ppl | ratio | lstmgrad s/epoch | twin s/epoch | speed |")
print("|---|---|---|---|---|---|---|")
prev = 0.0
for m, t in zip([m for m in mine if "valid_ppl" in m], twin):
    s = m["wall_s"] - prev
    prev = m["wall_s"]
    print(f"| {t['epoch']} | {m['valid_ppl']:.2f} | {t['valid_ppl']:.2f} | "
          f"{m['valid_ppl'] / t['valid_ppl']:.3f} | {s:.0f} | {t['seconds']:.0f} | "
          f"{t['seconds'] / s:.2f}x |")
PY
fi
