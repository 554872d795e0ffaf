"""How far one domain's hot neurons serve another: top-share hot sets, their Jaccard overlap and cross coverage.

A hot set is, per layer, the `share` most often active neurons of a profile (`ActivationStats.counts`), which is
what a gpuidx built from that profile keeps on the accelerator. `hot_set_overlap` compares two profiles of the
same model per layer: the Jaccard index of their hot sets, and the share of B's activations that A's hot set
catches next to the share B's own hot set catches (the cost of building the index on the wrong text).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pijax.errors import DataError
from pijax.sparsity.stats import ActivationStats


def hot_sets(counts_lf: np.ndarray, share: float) -> np.ndarray:
    """bool [L, F]: per layer the round(share * F) most often active neurons (ties broken by index)."""
    if not 0.0 < share <= 1.0:
        raise DataError(f"hot share must be in (0, 1], got {share}")
    n_ff = counts_lf.shape[1]
    k = max(1, round(share * n_ff))
    top = np.argsort(-counts_lf, axis=1, kind="stable")[:, :k]
    out = np.zeros(counts_lf.shape, dtype=bool)
    np.put_along_axis(out, top, True, axis=1)
    return out


def hot_set_overlap(a: ActivationStats, b: ActivationStats, share: float = 0.2) -> list[dict[str, float | int]]:
    """One row per layer: jaccard of the two hot sets; coverage of B's activations by A's and by B's hot set."""
    if a.counts.shape != b.counts.shape:
        raise DataError(f"profiles of different shapes {a.counts.shape} and {b.counts.shape} cannot be compared")
    ha, hb = hot_sets(a.counts, share), hot_sets(b.counts, share)
    total_b = np.maximum(b.counts.sum(axis=1), 1)
    rows = []
    for i in range(a.n_layer):
        inter, union = (ha[i] & hb[i]).sum(), (ha[i] | hb[i]).sum()
        rows.append(
            {
                "layer": i,
                "jaccard": float(inter / max(union, 1)),
                "b_covered_by_a": float(b.counts[i][ha[i]].sum() / total_b[i]),
                "b_covered_by_b": float(b.counts[i][hb[i]].sum() / total_b[i]),
            }
        )
    return rows


def plot_overlap(
    rows: Sequence[dict[str, float | int]], path: str | os.PathLike[str], *, names: tuple[str, str], share: float
) -> Path:
    """Per layer: Jaccard of the two hot sets, and B's activation share caught by A's and by B's own hot set."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    a, b = names
    layer = [r["layer"] for r in rows]
    fig = Figure(figsize=(8, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(layer, [r["jaccard"] for r in rows], marker="o", label=f"Jaccard of top-{share:.0%} hot sets")
    ax.plot(layer, [r["b_covered_by_b"] for r in rows], marker="s", label=f"{b} activations caught by {b}'s hot set")
    ax.plot(layer, [r["b_covered_by_a"] for r in rows], marker="^", label=f"{b} activations caught by {a}'s hot set")
    ax.axhline(share / (2 - share), color="grey", ls=":", label="Jaccard of two random sets of this size")
    ax.set_xlabel("layer")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"hot-set overlap per layer: {a} vs {b}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
