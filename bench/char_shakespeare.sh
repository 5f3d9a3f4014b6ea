#!/usr/bin/env bash
# Same learning as PyTorch: a character model on Tiny Shakespeare trained by lstmgrad and by
# PyTorch (bench/torch_char_lm.py) with the same recipe: first 90% train, last 10% valid, 2 layers
# of 128, embedding 128, seq 50, batch 50, Adam lr 2e-3, global norm clip 5, init uniform(+-0.08),
# 2 epochs. Prints both validation losses (nats per char) and lstmgrad's relative difference.
#
# Usage: bench/char_shakespeare.sh TINYSHAKESPEARE_INPUT_TXT [OUT_DIR]
set -euo pipefail
input=${1:?usage: $0 path/to/tinyshakespeare/input.txt [OUT_DIR]}
out=${2:-runs/char_shakespeare}
here=$(cd "$(dirname "$0")" && pwd)
lstmgrad=${LSTMGRAD:-"$here/../build/lstmgrad"}
mkdir -p "$out"
n=$(stat -c %s "$input")
ntrain=$(( n * 9 / 10 ))  # nanoGPT's split: 1,003,854 of 1,115,394 characters
head -c "$ntrain" "$input" > "$out/train.txt"
tail -c +"$(( ntrain + 1 ))" "$input" > "$out/valid.txt"
recipe=(--layers 2 --hidden 128 --embed 128 --seq 50 --batch 50 --epochs 2 --lr 2e-3 --clip 5
        --init 0.08 --seed 0)
t0=$(date +%s)
"$lstmgrad" train --train "$out/train.txt" --valid "$out/valid.txt" --level char \
  --optimizer adam --loss mean "${recipe[@]}" --out "$out/lstmgrad" --quiet
t1=$(date +%s)
/usr/bin/python3 "$here/torch_char_lm.py" --train "$out/train.txt" --valid "$out/valid.txt" \
  "${recipe[@]}" --threads "${TORCH_THREADS:-1}" | tee "$out/torch.jsonl"
t2=$(date +%s)
ours=$(tail -n 1 "$out/lstmgrad/metrics.jsonl" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["valid_loss"])')
theirs=$(tail -n 1 "$out/torch.jsonl" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["valid_loss"])')
echo "lstmgrad valid loss $ours nats/char ($((t1 - t0)) s); PyTorch $theirs ($((t2 - t1)) s)"
/usr/bin/python3 -c "print('relative difference: %+.2f%%' % (100 * ($ours - $theirs) / $theirs))"
"$lstmgrad" sample --model "$out/lstmgrad/best.safetensors" --prime "ROMEO:" --length 300 \
  --temperature 0.8 --seed 1
