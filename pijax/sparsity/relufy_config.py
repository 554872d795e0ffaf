"""RelufyConfig: the ReLU-fication recipe (`relufy` config keys; see `pijax.sparsity.relufy`).

Kept apart from the training code so that building a RunConfig does not import optax. The defaults are the recipe
that made pijax/assets/stories260K_relu.gguf (the search behind them: experiments/relufy/README.md).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from pijax.config import FfnActivation
from pijax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class RelufyConfig:
    """The fine-tuning recipe. `out` is the GGUF to write ("" = `<teacher stem>_<act>.gguf` in the run's folder).

    The training budget is `max_tokens` (0: `steps` steps of batch_size * seq_len tokens); the LR schedule spans it.
    With `checkpoint_every` > 0 the run's state is written every that many steps (and when a session stops) into
    `checkpoint_dir` ("" = `$PIJAX_CACHE/relufy/<run key>`, the key hashing the model, corpus and recipe), and a
    later run of the same recipe continues from it when `resume` is true. `session_steps` / `max_minutes` (0: no
    limit) end this invocation early, at a checkpoint, without changing the recipe.
    """

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
    max_tokens: int = 0  # training budget in tokens (0: steps * batch_size * seq_len)
    val_windows: int = 0  # validation windows per evaluation (0: all of the validation slice)
    held_windows: int = 0  # held-out windows measured (0: all); the first ones of the held-out split
    eval_held: bool = False  # also measure held-out perplexity and sparsity at every evaluation (the curve)
    checkpoint_every: int = 0  # steps between checkpoints (0: no checkpoints, no resume)
    checkpoint_dir: str = ""
    resume: bool = True
    session_steps: int = 0
    max_minutes: float = 0.0

    # Fields that do not change what is trained: they may differ between a run and its resumption.
    SESSION_FIELDS = (
        "out",
        "eval_interval",
        "eval_batch",
        "val_windows",
        "held_windows",
        "eval_held",
        "checkpoint_every",
        "checkpoint_dir",
        "resume",
        "session_steps",
        "max_minutes",
    )

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole budget."""
        if self.max_tokens > 0:
            return max(1, math.ceil(self.max_tokens / (self.batch_size * self.seq_len)))
        return self.steps

    def training_recipe(self) -> dict:
        """The fields that determine the trained weights (the run key of checkpoints)."""
        d = dataclasses.asdict(self)
        d["total_steps"] = self.total_steps
        for k in (*self.SESSION_FIELDS, "steps", "max_tokens"):
            d.pop(k)
        return d

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
        for name in ("max_tokens", "val_windows", "held_windows", "checkpoint_every", "session_steps", "max_minutes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"relufy.{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature <= 0 or self.lr <= 0:
            raise ConfigError("relufy.temperature and relufy.lr must be positive")
        if self.kd_weight < 0 or self.lm_weight < 0 or self.l1_weight < 0 or self.kd_weight + self.lm_weight == 0:
            raise ConfigError("relufy loss weights must be >= 0 and kd_weight + lm_weight > 0")
