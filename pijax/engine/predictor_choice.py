"""Which predictors gate a model's FFN rows, and at which per-layer logit cut-offs: one rule for the single-device
sparse model (`Model.sparse(mode="predictor")`) and the hybrid engine (`Model.hybrid`, task=sweep).

- A model file with predictors (PowerInfer's, the ReLU stories260K): those, at the file's threshold.
- A SiLU model (SmolLM2): its oracle predictors from `pijax.sparsity.predictor_store` (shipped, cached, or, for
  the sparse model only, trained once on first use; the hybrid refuses to start an hours-long training).
Cut-offs: with `sparsity`, calibrated through the gated model on the corpus' TRAINING split so that that share of
rows is skipped (`oracle_predictors.calibrate_logit_thresholds`); without it, for oracle predictors their own
decision thresholds, chosen in training (the largest logit cut-off reaching recall 0.85 of the oracle's kept set
on the validation part of the training pairs). Neither looks at held-out text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pijax.errors import ConfigError
from pijax.io.weights import PredictorWeights

Thresholds = float | list[float]


def choose_predictors(
    model: Any,
    *,
    sparsity: float | Sequence[float] | None = None,
    pred_threshold: float | Sequence[float] | None = None,
    windows: Callable[[], np.ndarray],
    train: bool = True,
    what: str = "mode='predictor'",
    dense_positions: int = 0,
) -> tuple[list[PredictorWeights], Thresholds]:
    """(predictors, per-layer or global logit cut-offs) for `model` (see the module docstring). `windows()` gives
    the training-split token windows, asked for only when a sparsity is calibrated. train=False: a SiLU model
    without shipped or cached predictors is a one-line ConfigError instead of a training run. dense_positions: the
    first N positions run every row, so the calibration counts them dense."""
    preds = model.checkpoint.weights.predictors
    if preds is None and model.config.ffn_act == "silu":
        from pijax.sparsity.predictor_store import find_predictors, predictors_for

        if not train and find_predictors(model) is None:
            raise ConfigError(
                f"{what} on a SiLU model needs its oracle predictors (shipped for SmolLM2, or trained once by "
                f"m.sparse(mode='predictor')); none found for {model.checkpoint.gguf.path}"
            )
        store = predictors_for(model)
        preds = store.weights
        if pred_threshold is None and sparsity is None:
            pred_threshold = store.decision_thresholds
    if preds is None:
        raise ConfigError(f"{what} needs predictors (blk.N.fc1/fc2); {model.checkpoint.gguf.path} has none")
    if pred_threshold is None and sparsity is not None:
        from pijax.sparsity.oracle_predictors import calibrate_logit_thresholds

        pred_threshold = calibrate_logit_thresholds(
            model.module, preds, windows(), sparsity, dense_positions=dense_positions
        )
    if pred_threshold is None:
        pred_threshold = float(model.checkpoint.weights.sparse_threshold)
    if not np.isscalar(pred_threshold):
        pred_threshold = [float(t) for t in np.asarray(pred_threshold, np.float32)]
    return list(preds), pred_threshold
