#!/usr/bin/env bash
# Every check and timing of the CUDA engine in one run, for a GPU machine that gets prebuilt
# binaries (docs/benchmarks.md, "CUDA"): the parity tests, `check --device cuda` on both recurrent
# paths, `bench --device cuda` beside PyTorch's cuDNN LSTM (bench/cudnn_lstm.py, same run), the
# GEMM ceiling, and Zaremba's small PTB recipe trained end to end (bench/ptb_small.sh's flags).
#
# Usage: bench/gpu_check.sh OUT_DIR [PTB_DIR]
#   LSTMGRAD (default build/lstmgrad) and CUDA_TESTS (default build/tests/lstmgrad_cuda_tests)
#   name the binaries; LSTMGRAD_LIBS, a folder of shared libraries to put first on the search path
#   (the build machine's OpenBLAS and fmt where the GPU machine lacks them). Without PTB_DIR the
#   training run is skipped. Each step has a time limit and the script goes on after a failure;
#   OUT_DIR/summary.txt ends with one line per step.
set -uo pipefail
out=${1:?usage: $0 OUT_DIR [PTB_DIR]}
ptb=${2:-}
lstmgrad=${LSTMGRAD:-build/lstmgrad}
tests=${CUDA_TESTS:-build/tests/lstmgrad_cuda_tests}
runs=${RUNS:-20}
warmup=${WARMUP:-5}
mkdir -p "$out"
# cuBLAS from the toolkit (or the wheel PyTorch brought) when the loader does not find it
# (lstmgrad opens libcublas.so.13 at its first GPU call, by name, then in the build's toolkit).
if [ -n "${LSTMGRAD_LIBS:-}" ]; then export LD_LIBRARY_PATH="$LSTMGRAD_LIBS:${LD_LIBRARY_PATH:-}"; fi
if ! ldconfig -p 2>/dev/null | grep -q 'libcublas.so.13 '; then
  dir=$(dirname "$(find / -name 'libcublas.so.13*' -not -path '/proc/*' 2>/dev/null | head -1)")
  export LD_LIBRARY_PATH="$dir:${LD_LIBRARY_PATH:-}"
fi
summary="$out/summary.txt"
: >"$summary"
step() {  # step NAME LIMIT_S COMMAND...: runs it, logs to OUT_DIR/NAME.log, records rc and time
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s.%N)
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local t1=$(date +%s.%N)
  printf '%-22s rc=%-3s %7.1f s\n' "$name" "$rc" "$(echo "$t1 - $t0" | bc)" | tee -a "$summary"
}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  "$lstmgrad" --version
  ldd "$lstmgrad" | grep -E 'openblas|fmt'
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
} >"$out/environment.log" 2>&1
step parity_tests 180 "$tests" --gtest_color=no
step check_persistent 60 "$lstmgrad" check --device cuda -L 2 -T 8 -B 5 -H 40 -X 12 -V 30 \
  --recurrence persistent --dropout 0.2
step check_steps 60 "$lstmgrad" check --device cuda -L 3 -T 6 -B 4 -H 24 --input dense \
  --readout identity --target soft --recurrence steps
step gemm_ceiling 60 "$lstmgrad" bench --device cuda --gemm --runs "$runs" --warmup "$warmup"
step bench_steps 180 "$lstmgrad" bench --device cuda --recurrence steps --runs "$runs" \
  --warmup "$warmup"
step bench_persistent 180 "$lstmgrad" bench --device cuda --recurrence persistent --runs "$runs" \
  --warmup "$warmup"
PYTHONUNBUFFERED=1 step cudnn_vs_lstmgrad 300 python3 bench/cudnn_lstm.py --lstmgrad "$lstmgrad" \
  --runs "$runs" --warmup "$warmup" --out "$out/cudnn_vs_lstmgrad.json"
if [ -n "$ptb" ]; then
  rm -rf "$out/ptb_small"
  step ptb_small 300 "$lstmgrad" train --device cuda --data "$ptb" --level word \
    --layers 2 --hidden 200 --embed 200 --batch 20 --seq 20 --epochs 13 \
    --optimizer sgd --lr 1 --decay-after 4 --lr-decay 2 --clip 5 --init 0.1 --dropout 0 \
    --loss batch_mean --seed 0 --out "$out/ptb_small" --quiet
  cp "$out/ptb_small/results.json" "$out/ptb_results.json" 2>/dev/null
  step sample 60 "$lstmgrad" sample --device cuda --model "$out/ptb_small/best.safetensors" \
    --prime "the" --length 30
fi
echo "--- tails" >>"$summary"
for f in "$out"/*.log; do
  echo "== $(basename "$f")" >>"$summary"
  tail -n 12 "$f" >>"$summary"
done
cat "$summary"
