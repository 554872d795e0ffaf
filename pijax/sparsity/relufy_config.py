"""RelufyConfig: the ReLU-fication recipe (`relufy` config keys; see `pijax.sparsity.relufy`).

Kept apart from the training code so that building a RunConfig does not import optax. The defaults are the recipe
that made pijax/assets/stories260K_relu.gguf (the search behind them: experiments/relufy/README.md).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pijax.config import FfnActivation
from pijax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class RelufyConfig:
    """The fine-tuning recipe. `out` is the GGUF to write ("" = `stories260K_relu.gguf` in the run's folder)."""

    act: FfnActivation = "relu"
    steps: int = 3000
    lr: float = 3e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # cosine decay ends at lr * min_lr_ratio
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    batch_size: int = 32
    seq_len: int = 128
    kd_weight: float = 1.0
    lm_weight: float = 0.5
    temperature: float = 1.0
    l1_weight: float = 5.0
    l1_on: Literal["gate", "act"] = (
        "gate"  # "gate": mean relu(gate) (pushes gates below 0); "act": mean |relu(gate)*up|
    )
    l1_start: int = 0
    l1_ramp_steps: int = 1000
    held_out: float = 0.1  # the corpus' held-out fraction (never trained on)
    val_fraction: float = 0.05  # end of the train split used for the training curves (not trained on)
    eval_interval: int = 250
    eval_batch: int = 32
    seed: int = 0
    out: str = ""
    smoke: bool = False  # a tiny run for tests: few steps, few eval windows

    def l1_at(self, step: int) -> float:
        """The L1 weight at `step`: 0 before l1_start, then a linear ramp to l1_weight."""
        if step < self.l1_start:
            return 0.0
        ramp = max(1, self.l1_ramp_steps)
        return self.l1_weight * min(1.0, (step - self.l1_start + 1) / ramp)

    def check(self) -> None:
        if self.l1_on not in ("gate", "act"):
            raise ConfigError(f"relufy.l1_on must be gate or act, got {self.l1_on!r}")
        if self.act not in ("relu", "drelu"):
            raise ConfigError(f"relufy.act must be relu or drelu, got {self.act!r}")
        for name in ("steps", "batch_size", "seq_len", "eval_interval", "eval_batch"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"relufy.{name} must be positive, got {getattr(self, name)}")
        if self.temperature <= 0 or self.lr <= 0:
            raise ConfigError("relufy.temperature and relufy.lr must be positive")
        if self.kd_weight < 0 or self.lm_weight < 0 or self.l1_weight < 0 or self.kd_weight + self.lm_weight == 0:
            raise ConfigError("relufy loss weights must be >= 0 and kd_weight + lm_weight > 0")
