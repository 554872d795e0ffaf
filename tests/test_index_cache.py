"""get_or_build_index under fault injection: in every case the right index comes back, nothing valid is lost, and
the model file is byte-identical before and after (checked by the `model` fixture's teardown)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pijax.index.cache as cache
from pijax.config import ModelConfig
from pijax.errors import BudgetError, DataError
from pijax.index import IndexConfig, get_or_build_index, load_gpuidx, plan_budget, solve
from pijax.index.gpuidx import default_path
from pijax.io.gguf import read_gguf
from pijax.paths import STORIES260K

DATA = Path(__file__).parent / "data"
CASE8 = DATA / "powerinfer_gpuidx_case8"
CFG = ModelConfig(n_vocab=512, n_ctx=128, n_embd=64, n_ff=172, n_layer=5, n_head=8, n_head_kv=4, rope_dim=8)
HW = "test-hardware"
NEURON_BYTES = 3 * 64 * 4 + 4


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def budget_for(n_neurons: int, cfg: ModelConfig = CFG) -> int:
    """A budget whose exact capacity is `n_neurons` for `cfg` (f32 weights)."""
    return plan_budget(cfg, 0, allow_all_cold=True).dense_bytes + n_neurons * NEURON_BYTES


def counts_for(seed: int = 0, cfg: ModelConfig = CFG) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.floor(1000 * rng.pareto(1.2, size=(cfg.n_layer, cfg.n_ff))).astype(np.int64)


@pytest.fixture
def model(tmp_path, monkeypatch):
    """A private copy of stories260K; the teardown checks it was never modified."""
    monkeypatch.setenv("PIJAX_CACHE_DIR", str(tmp_path / "user-cache"))
    folder = tmp_path / "models"
    folder.mkdir()
    path = folder / "stories260K.gguf"
    shutil.copy(STORIES260K, path)
    digest = sha256(path)
    yield path
    assert sha256(path) == digest, "the model file changed"


def build(model_path, counts=None, budget=None, **cfg):
    counts = counts_for() if counts is None else counts
    budget = budget_for(400) if budget is None else budget
    kwargs = {k: cfg.pop(k) for k in ("hardware_fingerprint", "stats_fingerprint") if k in cfg}
    kwargs.setdefault("hardware_fingerprint", HW)
    return get_or_build_index(model_path, CFG, counts, budget, IndexConfig(**cfg), **kwargs)


def expected_buckets(counts=None, capacity=400, policy="powerinfer", **params):
    return solve(policy, counts_for() if counts is None else counts, capacity, **params)


def same(buckets_a, buckets_b) -> bool:
    return len(buckets_a) == len(buckets_b) and all(
        np.array_equal(a, b) for a, b in zip(buckets_a, buckets_b, strict=True)
    )


def test_builds_then_loads(model, caplog):
    caplog.set_level(logging.INFO, logger="pijax.index")
    index, path, reason = build(model, policy="neuron_greedy")
    assert reason == "rebuilt: missing" and path == default_path(model)
    assert path.name == "stories260K.gguf.generated.gpuidx" and path.parent == model.parent
    assert index.verified and same(index.buckets, expected_buckets(policy="neuron_greedy"))
    assert [r.getMessage() for r in caplog.records] == [f"rebuilt gpuidx {path}: missing"]
    caplog.clear()
    again, path2, reason2 = build(model, policy="neuron_greedy")
    assert (reason2, path2) == ("loaded", path) and same(again.buckets, index.buckets)
    assert caplog.records == []


def test_truncation_at_ten_points_is_rebuilt(model):
    index, path, _ = build(model)
    good = path.read_bytes()
    data_end = max(t.offset + t.nbytes for t in read_gguf(path).tensors.values())
    for cut in np.linspace(1, data_end - 1, 10).astype(int):
        path.write_bytes(good[:cut])
        again, _, reason = build(model)
        assert reason.startswith("rebuilt: truncated"), (cut, reason)
        assert same(again.buckets, index.buckets) and path.read_bytes() == good


def test_random_byte_flips_are_never_used(model):
    index, path, _ = build(model)
    good = path.read_bytes()
    rng = np.random.default_rng(0)
    reasons = set()
    for pos in rng.choice(len(good), size=40, replace=False):
        bad = bytearray(good)
        bad[pos] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(bad))
        again, _, reason = build(model)
        reasons.add(reason.split(" ")[1] if reason.startswith("rebuilt") else reason)
        assert same(again.buckets, index.buckets)
        assert reason == "loaded" or reason.startswith(("rebuilt: corrupt", "rebuilt: truncated")), reason
        if reason == "loaded":  # only alignment padding may be flipped harmlessly
            assert path.read_bytes() == bytes(bad)
        else:
            assert path.read_bytes() == good
    assert "corrupt" in reasons


@pytest.mark.parametrize(
    ("damage", "why"),
    [(b"", "rebuilt: truncated (empty file"), (b"XXXX", "rebuilt: corrupt (not a GGUF file")],
)
def test_zero_length_and_wrong_magic(model, damage, why):
    index, path, _ = build(model)
    path.write_bytes(damage + (path.read_bytes()[4:] if damage else b""))
    again, _, reason = build(model)
    assert reason.startswith(why) and same(again.buckets, index.buckets)


def test_index_from_another_model_is_rebuilt(model, tmp_path):
    other = tmp_path / "models" / "other.gguf"  # same shapes (5 x 172), other weights
    shutil.copy(DATA / "powerinfer_model_tiny" / "stories260K_relu.powerinfer.gguf", other)
    build(other)
    shutil.copy(default_path(other), default_path(model))
    _, _, reason = build(model)
    assert reason.startswith("rebuilt: other model (fingerprint")
    other.unlink()
    for cfg in (CFG.replace(n_ff=160), CFG.replace(n_layer=4)):
        get_or_build_index(model, cfg, counts_for(cfg=cfg), budget_for(300, cfg), hardware_fingerprint=HW)
        index, _, reason = build(model)
        assert reason.startswith("rebuilt: other model (index for")
        assert same(index.buckets, expected_buckets())


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"budget": budget_for(300)}, "budget"),
        ({"budget": budget_for(700)}, "budget"),
        ({"policy": "uniform"}, "policy"),
        ({"policy": "powerinfer", "group_size": 64}, "policy"),
        ({"counts": counts_for(seed=1)}, "stats"),
        ({"hardware_fingerprint": "jax:gpu H100 x1"}, "hardware"),
        ({"powerinfer_compat": True}, "format"),
    ],
)
def test_stale_indexes_are_rebuilt_and_say_why(model, change, why, caplog):
    build(model)
    caplog.set_level(logging.INFO, logger="pijax.index")
    index, _, reason = build(model, **change)
    assert reason.startswith(f"rebuilt: stale ({why}:"), reason
    assert len(caplog.records) == 1 and why in caplog.records[0].getMessage()
    capacity = 400
    if "budget" in change:
        capacity = 300 if change["budget"] == budget_for(300) else 700
    if change.get("powerinfer_compat"):  # PowerInfer's rounding: floor(remaining / (n_ff x 4 B x 4.5)) x 4
        capacity = (400 * NEURON_BYTES) // int(172 * 4 * 4.5) * 4
        assert index.magic == "PWRI" and read_gguf(index.path).tensors["blk.0.gpu_idx"].ggml_type == 18
    assert index.provenance.capacity_neurons == capacity
    policy = change.get("policy", "powerinfer")
    params = {"group_size": change["group_size"]} if "group_size" in change else {}
    assert same(index.buckets, expected_buckets(change.get("counts"), capacity, policy, **params))
    assert build(model, **change)[2] == "loaded"


def test_irrelevant_parameters_do_not_invalidate(model):
    build(model)
    assert build(model, seed=7, recall=0.5)[2] == "loaded"


def test_stats_objects_and_their_fingerprint(model):
    class Stats:
        counts = counts_for()
        fingerprint = "stats-v1"

    assert build(model, counts=Stats())[2] == "rebuilt: missing"
    assert build(model, counts=Stats())[2] == "loaded"
    Stats.fingerprint = "stats-v2"
    assert build(model, counts=Stats())[2].startswith("rebuilt: stale (stats")


def test_reset_and_disable(model):
    build(model)
    assert build(model, reset=True)[2] == "rebuilt: reset requested"
    before = default_path(model).read_bytes()
    assert build(model, disable=True) == (None, None, "disabled")
    assert default_path(model).read_bytes() == before


def test_budget_errors_and_all_cold(model):
    dense = plan_budget(CFG, 0, allow_all_cold=True).dense_bytes
    with pytest.raises(BudgetError, match=f"{dense:,d} bytes"):
        build(model, budget=dense - 1)
    index, _, _ = build(model, budget=dense - 1, allow_all_cold=True)
    assert index.total_hot == 0
    with pytest.raises(DataError, match="another model"):
        build(model, counts=np.ones((4, 172)))


WORKER = r"""
import json, os, sys, time
import numpy as np
import pijax.index.gpuidx as g
from pijax.config import ModelConfig
from pijax.index import IndexConfig, get_or_build_index

