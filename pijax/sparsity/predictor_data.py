"""Predictor training data and metrics: (FFN input, active mask) pairs collected from the dense model, and the
recall/precision of a predictor against them. See pijax.sparsity.predictors for the whole pipeline.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pijax.errors import ConfigError, DataError
from pijax.io.weights import PredictorWeights

# ---------------------------------------------------------------- pairs


@dataclasses.dataclass
class PairSet:
    """Training pairs per layer: x [L, N, D] float32 (FFN input) and y [L, N, F] bool (neuron active)."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.ndim != 3 or self.y.ndim != 3 or self.x.shape[:2] != self.y.shape[:2]:
            raise DataError(f"pairs need x [L, N, D] and y [L, N, F], got {self.x.shape} and {self.y.shape}")

    @property
    def n_layer(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.x.shape[1])


def active_mask(act: np.ndarray, mode: str = "relu", threshold: float | None = None) -> np.ndarray:
    """The profiler's notion of an active neuron: act != 0 (relu mode) or |act| > threshold (threshold mode)."""
    if mode == "relu":
        return act != 0
    if threshold is None:
        raise ConfigError("threshold mode needs the layer's threshold")
    return np.abs(act) > threshold


class PairCollector:
    """`profile`'s on_batch hook: keeps (ffn_in, active) per layer, up to `max_tokens` tokens."""

    def __init__(
        self,
        n_layer: int,
        *,
        mode: str = "relu",
        thresholds: Sequence[float] | None = None,
        max_tokens: int | None = None,
    ):
        self.mode = mode
        self.thresholds = None if thresholds is None else [float(t) for t in thresholds]
        self.max_tokens = max_tokens
        self.n_layer = n_layer
        self._x: list[list[np.ndarray]] = [[] for _ in range(n_layer)]
        self._y: list[list[np.ndarray]] = [[] for _ in range(n_layer)]
        self.n_tokens = 0

    def __call__(self, tokens_bt: np.ndarray, records: list[dict[str, np.ndarray]]) -> None:
        take = tokens_bt.size
        if self.max_tokens is not None:
            take = min(take, self.max_tokens - self.n_tokens)
        if take <= 0:
            return
        for i, r in enumerate(records):
            x = r["ffn_in"].reshape(-1, r["ffn_in"].shape[-1])[:take]
            act = r["act"].reshape(-1, r["act"].shape[-1])[:take]
            thr = None if self.thresholds is None else self.thresholds[i]
            self._x[i].append(np.asarray(x, np.float32))
            self._y[i].append(active_mask(act, self.mode, thr))
        self.n_tokens += take

    def pairs(self) -> PairSet:
        if self.n_tokens == 0:
            raise DataError("no (input, active-mask) pairs were collected")
        return PairSet(np.stack([np.concatenate(v) for v in self._x]), np.stack([np.concatenate(v) for v in self._y]))


def collect_pairs(
    model: Any,
    windows: np.ndarray,
    *,
    mode: str = "relu",
    thresholds: Sequence[float] | None = None,
    max_tokens: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
    corpus_sha256: str = "",
) -> tuple[PairSet, Any]:
    """(pairs, ActivationStats) from the dense model over windows drawn at random (seeded) up to `max_tokens`."""
    from pijax.sparsity.profile import check_windows, profile

    windows = check_windows(windows)
    order = np.random.default_rng(seed).permutation(len(windows))
    if max_tokens is not None:
        order = order[: max(1, math.ceil(max_tokens / windows.shape[1]))]
    llama = getattr(model, "module", model)
    collector = PairCollector(llama.cfg.n_layer, mode=mode, thresholds=thresholds, max_tokens=max_tokens)
    stats = profile(
        model,
        windows[np.sort(order)],
        mode=mode,
        thresholds=thresholds,
        batch_size=batch_size,
        on_batch=collector,
        progress=progress,
        corpus_sha256=corpus_sha256,
    )
    return collector.pairs(), stats


# ---------------------------------------------------------------- metrics


@dataclasses.dataclass(frozen=True)
class PredictorMetrics:
    """Micro-averaged over (token, neuron) pairs of one layer."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def recall(self) -> float:
        return self.tp / max(self.tp + self.fn, 1)

    @property
    def precision(self) -> float:
        return self.tp / max(self.tp + self.fp, 1)

    @property
    def predicted_sparsity(self) -> float:
        return 1.0 - (self.tp + self.fp) / max(self.total, 1)

    @property
    def true_sparsity(self) -> float:
        return 1.0 - (self.tp + self.fn) / max(self.total, 1)

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def __add__(self, other: PredictorMetrics) -> PredictorMetrics:
        return PredictorMetrics(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @classmethod
    def of(cls, predicted: np.ndarray, active: np.ndarray) -> PredictorMetrics:
        predicted, active = np.asarray(predicted, bool), np.asarray(active, bool)
        tp = int(np.count_nonzero(predicted & active))
        n_pred, n_act = int(np.count_nonzero(predicted)), int(np.count_nonzero(active))
        return cls(tp, n_pred - tp, n_act - tp, predicted.size - n_pred - n_act + tp)

    def row(self) -> dict[str, float]:
        return {
            "recall": self.recall,
            "precision": self.precision,
            "predicted_sparsity": self.predicted_sparsity,
            "true_sparsity": self.true_sparsity,
        }


def predictor_logits(weights: PredictorWeights, x_nd: np.ndarray | jax.Array) -> jax.Array:
    """fc2 relu(fc1 x): [N, F]."""
    return jit_logits({"fc1": jnp.asarray(weights.fc1), "fc2": jnp.asarray(weights.fc2)}, jnp.asarray(x_nd))


@jax.jit
def jit_logits(p: dict[str, jax.Array], x_nd: jax.Array) -> jax.Array:
    h = jax.nn.relu(jnp.einsum("nd,rd->nr", x_nd, p["fc1"]))
    return jnp.einsum("nr,fr->nf", h, p["fc2"])


def recall_threshold(logits: np.ndarray, active: np.ndarray, recall: float) -> float:
    """The largest t for which `logits >= t` keeps at least `recall` of the active entries."""
    pos = np.sort(np.asarray(logits)[np.asarray(active, bool)])
    if pos.size == 0:
        return float("inf")
    k = min(math.floor((1.0 - recall) * pos.size), pos.size - 1)
    return float(pos[k])
