#!/usr/bin/env bash
# The continuous cache (eval --cache-window/--cache-theta/--cache-lambda) on a trained word-level
# model: theta and lambda chosen on the validation text over a small grid, as AWD-LSTM's README
# does for pointer.py, then the test text with and without the cache, sequentially (batch 1).
#
# Usage: bench/neural_cache.sh MODEL DATA_DIR [BUILD_DIR] [WINDOWS]
#   MODEL     a model written by lstmgrad train (e.g. RUN/best.safetensors)
#   DATA_DIR  a folder with ptb.valid.txt and ptb.test.txt (or valid.txt and test.txt)
#   WINDOWS   cache windows to try (default "500 2000")
# Prints one line per setting (validation perplexity, seconds) and a summary table in Markdown.
set -euo pipefail
model=$1 data=$2 build=${3:-build} windows=${4:-500 2000}
pick() { for f in "$data/ptb.$1.txt" "$data/$1.txt"; do [ -f "$f" ] && { echo "$f"; return; }; done
         echo "no $1 text in $data" >&2; exit 2; }
valid=$(pick valid) test=$(pick test)
run() {  # file, extra flags -> "ppl seconds"
  local t0 t1 ppl
  t0=$(date +%s.%N)
  ppl=$("$build/lstmgrad" eval --json --model "$model" --data "$1" --batch 1 --dtype f32 \
        --threads 1 "${@:2}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
  t1=$(date +%s.%N)
  echo "$ppl $(python3 -c "print(f'{$t1-$t0:.1f}')")"
}
read -r base base_s <<<"$(run "$valid")"
echo "valid, no cache: ppl $base (${base_s} s)"
best=$base best_flags=""
for w in $windows; do
  for theta in 0.3 0.6 1.0; do
    for lambda in 0.05 0.1 0.15 0.2; do
      flags=(--cache-window "$w" --cache-theta "$theta" --cache-lambda "$lambda")
      read -r ppl secs <<<"$(run "$valid" "${flags[@]}")"
      echo "valid, window $w theta $theta lambda $lambda: ppl $ppl (${secs} s)"
      if python3 -c "import sys; sys.exit(0 if $ppl < $best else 1)"; then
        best=$ppl best_flags="${flags[*]}"
      fi
    done
  done
done
read -r test_plain test_plain_s <<<"$(run "$test")"
# shellcheck disable=SC2086
read -r test_cache test_cache_s <<<"$(run "$test" $best_flags)"
echo
echo "| | validation ppl | test ppl | test eval s |"
echo "|---|---|---|---|"
echo "| no cache | $base | $test_plain | $test_plain_s |"
echo "| cache ($best_flags) | $best | $test_cache | $test_cache_s |"
python3 -c "print(f'test perplexity {100 * (1 - $test_cache / $test_plain):.1f}% lower with the cache')"
