#!/usr/bin/env bash
# Checks that the C++ and CUDA sources are formatted as .clang-format says (Google-based, 100
# columns), with Debian's clang-format (clang-format-14, else clang-format; CLANG_FORMAT=path
# picks another). Changes nothing: lists each file that differs, with clang-format's report.
#
# Files: in a git checkout the tracked ones (and new, not ignored ones) matching *.cpp *.hpp *.cu
# *.cuh; elsewhere every such file under src include tests bench.
# Exit status: 0 all formatted, 1 some file is not, 77 no clang-format installed (CTest counts
# the test "format" as skipped then: SKIP_RETURN_CODE 77).
# To fix a file: clang-format-14 -i FILE.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

clang_format=${CLANG_FORMAT:-}
if [ -z "$clang_format" ]; then
  for candidate in clang-format-14 clang-format; do
    if command -v "$candidate" >/dev/null 2>&1; then
      clang_format=$candidate
      break
    fi
  done
fi
if [ -z "$clang_format" ]; then
  echo "check_format: clang-format is not installed (apt-get install clang-format); skipped"
  exit 77
fi

files=()
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  while IFS= read -r -d '' f; do
    [ -f "$f" ] && files+=("$f")  # listed in the index but deleted in the work tree: skip
  done < <(git ls-files -z --cached --others --exclude-standard -- '*.cpp' '*.hpp' '*.cu' '*.cuh' \
             | sort -z)
else
  while IFS= read -r -d '' f; do
    files+=("$f")
  done < <(find src include tests bench -type f \
             \( -name '*.cpp' -o -name '*.hpp' -o -name '*.cu' -o -name '*.cuh' \) -print0 \
             2>/dev/null | sort -z)
fi

failed=()
for f in "${files[@]}"; do
  if ! report=$("$clang_format" --dry-run --Werror --style=file "$f" 2>&1); then
    failed+=("$f")
    echo "$report"
  fi
done
echo "check_format: $("$clang_format" --version | head -1); ${#files[@]} files checked"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "check_format: ${#failed[@]} files are not formatted (fix: $clang_format -i FILE):"
  printf '  %s\n' "${failed[@]}"
  exit 1
fi
echo "check_format: all formatted"
