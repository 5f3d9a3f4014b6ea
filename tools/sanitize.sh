#!/usr/bin/env bash
# The test suite under sanitizers, as .ci/run runs it (docs/reliability.md).
#   tools/sanitize.sh address [BUILD_DIR]   ASan + UBSan (clang), the fuzzers built too: the tests,
#                                           every fuzzer's committed corpus replayed (CTests
#                                           fuzz_corpus_*), then tools/fuzz.sh for FUZZ_SECONDS
#                                           (default 30) per reader.
#   tools/sanitize.sh thread [BUILD_DIR]    TSan (clang): the tests: the engine's team (its own
#                                           threads and atomics: the pool's hand-over, the spin
#                                           barrier, the claimed ranges, the readout), with
#                                           OpenMP's synchronisation, where code still uses it,
#                                           made visible by LLVM's Archer tool (libomp's OMPT).
# Environment: FUZZ_SECONDS; LSTMGRAD_CMAKE_FLAGS (extra configure flags).
set -euo pipefail
kind=$1
build=${2:-build-$kind}
cd "$(dirname "$0")/.."
read -r -a extra <<<"${LSTMGRAD_CMAKE_FLAGS:-}"
# MPI off: Open MPI's runtime is not built for the sanitizers (its allocations at exit read as
# leaks); the plain build's tests run lstmgrad under mpirun (tests/test_mpi.cpp). No Python
# package: its tests would need the sanitizer runtimes preloaded into python3.
common=(-DCMAKE_BUILD_TYPE=Release -DLSTMGRAD_WITH_CUDA=OFF -DLSTMGRAD_WERROR=ON -DLSTMGRAD_WITH_MPI=OFF
        -DLSTMGRAD_WITH_PYTHON=OFF
        -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ "${extra[@]}")
case "$kind" in
  address)
    cmake -S . -B "$build" "${common[@]}" -DLSTMGRAD_SANITIZE=address,undefined \
      -DLSTMGRAD_BUILD_FUZZERS=ON
    cmake --build "$build" -j"$(nproc)"
    # detect_leaks: the engine allocates once and frees at exit; a leak is a finding.
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
      ctest --test-dir "$build" --output-on-failure -j"$(nproc)" -E '^format$'
    tools/fuzz.sh "$build" "${FUZZ_SECONDS:-30}"
    ;;
  thread)
    cmake -S . -B "$build" "${common[@]}" -DLSTMGRAD_SANITIZE=thread -DLSTMGRAD_BUILD_FUZZERS=OFF
    cmake --build "$build" -j"$(nproc)"
    archer=$(clang++ -print-resource-dir)/../../libarcher.so
    [ -f "$archer" ] || archer=$(find /usr/lib/llvm-* -name libarcher.so | head -1)
    OMP_TOOL_LIBRARIES=$archer TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ignore_noninstrumented_modules=1" \
      OPENBLAS_NUM_THREADS=1 ctest --test-dir "$build" --output-on-failure -j"$(nproc)" \
      -E '^format$'
    ;;
  *)
    echo "usage: $0 address|thread [BUILD_DIR]" >&2
    exit 2
    ;;
esac
