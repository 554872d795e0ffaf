"""The hybrid engine in the decode benchmark: one row per budget, built through the library pipeline.

For each budget of `BenchConfig.hybrid_budgets` ('ffn:X%': the dense part plus X% of all FFN neurons), the model
file's hybrid engine is built by `pijax.engine.pipeline.prepare_hybrid` (the same path as `Model.hybrid` and
task=generate: budget plan, gpuidx, capacities, resident bytes checked against the budget), with the predictors
of the file as the mask source, and timed like every other engine (`measure_engine`: medians, min, max).
Part `hybrid` places neurons with `hybrid_policy` (rows `pijax_hybrid_f32_ffn:X%`); part `layers` places whole
layers from the first, llama.cpp's -ngl (rows `pijax_layers_f32_ffn:X%`). The activation statistics are profiled
once and shared by every budget and policy.
"""

from __future__ import annotations

import gc
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from pijax.bench.decode_config import BenchConfig
from pijax.bench.decode_timing import measure_engine
from pijax.bench.dense_decode import BandwidthProbe


def hybrid_label(policy: str, budget: str, fmt: str = "f32") -> str:
    """The results key and decode.csv engine name of a hybrid row."""
    kind = "layers" if policy == "layers" else "hybrid"
    return f"pijax_{kind}_{fmt}_{budget}"


def measure_hybrid(
    model_path: Path,
    cfg: BenchConfig,
    prompt: Sequence[int],
    probe: BandwidthProbe | None,
    placement: Any,
    policies: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """{label: timing and placement figures} for every (policy, budget)."""
    from pijax.api import load_model
    from pijax.engine.pipeline import prepare_hybrid, profile_windows
    from pijax.index import IndexConfig
    from pijax.layout.config import HardwareConfig
    from pijax.model.generate import Engine
    from pijax.sparsity.profile import profile

    with jax.default_device(placement.host):
        model = load_model(model_path)
    source = "predictor" if model.checkpoint.weights.predictors is not None else "dense"
    n_ctx = Engine(model.module).cache_size(len(prompt), cfg.n_new)
    with jax.default_device(placement.host):
        windows = profile_windows(model, None, 128, cfg.hybrid_profile_tokens)
        stats = profile(model, windows, mode="relu", progress=False)
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="pijax-bench-gpuidx-") as tmp:
        for policy in policies:
            for budget in cfg.hybrid_budgets:
                label = hybrid_label(policy, budget)
                index_cfg = IndexConfig(policy=policy, path=str(Path(tmp) / f"{policy}-{budget}.gpuidx"))
                setup = prepare_hybrid(
                    model,
                    budget,
                    index_cfg=index_cfg,
                    hardware=HardwareConfig(),
                    placement=placement,
                    source=source,
                    stats=stats,
                    profile_tokens=cfg.hybrid_profile_tokens,
                    n_ctx=n_ctx,
                    capacity_quantile=1.0 if source == "predictor" else None,
                )
                r = measure_engine(setup.engine, prompt, cfg.n_new, cfg.repeats, probe, label)
                h = setup.engine.hybrid
                out[label] = r | {
                    "policy": policy,
                    "budget": budget,
                    "budget_bytes": setup.plan.budget_bytes,
                    "resident_bytes": setup.report.total,
                    "hot_fraction": h.hot_fraction,
                    "hot_share": setup.hot_share,
                    "mask_source": source,
                }
                d = r["decode_tok_s"]
                print(f"  {label}: decode {d['median']:.2f} [{d['min']:.2f}, {d['max']:.2f}] tok/s", flush=True)
                del setup, h
                gc.collect()
    return out
