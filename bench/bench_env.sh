# Sourced by the CPU comparison scripts (compare.sh, loaded.sh) with their arguments
# [BUILD_DIR] [ROUNDS]: the paths, a scratch folder OUT, and one environment for both sides:
# OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (OpenBLAS picks the CPU's own kernels; the test
# environment's Haswell setting is left alone everywhere else), thread counts left to each run,
# and glibc keeping freed memory (without it PyTorch pays a page fault per re-allocated page).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${1:-$ROOT/build}
ROUNDS=${2:-3}
LSTMGRAD=$BUILD/lstmgrad
ONEDNN=$BUILD/onednn_lstm  # built where libdnnl-dev is installed; compare.sh skips it otherwise
TORCH="/usr/bin/python3 $ROOT/bench/torch_lstm.py"
OUT=$(mktemp -d)
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS OMP_NUM_THREADS
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
