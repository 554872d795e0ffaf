"""Every experiment in configs/experiment/ composes into a RunConfig and runs end to end in smoke mode.

This is what a user's `python -m pijax.run +experiment=NAME smoke=true logger=none` does, minus the process start:
the Hydra config is composed, turned into the frozen RunConfig once, and the task's `run(cfg, out_dir)` called.
A smoke run must never write into the repository's experiments/ folder.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pijax.run_config import RunConfig, build_run_config
from pijax.tasks import TASKS, get_task

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


def compose_run_config(name: str, *overrides: str) -> RunConfig:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={name}", *overrides])
    return build_run_config(OmegaConf.to_container(cfg, resolve=True))


def _tree(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*")} if folder.exists() else {}


def test_the_issue_experiments_exist_and_each_file_holds_only_overrides():
    want = {
        "quickstart",
        "profile",
        "relufy_stories260k",
        "train_predictors",
        "gpuidx",
        "sweep_policies",
        "bench_synth",
        "chat",
    }
    assert want <= set(EXPERIMENTS)
    for name in EXPERIMENTS:
        text = (CONFIGS / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_"), name
        assert "defaults:" not in text, name  # only what differs from the root defaults
        cfg = compose_run_config(name)
        assert cfg.task in TASKS, (name, cfg.task)


def test_sweep_experiments_sweep_index_policies_times_budgets():
    for name in ("sweep_policies", "bench_synth"):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("config", overrides=[f"+experiment={name}"], return_hydra_config=True)
        params = cfg.hydra.sweeper.params
        assert len(str(params.index).split(",")) >= 3 and len(str(params.budget).split(",")) >= 3, name
        assert "layers" in str(params.index).split(","), name  # layer offload beside neuron placement
    assert compose_run_config("bench_synth").sweep.synthetic == "tinyllama-1.1b"


@pytest.fixture(scope="module")
def synth_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synth_cache")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_in_smoke_mode(name, tmp_path, monkeypatch, synth_cache, request):
    overrides = ["smoke=true", "logger=none"]
    if name in ("chat", "relufy_smollm2"):  # SmolLM2, resolved from the real cache before PIJAX_CACHE moves
        overrides.append(f"model.path={request.getfixturevalue('smollm2_path')}")
    monkeypatch.setenv("PIJAX_CACHE", str(synth_cache))  # the tiny synthetic model is built here, once
    monkeypatch.chdir(tmp_path)  # relative output paths would land here, never in the repository
    # The default result folders (relative paths land in tmp_path, checked below; other helpers' jobs may be
    # writing elsewhere in experiments/ meanwhile, so only these are compared).
    watched = [ROOT / "experiments" / n for n in ("sweep_policies", "simulate", "bench")]
    before = [_tree(w) for w in watched]
    cfg = compose_run_config(name, *overrides)
    assert cfg.smoke and cfg.logger.kind == "none"
    out_dir = tmp_path / "run"
    result = get_task(cfg.task)(cfg, out_dir)
    assert result is None or math.isfinite(float(result))
    if cfg.task == "sweep":
        assert (out_dir / "results.csv").is_file() and list(out_dir.glob("tok_s_vs_vram_*.png"))
        if cfg.sweep.synthetic:
            assert "synthetic" in (out_dir / "results.csv").read_text()
    if cfg.task == "simulate":
        assert list(out_dir.glob("simulated_*.csv")) and list(out_dir.glob("simulated_*.png"))
    if cfg.task == "gpuidx":
        assert (out_dir / "gpuidx_layers.csv").is_file() and (out_dir / "gpuidx_map.png").is_file()
        assert list(out_dir.glob("*.generated.gpuidx"))
    assert [_tree(w) for w in watched] == before, "a smoke run wrote into experiments/"
    assert not list(tmp_path.glob("experiments")), "a smoke run wrote to a relative experiments/ folder"
