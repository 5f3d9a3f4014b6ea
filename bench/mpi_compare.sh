#!/bin/bash
# Data-parallel training on this machine (docs/scaling.md): the PTB-small recipe for UPDATES
# updates as one process (its default threads) and as `mpirun -np 2` (one thread each) with the
# sums overlapped with the backward (--comm-overlap on, the default) and after it (off), over
# shared memory and over TCP, alternating, ROUNDS times; the tokens/s of each run (from
# metrics.jsonl, the updates only), the share of rank 0's time spent waiting for the gradient's
# sum after the backward and in starting and polling it during the backward, then the sum's own
# time (build/mpi_sum) over shared memory and over TCP.
#
#   bench/mpi_compare.sh PTB_DIR [BUILD_DIR] [ROUNDS] [UPDATES]     (defaults: build, 3, 400)
#
# The test environment's OPENBLAS_CORETYPE is left as it is: training uses it too.
set -euo pipefail
ptb=$1
build=${2:-build}
rounds=${3:-3}
updates=${4:-400}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
flags=(--data "$ptb" --level word --layers 2 --hidden 200 --embed 200 --batch 20 --seq 20
       --optimizer sgd --lr 1 --clip 5 --init 0.1 --loss batch_mean --seed 0
       --max-steps "$updates" --quiet)
report() {  # run folder, label
  python3 - "$1" "$2" <<'EOF'
import json, sys
line = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")][-1]
wait, during = line.get("sum_wait_s"), line.get("sum_overlap_s", 0)
share = (f", rank 0's time: {100 * wait / line['wall_s']:.1f}% waiting for the sum,"
         f" {100 * during / line['wall_s']:.1f}% moving it during the backward") if wait else ""
print(f"{sys.argv[2]:>30}: {line['tokens_per_s']:8.0f} tokens/s over {line['step']} updates{share}")
EOF
}
for r in $(seq "$rounds"); do
  rm -rf "$work/one"
  "$build/lstmgrad" train "${flags[@]}" --out "$work/one"
  report "$work/one" "one process, default"
  for btl in vader tcp; do
    for overlap in off on; do
      rm -rf "$work/np2"
      mpirun -q -np 2 --mca btl "self,$btl" "$build/lstmgrad" train "${flags[@]}" \
        --comm-overlap "$overlap" --out "$work/np2"
      report "$work/np2" "-np 2 (1 each) $btl, overlap $overlap"
    done
  done
done
echo "the sum alone:"
mpirun -q -np 2 "$build/mpi_sum" --runs 20
echo "over TCP (--mca btl self,tcp):"
mpirun -q -np 2 --mca btl self,tcp "$build/mpi_sum" --runs 10
