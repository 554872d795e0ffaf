"""Where SmolLM2's oracle predictors lose perplexity: a diagnosis on VALIDATION windows (issue 13, part 3).

`python -m pijax.tasks.smollm2_pred_diagnose [--out DIR] [--sparsity 0.4] [--parts positions,layers,swap]`

Split (nothing here reads held-out text): per domain (TinyStories, stdlib; `real_sparsity.load_domain`), the
predictor and oracle thresholds are calibrated on the first `CAL_WINDOWS` of the 24 calibration windows of its
training split, and every figure is measured on the training windows `VAL` (24-31 of the 64 first training
windows: after the calibration windows, never used to calibrate; the predictors' own training drew random
windows of the same training documents, so validation may flatter them a little; held-out text judges).
Parts (both domains' validation windows together, thresholds per domain):
- positions: uniform target sparsity with the first 0, 1, 2, 4 positions of each window dense;
- layers: per-layer recall / precision of the predicted set against the oracle's at the target;
- swap: with position 0 dense, the perplexity when ONE layer keeps the oracle's set instead of the predictor's
  (every other layer predictor-gated): the share of the loss each layer's predictor causes.
Writes diagnosis_positions.csv, diagnosis_layers.csv, diagnosis_swap.csv under --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from pijax.api import load_model
from pijax.corpus import load_corpus, stdlib_corpus
from pijax.results import format_table, write_results_csv
from pijax.sparsity.oracle_predictors import calibrate_logit_thresholds
from pijax.sparsity.predictor_eval import PredictorEvaluator
from pijax.sparsity.predictor_store import predictors_for
from pijax.sparsity.real_config import RealSparsityConfig
from pijax.sparsity.thresholds import calibration_scores, thresholds_from_scores
from pijax.tasks.real_sparsity import load_domain

OUT = Path("experiments/predictors_smollm2")
CAL_WINDOWS = 12
VAL = slice(24, 32)


class _Domain:
    """One domain's validation evaluator and its calibration windows."""

    def __init__(self, model: Any, preds: Any, name: str, corpus: Any, rc: RealSparsityConfig):
        d = load_domain(model, name, corpus, rc)
        self.name, self.model, self.preds = name, model, preds
        self.cal = d.train[:CAL_WINDOWS]
        self.ev = PredictorEvaluator(model, d.train[VAL], preds.weights, batch_size=rc.batch_size)
        self.oracle_samples = calibration_scores(model, self.cal, "oracle", batch_size=rc.batch_size)

    def thresholds(self, sparsity: float, dense_positions: int) -> tuple[np.ndarray, np.ndarray]:
        thr = calibrate_logit_thresholds(
            self.model, self.preds.weights, self.cal, sparsity, dense_positions=dense_positions
        )
        return thr, thresholds_from_scores(self.oracle_samples, sparsity)


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.unlink(missing_ok=True)  # a rerun replaces the file
    write_results_csv(path, rows)


def _row(tag: dict[str, Any], res: Any) -> dict[str, Any]:
    return tag | {
        "sparsity": res.sparsity, "ppl_dense": res.ppl_dense, "ppl": res.ppl,
        "ppl_increase_pct": 100 * res.ppl_increase, "top1_pct": 100 * res.top1,
        "mean_recall": float(np.mean([m.recall for m in res.metrics])),
    }  # fmt: skip


def diagnose(out: Path, sparsity: float, parts: list[str]) -> None:
    rc = RealSparsityConfig()
    model = load_model("smollm2-135m")
    preds = predictors_for(model)
    doms = [
        _Domain(model, preds, "tinystories", load_corpus(None), rc),
        _Domain(model, preds, "stdlib", stdlib_corpus(rc.stdlib_modules), rc),
    ]
    out.mkdir(parents=True, exist_ok=True)
    if "positions" in parts:
        rows = []
        for n in (0, 1, 2, 4):
            for d in doms:
                thr, orc = d.thresholds(sparsity, n)
                res = d.ev.evaluate_predictors(thr, orc, dense_positions=n)
                rows.append(_row({"domain": d.name, "target": sparsity, "dense_positions": n}, res))
                print(format_table([rows[-1]]), flush=True)
        _write(out / "diagnosis_positions.csv", rows)
    cut = {d.name: d.thresholds(sparsity, 1) for d in doms}
    base = {d.name: d.ev.evaluate_predictors(*cut[d.name], dense_positions=1) for d in doms}
    if "layers" in parts:
        rows = [
            {"domain": d.name, "layer": i, "rank": preds.ranks[i], "recall": m.recall, "precision": m.precision,
             "predicted_sparsity": m.predicted_sparsity}
            for d in doms for i, m in enumerate(base[d.name].metrics)
        ]  # fmt: skip
        _write(out / "diagnosis_layers.csv", rows)
    if "swap" in parts:
        rows = []
        for layer in range(model.config.n_layer):
            row: dict[str, Any] = {"layer": layer}
            for d in doms:
                res = d.ev.evaluate_predictors(*cut[d.name], oracle_layers=[layer], dense_positions=1)
                row[f"{d.name}_ppl_increase_pct"] = 100 * res.ppl_increase
                row[f"{d.name}_gain_pct"] = 100 * (base[d.name].ppl_increase - res.ppl_increase)
            rows.append(row)
            print(format_table([row]), flush=True)
        for d in doms:  # every layer oracle: the floor the swap compares with
            res = d.ev.evaluate_predictors(*cut[d.name], oracle_layers=range(model.config.n_layer), dense_positions=1)
            print(f"{d.name}: predictors {100 * base[d.name].ppl_increase:+.2f}%, all-oracle "
                  f"{100 * res.ppl_increase:+.2f}%", flush=True)  # fmt: skip
            rows.append({"layer": "all", f"{d.name}_ppl_increase_pct": 100 * res.ppl_increase})
            rows.append({"layer": "none", f"{d.name}_ppl_increase_pct": 100 * base[d.name].ppl_increase})
        _write(out / "diagnosis_swap.csv", rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--sparsity", type=float, default=0.4)
    ap.add_argument("--parts", default="positions,layers,swap")
    args = ap.parse_args(argv)
    diagnose(args.out, args.sparsity, args.parts.split(","))


if __name__ == "__main__":
    main()
