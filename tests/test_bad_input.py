"""Issue 15's list of careless and hostile input, one regression test each: a one-line PijaxError (exit code 2 on
the command line), never a traceback, never a silently accepted value, and never a modified model or index file."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import pijax
import pijax.index.cache as cache
from pijax.errors import (
    BudgetError,
    ConfigError,
    GGUFFormatError,
    IndexFileError,
    InputError,
    ModelFetchError,
    PijaxError,
    UnsupportedModelError,
)
from pijax.index import IndexConfig, get_or_build_index, load_gpuidx, write_gpuidx
from pijax.io.checkpoint import load_checkpoint
from pijax.paths import STORIES260K
from pijax.run_config import RunConfig, build_run_config
from pijax.validate import CONFIG_RANGES, SEED_MAX

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
RELU = REPO / "pijax" / "assets" / "stories260K_relu.gguf"


def one_line(err: BaseException) -> str:
    msg = str(err)
    assert msg and "\n" not in msg and "\r" not in msg and msg.isprintable(), repr(msg)
    return msg


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_config(*overrides: str) -> RunConfig:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return build_run_config(OmegaConf.to_container(cfg, resolve=True))


@pytest.fixture(scope="module")
def model() -> pijax.Model:
    return pijax.load_model()


# ---- load_model -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, 12345, 1.5, b"pijax/assets/stories260K.gguf", ["a.gguf"]])
def test_load_model_of_a_non_path_is_one_line(bad):
    with pytest.raises(InputError, match="model path must be"):
        pijax.load_model(bad)


def test_load_model_of_a_folder_says_folder(tmp_path):
    with pytest.raises(InputError, match="is a folder, not a GGUF file") as e:
        pijax.load_model(tmp_path)
    one_line(e.value)


def test_load_model_of_an_unknown_name_lists_the_known_names():
    with pytest.raises(ModelFetchError, match="known names: smollm2-135m") as e:
        pijax.load_model("llama-70b")
    one_line(e.value)


def test_load_model_with_a_bad_ffn_act_is_one_line():
    with pytest.raises(ConfigError, match="ffn_act must be one of"):
        pijax.load_model(STORIES260K, ffn_act="gelu")


# ---- generate and encode -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, needs",
    [
        ({"temperature": float("inf")}, "temperature must be a finite number"),
        ({"temperature": float("nan")}, "temperature must be a finite number"),
        ({"temperature": -0.5}, "temperature must be in"),
        ({"temperature": "hot"}, "temperature must be a number"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be an integer"),
        ({"max_new_tokens": "5"}, "max_new_tokens must be an integer"),
        ({"max_new_tokens": True}, "max_new_tokens must be an integer"),
        ({"max_new_tokens": -1}, "max_new_tokens must be in"),
        ({"seed": 2**70}, "seed must be in \\[0, 4294967295\\]"),
        ({"seed": -1}, "seed must be in \\[0, 4294967295\\]"),
        ({"seed": 1.0}, "seed must be an integer"),
        ({"top_k": 2.5}, "top_k must be an integer"),
        ({"top_p": 0.0}, "top_p must be in"),
        ({"top_p": float("nan")}, "top_p must be a finite number"),
        ({"stop_at_eos": "no"}, "stop_at_eos must be true or false"),
    ],
)
def test_bad_generate_arguments_are_one_line(model, kwargs, needs):
    with pytest.raises(InputError, match=needs) as e:
        model.generate("Once upon a time", **{"max_new_tokens": 2, **kwargs})
    one_line(e.value)


@pytest.mark.parametrize("prompt", [None, b"Once", 123, [], [1, "2"], [1, -3], "a\ud800b"])
def test_bad_prompts_are_one_line(model, prompt):
    with pytest.raises(InputError) as e:
        model.generate(prompt, max_new_tokens=2)
    one_line(e.value)


def test_the_largest_seed_and_numpy_ints_work(model):
    a = model.generate("Once", max_new_tokens=3, temperature=1.0, seed=SEED_MAX)
    b = model.generate("Once", max_new_tokens=np.int64(3), temperature=np.float32(1.0), seed=np.uint32(SEED_MAX))
    assert a.new_ids == b.new_ids and len(a.new_ids) == 3


@pytest.mark.parametrize(
    "text, needs",
    [
        (None, "text must be a str, got None"),
        (b"Once", "got bytes; decode it first"),
        (bytearray(b"x"), "got bytearray; decode it first"),
        (123, "text must be a str, got 123"),
        ("Once\ud800", "lone surrogate U\\+D800 at index 4"),
    ],
)
def test_encode_refuses_what_is_not_text(model, text, needs):
    with pytest.raises(InputError, match=needs) as e:
        model.tokenizer.encode(text)
    one_line(e.value)


def test_encode_of_ordinary_text_is_unchanged(model):
    assert model.tokenizer.encode("", bos=True) == [model.tokenizer.bos_id]
    assert model.tokenizer.decode(model.tokenizer.encode("Once upon a time")) == "Once upon a time"
    with pytest.raises(InputError, match="bos must be true or false"):
        model.tokenizer.encode("x", bos="yes")


# ---- the Hydra config: types and ranges of every key, checked when the RunConfig is built -----------------------


@pytest.mark.parametrize(
    "override, needs",
    [
        ("generate.max_new_tokens=banana", "generate.max_new_tokens must be an integer, got 'banana'"),
        ("generate.max_new_tokens=2.5", "generate.max_new_tokens must be an integer, got 2.5"),
        ("generate.max_new_tokens=-3", "generate.max_new_tokens must be in"),
        ("seed=banana", "^seed must be an integer, got 'banana'"),
        ("seed=-1", "^seed must be in \\[0, 4294967295\\]"),
        ("seed=99999999999999999999999", "^seed must be in"),
        ("generate.temperature=inf", "generate.temperature must be a finite number"),
        ("generate.temperature=nan", "generate.temperature must be a finite number"),
        ("generate.top_p=1.5", "generate.top_p must be in"),
        ("smoke=maybe", "smoke must be true or false"),
        ("smoke=1", "smoke must be true or false"),
        ("logger.kind=stdout", "logger.kind must be one of 'none', 'wandb'"),
        ("++logger.tags=5", "logger.tags must be a list"),
        ("++logger.tags=[a,[b]]", "logger.tags must be a string"),
        ("+generate.max_new_token=5", "unknown key\\(s\\) \\['max_new_token'\\] in config generate"),
        ("sparsity.seq_len=0", "sparsity.seq_len must be in \\[1,"),
        ("++relufy.lr=-1", "relufy.lr must be in"),
        ("predictor.ranks=[8,0]", "predictor.ranks must be in \\[1,"),
        ("predictor.ranks=8", "predictor.ranks must be a list"),
        ("index.group_size=2.5", "index.group_size must be an integer"),
        ("hardware.n_accel=-2", "hardware.n_accel must be in"),
        ("sparsity.max_tokens=1e30", "sparsity.max_tokens must be an integer"),
        ("sparsity.max_tokens=99999999999", "sparsity.max_tokens must be in"),
        ("task=nope", "unknown task 'nope'"),
        ("model.path=pijax", "model.path pijax is a folder"),
        ("model.path=/no/such/model.gguf", "no such file"),
        ("corpus=/no/such/text.txt", "corpus '/no/such/text.txt': no such file"),
    ],
)
def test_bad_config_values_fail_when_the_run_config_is_built(override, needs):
    with pytest.raises(ConfigError, match=needs) as e:
        run_config(override)
    one_line(e.value)


def test_a_number_given_for_a_string_key_is_its_text():
    cfg = run_config("generate.prompt=1234", "budget=5000000")
    assert cfg.generate.prompt == "1234" and cfg.budget == "5000000"


@pytest.mark.parametrize(
    "budget, needs",
    [
        ("-5", "budget must not be negative"),
        ("banana", "cannot read budget 'banana'"),
        ("ffn:150%", "the FFN share must be at most 100%"),
        ("ffnx", "a relative budget is written like 'ffn:30%'"),
        ("99999999999999999999999TiB", "larger than any memory"),
        ("1e999GiB", "larger than any memory"),
    ],
)
def test_unreadable_budgets_fail_before_any_work(budget, needs):
    with pytest.raises(ConfigError, match=needs) as e:
        run_config(f"budget={budget}", "+experiment=gpuidx")
    one_line(e.value)


def _numeric_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys += _numeric_keys(tp, f"{prefix}{f.name}.")
            continue
        leaves = {a for arg in typing.get_args(tp) or (tp,) for a in typing.get_args(arg) or (arg,)}
        if leaves & {int, float}:
            keys.append(prefix + f.name)
    return keys


def test_every_numeric_config_key_has_a_range():
    keys = _numeric_keys(RunConfig)
    assert len(keys) > 60
    assert sorted(set(keys) - set(CONFIG_RANGES)) == []
    assert sorted(set(CONFIG_RANGES) - set(keys)) == []


def test_budget_that_cannot_hold_the_dense_part_fails_before_profiling(tmp_path, monkeypatch):
    """budget=0 is readable but too small: the task says so before it spends seconds profiling."""
    import pijax.sparsity.profile as profile_mod
    from pijax.tasks import gpuidx as gpuidx_task

    def no_profiling(*args, **kwargs):
        raise AssertionError("profiling started before the budget was checked")

    monkeypatch.setattr(profile_mod, "profile", no_profiling)
    cfg = run_config("+experiment=gpuidx", "budget=0", "smoke=true")
    with pytest.raises(BudgetError, match="the dense part needs") as e:
        gpuidx_task.run(cfg, tmp_path / "run")
    one_line(e.value)


def test_sweep_budget_that_cannot_hold_the_dense_part_fails_before_profiling(tmp_path, monkeypatch):
    """task=sweep too: the budget is planned before the activation statistics are collected."""
    from pijax.tasks import sweep as sweep_task

    def no_profiling(*args, **kwargs):
        raise AssertionError("profiling started before the budget was checked")

    monkeypatch.setattr(sweep_task, "_profile_stats", no_profiling)
    cfg = run_config("+experiment=sweep_policies", "budget=1KB", "smoke=true", "logger=none")
    with pytest.raises(BudgetError, match="the dense part needs") as e:
        sweep_task.measure(cfg, tmp_path / "run", cfg.sweep)
    one_line(e.value)


@pytest.mark.parametrize("ids, needs", [(None, "sequence of token ids"), ("abc", "sequence"), ([1, "a"], r"ids\[1\]")])
def test_decode_refuses_what_is_not_ids(model, ids, needs):
    with pytest.raises(PijaxError, match=needs) as e:
        model.tokenizer.decode(ids)
    one_line(e.value)


def test_unknown_sparse_and_hybrid_options_are_one_line():
    relu = pijax.load_model(REPO / "pijax" / "assets" / "stories260K_relu_predictors.gguf")
    with pytest.raises(PijaxError, match=r"Model\.sparse: .*bogus.*it takes mode, sparsity") as e:
        relu.sparse(bogus=1)
    one_line(e.value)
    with pytest.raises(PijaxError, match=r"Model\.hybrid: unknown option.*bogus") as e:
        relu.hybrid(budget="ffn:30%", bogus=2)
    one_line(e.value)


# ---- the command line: exit codes 0 / 2 / 1 ----------------------------------------------------------------------


def _cli(tmp_path: Path, *args: str, code: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", WANDB_MODE="offline")
    cmd = [sys.executable, "-m", "pijax.run"] if code is None else [sys.executable, "-c", code]
    return subprocess.run(
        [*cmd, *args, f"hydra.run.dir={tmp_path}/o"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "override, needs",
    [
        ("generate.max_new_tokens=banana", "generate.max_new_tokens must be an integer"),
        ("model.path=pijax", "model.path pijax is a folder"),
        ("nokey=1", "config: Could not override 'nokey'"),  # Hydra's own error, made one line
        ("model=nope", "config: In 'config': Could not find 'model/nope'"),
    ],
)
def test_cli_user_error_exits_2_with_one_line(tmp_path, override, needs):
    proc = _cli(tmp_path, override)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pijax: error: ") and needs in lines[0], proc.stderr


def test_cli_bug_exits_1_with_its_traceback(tmp_path):
    """A task that fails with an unexpected exception is a bug: exit code 1 and the traceback, not a tidy line."""
    code = (
        "import runpy, sys, pijax.tasks as t\n"
        "def boom(cfg, out): raise RuntimeError('a bug')\n"
        "t.get_task = lambda name: boom\n"
        "sys.argv = ['pijax.run', *sys.argv[1:]]\n"
        "runpy.run_module('pijax.run', run_name='__main__', alter_sys=True)\n"
    )
    proc = _cli(tmp_path, "generate.max_new_tokens=1", code=code)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "RuntimeError: a bug" in proc.stderr


def test_cli_success_exits_0(tmp_path):
    proc = _cli(tmp_path, "generate.max_new_tokens=2")
    assert proc.returncode == 0, proc.stderr
    assert "decode" in proc.stdout


# ---- gpuidx files ------------------------------------------------------------------------------------------------


def test_load_gpuidx_of_a_missing_file_says_missing(tmp_path):
    with pytest.raises(IndexFileError, match="missing: no such file") as e:
        load_gpuidx(tmp_path / "nonexistent.gpuidx")
    assert "corrupt" not in str(e.value)
    with pytest.raises(IndexFileError, match="not a file"):
        load_gpuidx(tmp_path)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_gpuidx_files_are_written_with_the_umask(tmp_path, umask):
    path = tmp_path / "m.gguf.generated.gpuidx"
    old = os.umask(umask)
    try:
        write_gpuidx(path, [np.array([0, 2], np.int32)], 4, vram_capacity=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert load_gpuidx(path).buckets[0].tolist() == [0, 2]


def _stats_for(path: Path) -> np.ndarray:
    cfg = load_checkpoint(path).config
    return np.random.default_rng(0).integers(0, 100, size=(cfg.n_layer, cfg.n_ff))


def test_explicit_index_path_in_a_read_only_folder_names_that_folder(tmp_path, monkeypatch, caplog):
    model_path = tmp_path / "models" / "m.gguf"
    model_path.parent.mkdir()
    shutil.copy(RELU, model_path)
    ro = tmp_path / "readonly"
    ro.mkdir()
    monkeypatch.setenv("PIJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "folder_is_writable", lambda p: Path(p) != ro)
    cfg = load_checkpoint(model_path).config
    with caplog.at_level("INFO", logger="pijax.index"):
        _, where, _ = get_or_build_index(
            model_path, cfg, _stats_for(model_path), "1GiB", IndexConfig(path=str(ro / "x.gpuidx"))
        )
    assert where.is_relative_to(tmp_path / "cache")
    assert f"index.path folder {ro} not writable" in caplog.text
    assert "model folder" not in caplog.text


def test_task_gpuidx_in_a_read_only_model_folder_uses_the_cache(tmp_path, monkeypatch):
    """As task=generate does: the user's gpuidx cache, so both tasks find the same file; not the run folder."""
    from pijax.tasks import gpuidx as gpuidx_task

    folder = tmp_path / "models"
    folder.mkdir()
    model_path = folder / "relu.gguf"
    shutil.copy(RELU, model_path)
    digest = sha256(model_path)
    monkeypatch.setenv("PIJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "folder_is_writable", lambda p: Path(p) != folder)
    cfg = run_config("+experiment=gpuidx", f"model.path={model_path}", "sparsity.max_tokens=1024")
    gpuidx_task.run(cfg, tmp_path / "run")
    assert list((tmp_path / "cache").rglob("*.generated.gpuidx"))
    assert not list((tmp_path / "run").glob("*.gpuidx")) and not list(folder.glob("*.gpuidx"))
    assert sha256(model_path) == digest


def test_a_huge_budget_is_one_line_and_leaves_the_index_intact(tmp_path):
    model_path = tmp_path / "m.gguf"
    shutil.copy(RELU, model_path)
    cfg = load_checkpoint(model_path).config
    stats = _stats_for(model_path)
    _, where, _ = get_or_build_index(model_path, cfg, stats, "1GiB")
    before = sha256(where)
    with pytest.raises(ConfigError, match="larger than any memory") as e:
        get_or_build_index(model_path, cfg, stats, "99999999999999999999999TiB")
    one_line(e.value)
    assert sha256(where) == before


# ---- GGUF headers --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [24, 25, 57])
def test_a_flipped_header_byte_gives_a_short_readable_message(tmp_path, offset):
    data = bytearray(STORIES260K.read_bytes())
    data[offset] ^= 0xFF
    path = tmp_path / "flipped.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFFormatError) as e:
        pijax.load_model(path)
    msg = one_line(e.value)
    assert len(msg) < 200 + len(str(path)), msg
    assert "\\x00\\x00\\x00" not in msg


def test_a_model_with_zero_heads_is_one_line(tmp_path):
    from pijax.io.checkpoint import model_config_from_gguf
    from pijax.io.gguf import read_gguf

    f = read_gguf(STORIES260K)
    f.metadata["llama.attention.head_count"] = 0
    with pytest.raises(UnsupportedModelError, match="n_head must be in"):
        model_config_from_gguf(f)


def test_every_message_is_one_printable_line():
    err = PijaxError("a\nb\x00" + "\udc80" * 2000, "/tmp/x\ny")
    msg = one_line(err)
    assert len(msg) < 700 and msg.startswith("/tmp/x\\ny: a\\nb\\x00\\udc80")


@pytest.mark.parametrize("budget", ["banana", None, "99999999999999999999999TiB", "ffn:150%", -5])
def test_hybrid_api_reads_its_budget_before_any_work(budget):
    m = pijax.load_model(RELU)
    with pytest.raises(ConfigError, match="budget") as e:
        m.hybrid(budget=budget)
    one_line(e.value)
