"""Oracle predictors on SmolLM2-135M, measured on held-out text of both domains (issue 13, part 3).

`python -m pijax.tasks.smollm2_predictors [--out DIR] [--sparsities 0.2,0.3,0.4,0.5] [--parts uniform,sensitivity]
[--domains tinystories,stdlib] [--dense-positions 1]`

Predictors: `predictor_store.predictors_for` (shipped, cached or trained). Domains, split and windows: exactly those
of experiments/real_sparsity (`real_sparsity.load_domain`, `RealSparsityConfig` defaults): per domain the
predictors' logit thresholds (`calibrate_logit_thresholds`, through the gated model) and the oracle's thresholds
(for recall/precision; on the dense model) are calibrated on its 24 training calibration windows, and every figure is on its first 48 held-out windows. Rows:
- uniform: every layer at the target sparsity;
- sensitivity: per-layer sparsities from END-TO-END sensitivity (`predictor_eval.layer_sensitivity`: perplexity
  with one layer gated at each grid level, the others dense) measured on training windows only, then
  `sensitivity_allocation`. Without dense positions (the first recipe): the first `SENS_WINDOWS` calibration
  windows of each domain (sensitivity.csv); with them: `SENS_WINDOWS` validation windows of each domain's training
  split, after the calibration windows (`SENS_VAL`; sensitivity_dp<N>.csv).
`--dense-positions N`: the first N positions of each window run every row (the selector's `dense_positions`; 1
keeps SmolLM2's attention sink dense), in calibration, sensitivity and evaluation.
Writes to `--out` (default experiments/predictors_smollm2): results.csv (one row per domain, allocation and
target), layers_<domain>.csv (rank, parameters, recall/precision per layer at 40%), sensitivity.csv, allocations.csv,
ppl_increase.png, layers.png and tables.md. Rows already in results.csv (and sensitivity.csv) are kept on a rerun.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from pijax.api import load_model
from pijax.corpus import load_corpus, stdlib_corpus
from pijax.results import format_table, read_results_csv, write_results_csv
from pijax.sparsity.oracle_predictors import calibrate_logit_thresholds, predictor_logit_samples
from pijax.sparsity.predictor_eval import PredictorEvaluator, layer_sensitivity, sensitivity_allocation
from pijax.sparsity.predictor_store import find_predictors, predictors_for
from pijax.sparsity.real_config import RealSparsityConfig
from pijax.sparsity.thresholds import calibration_scores, thresholds_from_scores
from pijax.tasks.real_sparsity import load_domain

OUT = Path("experiments/predictors_smollm2")
ORACLE_CURVES = Path("experiments/real_sparsity/curves.csv")
SENS_GRID = (0.0, 0.3, 0.5, 0.7)
SENS_WINDOWS = 2  # per domain, from the training windows
SENS_VAL = 24  # with dense positions: the sensitivity windows start here (after the 24 calibration windows)


def _sensitivity(model: Any, preds: Any, domains: list[Any], out: Path, dense_positions: int = 0) -> np.ndarray:
    path = out / ("sensitivity.csv" if not dense_positions else f"sensitivity_dp{dense_positions}.csv")
    n_layer = model.config.n_layer
    if path.is_file():
        rows = read_results_csv(path)
        return np.asarray([[float(r[f"g{g}"]) for g in range(len(SENS_GRID))] for r in rows])
    first = SENS_VAL if dense_positions else 0
    windows = np.concatenate([d.train[first : first + SENS_WINDOWS] for d in domains])
    ev = PredictorEvaluator(model, windows, preds.weights, batch_size=len(windows), progress=False)
    samples = predictor_logit_samples(model, preds.weights, windows, dense_positions=dense_positions)
    sens = layer_sensitivity(ev, samples, SENS_GRID, dense_positions=dense_positions)
    write_results_csv(path, [{"layer": i, **{f"g{g}": sens[i, g] for g in range(len(SENS_GRID))}}
                             for i in range(n_layer)])  # fmt: skip
    return sens


def measure(
    out: Path,
    sparsities: list[float],
    parts: list[str],
    names: tuple[str, ...] = ("tinystories", "stdlib"),
    dense_positions: int = 0,
) -> list[dict[str, Any]]:
    rc = RealSparsityConfig()
    model = load_model("smollm2-135m")
    preds = predictors_for(model)
    domains = [
        load_domain(model, "tinystories", load_corpus(None), rc),
        load_domain(model, "stdlib", stdlib_corpus(rc.stdlib_modules), rc),
    ]
    out.mkdir(parents=True, exist_ok=True)
    old = read_results_csv(out / "results.csv") if (out / "results.csv").is_file() else []
    dp = dense_positions
    done = {(r["domain"], r["allocation"], round(float(r["target"]), 4), int(r.get("dense_positions") or 0))
            for r in old}  # fmt: skip
    allocation = "sensitivity" in parts
    sens = _sensitivity(model, preds, domains, out, dp) if allocation else None
    allocs = {s: sensitivity_allocation(sens, SENS_GRID, s) for s in sparsities} if allocation else {}
    if allocation:
        write_results_csv(out / "allocations.csv", [{"target": s, "dense_positions": dp,
                                                     **{f"l{i}": v for i, v in enumerate(a)}}
                                                    for s, a in allocs.items()])  # fmt: skip
    rows, layer_rows = [], []
    for d in (d for d in domains if d.name in names):
        cal = d.train[: rc.calibration_windows]
        oracle_samples = calibration_scores(model, cal, "oracle", batch_size=rc.batch_size)
        ev = PredictorEvaluator(model, d.held, preds.weights, batch_size=rc.batch_size, progress=True)
        plan = [("uniform", s, np.full(model.config.n_layer, s)) for s in sparsities if "uniform" in parts]
        plan += [("sensitivity", s, a) for s, a in allocs.items()]
        for alloc, s, per_layer in plan:
            key = (d.name, alloc, round(s, 4), dp)
            if key in done and not (alloc == "uniform" and s == 0.4):
                continue
            thr = calibrate_logit_thresholds(model, preds.weights, cal, per_layer, dense_positions=dp)
            res = ev.evaluate_predictors(thr, thresholds_from_scores(oracle_samples, per_layer), dense_positions=dp)
            line = f"predictor {alloc}" + (f", first {dp} position(s) dense" if dp else "")
            row = {
                "domain": d.name, "allocation": alloc, "line": line, "target": s, "dense_positions": dp,
                "heldout_sparsity": res.sparsity, "ppl_dense": res.ppl_dense, "ppl": res.ppl,
                "ppl_increase_pct": 100 * res.ppl_increase, "top1_pct": 100 * res.top1,
                "mean_recall": float(np.mean([m.recall for m in res.metrics])),
                "mean_precision": float(np.mean([m.precision for m in res.metrics])),
            }  # fmt: skip
            if alloc == "uniform" and s == 0.4:
                layer_rows += [
                    {"domain": d.name, "dense_positions": dp, "layer": i, "rank": preds.ranks[i], "params": preds.weights[i].fc1.size
                     + preds.weights[i].fc2.size, "recall": m.recall, "precision": m.precision,
                     "predicted_sparsity": m.predicted_sparsity}
                    for i, m in enumerate(res.metrics)
                ]  # fmt: skip
                if key in done:
                    continue
            rows.append(row)
            write_results_csv(out / "results.csv", [row])
            print(format_table([row]), flush=True)
    for dom in dict.fromkeys(r["domain"] for r in layer_rows):
        (out / f"layers_{dom}.csv").unlink(missing_ok=True)
        write_results_csv(out / f"layers_{dom}.csv", [r for r in layer_rows if r["domain"] == dom])
    src = find_predictors(model)
    print(f"predictors: {src}, ranks {preds.ranks}, {preds.f16_bytes():,} bytes at f16")
    return rows


def report(out: Path) -> str:
    """Plots and tables.md from results.csv (+ the uniform oracle rows of experiments/real_sparsity)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r | {k: float(r[k]) for k in ("target", "ppl_increase_pct", "top1_pct", "heldout_sparsity",
                                          "mean_recall", "mean_precision")}
            for r in read_results_csv(out / "results.csv")]  # fmt: skip
    rows = [r | {"ppl_dense": float(r["ppl_dense"])} for r in rows]
    oracle = [
        r | {k: float(r[k]) for k in ("target", "ppl_increase_pct", "top1_pct")}
        for r in read_results_csv(ORACLE_CURVES)
        if r["criterion"] == "oracle" and r["allocation"] == "uniform"
    ]
    domains = list(dict.fromkeys(r["domain"] for r in rows))
    fig = Figure(figsize=(11, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(domains), squeeze=False)[0]
    for ax, dom in zip(axes, domains, strict=True):
        for line in dict.fromkeys(r["line"] for r in rows):
            pts = sorted((r["heldout_sparsity"], r["ppl_increase_pct"]) for r in rows if r["domain"] == dom
                         and r["line"] == line)  # fmt: skip
            ax.plot(*zip(*pts, strict=True), marker="o", label=line)
        pts = sorted((r["target"], r["ppl_increase_pct"]) for r in oracle if r["domain"] == dom and r["target"] <= 0.6)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="s", ls="--", label="oracle uniform (real_sparsity)")
        ax.axhline(2.0, color="k", lw=0.8, ls=":", label="+2% goal")
        ax.set_yscale("symlog", linthresh=2.0)
        ax.set_xlabel("held-out FFN sparsity")
        ax.set_ylabel("held-out perplexity change (%)")
        ax.set_title(f"SmolLM2-135M, {dom}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "ppl_increase.png")
    lr = [r for p in sorted(out.glob("layers_*.csv")) for r in read_results_csv(p)]
    if lr:
        fig = Figure(figsize=(11, 4), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for dom in dict.fromkeys(r["domain"] for r in lr):
            for k, ls in (("recall", "-"), ("precision", "--")):
                pts = [(int(r["layer"]), float(r[k])) for r in lr if r["domain"] == dom]
                ax.plot(*zip(*pts, strict=True), ls=ls, marker=".", label=f"{k}, {dom}")
        ax.set_xlabel("layer")
        ax.set_ylabel("vs the oracle's kept set, both at 40%")
        ax.set_ylim(0.5, 1.0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", ncol=2)
        ax.set_title("held-out recall and precision per layer (rank per layer: layers.csv)")
        fig.tight_layout()
        fig.savefig(out / "layers.png")
    lines = []
    for dom in domains:
        dense = next(float(r["ppl_dense"]) for r in rows if r["domain"] == dom)
        lines += [f"**{dom}** (dense perplexity {dense:.2f})", "",
                  "| target | allocation | dense positions | held-out sparsity | perplexity change | top-1 | recall | "
                  "precision |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in sorted((r for r in rows if r["domain"] == dom),
                        key=lambda r: (-int(r.get("dense_positions") or 0), r["allocation"], r["target"])):  # fmt: skip
            lines.append(
                f"| {100 * r['target']:.0f}% | {r['allocation']} | {int(r.get('dense_positions') or 0)} | "
                f"{100 * r['heldout_sparsity']:.1f}% | "
                f"{r['ppl_increase_pct']:+.1f}% | {r['top1_pct']:.1f}% | {r['mean_recall']:.3f} | "
                f"{r['mean_precision']:.3f} |"
            )
        lines.append("")
    text = "\n".join(lines)
    (out / "tables.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--sparsities", default="0.2,0.3,0.4,0.5")
    ap.add_argument("--parts", default="uniform,sensitivity", help="uniform and/or sensitivity (allocation)")
    ap.add_argument("--domains", default="tinystories,stdlib")
    ap.add_argument("--dense-positions", type=int, default=1, help="first N positions run every row (0: none)")
    args = ap.parse_args(argv)
    measure(args.out, [float(s) for s in args.sparsities.split(",")], args.parts.split(","),
            tuple(args.domains.split(",")), args.dense_positions)  # fmt: skip
    print(report(args.out))


if __name__ == "__main__":
    main()
