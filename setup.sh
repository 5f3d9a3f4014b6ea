#!/usr/bin/env bash
# Installs the Debian 12 packages lstmgrad needs and builds it into ./build.
# Usage: ./setup.sh            (uses sudo for apt-get when not run as root)
# Environment: LSTMGRAD_CMAKE_FLAGS, extra flags for the CMake configure step, split at spaces,
#   e.g. LSTMGRAD_CMAKE_FLAGS="-DLSTMGRAD_WERROR=ON -DLSTMGRAD_WITH_CUDA=OFF" ./setup.sh
#   (.ci/run sets -DLSTMGRAD_WERROR=ON). Flags given once stay in build/CMakeCache.txt.
set -euo pipefail
cd "$(dirname "$0")"
packages=(build-essential cmake pkg-config libopenblas-dev libcli11-dev nlohmann-json3-dev
          libfmt-dev libgtest-dev graphviz)
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi
read -r -a extra_flags <<<"${LSTMGRAD_CMAKE_FLAGS:-}"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "${extra_flags[@]}"
cmake --build build -j"$(nproc)"
