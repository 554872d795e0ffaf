"""PredictorTrainConfig: how activation predictors are trained and judged (the `predictor` config group).

Kept apart from the training code (`pijax.sparsity.predictors`) so that building a RunConfig does not import optax.
"""

from __future__ import annotations

import dataclasses

from pijax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PredictorTrainConfig:
    """How predictors are trained and judged (Hydra's `predictor` group fills it).

    Data: `max_tokens` training tokens (windows of `seq_len`, drawn at random from the training split), of which
    `val_fraction` are held back for early stopping, threshold calibration and the rank choice. Targets: a layer's
    rank is the smallest in `ranks` whose validation recall >= target_recall + recall_margin with precision >=
    min_precision + precision_margin (else the rank with the best validation score). Early stopping watches, per
    epoch, precision at the target recall (calibrated thresholds) or, with a fixed threshold, recall (and, once the
    target is met, precision), stops after `patience` epochs without gain and keeps the best epoch."""

    ranks: tuple[int, ...] = (8, 16, 32, 48, 64, 96, 128)
    target_recall: float = 0.95
    recall_margin: float = 0.01
    min_precision: float = 0.5
    precision_margin: float = 0.05
    calibrate_threshold: bool = True
    threshold: float = 0.0  # the decision threshold when not calibrating (PowerInfer's default 0)
    lr: float = 3e-3  # 1e-3 needs ~40 epochs to reach the same validation precision (experiments/predictors)
    weight_decay: float = 0.01
    batch_size: int = 1024
    max_epochs: int = 20
    patience: int = 4
    min_delta: float = 1e-4
    neg_weight_offset: float = 0.005  # negatives weigh mean(y) + this
    val_fraction: float = 0.05
    max_tokens: int | None = 200_000
    seq_len: int = 128
    profile_batch: int = 16
    held_out: float = 0.1  # corpus share kept for the final evaluation (never seen in training)
    eval_tokens: int | None = None  # held-out tokens for the final evaluation (None: all)
    capacity_quantile: float = 0.999  # sparse FFN capacity: this quantile of predicted-active rows per token
    capacity_slack: float = 1.0
    sparse_eval: bool = True  # also compare the sparse model against the dense one on held-out text
    seed: int = 0
    output_name: str = "predictors.gguf"

    def __post_init__(self) -> None:
        if not self.ranks or any(r < 1 for r in self.ranks):
            raise ConfigError(f"predictor.ranks must be positive integers, got {self.ranks}")
        if not 0.0 < self.target_recall < 1.0:
            raise ConfigError(f"predictor.target_recall must be in (0, 1), got {self.target_recall}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"predictor.val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ConfigError("predictor.batch_size, max_epochs and patience must be >= 1")

    @property
    def recall_goal(self) -> float:
        return min(self.target_recall + self.recall_margin, 0.9999)

    @property
    def precision_goal(self) -> float:
        return self.min_precision + self.precision_margin
