"""The throughput-vs-VRAM sweep as a user runs it: a Hydra multirun of 3 index policies x 3 budgets in smoke mode
with W&B offline, in a subprocess. It must write results.csv and the PNG, hold every run to its budget, leave a
W&B run folder per job holding the table and the line plot, and leave no W&B process behind."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from pijax.api import load_model
from pijax.bench.session import default_relu_model
from pijax.errors import ConfigError
from pijax.index import plan_budget
from pijax.index.budget import ffn_share, resolve_budget

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("powerinfer", "neuron_greedy")  # 4 jobs: the CI budget; every policy shares the job code
BUDGETS = ("ffn:10%", "ffn:90%")


@pytest.fixture(scope="module")
def multirun(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    marker = uuid.uuid4().hex
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        # Smoke timings are not results: XLA's cheapest optimisation level compiles the engine's programs faster.
        XLA_FLAGS="--xla_backend_optimization_level=0",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        PIJAX_SWEEP_TEST_MARKER=marker,  # inherited by every W&B child process, so we can find survivors
    )
    cmd = [
        sys.executable,
        "-m",
        "pijax.run",
        "--multirun",
        "+experiment=sweep_policies",
        "smoke=true",
        "logger=wandb",
        f"index={','.join(POLICIES)}",
        f"budget={','.join(BUDGETS)}",
        f"sweep.results_dir={tmp / 'results'}",
        f"hydra.sweep.dir={tmp / 'runs'}",
    ]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp, proc, marker


def test_multirun_of_2_policies_x_2_budgets_writes_results_csv_and_png(multirun):
    tmp, proc, _ = multirun
    with open(tmp / "results" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["policy"], r["budget"]) for r in rows) == sorted((p, b) for p in POLICIES for b in BUDGETS)
    for r in rows:
        assert int(r["resident_bytes"]) <= int(r["budget_bytes"])
        assert 0.0 <= float(r["hot_share"]) <= 1.0 and 0.0 <= float(r["top1_agreement"]) <= 1.0
        assert float(r["decode_tok_s"]) > 0 and float(r["prefill_tok_s"]) > 0 and float(r["mean_kl"]) >= 0
        assert 0 < float(r["recall"]) <= 1 and 0 < float(r["precision"]) <= 1  # the shipped predictors
        assert r["label"] == "real" and r["source"] == "predictor" and float(r["sim_cpu_decode_tok_s"]) > 0
        assert float(r["sim_error"]) > -1  # the cost model's error is logged beside every point (issue 16)
    for policy in ("neuron_greedy",):  # more budget: more hot rows resident, more activations on them
        mine = sorted((r for r in rows if r["policy"] == policy), key=lambda r: int(r["budget_bytes"]))
        assert [int(r["resident_bytes"]) for r in mine] == sorted(int(r["resident_bytes"]) for r in mine)
        shares = [float(r["hot_share"]) for r in mine]
        assert shares == sorted(shares) and shares[-1] > shares[0]
    png = tmp / "results" / "tok_s_vs_vram_stories260K-relu.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "every (policy, budget) so far" in proc.stdout and "decode_tok_s" in proc.stdout


def test_each_job_has_an_offline_wandb_run_folder_with_the_table_and_the_plot(multirun):
    tmp, _, _ = multirun
    jobs = sorted(p for p in (tmp / "runs").iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == len(POLICIES) * len(BUDGETS)
    for job in jobs:
        (run,) = (job / "wandb").glob("offline-run-*")  # inside the job's own output folder
        tables = run / "files" / "media" / "table"
        assert list(tables.glob("sweep_results_*.table.json")), job
        assert list(tables.glob("tok_s_vs_vram_table_*.table.json")), job  # the line plot's data
        assert list((run / "files" / "media" / "images").glob("tok_s_vs_vram_png_*.png")), job
        assert b"wandb/line/v0" in next(run.glob("run-*.wandb")).read_bytes()  # the line plot's chart spec
    last = jobs[-1] / "wandb"
    (table,) = (next(last.glob("offline-run-*")) / "files" / "media" / "table").glob("sweep_results_*.table.json")
    assert table.read_text().count('"ffn:') >= len(jobs)  # the last job's table holds every row of the sweep


def test_no_wandb_process_outlives_the_sweep(multirun):
    _, _, marker = multirun
    survivors = []
    for p in psutil.process_iter(["name"]):
        try:
            if "wandb" in (p.info["name"] or "") and p.environ().get("PIJAX_SWEEP_TEST_MARKER") == marker:
                survivors.append(p.pid)
        except psutil.Error:
            continue
    assert survivors == []


def test_relative_budgets_are_the_dense_part_plus_a_share_of_the_ffn():
    cfg = load_model(default_relu_model()).config
    kw = {"n_ctx": 64, "weight_dtype": "f32"}
    full = plan_budget(cfg, 2**40, **kw)
    none, half, every = (resolve_budget(b, cfg, **kw) for b in ("ffn:0%", "ffn:50%", "ffn:100%"))
    assert none == full.dense_bytes and plan_budget(cfg, none, **kw).capacity_neurons == 0
    assert plan_budget(cfg, every, **kw).capacity_neurons == full.total_neurons
    assert plan_budget(cfg, half, **kw).capacity_neurons == round(0.5 * full.total_neurons)
    assert resolve_budget(None, cfg, **kw) == every
    assert resolve_budget("2GiB", cfg, **kw) == "2GiB" and ffn_share(1000) is None
    for bad in ("ffn:150%", "ffn:half", "ffn30%"):
        with pytest.raises(ConfigError):
            ffn_share(bad)
