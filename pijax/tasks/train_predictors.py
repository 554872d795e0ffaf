"""task=train_predictors: per-layer activation predictors for a ReLU-family model, trained, judged and saved.

Steps: load the model (default: the ReLU-fied stories260K shipped with pijax) and the corpus; split off the
held-out tail (never seen in training); collect (FFN input, active-mask) pairs on the training split; train each
layer's predictor with an adaptive rank; calibrate the sparse FFN's per-layer capacity from the predicted-active
counts; measure recall / precision / sparsity per layer on held-out text and the sparse model against the dense
one (top-1 agreement, perplexity); write the PowerInfer-style GGUF, predictors.csv (per layer),
predictor_ladder.csv (every rank tried), predictor_history.csv (every epoch), predictors.json and predictors.png
into the run folder, and print the per-layer table.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from pijax.api import Model, load_model
from pijax.corpus import Corpus, load_corpus
from pijax.eval import Agreement, compare, module_logits_fn
from pijax.paths import ASSETS
from pijax.results import format_table, write_results_csv
from pijax.run_config import RunConfig
from pijax.sparsity.predictor_config import PredictorTrainConfig
from pijax.sparsity.predictor_data import PredictorMetrics, collect_pairs
from pijax.sparsity.predictor_files import save_predictor_model, weights_fingerprint
from pijax.sparsity.predictors import TrainedPredictors, evaluate_predictors, predicted_counts, train_predictors
from pijax.tracking import make_tracker

RELU_MODEL = ASSETS / "stories260K_relu.gguf"
TABLE_COLUMNS = (
    "layer",
    "rank",
    "params",
    "recall",
    "precision",
    "predicted_sparsity",
    "true_sparsity",
    "capacity",
    "val_recall",
    "val_precision",
    "threshold",
    "epochs",
    "met_target",
)


@dataclasses.dataclass
class PredictorReport:
    trained: TrainedPredictors
    held_out: list[PredictorMetrics]
    agreement: Agreement | None
    rows: list[dict[str, Any]]
    ladder: list[dict[str, Any]]
    totals: dict[str, Any]
    files: dict[str, Path]


def _act_thresholds(model: Model, windows: np.ndarray, target: float, progress: bool) -> tuple[str, Any]:
    """relu mode for ReLU-family models; SiLU models get per-layer |act| thresholds (CATS/TEAL style)."""
    if model.config.ffn_act != "silu":
        return "relu", None
    from pijax.sparsity.thresholds import calibrate_thresholds

    return "threshold", calibrate_thresholds(model, windows, target, progress=progress)


def train_and_evaluate(
    model: Model, corpus: Corpus, pc: PredictorTrainConfig, out_dir: Path, *, target_sparsity: float = 0.5,
    progress: bool = True,
) -> PredictorReport:  # fmt: skip
    """The whole stage as a library call (task=train_predictors is this plus printing and tracking)."""
    from pijax.model.sparse_ffn import calibrate_capacities, densify, sparsify

    out_dir = Path(out_dir)
    train, held = corpus.split(pc.held_out)
    w_train = train.windows(model.tokenizer, pc.seq_len, None)
    w_held = held.windows(model.tokenizer, pc.seq_len, pc.eval_tokens)
    mode, act_thr = _act_thresholds(model, w_train[: max(1, 200_000 // pc.seq_len)], target_sparsity, progress)

    pairs, _ = collect_pairs(
        model, w_train, mode=mode, thresholds=act_thr, max_tokens=pc.max_tokens, batch_size=pc.profile_batch,
        seed=pc.seed, progress=progress, corpus_sha256=corpus.sha256,
    )  # fmt: skip
    trained = train_predictors(pairs, pc, progress=progress)
    trained.model_fingerprint = weights_fingerprint(model.checkpoint.weights)
    trained.corpus_sha256 = corpus.sha256
    folded, g = trained.folded()
    trained.capacities = calibrate_capacities(
        predicted_counts(pairs, folded, g), quantile=pc.capacity_quantile, slack=pc.capacity_slack,
        n_ff=model.config.n_ff,
    )  # fmt: skip
    del pairs

    held_metrics, held_counts = evaluate_predictors(
        model, w_held, folded, g, mode=mode, act_thresholds=act_thr, batch_size=pc.profile_batch, progress=progress
    )
    agreement = None
    if pc.sparse_eval:
        dense_fn = module_logits_fn(model.module)
        sparsify(model, mode="predictor", capacities=trained.capacities, predictors=folded, pred_threshold=g)
        try:
            agreement = compare(dense_fn, module_logits_fn(model.module), w_held, progress=progress)
        finally:
            densify(model)

    rows, ladder, history = [], [], []
    for res, m, cap in zip(trained.layers, held_metrics, trained.capacities, strict=True):
        fit = res.chosen
        over = float((held_counts[:, res.layer] > cap).mean())
        rows.append(
            {
                "layer": res.layer,
                "rank": fit.rank,
                "params": fit.n_params,
                **m.row(),
                "capacity": cap,
                "tokens_over_capacity": over,
                "val_recall": fit.val.recall,
                "val_precision": fit.val.precision,
                "threshold": fit.threshold,
                "epochs": fit.epochs,
                "met_target": res.met_target,
            }
        )
        for f in res.tried:
            ladder.append(
                {"layer": res.layer, "rank": f.rank, "params": f.n_params, "chosen": f is fit, "epochs": f.epochs,
                 "threshold": f.threshold, **{f"val_{k}": v for k, v in f.val.row().items()}}
            )  # fmt: skip
            history += [{"layer": res.layer, "rank": f.rank, **h} for h in f.history]
    n_model = _model_params(model)
    totals: dict[str, Any] = {
        "mean_recall": float(np.mean([m.recall for m in held_metrics])),
        "mean_precision": float(np.mean([m.precision for m in held_metrics])),
        "mean_predicted_sparsity": float(np.mean([m.predicted_sparsity for m in held_metrics])),
        "mean_true_sparsity": float(np.mean([m.true_sparsity for m in held_metrics])),
        "predictor_params": trained.n_params,
        "predictor_params_share": trained.n_params / n_model,
        "global_threshold": g,
        "train_tokens": trained.n_tokens,
        "held_out_tokens": int(w_held.size),
        "mode": mode,
    }
    if agreement is not None:
        totals |= {
            "top1_agreement": agreement.top1,
            "mean_kl": agreement.mean_kl,
            "ppl_dense": agreement.ppl_reference,
            "ppl_sparse": agreement.ppl_candidate,
            "ppl_increase": agreement.ppl_increase,
        }

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "gguf": save_predictor_model(out_dir / pc.output_name, model.checkpoint, trained),
        "csv": write_results_csv(out_dir / "predictors.csv", rows),
        "ladder_csv": write_results_csv(out_dir / "predictor_ladder.csv", ladder),
        "history_csv": write_results_csv(out_dir / "predictor_history.csv", history),
        "plot": plot_predictors(rows, ladder, out_dir / "predictors.png", target_recall=pc.target_recall),
    }
    files["json"] = out_dir / "predictors.json"
    files["json"].write_text(
        json.dumps({"totals": totals, "layers": rows, "config": dataclasses.asdict(pc)}, indent=2, default=str) + "\n"
    )
    return PredictorReport(trained, held_metrics, agreement, rows, ladder, totals, files)


def _model_params(model: Model) -> int:
    return int(sum(v[...].size for _, v in nnx.to_flat_state(nnx.state(model.module, nnx.Param))))


def plot_predictors(
    rows: list[dict[str, Any]], ladder: list[dict[str, Any]], path: Path, *, target_recall: float
) -> Path:
    """Left: held-out recall, precision, predicted and true sparsity per layer. Right: the rank ladder
    (validation precision at the calibrated threshold against rank, one line per layer, chosen ranks marked)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    layers = np.array([r["layer"] for r in rows])
    keys = ("recall", "precision", "predicted_sparsity", "true_sparsity")
    width = 0.2
    for j, k in enumerate(keys):
        ax1.bar(layers + (j - 1.5) * width, [r[k] for r in rows], width, label=k.replace("_", " "))
    ax1.axhline(target_recall, color="k", ls="--", lw=0.8, label=f"recall target {target_recall:g}")
    ax1.set_xticks(layers)
    ax1.set_xlabel("layer")
    ax1.set_ylim(0, 1.05)
    ax1.set_title("held-out text (never seen in training)")
    ax1.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    for layer in sorted({r["layer"] for r in ladder}):
        pts = sorted((r["rank"], r["val_precision"], r["chosen"]) for r in ladder if r["layer"] == layer)
        line = ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"layer {layer}")[0]
        for rank, prec, chosen in pts:
            if chosen:
                ax2.plot([rank], [prec], marker="*", ms=14, color=line.get_color())
    ax2.set_xscale("log", base=2)
    ranks = sorted({r["rank"] for r in ladder})
    ax2.set_xticks(ranks, [str(r) for r in ranks])
    ax2.set_xlabel("predictor rank R")
    ax2.set_ylabel("validation precision at the recall goal")
    ax2.set_title("rank ladder (star: chosen)")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def run(cfg: RunConfig, out_dir: Path) -> float:
    pc = cfg.predictor
    path = cfg.model.path or str(RELU_MODEL)
    model = load_model(path, ffn_act=cfg.model.ffn_act)
    corpus = load_corpus(cfg.corpus or None)
    if cfg.smoke:
        pc = dataclasses.replace(pc, max_tokens=8192, max_epochs=2, ranks=pc.ranks[:2], eval_tokens=4096)
    with make_tracker(cfg.logger, out_dir, f"train_predictors-{out_dir.name}", dataclasses.asdict(cfg)) as tracker:
        rep = train_and_evaluate(model, corpus, pc, out_dir, target_sparsity=cfg.sparsity.target_sparsity)
        cols = [c for c in TABLE_COLUMNS if c in rep.rows[0]]
        tracker.log_table("predictors", cols, [[r[c] for c in cols] for r in rep.rows])
        tracker.log_metrics(rep.totals)
        tracker.log_image("predictors", rep.files["plot"])
    print(format_table(rep.rows, cols))
    print()
    print(format_table([rep.totals]))
    print(f"\nwrote {', '.join(str(p) for p in rep.files.values())}")
    return float(rep.totals.get("top1_agreement", rep.totals["mean_recall"]))
