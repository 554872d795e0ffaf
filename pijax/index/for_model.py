"""The gpuidx of a loaded model: its budget plan under the model's own settings, its activation profile, its index.

The library entry point behind `task=gpuidx` (and anything else that wants an index for a `pijax.api.Model`):
the weight dtype and predictor ranks come from the model, the capacity rounding and the all-cold allowance from
the IndexConfig, so a caller only names the budget ('ffn:30%', '12MB', bytes, or None for 'ffn:100%').
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from pijax.index.budget import BudgetPlan, plan_budget, resolve_budget
from pijax.index.cache import get_or_build_index
from pijax.index.config import IndexConfig
from pijax.index.gpuidx import GpuIndex


def plan_kwargs_for_model(model: Any, index_cfg: IndexConfig, **overrides: Any) -> dict[str, Any]:
    """plan_budget's settings for `model` (a pijax Model): weight dtype, predictor ranks, rounding."""
    preds = model.checkpoint.weights.predictors
    kw: dict[str, Any] = {
        "weight_dtype": np.dtype(model.module.dtype).name,
        "predictor_ranks": [p.rank for p in preds] if preds else None,
        "rounding": "powerinfer" if index_cfg.powerinfer_compat else "exact",
    }
    return kw | overrides


def plan_for_model(model: Any, budget: int | str | None, index_cfg: IndexConfig, **overrides: Any) -> BudgetPlan:
    """The budget plan of `model`; None means every FFN neuron ('ffn:100%')."""
    kw = plan_kwargs_for_model(model, index_cfg, **overrides)
    return plan_budget(
        model.config, resolve_budget(budget, model.config, **kw), allow_all_cold=index_cfg.allow_all_cold, **kw
    )


@dataclasses.dataclass(frozen=True)
class ModelIndex:
    plan: BudgetPlan
    stats: Any  # pijax.sparsity.stats.ActivationStats
    index: GpuIndex | None  # None: the dense part does not fit and the index is all cold, or indexing is disabled
    path: Any
    reason: str

    def activation_share(self) -> float:
        """Share of the profiled activations that fall on hot neurons."""
        if self.index is None:
            return 0.0
        counts = self.stats.counts
        hot = sum(counts[i, b].sum() for i, b in enumerate(self.index.buckets))
        return float(hot / max(counts.sum(), 1))


def index_for_model(
    model: Any,
    budget: int | str | None,
    index_cfg: IndexConfig,
    windows: np.ndarray,
    *,
    progress: bool = True,
) -> ModelIndex:
    """Profile `model` on token `windows` [N, T] (ReLU zero-counting), plan `budget`, load or build the gpuidx."""
    from pijax.sparsity.profile import profile

    plan = plan_for_model(model, budget, index_cfg)  # a bad budget fails before the profiling work
    stats = profile(model, windows, mode="relu", progress=progress)
    kw = plan_kwargs_for_model(model, index_cfg)
    index, path, reason = get_or_build_index(
        model.checkpoint.gguf, model.config, stats, plan, index_cfg, predictor_ranks=kw["predictor_ranks"]
    )
    return ModelIndex(plan, stats, index, path, reason)
