"""Every task that takes a budget reads both spellings the sweeps use: 'ffn:X%' (relative to the model) and bytes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pijax.paths import ASSETS

ROOT = Path(__file__).resolve().parents[1]


def run_task(tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "pijax.run", *overrides, f"hydra.run.dir={tmp / 'run'}"]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


def test_generate_accepts_a_share_of_the_ffn_as_its_budget(tmp_path):
    model = shutil.copy(ASSETS / "stories260K_relu.gguf", tmp_path)
    proc = run_task(
        tmp_path,
        "task=generate",
        "index=uniform",
        "budget=ffn:50%",
        f"model.path={model}",
        "generate.max_new_tokens=4",
        "sparsity.max_tokens=2048",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp_path / "run" / "hybrid.json").read_text())
    assert rec["hot_neurons"] == [86] * 5  # half of each layer's 172 neurons
    assert 0 < rec["resident_bytes"] <= rec["budget_bytes"]


def test_generate_names_a_misspelt_share_in_one_line(tmp_path):
    model = shutil.copy(ASSETS / "stories260K_relu.gguf", tmp_path)
    proc = run_task(tmp_path, "task=generate", "index=uniform", "budget=ffn:150%", f"model.path={model}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("pijax: error:") and "ffn:150%" in proc.stderr


def test_gpuidx_task_loads_the_shipped_relu_model_and_places_the_share_asked_for(tmp_path):
    proc = run_task(tmp_path, "+experiment=gpuidx", "smoke=true", "index=uniform", "budget=ffn:30%")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "run" / "gpuidx_layers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["hot"]) for r in rows] == [258 // 5] * 5  # ceil(30% of 860) = 258 neurons, the same per layer
    assert (tmp_path / "run" / "stories260K_relu_predictors.gguf.generated.gpuidx").is_file()
    assert not list(ASSETS.glob("*.gpuidx"))  # the installed package is never written to
