#!/usr/bin/env bash
# Build PowerInfer's `main` CPU-only (Release, no CUDA) from a PowerInfer source tree, for
# `python -m pijax.bench.decode --powerinfer-bin BUILD/bin/main`. pijax never vendors PowerInfer: this only builds it.
#
#   experiments/bench/powerinfer/build.sh SRC_DIR [BUILD_DIR] [JOBS]
#
# SRC_DIR: a checkout of https://github.com/SJTU-IPADS/PowerInfer (pijax's figures: commit
# d3ebd7c5666348cf43c22f0d62dfbc9a763cffb8). BUILD_DIR defaults to /tmp/powerinfer-build, JOBS to 2.
# On the shared dev box run it under the memory lock: `flock /tmp/pijax_big.lock nice -n 10 build.sh ...`.
set -euo pipefail
src=${1:?usage: build.sh SRC_DIR [BUILD_DIR] [JOBS]}
build=${2:-/tmp/powerinfer-build}
jobs=${3:-2}
if git -C "$src" rev-parse HEAD >/dev/null 2>&1; then
  echo "PowerInfer commit: $(git -C "$src" rev-parse HEAD)"
fi
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CUBLAS=OFF -DLLAMA_NATIVE=ON
cmake --build "$build" --config Release --target main -j "$jobs"
"$build/bin/main" --help >/dev/null 2>&1 || { echo "built $build/bin/main does not run" >&2; exit 1; }
echo "$build/bin/main"
