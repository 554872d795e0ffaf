"""task=real_sparsity: how sparse a real SiLU model is, and what training-free thresholds cost (issue 13, parts 1-2).

Two domains, each split into training and held-out documents (`Corpus.split`: the last fraction is held out):
the TinyStories text shipped with pijax, and Python standard-library source (`corpus.stdlib_corpus`).
- Part 1: oracle thresholds for `profile_sparsity`, calibrated on TinyStories' training windows, define "active";
  both domains' training windows are profiled with them; per domain the power-law plot (`plot_profile`), and per
  layer the overlap of the two domains' hot sets (`overlap.hot_set_overlap`).
- Part 2: per domain and criterion (cats, oracle, teal), thresholds calibrated on the domain's training windows,
  uniform per layer and by the greedy allocation (`allocation`), evaluated on the held-out windows: perplexity,
  top-1 agreement with dense and the sparsity reached.
Writes curves.csv, allocations.csv, profile_layers.csv, overlap.csv, split.json, tables.md and PNGs to
`real_sparsity.out_dir` (default experiments/real_sparsity; under smoke=true the run folder, with a few windows).
The model is SmolLM2-135M unless `model.path` says otherwise; smoke=true without a model.path runs the shipped
stories260K (also SwiGLU) so that the plumbing check needs no download; tests/test_real_sparsity.py covers SmolLM2.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from pijax.api import Model, load_model
from pijax.corpus import Corpus, load_corpus, stdlib_corpus
from pijax.errors import DataError
from pijax.results import format_table, plot_lines, read_results_csv, write_results_csv
from pijax.run_config import RunConfig
from pijax.sparsity.allocation import greedy_allocation, layer_errors, level_grid
from pijax.sparsity.overlap import hot_set_overlap, plot_overlap
from pijax.sparsity.plots import plot_profile
from pijax.sparsity.profile import profile
from pijax.sparsity.real_config import RealSparsityConfig
from pijax.sparsity.threshold_eval import ThresholdEvaluator, ThresholdResult
from pijax.sparsity.thresholds import calibration_scores, check_sparsity, thresholds_from_scores

DEFAULT_MODEL = "smollm2-135m"
SMOKE = {
    "seq_len": 32,
    "calibration_windows": 2,
    "eval_windows": 2,
    "profile_windows": 2,
    "sparsities": (0.0, 0.5),
    "greedy_sparsities": (0.5,),
    "allocation_step": 0.25,
    "allocation_windows": 1,
    "criteria": ("oracle", "teal"),
}


@dataclasses.dataclass
class Domain:
    name: str
    corpus: Corpus
    train: np.ndarray  # [N, T] the first training windows (calibration = the first calibration_windows)
    held: np.ndarray  # [N, T] the first held-out windows
    split: dict[str, Any]


def model_name(model: Model) -> str:
    return Path(model.checkpoint.gguf.path).name


def _tokens_per_doc(model: Model, docs: tuple[str, ...], n_tokens: int) -> int:
    """How many of `docs` (from the first) the first `n_tokens` tokens of their stream reach into."""
    total = 0
    for i, d in enumerate(docs):
        total += len(model.tokenizer.encode(d, bos=True))
        if total >= n_tokens:
            return i + 1
    return len(docs)


def load_domain(model: Model, name: str, corpus: Corpus, rc: RealSparsityConfig) -> Domain:
    train, held = corpus.split(rc.held_out)
    n_train = max(rc.calibration_windows, rc.profile_windows)
    w_train = train.windows(model.tokenizer, rc.seq_len, n_train * rc.seq_len)
    w_held = held.windows(model.tokenizer, rc.seq_len, rc.eval_windows * rc.seq_len)
    if len(w_train) < rc.calibration_windows:
        raise DataError(
            f"training split has {len(w_train)} windows of {rc.seq_len}, calibration needs {rc.calibration_windows}",
            corpus.path,
        )
    n_tr = len(train.docs)
    split = {
        "corpus": str(corpus.path),
        "corpus_sha256": corpus.sha256,
        "documents": len(corpus.docs),
        "training_documents": f"1-{n_tr}",
        "held_out_documents": f"{n_tr + 1}-{len(corpus.docs)}",
        "held_out_windows": len(w_held),
        "held_out_tokens": int(w_held.size),
        "held_out_documents_used": f"{n_tr + 1}-{n_tr + _tokens_per_doc(model, held.docs, w_held.size)}",
        "calibration_windows": rc.calibration_windows,
        "calibration_tokens": rc.calibration_windows * rc.seq_len,
        "profile_windows": min(rc.profile_windows, len(w_train)),
        "seq_len": rc.seq_len,
    }
    return Domain(name, corpus, w_train, w_held, split)


def profile_domains(model: Model, domains: list[Domain], rc: RealSparsityConfig, out: Path) -> list[dict[str, Any]]:
    """Part 1: per-layer profiles of both domains at one set of oracle thresholds, plots, hot-set overlap."""
    ref = domains[0]
    samples = calibration_scores(model, ref.train[: rc.calibration_windows], "oracle", batch_size=rc.batch_size)
    thr = thresholds_from_scores(samples, rc.profile_sparsity)
    stats, layer_rows = {}, []
    for d in domains:
        st = profile(
            model,
            d.train[: rc.profile_windows],
            mode="threshold",
            thresholds=thr,
            batch_size=rc.batch_size,
            corpus_sha256=d.corpus.sha256,
        )
        stats[d.name] = st
        st.save(out / f"stats_{d.name}")
        plot_profile(st, out / f"power_law_{d.name}.png", title=f"{model_name(model)} on {d.name}")
        layer_rows += [{"domain": d.name, **r} for r in st.summary_rows()]
    a, b = domains[0].name, domains[1].name
    overlap = hot_set_overlap(stats[a], stats[b], rc.hot_share)
    fresh_csv(out / "overlap.csv", overlap)
    plot_overlap(overlap, out / "hot_set_overlap.png", names=(a, b), share=rc.hot_share)
    fresh_csv(out / "profile_layers.csv", layer_rows)
    return overlap


def _key(domain: str, criterion: str, allocation: str, target: float) -> tuple[str, str, str, float]:
    return domain, criterion, allocation, round(float(target), 6)


def sweep_domain(
    model: Model,
    d: Domain,
    rc: RealSparsityConfig,
    curves_csv: Path,
    alloc_rows: list[dict[str, Any]],
    done: set[tuple[str, str, str, float]] = frozenset(),
) -> list[dict[str, Any]]:
    """Part 2 for one domain: every criterion, uniform and greedy, at every target sparsity, except the rows in
    `done`; each row is appended to `curves_csv` as soon as it is measured."""
    plans = {
        crit: [
            (a, s)
            for a, targets in (("uniform", rc.sparsities), ("greedy", [s for s in rc.greedy_sparsities if s > 0]))
            for s in targets
            if _key(d.name, crit, a, s) not in done
        ]
        for crit in rc.criteria
    }
    if not any(plans.values()):
        return []
    ev = ThresholdEvaluator(model, d.held, batch_size=rc.batch_size, progress=True)
    cal = d.train[: rc.calibration_windows]
    rows = []
    grid = level_grid(rc.allocation_step)
    n_layer = model.config.n_layer
    for crit, plan in plans.items():
        if not plan:
            continue
        samples = calibration_scores(model, cal, crit, batch_size=rc.batch_size)
        if any(a == "greedy" for a, _ in plan):
            errors = layer_errors(model, cal[: rc.allocation_windows], crit, samples, grid, batch_size=rc.batch_size)
        for alloc, s in plan:
            per_layer = greedy_allocation(errors, grid, s) if alloc == "greedy" else np.full(n_layer, s)
            if s == 0:  # t = 0 skips only exact zeros: the dense model itself (tested), not worth a forward
                res = ThresholdResult(crit, ev.ppl_dense, ev.ppl_dense, 1.0, np.zeros(n_layer))
            else:
                res = ev.evaluate(crit, thresholds_from_scores(samples, per_layer))
            if alloc == "greedy":
                alloc_rows.append({"domain": d.name, "criterion": crit, "target": s, **_layers(per_layer)})
            row = {
                "domain": d.name,
                "criterion": crit,
                "allocation": alloc,
                "line": f"{crit} {alloc}",
                "target": s,
                "heldout_sparsity": res.sparsity,
                "max_layer_dev": float(np.abs(res.layer_sparsity - per_layer).max()),
                "ppl_dense": res.ppl_dense,
                "ppl": res.ppl,
                "ppl_increase_pct": 100 * res.ppl_increase,
                "top1_pct": 100 * res.top1,
            }
            rows.append(row)
            write_results_csv(curves_csv, [row])
            print(format_table([row]), flush=True)
    return rows


def fresh_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """The rows as a new CSV (write_results_csv appends), without its lock file."""
    path.unlink(missing_ok=True)
    write_results_csv(path, rows)  # nothing written for no rows: the file is then just gone
    Path(str(path) + ".lock").unlink(missing_ok=True)
    return path


def _layers(values: np.ndarray) -> dict[str, float]:
    return {f"l{i}": float(v) for i, v in enumerate(values)}


def markdown_tables(rows: list[dict[str, Any]]) -> str:
    """Per domain: one row per target sparsity, one column per criterion/allocation: ppl change, top-1."""
    out = []
    for dom in dict.fromkeys(r["domain"] for r in rows):
        rs = [r for r in rows if r["domain"] == dom]
        cols = list(dict.fromkeys(f"{r['criterion']} {r['allocation']}" for r in rs))
        out.append(f"**{dom}** (dense perplexity {rs[0]['ppl_dense']:.2f}): perplexity change, top-1 agreement\n")
        out.append("| FFN sparsity | " + " | ".join(cols) + " |")
        out.append("|---" * (len(cols) + 1) + "|")
        for s in dict.fromkeys(r["target"] for r in rs):
            cells = []
            for c in cols:
                hit = [r for r in rs if r["target"] == s and f"{r['criterion']} {r['allocation']}" == c]
                cells.append(f"{hit[0]['ppl_increase_pct']:+.1f}%, {hit[0]['top1_pct']:.0f}%" if hit else "")
            out.append(f"| {100 * s:.0f}% | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


NUMERIC = ("target", "heldout_sparsity", "max_layer_dev", "ppl_dense", "ppl", "ppl_increase_pct", "top1_pct")


def report(out: Path, title: str) -> str:
    """From `out`/curves.csv (complete or partial): per domain the two curve plots, and tables.md (returned)."""
    rows = [r | {k: float(r[k]) for k in NUMERIC} for r in read_results_csv(out / "curves.csv")]
    for dom in dict.fromkeys(r["domain"] for r in rows):
        dr = [r for r in rows if r["domain"] == dom]
        for y, label in (("ppl_increase_pct", "held-out perplexity change (%)"), ("top1_pct", "top-1 agreement (%)")):
            plot_lines(
                dr,
                "target",
                y,
                "line",
                out / f"{y}_{dom}.png",
                title=f"{title}, {dom} held-out",
                xlabel="FFN sparsity (calibrated on the training split)",
                ylabel=label,
            )
    tables = markdown_tables(rows)
    (out / "tables.md").write_text(tables)
    return tables


def run(cfg: RunConfig, out_dir: Path) -> float | None:
    rc = cfg.real_sparsity
    if cfg.smoke:
        rc = dataclasses.replace(rc, **SMOKE)
    check_sparsity(np.asarray(rc.sparsities))
    out = Path(out_dir) if cfg.smoke else Path(rc.out_dir or "experiments/real_sparsity")
    out.mkdir(parents=True, exist_ok=True)
    spec = cfg.model if cfg.model.path or cfg.smoke else dataclasses.replace(cfg.model, path=DEFAULT_MODEL)
    model = load_model(spec.resolved_path(), ffn_act=spec.ffn_act)
    corpora = {"tinystories": load_corpus(cfg.corpus or None), "stdlib": stdlib_corpus(rc.stdlib_modules)}
    domains = [load_domain(model, name, c, rc) for name, c in corpora.items()]
    split = {d.name: d.split for d in domains} | {"stdlib_modules": list(rc.stdlib_modules)}
    (out / "split.json").write_text(json.dumps(split, indent=2) + "\n")
    print(json.dumps(split, indent=2))
    if "profile" in rc.parts:
        print(format_table(profile_domains(model, domains, rc, out)))
    if "thresholds" not in rc.parts:
        return None
    rows: list[dict[str, Any]] = []
    alloc_rows: list[dict[str, Any]] = []
    done: set[tuple[str, str, str, float]] = set()
    if rc.resume and (out / "curves.csv").is_file():
        done = {
            _key(r["domain"], r["criterion"], r["allocation"], r["target"])
            for r in read_results_csv(out / "curves.csv")
        }
    else:
        fresh_csv(out / "curves.csv", [])
    for d in domains:
        rows += sweep_domain(model, d, rc, out / "curves.csv", alloc_rows, done)
    Path(str(out / "curves.csv") + ".lock").unlink(missing_ok=True)
    if alloc_rows:
        (write_results_csv if rc.resume else fresh_csv)(out / "allocations.csv", alloc_rows)
    print(report(out, model_name(model)))
    print(f"results: {out}")
    hit = [r for r in rows if r["criterion"] == "oracle" and r["allocation"] == "uniform" and r["target"] > 0]
    return float(hit[0]["ppl_increase_pct"]) if hit else None
