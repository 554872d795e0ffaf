"""task=profile: activation statistics of a model over a corpus, saved, exported, summarised and plotted.

Steps: load model and corpus; split off the held-out tail; in threshold mode calibrate per-layer thresholds on
the training split; profile the training split; save ActivationStats and PowerInfer's activation_{i}.npy files;
measure sparsity on held-out text (and, in threshold mode, the perplexity with sub-threshold values zeroed);
print the per-layer table; write profile_summary.csv, profile_report.json and profile.png into the run folder.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pijax.api import Model, load_model
from pijax.corpus import Corpus, load_corpus
from pijax.eval import compare, module_logits_fn
from pijax.model.sparse_ffn import densify, sparsify
from pijax.results import format_table, write_results_csv
from pijax.run_config import RunConfig
from pijax.sparsity.config import ProfileConfig
from pijax.sparsity.plots import plot_profile
from pijax.sparsity.profile import profile
from pijax.sparsity.stats import ActivationStats
from pijax.sparsity.thresholds import calibrate_thresholds
from pijax.tracking import make_tracker


@dataclasses.dataclass
class ProfileReport:
    stats: ActivationStats
    rows: list[dict[str, Any]]  # per layer (held-out columns when there is a held-out split)
    totals: dict[str, Any]
    files: dict[str, Path]


def resolve_mode(cfg: ProfileConfig, model: Model) -> str:
    if cfg.mode in ("relu", "threshold"):
        return cfg.mode
    return "threshold" if model.config.ffn_act == "silu" else "relu"


def profile_corpus(
    model: Model, corpus: Corpus, cfg: ProfileConfig, out_dir: Path, *, progress: bool = True
) -> ProfileReport:
    """The whole profile stage as a library call (task=profile is this plus printing and tracking)."""
    out_dir = Path(out_dir)
    mode = resolve_mode(cfg, model)
    held: Corpus | None = None
    train = corpus
    if cfg.held_out > 0 and len(corpus.docs) >= 2:
        train, held = corpus.split(cfg.held_out)
    w_train = train.windows(model.tokenizer, cfg.seq_len, cfg.max_tokens)
    thresholds = None
    if mode == "threshold":
        n_cal = None if cfg.calibration_tokens is None else max(1, cfg.calibration_tokens // cfg.seq_len)
        thresholds = calibrate_thresholds(
            model, w_train[:n_cal], cfg.target_sparsity, batch_size=cfg.batch_size, progress=progress
        )
    stats = profile(
        model,
        w_train,
        mode=mode,
        thresholds=thresholds,
        batch_size=cfg.batch_size,
        progress=progress,
        corpus_sha256=corpus.sha256,
    )
    files = {"stats": stats.save(out_dir / cfg.stats_name)}
    files["activation_dir"] = out_dir / "activation"
    stats.export_powerinfer(files["activation_dir"])
    rows = stats.summary_rows()
    totals: dict[str, Any] = {
        "model": str(model.checkpoint.gguf.path),
        "model_fingerprint": stats.model_fingerprint,
        "corpus": str(corpus.path),
        "corpus_sha256": corpus.sha256,
        "mode": mode,
        "tokens": stats.n_tokens,
        "sparsity": float(stats.sparsity().mean()),
        "coverage80_share": float(stats.coverage_share(0.8).mean()),
        "stats_fingerprint": stats.fingerprint,
    }
    if mode == "threshold":
        totals["target_sparsity"] = cfg.target_sparsity
    if held is not None:
        w_held = held.windows(model.tokenizer, cfg.seq_len, cfg.eval_tokens)
        held_stats = profile(
            model, w_held, mode=mode, thresholds=thresholds, batch_size=cfg.batch_size, progress=progress
        )
        for row, sp in zip(rows, held_stats.sparsity(), strict=True):
            row["held_out_sparsity"] = float(sp)
        totals["held_out_tokens"] = held_stats.n_tokens
        totals["held_out_sparsity"] = float(held_stats.sparsity().mean())
        if mode == "threshold":
            dense_fn = module_logits_fn(model.module)
            sparsify(model, mode="threshold", act_thresholds=thresholds)
            try:
                agree = compare(
                    dense_fn, module_logits_fn(model.module), w_held, batch_size=cfg.batch_size, progress=progress
                )
            finally:
                densify(model)
            totals |= {
                "ppl_dense": agree.ppl_reference,
                "ppl_thresholded": agree.ppl_candidate,
                "ppl_increase": agree.ppl_increase,
                "top1_agreement": agree.top1,
            }
    files["summary_csv"] = out_dir / "profile_summary.csv"
    files["summary_csv"].unlink(missing_ok=True)
    write_results_csv(files["summary_csv"], rows)
    Path(str(files["summary_csv"]) + ".lock").unlink(missing_ok=True)  # a fresh file of this run only
    files["report"] = out_dir / "profile_report.json"
    files["report"].write_text(json.dumps(totals, indent=2) + "\n")
    files["plot"] = plot_profile(stats, out_dir / "profile.png", title=Path(model.checkpoint.gguf.path).name)
    return ProfileReport(stats, rows, totals, files)


def run(cfg: RunConfig, out_dir: Path) -> float:
    corpus = load_corpus(cfg.corpus or None)
    model = load_model(cfg.model.resolved_path(), ffn_act=cfg.model.ffn_act)
    with make_tracker(cfg.logger, out_dir, f"profile-{out_dir.name}", dataclasses.asdict(cfg)) as tracker:
        pc = cfg.sparsity
        if cfg.smoke:  # tests and CI: a few thousand tokens (added by the sweep/experiments helper)
            pc = dataclasses.replace(pc, max_tokens=4096, calibration_tokens=4096, eval_tokens=4096)
        rep = profile_corpus(model, corpus, pc, out_dir)
        print(format_table(rep.rows))
        t = rep.totals
        line = f"\n[{t['mode']}] {t['tokens']} tokens: mean sparsity {t['sparsity']:.3f}"
        if "held_out_sparsity" in t:
            line += f", held-out {t['held_out_sparsity']:.3f} ({t['held_out_tokens']} tokens)"
        if "ppl_increase" in t:
            line += (
                f"; held-out perplexity {t['ppl_dense']:.3f} dense -> {t['ppl_thresholded']:.3f} thresholded "
                f"({100 * t['ppl_increase']:+.2f}%)"
            )
        print(line)
        print(f"statistics: {rep.files['stats']} (+ .json); PowerInfer counts: {rep.files['activation_dir']}/")
        print(f"plot: {rep.files['plot']}")
        tracker.log_metrics({k: v for k, v in t.items() if isinstance(v, int | float)})
        cols = list(rep.rows[0])
        tracker.log_table("profile_per_layer", cols, [[r[c] for c in cols] for r in rep.rows])
        tracker.log_image("profile", rep.files["plot"])
    return float(rep.totals["sparsity"])
