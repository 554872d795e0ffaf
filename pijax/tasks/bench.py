"""task=bench: pijax decode/prefill against llama.cpp on a SYNTHETIC model, bounds, scaling (pijax.bench.decode).

Results go to `bench.out_dir` (default experiments/bench); under smoke=true to the run folder, on the tiny preset.
Returns the sparse f32 decode tokens/s (the sweeper's objective).
"""

from __future__ import annotations

from pathlib import Path

from pijax.run_config import RunConfig


def run(cfg: RunConfig, out_dir: Path) -> float:
    from pijax.bench.decode import run_bench

    bcfg = cfg.bench.for_targets()  # bench.targets=[S1,...]: what those targets need, fixed before the run
    bcfg = bcfg.smoke() if cfg.smoke else bcfg
    target = out_dir if cfg.smoke else Path(bcfg.out_dir or "experiments/bench")
    results = run_bench(bcfg, target, cfg.hardware)
    best = results.get("pijax_sparse_f32") or results.get("pijax_dense_f32_kernel") or {}
    return float(best.get("decode_tok_s", {}).get("median", 0.0))
