"""From a model, a budget and configs to a running hybrid engine: the layout stage of the pipeline.

    devices (HardwareConfig) -> budget plan (pijax.index.plan_budget, n_accel devices)
      -> activation statistics (given, or profiled now on the corpus' training split)
      -> gpuidx (pijax.index.get_or_build_index: reused when valid, else rebuilt)
      -> row capacities (pijax.layout.capacity) -> HybridLlama -> HybridEngine
      -> resident accelerator bytes measured and checked against the budget (BudgetError when over)

`setup_devices` must run before anything else touches jax when virtual CPU devices are wanted, so callers that
load the model themselves call it first (as `task=generate` does) and pass the Placement in.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pijax.engine.hybrid import build_hybrid
from pijax.engine.hybrid_engine import HybridEngine
from pijax.engine.hybrid_ffn import HotMode, MaskSource
from pijax.engine.setup import Backend, setup_engine
from pijax.errors import ConfigError
from pijax.index import BudgetPlan, GpuIndex, IndexConfig, get_or_build_index, hot_share, plan_budget
from pijax.io.weights import PredictorWeights
from pijax.layout.capacity import Capacities, calibrate_capacities
from pijax.layout.config import HardwareConfig
from pijax.layout.devices import Placement, setup_devices
from pijax.layout.memory import ResidentReport, engine_temp_bytes

log = logging.getLogger("pijax.layout")

# Measured winners per accelerator platform (experiments/hybrid/README.md, "hot part: masked or gather" and
# "overlap"); HardwareConfig's "auto" settings read these.
# gather won on an H100 (203 vs 290 us for a 4096 x 11008 layer, half hot, 10% active) and on the 2-core dev CPU
# (4.0 vs 49 ms); on a 16-core Xeon masked was 14% faster, so "masked" is worth setting there by hand. Overlap has
# no measured win yet (see the README), so it stays off.
AUTO_HOT_MODE: dict[str, HotMode] = {"cpu": "gather", "gpu": "gather"}
AUTO_OVERLAP: dict[str, bool] = {"cpu": False, "gpu": False}


def resolve_hot_mode(hw: HardwareConfig, placement: Placement) -> HotMode:
    return AUTO_HOT_MODE.get(placement.platform, "gather") if hw.hot_mode == "auto" else hw.hot_mode


def resolve_overlap(hw: HardwareConfig, placement: Placement) -> bool:
    return AUTO_OVERLAP.get(placement.platform, False) if hw.overlap is None else bool(hw.overlap)


@dataclasses.dataclass
class HybridSetup:
    engine: HybridEngine
    placement: Placement
    plan: BudgetPlan
    index: GpuIndex
    index_path: Path | None
    index_reason: str
    capacities: Capacities | None
    report: ResidentReport
    hot_share: float  # share of the profiled activations that fall on hot neurons

    def summary(self) -> str:
        h = self.engine.hybrid
        lines = [
            f"placement: {self.placement.describe()}",
            f"gpuidx: {self.index_path} ({self.index_reason})",
            f"hot neurons per layer: {h.n_hot} of {h.cfg.n_ff} ({100 * h.hot_fraction:.1f}%), "
            f"hot share of profiled activations {100 * self.hot_share:.1f}%",
            f"mask source {h.source}, hot part {h.hot_mode}, overlap {'on' if h.overlap else 'off'}, "
            f"FFN rows on {h.backends()}",
        ]
        if self.capacities is not None:
            lines.append(f"capacities: hot per shard {self.capacities.hot_per_shard}, cold {self.capacities.cold}")
        lines.append("resident accelerator bytes:\n" + self.report.summary())
        return "\n".join(lines)


def profile_windows(
    model: Any, corpus_path: str | os.PathLike[str] | None, seq_len: int, max_tokens: int
) -> np.ndarray:
    """Token windows from the corpus' training split (the held-out 10% stays unseen)."""
    from pijax.corpus import load_corpus, token_windows

    train, _ = load_corpus(corpus_path or None).split(0.1)
    return token_windows(model.tokenizer, train.docs, seq_len, max_tokens=max_tokens)


def profile_hot_counts(
    model: Any, windows: np.ndarray, predictors: Sequence[PredictorWeights] | None, pred_threshold: Any
) -> Any:
    """The activation counts that choose the hot sets: ActivationStats (act != 0) of a ReLU-family model; for a
    SiLU model, which never gives exact zeros, the rows its predictors keep at `pred_threshold` (gated run)."""
    if model.config.ffn_act != "silu":
        from pijax.sparsity.profile import profile

        return profile(model, windows, mode="relu", progress=False)
    from pijax.sparsity.oracle_predictors import predictor_keep_counts

    counts, n_tokens = predictor_keep_counts(model.module, predictors, windows, pred_threshold)
    return HotCounts(counts, n_tokens)


@dataclasses.dataclass(frozen=True)
class HotCounts:
    """Per-layer, per-neuron counts [L, F] of rows kept by a SiLU model's predictors over `n_tokens` tokens."""

    counts: np.ndarray
    n_tokens: int