mode, model, cfg_json, counts_path, budget, sync_dir = sys.argv[1:]
real_write = g.write_gguf
def slow_write(path, *args, **kwargs):
    real_write(path, *args, **kwargs)
    if mode == "killed":  # leave a half-written temp file, say so, and wait to be SIGKILLed
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        open(os.path.join(sync_dir, "writing"), "w").close()
        time.sleep(120)
    time.sleep(1.0)  # hold the lock long enough for the other builders to queue on it
g.write_gguf = slow_write
open(os.path.join(sync_dir, f"ready-{os.getpid()}"), "w").close()
while not os.path.exists(os.path.join(sync_dir, "go")):
    time.sleep(0.01)
index, path, reason = get_or_build_index(model, ModelConfig(**json.loads(cfg_json)), np.load(counts_path),
                                         int(budget), IndexConfig(), hardware_fingerprint="test-hardware")
print(json.dumps({"reason": reason, "path": str(path), "hot": index.hot_counts}))
"""


def start_workers(tmp_path, model, n, mode, budget):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    sync = tmp_path / "sync"
    sync.mkdir(exist_ok=True)
    np.save(tmp_path / "counts.npy", counts_for())
    cfg_json = json.dumps({f: getattr(CFG, f) for f in CFG.__dataclass_fields__})
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    args = [mode, str(model), cfg_json, str(tmp_path / "counts.npy"), str(budget), str(sync)]
    procs = [
        subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for _ in range(n)
    ]
    deadline = time.monotonic() + 60
    while len(list(sync.glob("ready-*"))) < n:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "workers did not start"
        time.sleep(0.02)
    (sync / "go").touch()
    return procs, sync


def test_four_concurrent_builders_build_once(model, tmp_path):
    procs, _ = start_workers(tmp_path, model, 4, "concurrent", budget_for(400))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    reasons = sorted(r["reason"] for r in results)
    assert reasons.count("rebuilt: missing") == 1, reasons
    assert reasons.count("reused (built by another process)") >= 1, reasons
    assert set(reasons) <= {"rebuilt: missing", "reused (built by another process)", "loaded"}
    assert {r["path"] for r in results} == {str(default_path(model))}
    index = load_gpuidx(default_path(model))
    assert all(r["hot"] == index.hot_counts for r in results)
    assert same(index.buckets, expected_buckets())
    leftovers = sorted(p.name for p in model.parent.iterdir())
    assert leftovers == [model.name, default_path(model).name, default_path(model).name + ".lock"]


def test_builder_killed_mid_write_loses_nothing(model, tmp_path, monkeypatch):
    _, path, _ = build(model, budget=budget_for(300))
    old = path.read_bytes()
    procs, sync = start_workers(tmp_path, model, 1, "killed", budget_for(400))
    deadline = time.monotonic() + 60
    while not (sync / "writing").exists():
        assert time.monotonic() < deadline and procs[0].poll() is None, procs[0].communicate()[1].decode()[-2000:]
        time.sleep(0.02)
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait(timeout=30)
    assert path.read_bytes() == old  # the old index is untouched
    assert len(list(model.parent.glob(f".{path.name}.*.tmp"))) == 1  # the killed writer's half file
    assert build(model, budget=budget_for(300))[2] == "loaded"
    monkeypatch.setattr(cache, "LOCK_TIMEOUT_S", 10.0)  # a stuck lock would fail over to the cache folder
    index, path2, reason = build(model)
    assert path2 == path and reason.startswith("rebuilt: stale (budget")
    assert same(index.buckets, expected_buckets())
    assert list(model.parent.glob(f".{path.name}.*.tmp")) == []


def test_read_only_model_folder_uses_the_user_cache(model, tmp_path, monkeypatch):
    """Tests run as root, for whom chmod does not stop writes: the folder is chmod'ed AND the writability check
    (cache.folder_is_writable) is patched to answer as it would for an ordinary user."""
    folder = model.parent
    real = cache.folder_is_writable
    monkeypatch.setattr(cache, "folder_is_writable", lambda p: Path(p) != folder and real(p))
    listing = sorted(folder.iterdir())
    folder.chmod(0o555)
    try:
        index, path, reason = build(model)
        assert reason == "rebuilt: missing" and path.is_relative_to(tmp_path / "user-cache")
        assert path.name == default_path(model).name and same(index.buckets, expected_buckets())
        assert build(model)[1:] == (path, "loaded")
        assert build(model, budget=budget_for(500))[2].startswith("rebuilt: stale (budget")
        assert sorted(folder.iterdir()) == listing
    finally:
        folder.chmod(0o755)


def test_a_valid_index_in_a_read_only_folder_is_used(model, monkeypatch):
    build(model)
    monkeypatch.setattr(cache, "folder_is_writable", lambda p: False)
    assert build(model)[1:] == (default_path(model), "loaded")


def test_failed_write_falls_back_to_the_user_cache(model, tmp_path, monkeypatch):
    real = cache.write_gpuidx

    def refuse_model_folder(path, *args, **kwargs):
        if Path(path).parent == model.parent:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cache, "write_gpuidx", refuse_model_folder)
    index, path, reason = build(model)
    assert path.is_relative_to(tmp_path / "user-cache") and reason == "rebuilt: missing"
    assert same(index.buckets, expected_buckets())


def test_powerinfer_made_case8_is_imported_unverified_when_it_fits(model, caplog):
    cfg8 = CFG.replace(n_layer=8, n_ff=2048)
    counts8 = np.load(CASE8 / "activation_counts.npy")
    target = default_path(model)
    shutil.copy(CASE8 / "case8.gpuidx", target)
    caplog.set_level(logging.INFO, logger="pijax.index")
    index, path, reason = get_or_build_index(model, cfg8, counts8, budget_for(7000, cfg8), hardware_fingerprint=HW)
    assert reason == "loaded (unverified PowerInfer file)" and path == target and not index.verified
    assert index.hot_counts == [1536, 2048, 256, 1536, 256, 256, 256, 512]
    assert "unverified" in caplog.text
    assert target.read_bytes() == (CASE8 / "case8.gpuidx").read_bytes()
    # Too small a budget for its 6656 hot neurons: replaced by a verified index.
    index, _, reason = get_or_build_index(model, cfg8, counts8, budget_for(6000, cfg8), hardware_fingerprint=HW)
    assert reason.startswith("rebuilt: stale (budget: PowerInfer file holds 6,656") and index.verified
    # For a model of other shapes it is another model's index.
    shutil.copy(CASE8 / "case8.gpuidx", target)
    index, _, reason = build(model)
    assert reason.startswith("rebuilt: other model (index for 8 layers x 2048") and index.verified


def test_current_machine_fingerprint_by_default(model):
    _, _, reason = get_or_build_index(model, CFG, counts_for(), budget_for(400))
    index, _, reason = get_or_build_index(model, CFG, counts_for(), budget_for(400))
    assert reason == "loaded" and index.provenance.hardware_fingerprint.startswith("jax:cpu")
