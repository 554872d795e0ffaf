#!/usr/bin/env bash
# Issue 12 on one GPU, in one command (sized for 8 minutes on one H100; the synthetic 1.1B is built on first use,
# into ~/.cache/pijax/synth, before the timing starts):
#   experiments/gpu/run.sh [hydra overrides...]        # synthetic TinyLlama-1.1B, hardware=gpu
#   experiments/gpu/run.sh --tiny [overrides...]       # seconds-long check of the script: stories260K, 2 budgets
# Any override goes through, e.g. hardware=cpu2 (CPU: two virtual accelerators and a host), bench.out_dir=DIR,
# bench.preset=small. Results: bench.out_dir (default experiments/gpu/results): decode.csv, results.json,
# tok_s_vs_vram.png. On a machine whose jax differs from the pinned one, run with that machine's python
# (PYTHON=/path/to/python).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python}"
ARGS=(+experiment=bench_gpu hardware=gpu)
if [[ "${1:-}" == "--tiny" ]]; then
  shift
  ARGS+=(
    "bench.preset=$ROOT/pijax/assets/stories260K_relu_predictors.gguf"
    bench.repeats=1 bench.n_new=4 bench.n_prompt=8 bench.probe_gb=0.05 bench.hybrid_profile_tokens=512
    'bench.hybrid_budgets=[ffn:0%,ffn:100%]'
  )
fi
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
"$PYTHON" -m pijax.run "${ARGS[@]}" "$@" "hydra.run.dir=${TMPDIR:-/tmp}/pijax-gpu-run-$start"
echo "experiments/gpu/run.sh: done in $(( $(date +%s) - start )) s"
