#!/usr/bin/env bash
# Builds lstmgrad, installs it into a temporary prefix, and builds and runs tests/consumer (a
# project that only does find_package(lstmgrad) and links lstmgrad::lstmgrad) against that
# install: the exported package must carry every dependency the link needs.
#
# Usage: tools/consumer_test.sh static|shared [extra CMake flags for the lstmgrad build...]
#   e.g. tools/consumer_test.sh static -DLSTMGRAD_WITH_CUDA=OFF
# The lstmgrad build is the library alone (LSTMGRAD_BUILD_TESTS=OFF, LSTMGRAD_BUILD_CLI=OFF).
# Environment: JOBS (parallel build jobs, default 2), KEEP=1 keeps the temporary directory.
set -euo pipefail
case "${1:-}" in
  static) shared=OFF ;;
  shared) shared=ON ;;
  *) echo "usage: $0 static|shared [cmake flags...]" >&2; exit 2 ;;
esac
mode=$1
shift
src=$(cd "$(dirname "$0")/.." && pwd)
jobs=${JOBS:-2}
work=$(mktemp -d "${TMPDIR:-/tmp}/lstmgrad-consumer-$mode.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then
  echo "consumer_test: keeping $work"
else
  trap 'rm -rf "$work"' EXIT
fi
start=$SECONDS
step() { echo "consumer_test [$mode, $((SECONDS - start)) s]: $*"; }

step "configuring lstmgrad (BUILD_SHARED_LIBS=$shared $*)"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS="$shared" \
  -DLSTMGRAD_BUILD_TESTS=OFF -DLSTMGRAD_BUILD_CLI=OFF -DLSTMGRAD_WITH_PYTHON=OFF "$@" >"$work/configure.log" 2>&1 ||
  { cat "$work/configure.log"; exit 1; }
step "building lstmgrad"
cmake --build "$work/build" -j"$jobs" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
step "installing into $work/prefix"
cmake --install "$work/build" --prefix "$work/prefix" >"$work/install.log" 2>&1 ||
  { cat "$work/install.log"; exit 1; }

step "configuring tests/consumer against the install"
# Only the install may satisfy find_package: no package registry, no system-wide lstmgrad.
cmake -S "$src/tests/consumer" -B "$work/consumer" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF \
  >"$work/consumer-configure.log" 2>&1 || { cat "$work/consumer-configure.log"; exit 1; }
found=$(sed -n 's/^lstmgrad_DIR:PATH=//p' "$work/consumer/CMakeCache.txt")
case "$found" in
  "$work/prefix"/*) ;;
  *) echo "consumer_test: found lstmgrad at '$found', not in $work/prefix" >&2; exit 1 ;;
esac
step "building tests/consumer"
cmake --build "$work/consumer" -j"$jobs" >"$work/consumer-build.log" 2>&1 ||
  { cat "$work/consumer-build.log"; exit 1; }

# ldd's whole output first: `ldd | grep -q` under pipefail fails when grep stops reading early
# and ldd dies of SIGPIPE.
if [ "$shared" = ON ]; then
  libs=$(ldd "$work/consumer/consumer")
  if ! grep -q "liblstmgrad\.so" <<<"$libs"; then
    echo "consumer_test: the consumer does not load liblstmgrad.so:" >&2
    echo "$libs" >&2
    exit 1
  fi
fi
step "running the consumer"
out=$("$work/consumer/consumer")
echo "$out"
case "$out" in
  OK*) step "passed" ;;
  *) exit 1 ;;
esac
