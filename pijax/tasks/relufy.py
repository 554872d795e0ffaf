"""task=relufy: fine-tune a ReLU (ReGLU) copy of a SiLU model, save it as GGUF, and report the before/after figures.

`python -m pijax.run +experiment=relufy_stories260k` or `+experiment=relufy_smollm2` (recipe: `relufy.*`, see
RelufyConfig). Writes into the run's folder: the GGUF (or `relufy.out`; default `<teacher>_<act>.gguf`),
relufy_history.csv, relufy_curve.png, relufy_layers.csv and relufy_summary.json. With checkpoints on, rerunning the
same command continues the run from its checkpoint (`$PIJAX_CACHE/relufy/<run key>`), or, when it has finished,
only rebuilds the GGUF and the reports from it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pijax.api import load_model
from pijax.corpus import load_corpus
from pijax.paths import STORIES260K
from pijax.results import format_table, write_results_csv
from pijax.run_config import RunConfig
from pijax.sparsity.relufy import plot_history, relufy, save_relufied
from pijax.tracking import make_tracker

SMOKE_STEPS = 3


def run(cfg: RunConfig, out_dir: Path) -> float:
    rcfg = cfg.relufy
    if cfg.smoke:
        # A few tiny steps, nothing checkpointed: the run's path end to end, not its figures.
        rcfg = dataclasses.replace(
            rcfg,
            steps=min(rcfg.steps, SMOKE_STEPS),
            max_tokens=0,
            batch_size=min(rcfg.batch_size, 2),
            seq_len=min(rcfg.seq_len, 32),
            eval_interval=SMOKE_STEPS,
            eval_batch=2,
            val_windows=2,
            held_windows=2,
            checkpoint_every=0,
            smoke=True,
        )
    teacher = load_model(cfg.model.path or STORIES260K, ffn_act=cfg.model.ffn_act)
    corpus = load_corpus(cfg.corpus or None)
    out_dir.mkdir(parents=True, exist_ok=True)
    with make_tracker(cfg.logger, out_dir, "relufy", dataclasses.asdict(cfg)) as tracker:
        res = relufy(teacher, corpus, rcfg)
        stem = Path(teacher.checkpoint.gguf.path).stem
        gguf = save_relufied(Path(rcfg.out) if rcfg.out else out_dir / f"{stem}_{rcfg.act}.gguf", res, teacher)
        for row in res.history:
            tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))
        hist_csv = write_results_csv(out_dir / "relufy_history.csv", res.history)
        png = plot_history(
            res.history,
            out_dir / "relufy_curve.png",
            title=f"ReLU-fication ({rcfg.act}) of {stem}",
        )
        layers = [
            {"layer": i, "sparsity_relu_untrained": b, "sparsity_relufied": a}
            for i, (b, a) in enumerate(zip(res.sparsity_before, res.sparsity_after, strict=True))
        ]
        write_results_csv(out_dir / "relufy_layers.csv", layers)
        summary = res.summary() | {"gguf": str(gguf), "recipe": dataclasses.asdict(rcfg)}
        (out_dir / "relufy_summary.json").write_text(json.dumps(summary, indent=1))
        tracker.log_table("relufy_layers", list(layers[0]), [list(r.values()) for r in layers])
        tracker.log_metrics({k: v for k, v in res.summary().items() if isinstance(v, float | int)})
        tracker.log_image("relufy_curve", png)
    print(format_table(layers))
    print(
        f"\nheld-out perplexity ({res.held_out_tokens} tokens, windows of {rcfg.seq_len}): SiLU {res.ppl_teacher:.3f}, "
        f"ReLU untrained {res.ppl_relu_untrained:.1f}, ReLU-fied {res.ppl_student:.3f} ({res.ppl_increase:+.1%})"
    )
    print(
        f"FFN sparsity (exact zeros, held-out): {res.sparsity:.3f}; {res.steps}/{res.total_steps} steps "
        f"({res.tokens_trained} tokens); this session {res.wall_s:.0f} s"
    )
    if not res.finished:
        print(f"stopped early: rerun the same command to continue from {res.checkpoint}")
    print(f"wrote {gguf}\n      {hist_csv}\n      {png}")
    return res.ppl_student
