"""task=gpuidx: build (or reuse) the `.generated.gpuidx` for a model, a budget and an index policy, and show it.

    python -m pijax.run +experiment=gpuidx [index=neuron_greedy] [budget=ffn:30% | budget=12MB] [model.path=...]

Loads the model (pijax.api.load_model; by default the shipped ReLU-fied stories260K), then
pijax.index.for_model.index_for_model profiles its activations on the corpus' train split (sparsity.max_tokens
tokens, default 16384), plans the budget ("ffn:X%" or bytes, as every task) and loads a valid index or rebuilds it
(the log says why); the budget is checked before the profiling starts. The index lives next to a model
given by model.path, as PowerInfer's does (in the per-user gpuidx cache when that folder is not writable, as for
task=generate); for the shipped default model (and under smoke=true) it goes into the run folder, so the
installed package is never written to. Prints the budget plan and the per-layer table; writes gpuidx_layers.csv
and gpuidx_map.png (hot neurons per layer, ordered by activation count) into the run folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from pijax.paths import default_relu_model
from pijax.results import write_results_csv
from pijax.run_config import RunConfig

SMOKE_TOKENS = 2048


def plot_index_map(buckets: list[np.ndarray], counts: np.ndarray, path: Path, *, title: str = "") -> Path:
    """Image of hot (bright) and cold neurons per layer, each layer's neurons sorted by descending count, with
    the per-layer activation-frequency curve beneath it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_layer, n_ff = counts.shape
    order = np.argsort(-counts, axis=1, kind="stable")
    hot = np.zeros((n_layer, n_ff), bool)
    for layer, ids in enumerate(buckets):
        hot[layer, ids] = True
    img = np.take_along_axis(hot, order, axis=1)
    fig = Figure(figsize=(8, 2.2 + 0.25 * n_layer), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(img, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_xlabel("neuron rank within its layer (most active first)")
    ax.set_ylabel("layer")
    ax.set_title(title or "gpuidx: hot neurons (bright) per layer")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def index_rows(buckets: list[np.ndarray], counts: np.ndarray, n_ff: int) -> list[dict[str, Any]]:
    rows = []
    for layer, ids in enumerate(buckets):
        c = counts[layer]
        rows.append(
            {
                "layer": layer,
                "hot": len(ids),
                "hot_fraction": len(ids) / n_ff,
                "activation_share": float(c[ids].sum() / c.sum()) if c.sum() else 0.0,
            }
        )
    return rows


def run(cfg: RunConfig, out_dir: Path) -> float:
    from pijax.api import load_model
    from pijax.corpus import split_windows
    from pijax.index import format_index_table
    from pijax.index.for_model import index_for_model
    from pijax.tracking import make_tracker

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.model.resolved_path() if cfg.model.path else default_relu_model()
    model = load_model(path, ffn_act=cfg.model.ffn_act)
    mcfg = model.config
    name = str(model.checkpoint.metadata.get("general.name") or path.stem)
    tokens = SMOKE_TOKENS if cfg.smoke else (cfg.sparsity.max_tokens or 16384)
    index_cfg = cfg.index
    # a model folder that is not writable: get_or_build_index falls back to the per-user cache, as task=generate
    if not index_cfg.path and (cfg.smoke or not cfg.model.path):
        index_cfg = dataclasses.replace(index_cfg, path=str(out_dir / f"{path.name}.generated.gpuidx"))
    windows = split_windows(model.tokenizer, cfg.corpus or None, "train", 128, tokens)
    mi = index_for_model(model, cfg.budget, index_cfg, windows)
    plan, stats, index = mi.plan, mi.stats, mi.index
    print(plan.summary())
    if index is None:
        print(f"\ngpuidx {mi.reason}: no FFN split")
        return 0.0
    print(f"\ngpuidx {mi.path}: {mi.reason}\npolicy {cfg.index.policy}, budget {cfg.budget} = {plan.budget_bytes:,d} B")
    print(format_index_table(index, stats))
    rows = index_rows(index.buckets, stats.counts, mcfg.n_ff)
    csv_path = out_dir / "gpuidx_layers.csv"
    csv_path.unlink(missing_ok=True)
    write_results_csv(csv_path, rows)
    Path(str(csv_path) + ".lock").unlink(missing_ok=True)  # a fresh file of this run only
    png = plot_index_map(
        index.buckets,
        stats.counts,
        out_dir / "gpuidx_map.png",
        title=f"{name}: {cfg.index.policy} at {cfg.budget or 'ffn:100%'} ({index.total_hot:,d} hot neurons)",
    )
    share = mi.activation_share()
    with make_tracker(cfg.logger, out_dir, f"gpuidx-{name}-{cfg.index.policy}", dataclasses.asdict(cfg)) as tr:
        tr.log_table("gpuidx_layers", list(rows[0]), [list(r.values()) for r in rows])
        tr.log_metrics({"hot_neurons": index.total_hot, "activation_share": share, "budget_bytes": plan.budget_bytes})
        tr.log_image("gpuidx_map", png)
    print(f"\nhot share of profiled activations {100 * share:.1f}%\nwrote {csv_path}, {png}")
    return share
