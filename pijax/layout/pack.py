"""Packing a layer's FFN rows into a hot block and a cold block, following a gpuidx.

Neurons are rows (up, gate and down_t are all [F, D]). For layer l with bucket b (the hot ids, ascending), the hot
block is rows b of up, gate and down_t copied contiguously in bucket order, so hot row r is neuron b[r] (as in
PowerInfer's GPU copy); the cold block is the remaining rows, ascending. A layer with an empty bucket is all cold
and one whose bucket holds every neuron is all hot: neither is split.

For a mesh of n accelerators the hot block is padded with zero rows to a multiple of n and split contiguously:
accelerator i holds hot rows [i*k/n, (i+1)*k/n). Padded rows carry id -1; their weights are zero, so they add
nothing even when computed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np

from pijax.errors import IndexFileError

LayerKind = Literal["hot", "split", "cold"]


@dataclasses.dataclass
class PackedLayer:
    """One layer's FFN rows, split by the index. `*_kd` are hot rows [k, D], `*_cd` cold rows [n_cold, D]."""

    hot_ids: np.ndarray  # int32 [k], ascending (the bucket)
    cold_ids: np.ndarray  # int32 [n_cold], ascending
    up_kd: np.ndarray
    gate_kd: np.ndarray | None
    down_kd: np.ndarray
    up_cd: np.ndarray
    gate_cd: np.ndarray | None
    down_cd: np.ndarray

    @property
    def n_hot(self) -> int:
        return len(self.hot_ids)

    @property
    def n_cold(self) -> int:
        return len(self.cold_ids)

    @property
    def n_ff(self) -> int:
        return self.n_hot + self.n_cold

    @property
    def kind(self) -> LayerKind:
        if self.n_cold == 0:
            return "hot"
        return "cold" if self.n_hot == 0 else "split"


def check_bucket(bucket: np.ndarray, n_ff: int, layer: int) -> np.ndarray:
    """The bucket as int32, or IndexFileError when it is not strictly ascending ids in [0, n_ff)."""
    b = np.asarray(bucket).reshape(-1)
    if b.size and (not np.issubdtype(b.dtype, np.integer) or b.min() < 0 or b.max() >= n_ff):
        raise IndexFileError(f"layer {layer}: hot ids must lie in [0, {n_ff})")
    if b.size > 1 and not np.all(np.diff(b) > 0):
        raise IndexFileError(f"layer {layer}: hot ids must be strictly ascending (sorted, no repeats)")
    return b.astype(np.int32)


def pack_layer(
    up_fd: np.ndarray, gate_fd: np.ndarray | None, down_fd: np.ndarray, bucket: np.ndarray, layer: int = 0
) -> PackedLayer:
    """Split one layer's rows into contiguous hot (bucket order) and cold (ascending) blocks."""
    n_ff = up_fd.shape[0]
    hot = check_bucket(bucket, n_ff, layer)
    is_hot = np.zeros(n_ff, bool)
    is_hot[hot] = True
    cold = np.flatnonzero(~is_hot).astype(np.int32)

    def take(w: np.ndarray | None, ids: np.ndarray) -> np.ndarray | None:
        return None if w is None else np.ascontiguousarray(np.take(np.asarray(w), ids, axis=0))

    return PackedLayer(
        hot_ids=hot,
        cold_ids=cold,
        up_kd=take(up_fd, hot),
        gate_kd=take(gate_fd, hot),
        down_kd=take(down_fd, hot),
        up_cd=take(up_fd, cold),
        gate_cd=take(gate_fd, cold),
        down_cd=take(down_fd, cold),
    )


def padded_rows(n: int, n_shards: int) -> int:
    """n rounded up to a multiple of n_shards."""
    return -(-n // n_shards) * n_shards


def pad_rows(w: np.ndarray, n_shards: int) -> np.ndarray:
    """Zero rows appended so that the row count divides evenly over n_shards."""
    extra = padded_rows(w.shape[0], n_shards) - w.shape[0]
    return w if extra == 0 else np.concatenate([w, np.zeros((extra, *w.shape[1:]), w.dtype)])


def pad_ids(ids: np.ndarray, n_shards: int) -> np.ndarray:
    """Ids padded with -1 (no neuron) to a multiple of n_shards."""
    extra = padded_rows(len(ids), n_shards) - len(ids)
    return ids if extra == 0 else np.concatenate([ids, np.full(extra, -1, np.int32)])


def shard_ranges(n_hot: int, n_shards: int) -> list[tuple[int, int]]:
    """[start, stop) of the (padded) hot rows each accelerator holds."""
    per = padded_rows(n_hot, n_shards) // n_shards
    return [(i * per, (i + 1) * per) for i in range(n_shards)]


def layer_kinds(buckets: Sequence[np.ndarray], n_ff: int) -> list[LayerKind]:
    out: list[LayerKind] = []
    for b in buckets:
        k = len(b)
        out.append("hot" if k == n_ff else ("cold" if k == 0 else "split"))
    return out
