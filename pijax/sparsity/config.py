"""ProfileConfig: what `task=profile` measures (the `sparsity` config group fills it)."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
    """mode: relu (exact zeros), threshold (|act| > a calibrated per-layer cut-off), or auto (relu for ReLU-family
    models, threshold for SiLU ones); predictor (configs/sparsity/predictor.yaml: inference gated by the model's
    predictors) profiles like auto, since profiling counts the true activity. Thresholds are calibrated on the
    training split; profiling runs over the training split; sparsity (and, in threshold mode, the perplexity
    change) is measured on the held-out split."""

    mode: Literal["auto", "relu", "threshold", "predictor"] = "auto"
    target_sparsity: float = 0.5
    seq_len: int = 128
    batch_size: int = 16
    max_tokens: int | None = None  # profile at most this many training tokens (None: the whole split)
    calibration_tokens: int | None = 200_000  # tokens of the training split used to calibrate thresholds
    held_out: float = 0.1
    eval_tokens: int | None = 50_000  # held-out tokens for sparsity / perplexity (None: all)
    stats_name: str = "activation_stats"
