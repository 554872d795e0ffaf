"""The per-layer table `task=gpuidx` prints: hot neurons and the share of activations they cover."""

from __future__ import annotations

from typing import Any

import numpy as np

from pijax.index.gpuidx import GpuIndex
from pijax.index.policies import hot_share


def format_index_table(index: GpuIndex, counts: Any | None = None) -> str:
    """One row per layer (hot count, hot share of neurons, hot share of activations) and a total row."""
    has_counts = counts is not None
    arr = np.asarray(getattr(counts, "counts", counts), dtype=np.float64) if has_counts else None
    head = f"{'layer':>5} {'hot':>9} {'n_ff':>9} {'hot %':>7}" + (f" {'act. share %':>12}" if has_counts else "")
    lines = [head, "-" * len(head)]
    shares = hot_share(index.buckets, arr) if arr is not None else None
    for layer, k in enumerate(index.hot_counts):
        row = f"{layer:>5} {k:>9,d} {index.n_ff:>9,d} {100 * k / index.n_ff:>7.1f}"
        if shares is not None:
            row += f" {100 * shares[layer]:>12.1f}"
        lines.append(row)
    total = index.n_layer * index.n_ff
    row = f"{'all':>5} {index.total_hot:>9,d} {total:>9,d} {100 * index.total_hot / total:>7.1f}"
    if arr is not None:
        hot = sum(arr[layer, ids].sum() for layer, ids in enumerate(index.buckets))
        all_act = arr.sum()
        row += f" {100 * hot / all_act:>12.1f}" if all_act > 0 else f" {'n/a':>12}"
    lines += ["-" * len(head), row]
    return "\n".join(lines)
