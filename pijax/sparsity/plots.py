"""The profiling figure: per-layer sparsity, the share of neurons covering 80% of activations, and the power law.

Drawn on matplotlib's Agg canvas directly (never pyplot) so that a notebook's backend is left alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pijax.sparsity.stats import ActivationStats


def plot_profile(stats: ActivationStats, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """A PNG with two panels: bars of sparsity and 80%-coverage share per layer; sorted activation frequency
    against neuron rank per layer on log-log axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    layers = np.arange(stats.n_layer)
    w = 0.4
    ax1.bar(layers - w / 2, stats.sparsity(), w, label="sparsity (mean share inactive)")
    ax1.bar(layers + w / 2, stats.coverage_share(0.8), w, label="share of neurons covering 80% of activations")
    ax1.set_xlabel("layer")
    ax1.set_ylim(0, 1.05)
    ax1.set_xticks(layers)
    ax1.grid(True, axis="y", alpha=0.3)
    ax1.legend(fontsize="small", loc="lower right")
    ax1.set_title("per-layer sparsity")

    freq = stats.frequencies()
    rank = np.arange(1, stats.n_ff + 1)
    cmap = __import__("matplotlib").colormaps["viridis"]
    for i in layers:
        f = np.sort(freq[i])[::-1]
        pos = f > 0
        color = cmap(i / max(stats.n_layer - 1, 1))
        ax2.loglog(rank[pos], f[pos], color=color, label=f"layer {i}" if stats.n_layer <= 12 else None)
    ax2.set_xlabel("neuron rank (most active first)")
    ax2.set_ylabel("activation frequency")
    ax2.grid(True, which="both", alpha=0.3)
    if stats.n_layer <= 12:
        ax2.legend(fontsize="small")
    ax2.set_title("sorted activation frequencies")
    what = "relu: act != 0" if stats.mode == "relu" else "threshold: |act| > t_l"
    fig.suptitle(f"{title} [{what}, {stats.n_tokens} tokens]".strip())
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
