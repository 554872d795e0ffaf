"""Recipe search for ReLU-fication: run `relufy` for several RelufyConfig overrides and tabulate the results.

    python experiments/relufy/sweep.py OUT_DIR '[{"l1_weight": 0.5}, {"l1_weight": 1.0, "steps": 2000}]'

Each run's summary is appended to OUT_DIR/sweep.csv; the GGUF of the best run that meets the aim (sparsity >= 0.8,
held-out perplexity <= 1.1x the SiLU model's) is written to OUT_DIR/best.gguf. The corpus is tokenized once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

import pijax.sparsity.relufy as R
from pijax import load_model
from pijax.corpus import load_corpus
from pijax.results import write_results_csv


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    overrides = json.loads(sys.argv[2])
    teacher = load_model()
    corpus = load_corpus()
    # Tokenize once for the whole sweep.
    R.token_windows = functools.cache(lambda tok, docs, n, max_tokens=None: _tw(tok, docs, n, max_tokens))
    stream = functools.cache(R._stream)
    R._stream = lambda m, c: stream(m, c)
    best = None
    for ov in overrides:
        cfg = dataclasses.replace(R.RelufyConfig(), **ov)
        t0 = time.perf_counter()
        r = R.relufy(teacher, corpus, cfg, progress=False)
        row = {"overrides": json.dumps(ov, sort_keys=True), **r.summary(), "run_s": time.perf_counter() - t0}
        row["sparsity_per_layer"] = " ".join(f"{s:.3f}" for s in r.sparsity_after)
        row["sparsity_before_per_layer"] = " ".join(f"{s:.3f}" for s in r.sparsity_before)
        last = r.history[-1]
        row["val_ppl"], row["val_sparsity"] = last["val_ppl"], last["val_sparsity"]
        print(json.dumps(row), flush=True)
        write_results_csv(out / "sweep.csv", [row])
        ok = r.sparsity >= 0.8 and r.ppl_increase <= 0.10
        if ok and (best is None or r.ppl_student < best.ppl_student):
            best = r
            R.save_relufied(out / "best.gguf", r, teacher)
            (out / "best.json").write_text(json.dumps(row, indent=1))
            write_results_csv(out / "best_history.csv", r.history)


def _tw(tok, docs, n, max_tokens):
    from pijax.corpus import token_windows

    return token_windows(tok, docs, n, max_tokens=max_tokens)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
