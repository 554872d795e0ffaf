"""Static row capacities for the hybrid FFN, split by place: per accelerator shard of the hot rows, and cold.

A jitted step needs static shapes, so each gather takes at most a fixed number of rows per token. Here the number
comes from the predictor on real text: run the dense model, mark the neurons the predictor calls active, and
count them per token within each hot shard and within the cold block; a layer's capacity is the `quantile` of
those counts (times `slack`), the hot one taken over all shards since they share one program. Tokens busier than
that drop their lowest-scoring rows, so quantile 1.0 (the default) keeps every row on every profiled token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pijax.errors import ConfigError, DataError
from pijax.io.weights import PredictorWeights
from pijax.layout.pack import check_bucket, pad_ids
from pijax.model.predictor import Predictor


@dataclasses.dataclass(frozen=True)
class Capacities:
    """Per layer: rows gathered per token on each accelerator (hot) and on the host (cold)."""

    hot_per_shard: list[int]
    cold: list[int]


def _shard_of(bucket: np.ndarray, n_ff: int, n_shards: int) -> np.ndarray:
    """int [n_ff]: the shard holding each neuron's hot row, or -1 for a cold neuron."""
    ids = pad_ids(bucket, n_shards)
    per = len(ids) // n_shards
    out = np.full(n_ff, -1, np.int64)
    for s in range(n_shards):
        chunk = ids[s * per : (s + 1) * per]
        out[chunk[chunk >= 0]] = s
    return out


def active_counts(
    model: Any,
    buckets: Sequence[np.ndarray],
    n_shards: int,
    windows: np.ndarray,
    *,
    predictors: Sequence[PredictorWeights | Predictor] | None = None,
    pred_threshold: float | Sequence[float] | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """Per token, layer and place, how many neurons the predictor calls active: int [N, L, n_shards + 1] (the
    last column is the cold block), from a dense run of `model` over `windows` (int [N, T])."""
    llama = getattr(model, "module", model)
    cfg = llama.cfg
    ckpt = getattr(model, "checkpoint", None)
    if predictors is None:
        predictors = None if ckpt is None else ckpt.weights.predictors
    if predictors is None:
        raise ConfigError("counting predicted-active rows needs predictors (the model file has none)")
    if pred_threshold is None:
        pred_threshold = 0.0 if ckpt is None else float(ckpt.weights.sparse_threshold)
    thr = np.broadcast_to(np.asarray(pred_threshold, np.float32), (cfg.n_layer,))
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.size == 0:
        raise DataError(f"windows must be a non-empty [N, T] array, got shape {windows.shape}")
    buckets = [check_bucket(b, cfg.n_ff, i) for i, b in enumerate(buckets)]
    shard = np.stack([_shard_of(b, cfg.n_ff, n_shards) for b in buckets])  # [L, F]
    onehot = np.zeros((cfg.n_layer, cfg.n_ff, n_shards + 1), np.float32)
    for layer in range(cfg.n_layer):
        onehot[layer, np.arange(cfg.n_ff), np.where(shard[layer] >= 0, shard[layer], n_shards)] = 1.0
    pmods = [p if isinstance(p, Predictor) else Predictor.from_weights(p) for p in predictors]
    gd, st = nnx.split(llama)
    pgd, pst = nnx.split(nnx.List(pmods))

    @jax.jit
    def counts_fn(st, pst, tokens_bt):
        _, records = nnx.merge(gd, st).trace(tokens_bt)
        preds = nnx.merge(pgd, pst)
        out = []
        for i, r in enumerate(records):
            active = (preds[i](r["ffn_in"]) >= thr[i]).astype(jnp.float32)  # [B, T, F]
            out.append(jnp.einsum("btf,fs->bts", active, onehot[i]).reshape(-1, n_shards + 1))
        return jnp.stack(out, axis=1)

    parts = [
        np.asarray(counts_fn(st, pst, jnp.asarray(windows[s : s + batch_size])))
        for s in range(0, len(windows), batch_size)
    ]
    return np.rint(np.concatenate(parts)).astype(np.int64)


def calibrate_capacities(
    model: Any,
    buckets: Sequence[np.ndarray],
    n_shards: int,
    windows: np.ndarray,
    *,
    predictors: Sequence[PredictorWeights | Predictor] | None = None,
    pred_threshold: float | Sequence[float] | None = None,
    quantile: float = 1.0,
    slack: float = 1.0,
    batch_size: int = 16,
) -> Capacities:
    """Capacities from the predictor's active counts on `windows` (int [N, T]) for the given hot sets."""
    if not 0.0 < quantile <= 1.0 or slack <= 0:
        raise ConfigError(f"capacity quantile must be in (0, 1] and slack > 0, got {quantile}, {slack}")
    cfg = getattr(model, "module", model).cfg
    counts = active_counts(
        model, buckets, n_shards, windows, predictors=predictors, pred_threshold=pred_threshold, batch_size=batch_size
    )
    q = np.quantile(counts, quantile, axis=0, method="higher")  # [L, S+1]
    hot, cold = [], []
    for layer in range(cfg.n_layer):
        per_shard = len(pad_ids(np.asarray(buckets[layer], np.int32), n_shards)) // n_shards
        n_cold = cfg.n_ff - len(buckets[layer])
        hot.append(int(min(per_shard, max(1, np.ceil(q[layer, :n_shards].max() * slack)))) if per_shard else 0)
        cold.append(int(min(n_cold, max(1, np.ceil(q[layer, n_shards] * slack)))) if n_cold else 0)
    return Capacities(hot, cold)