def prepare_hybrid(
    model: Any,
    budget: int | str,
    *,
    index_cfg: IndexConfig | None = None,
    hardware: HardwareConfig | None = None,
    placement: Placement | None = None,
    source: MaskSource = "predictor",
    predictors: Sequence[PredictorWeights] | None = None,
    pred_threshold: float | Sequence[float] | None = None,
    stats: Any = None,
    corpus_path: str | os.PathLike[str] | None = None,
    profile_tokens: int = 32_768,
    seq_len: int = 128,
    n_ctx: int | None = None,
    capacity_quantile: float | None = 1.0,
    backend: Backend = "auto",
) -> HybridSetup:
    """Build a budget-checked hybrid engine for `model` (a pijax Model loaded from a GGUF file).

    predictors / pred_threshold: the predictors and their (per-layer) cut-offs; None: the model file's
    (pijax.engine.predictor_choice picks a SiLU model's). stats: ActivationStats (or anything with `.counts`);
    None profiles the model now: act != 0 for a ReLU model, the rows its predictors keep for a SiLU one (through
    the gated model, `oracle_predictors.predictor_keep_counts`). capacity_quantile: see
    pijax.layout.capacity (None: no caps, every predicted-active row computed). backend: where the FFN rows run
    (pijax.engine.setup): the cold rows on the host's CPU kernels unless "xla", the hot rows too when the
    accelerators are CPU devices; GPUs run XLA. Raises BudgetError when the
    dense part does not fit (unless index_cfg.allow_all_cold) or the measured resident bytes exceed the budget."""
    hw = hardware or HardwareConfig()
    index_cfg = index_cfg or IndexConfig()
    if index_cfg.disable:
        raise ConfigError("index.disable=true means no FFN split: use the dense engine")
    placement = placement or setup_devices(hw)
    cold_kernels = setup_engine(backend, "cpu", "hybrid host (cold) FFN") == "kernels"
    hot_kernels = placement.platform == "cpu" and cold_kernels
    cfg = model.config
    ckpt = model.checkpoint
    if cfg.ffn_act == "silu" and (source != "predictor" or predictors is None or pred_threshold is None):
        raise ConfigError(
            "hybrid execution of a SiLU model needs predictors and their cut-offs (m.hybrid(mode='predictor')): "
            f"act != 0 keeps every row (source {source!r})",
            ckpt.gguf.path,
        )
    preds = (ckpt.weights.predictors if predictors is None else list(predictors)) if source == "predictor" else None
    if source == "predictor" and preds is None:
        raise ConfigError("mask source 'predictor' needs a model file with predictors (blk.N.fc1/fc2)", ckpt.gguf.path)
    ranks = None if preds is None else [p.rank for p in preds]
    n_ctx = cfg.n_ctx if n_ctx is None else min(int(n_ctx), cfg.n_ctx)
    plan_kw = {
        "weight_dtype": np.dtype(model.module.dtype).name,
        "n_ctx": n_ctx,
        "predictor_ranks": ranks,
        "n_devices": placement.n_accel,
        "rounding": "powerinfer" if index_cfg.powerinfer_compat else "exact",
    }
    plan = plan_budget(cfg, budget, allow_all_cold=index_cfg.allow_all_cold, **plan_kw)
    windows = None
    if stats is None or (capacity_quantile is not None and source == "predictor"):
        windows = profile_windows(model, corpus_path, seq_len, profile_tokens)
    if stats is None:
        with jax.default_device(placement.host):
            stats = profile_hot_counts(model, windows, preds, pred_threshold)
    index, path, reason = get_or_build_index(ckpt.gguf, cfg, stats, plan, index_cfg, predictor_ranks=ranks)
    log.info("gpuidx %s: %s", path, reason)
    caps = None
    if capacity_quantile is not None and source == "predictor":
        with jax.default_device(placement.host):
            caps = calibrate_capacities(
                model,
                index.buckets,
                placement.n_accel,
                windows,
                predictors=preds,
                pred_threshold=pred_threshold,
                quantile=capacity_quantile,
            )
    hybrid = build_hybrid(
        model,
        index,
        placement,
        source=source,
        predictors=preds,
        pred_threshold=pred_threshold,
        hot_mode=resolve_hot_mode(hw, placement),
        overlap=resolve_overlap(hw, placement),
        hot_capacities=None if caps is None else caps.hot_per_shard,
        cold_capacities=None if caps is None else caps.cold,
        hot_kernels=hot_kernels,
        cold_kernels=cold_kernels,
    )
    engine = HybridEngine(hybrid, n_ctx=n_ctx)
    report = engine.resident_report(plan.budget_bytes)
    report = report.with_compute(plan.compute_buffer_bytes, plan.compute_source, engine_temp_bytes(engine)).check()
    counts = np.asarray(getattr(stats, "counts", stats), np.float64)
    share = float(np.nansum(hot_share(index.buckets, counts) * counts.sum(1)) / max(counts.sum(), 1.0))
    return HybridSetup(engine, placement, plan, index, path, reason, caps, report, share)
