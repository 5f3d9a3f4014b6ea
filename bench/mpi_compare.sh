#!/bin/bash
# Data-parallel training on this machine (docs/scaling.md): the PTB-small recipe for UPDATES
# updates as one process (its default threads) and as `mpirun -np 2` (one thread each),
# alternating, ROUNDS times; the tokens/s of each run (from metrics.jsonl, the updates only), the
# share of rank 0's time spent in the gradient's sum, then the sum's own time (build/mpi_sum) over
# shared memory and over TCP.
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
wait = line.get("sum_wait_s")
share = f", {100 * wait / line['wall_s']:.0f}% of rank 0's time in the sum" if wait else ""
print(f"{sys.argv[2]:>22}: {line['tokens_per_s']:8.0f} tokens/s over {line['step']} updates{share}")
EOF
}
for r in $(seq "$rounds"); do
  rm -rf "$work/one" "$work/np2"
  "$build/lstmgrad" train "${flags[@]}" --out "$work/one"
  report "$work/one" "one process, default"
  mpirun -q -np 2 "$build/lstmgrad" train "${flags[@]}" --out "$work/np2"
  report "$work/np2" "mpirun -np 2 (1 each)"
done
echo "the sum alone:"
mpirun -q -np 2 "$build/mpi_sum" --runs 20
echo "over TCP (--mca btl self,tcp):"
mpirun -q -np 2 --mca btl self,tcp "$build/mpi_sum" --runs 10
