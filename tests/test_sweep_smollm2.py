"""The SmolLM2 sweep (issue 13, part 5) as a user runs it: `--multirun +experiment=sweep_policies
model=smollm2_135m` in smoke mode, 1 policy x 2 budgets, in a subprocess. SmolLM2 is SiLU: the hybrid engine runs
gated by its shipped oracle predictors at their training cut-offs, and the hot sets come from the rows those
predictors keep. Each job must write its row (budget held, hot share, fidelity against dense, share of rows
skipped) and the PNG; a SiLU sweep without predictors, and a sparsity outside [0, 1), are one clear line."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

POLICIES = ("neuron_greedy",)  # one policy keeps the CI cost at two jobs; the policies share this code path
BUDGETS = ("ffn:20%", "ffn:60%")


def _run(tmp: Path, *overrides: str, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # Smoke timings are not results: XLA's cheapest optimisation level compiles the engine's programs faster.
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0", WANDB_MODE="offline")
    cmd = [sys.executable, "-m", "pijax.run", *overrides]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def multirun(tmp_path_factory, smollm2_path):
    tmp = tmp_path_factory.mktemp("sweep_smollm2")
    proc = _run(
        tmp,
        "--multirun",
        "+experiment=sweep_policies",
        "model=smollm2_135m",
        "smoke=true",
        f"index={','.join(POLICIES)}",
        f"budget={','.join(BUDGETS)}",
        "sweep.eval_windows=1",
        "sweep.repeats=1",
        f"sweep.results_dir={tmp / 'results'}",
        f"hydra.sweep.dir={tmp / 'runs'}",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(tmp / "results" / "results.csv", newline="") as f:
        return tmp, list(csv.DictReader(f))


def test_smollm2_sweep_writes_a_row_per_policy_and_budget(multirun):
    tmp, rows = multirun
    assert sorted((r["policy"], r["budget"]) for r in rows) == sorted((p, b) for p in POLICIES for b in BUDGETS)
    for r in rows:
        assert r["source"] == "predictor" and r["label"] == "real" and r["sparsity_target"] == "training cut-offs"
        assert int(r["resident_bytes"]) <= int(r["budget_bytes"])
        assert float(r["decode_tok_s"]) > 0 and float(r["ppl_dense"]) > 1 and float(r["ppl_hybrid"]) > 1
        assert 0.0 <= float(r["top1_agreement"]) <= 1.0 and float(r["mean_kl"]) >= 0
        # the predictors skip a real share of the rows on train and held-out text (their cut-offs' ~20-40%)
        assert 0.05 < float(r["train_skipped"]) < 0.9 and 0.05 < float(r["heldout_skipped"]) < 0.9
    for policy in POLICIES:  # more budget: more hot rows resident, more of the kept rows on them
        lo, hi = sorted((r for r in rows if r["policy"] == policy), key=lambda r: int(r["budget_bytes"]))
        assert int(lo["resident_bytes"]) < int(hi["resident_bytes"])
        assert float(lo["hot_share"]) < float(hi["hot_share"])
    # placement changes where rows run, not which: every job computes the same function
    ppl = {round(float(r["ppl_hybrid"]), 3) for r in rows}
    assert max(ppl) - min(ppl) < 0.03 * min(ppl), ppl  # per-layout gather capacities drop a few rows apart
    (png,) = (tmp / "results").glob("tok_s_vs_vram_*.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_sweep_input_is_one_clear_line(tmp_path, smollm2_path):
    out = _run(tmp_path, "task=sweep", "model=smollm2_135m", "smoke=true", "sweep.sparsity=1.5", timeout=120)
    assert out.returncode != 0
    assert "sweep.sparsity must be in [0.0, 1.0), got 1.5" in out.stderr
    assert "Traceback" not in out.stderr
    out = _run(tmp_path, "task=sweep", "model=smollm2_135m", "smoke=true", "sweep.source=oracle", "budget=ffn:20%")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    (line,) = [ln for ln in out.stderr.splitlines() if "error" in ln]
    assert "SiLU model needs predictors" in line
