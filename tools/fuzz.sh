#!/usr/bin/env bash
# Bounded fuzzing of every reader (fuzz/): each target for SECONDS on a scratch copy of its
# committed corpus (fuzz/corpus/NAME), with the limits that define a finding:
#   -malloc_limit_mb=256  a single allocation above 256 MB (inputs are at most 64 KB: a reader
#                         must check sizes against the file before allocating)
#   -rss_limit_mb=2048    the process grows past 2 GB
#   -timeout=10           one input takes over 10 s
# plus the sanitizers the build has (ASan + UBSan in .ci/run) and any exception other than
# InputError (fuzz/fuzz_input.hpp). Findings go to OUT/NAME/ (crash-*, leak-*, timeout-*,
# oom-*); the script exits 1 if there is any. A finding, once fixed, goes into fuzz/corpus/NAME
# so that the fuzz_corpus_NAME CTest replays it for good.
#
# Usage: tools/fuzz.sh BUILD_DIR [SECONDS per target, default 60] [OUT, default BUILD_DIR/fuzz-out]
#        [targets...]   (BUILD_DIR configured with clang and -DLSTMGRAD_BUILD_FUZZERS=ON)
set -euo pipefail
build=$1
seconds=${2:-60}
out=${3:-$build/fuzz-out}
shift $(( $# >= 3 ? 3 : $# ))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors model batch checkpoint values corpus)
root="$(cd "$(dirname "$0")/.." && pwd)"
found=0
for t in "${targets[@]}"; do
  mkdir -p "$out/$t/corpus"
  cp "$root/fuzz/corpus/$t/"* "$out/$t/corpus/"
  echo "fuzz_$t: ${seconds} s"
  # The safetensors-shaped readers take the header dictionary (fuzz/safetensors.dict).
  dict=()
  case "$t" in safetensors|model|batch|checkpoint) dict=(-dict="$root/fuzz/safetensors.dict") ;; esac
  if ! "$build/fuzz/fuzz_$t" "$out/$t/corpus" "${dict[@]}" -max_total_time="$seconds" -max_len=65536 \
      -malloc_limit_mb=256 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      -artifact_prefix="$out/$t/" >"$out/$t/log.txt" 2>&1; then
    found=1
    echo "  FINDING (see $out/$t/log.txt):"
    grep -E "ERROR|SUMMARY|terminate|what\(\)" "$out/$t/log.txt" | head -5 | sed 's/^/    /'
  else
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$out/$t/log.txt" | sed 's/^/  /'
  fi
done
exit $found
