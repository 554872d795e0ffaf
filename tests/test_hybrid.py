"""Hybrid hot/cold execution: exact against the dense model under oracle masks, token-for-token against the
single-device sparse model under predictors, placed as PowerInfer places it, and held to its memory budget."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pijax.api import load_model
from pijax.engine.hybrid import build_hybrid
from pijax.engine.hybrid_engine import HybridEngine, _cold_call, _hot_call, _split
from pijax.engine.pipeline import prepare_hybrid, profile_windows
from pijax.errors import ConfigError
from pijax.index import IndexConfig, plan_budget
from pijax.io.checkpoint import load_checkpoint
from pijax.layout.config import HardwareConfig
from pijax.layout.devices import setup_devices
from pijax.model.generate import SamplingConfig
from pijax.model.sparse_ffn import sparsify
from pijax.paths import ASSETS, STORIES260K
from pijax.sparsity.profile import profile

TINY = "tests/data/powerinfer_model_tiny/stories260K_relu.powerinfer.gguf"
RELU = ASSETS / "stories260K_relu.gguf"
# trained predictors on the ReLU-fied model once that file ships; until then the tiny file's random predictors
TRAINED = ASSETS / "stories260K_relu_predictors.gguf"
PRED_MODEL = str(TRAINED) if TRAINED.exists() else TINY
PROMPT = "Once upon a time, there was a"


@pytest.fixture(scope="module")
def relu_model():
    return load_model(RELU) if RELU.exists() else load_model(STORIES260K, ffn_act="relu")


def hot_sets(n_layer: int, n_ff: int, fraction: float, seed: int = 0) -> list[np.ndarray]:
    """Explicit hot sets: the same number of seeded random neurons in every layer."""
    k = round(fraction * n_ff)
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n_ff, k, replace=False)).astype(np.int32) for _ in range(n_layer)]


def stepped_logits(engine, ids: list[int], n_prompt: int) -> np.ndarray:
    """Logits at positions n_prompt-1 .. len(ids)-1: the prefill's last one, then one decode step per token."""
    key, greedy = jax.random.key(0), SamplingConfig()
    _, lg, cache = engine.prefill(ids[:n_prompt], 32, greedy, key)
    out = [np.asarray(lg[0])]
    for pos in range(n_prompt, len(ids)):
        _, lg, cache = engine.decode_step(cache, jnp.asarray([ids[pos]], jnp.int32), pos, greedy, key)
        out.append(np.asarray(lg[0]))
    return np.stack(out)


# (accelerators, hot mode, overlap): every device count, both hot modes and both call layouts get covered.
SETUPS = [(1, "masked", False), (2, "gather", False), (4, "gather", True)]


@pytest.mark.parametrize(("n_accel", "hot_mode", "overlap"), SETUPS)
def test_oracle_hybrid_equals_dense_for_0_30_and_100_percent_hot(relu_model, n_accel, hot_mode, overlap):
    m = relu_model
    cfg = m.config
    ids = m.tokenizer.encode(PROMPT, bos=True)
    n_prompt = 5
    ref = m.logits(ids)[n_prompt - 1 :]
    scale = float(np.abs(ref).max())
    placement = setup_devices(HardwareConfig(platform="cpu", n_accel=n_accel))
    for fraction in (0.0, 0.3, 1.0):
        buckets = hot_sets(cfg.n_layer, cfg.n_ff, fraction)
        # max_gather_rows: gather even with uncapped blocks, so the gathered paths are the ones compared
        hybrid = build_hybrid(
            m,
            buckets,
            placement,
            source="oracle",
            hot_mode=hot_mode,
            overlap=overlap,
            max_gather_rows=None if hot_mode == "masked" else 10**6,
        )
        got = stepped_logits(HybridEngine(hybrid), ids, n_prompt)
        err = float(np.abs(got - ref).max())
        # relative to the logits' range: two dense programs already differ by ~5e-7 of it (XLA's sum orders)
        assert err <= 1e-5 * scale, (n_accel, fraction, err, scale)
        # one layer's FFN, hot part on the mesh plus cold part on the host, against the dense FFN: absolute 1e-5
        layer = 2
        h = np.random.default_rng(layer).standard_normal((1, 3, cfg.n_embd)).astype(np.float32)
        h_acc = jax.device_put(h, placement.replicated)
        y = np.asarray(_hot_call(*_split(hybrid.blocks[layer].ffn, cfg, False), jnp.zeros_like(h_acc), h_acc, None))
        if hybrid.colds[layer] is not None:
            cold = _split(hybrid.colds[layer], cfg, False)
            packed = jax.device_put(h.reshape(-1, cfg.n_embd), placement.on_host)  # oracle: the host needs only h
            y = y + np.asarray(_cold_call(*cold, packed)).reshape(h.shape)
        y_ref = np.asarray(m.module.layers[layer].ffn(jnp.asarray(h), None))
        np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-5)


def test_placement_follows_powerinfer(relu_model):
    m = relu_model
    cfg = m.config
    p = setup_devices(HardwareConfig(platform="cpu", n_accel=2))
    buckets = hot_sets(cfg.n_layer, cfg.n_ff, 0.3)
    h = build_hybrid(m, buckets, p, source="oracle")
    accel, host = set(p.accelerators), {p.host}
    assert h.embed_vd.devices() == host
    assert h.head.w_out_vd[...].devices() == accel
    for i, (blk, cold) in enumerate(zip(h.blocks, h.colds, strict=True)):
        assert blk.attn.w_q_nd[...].devices() == accel and blk.ffn_norm.weight[...].devices() == accel
        up = blk.ffn.hot.w_up_kd[...]
        # hot rows: split along the neuron axis, each accelerator holding its contiguous half, in bucket order
        assert [s.data.shape for s in up.addressable_shards] == [(26, cfg.n_embd)] * 2
        ref_up = np.asarray(m.module.layers[i].ffn.w_up_fd[...])
        np.testing.assert_array_equal(np.asarray(up), ref_up[buckets[i]])
        np.testing.assert_array_equal(np.asarray(blk.ffn.hot.ids_k[...]), buckets[i])
        assert cold.w_up_cd[...].devices() == host and cold.n_cold == cfg.n_ff - 52
    all_hot = build_hybrid(m, hot_sets(cfg.n_layer, cfg.n_ff, 1.0), p, source="oracle")
    assert all(c is None for c in all_hot.colds) and len(HybridEngine(all_hot).bounds) == 1


@pytest.fixture(scope="module")
def tiny_sparse_tokens():
    sp = load_model(PRED_MODEL)
    sparsify(sp, mode="predictor")
    ids = sp.tokenizer.encode(PROMPT, bos=True)
    return ids, sp.generate(ids, max_new_tokens=24, stop_at_eos=False).new_ids


@pytest.mark.parametrize(
    ("n_accel", "hot_mode", "overlap", "fraction"), [(2, "gather", False, 0.3), (4, "masked", True, 0.6)]
)
def test_predictor_hybrid_generates_the_sparse_models_tokens(tiny_sparse_tokens, n_accel, hot_mode, overlap, fraction):
    ids, want = tiny_sparse_tokens
    m = load_model(PRED_MODEL)
    cfg = m.config
    p = setup_devices(HardwareConfig(platform="cpu", n_accel=n_accel))
    hybrid = build_hybrid(m, hot_sets(cfg.n_layer, cfg.n_ff, fraction, seed=1), p, hot_mode=hot_mode, overlap=overlap)
    out = HybridEngine(hybrid).generate(ids, 24, SamplingConfig(), eos_id=None)
    assert out.new_ids == want


def test_budget_sweep_stays_within_budget_and_moves_activations_to_the_accelerator(tmp_path):
    model_path = shutil.copy(TINY, tmp_path)  # the gpuidx is written next to the model
    placement = setup_devices(HardwareConfig(platform="cpu", n_accel=2))
    with jax.default_device(placement.host):
        m = load_model(model_path)
    stats = profile(m, profile_windows(m, None, 128, 4096), progress=False)
    ranks = [p.rank for p in m.checkpoint.weights.predictors]  # stories260K at n_ctx 256 on 2 accelerators
    dense = plan_budget(m.config, 0, n_ctx=256, predictor_ranks=ranks, n_devices=2, allow_all_cold=True).dense_bytes
    shares, hot = [], []
    for extra, quantile in ((0, None), (200_000, None), (700_000, 1.0)):
        s = prepare_hybrid(
            m,
            dense + extra,
            index_cfg=IndexConfig(policy="neuron_greedy"),
            placement=placement,
            stats=stats,
            n_ctx=256,
            capacity_quantile=quantile,
        )
        assert s.report.total <= s.plan.budget_bytes and s.report.fits
        assert s.plan.capacity_neurons >= sum(s.engine.hybrid.n_hot)
        shares.append(s.hot_share)
        hot.append(sum(s.engine.hybrid.n_hot))
    assert hot[0] == 0 and hot[-1] == 5 * 172 and hot == sorted(hot)
    assert shares[0] == 0.0 and shares[-1] == pytest.approx(1.0) and shares == sorted(shares)
    # every hot row a profiled token used fits its shard's capacity
    assert 0 < max(s.capacities.hot_per_shard) <= 86 and s.capacities.cold == [0] * 5
    out = s.engine.generate(m.tokenizer.encode(PROMPT, bos=True), 8, SamplingConfig(), eos_id=None)
    assert len(out.new_ids) == 8


def test_predictor_source_needs_predictors(relu_model):
    p = setup_devices(HardwareConfig(platform="cpu", n_accel=1))
    with pytest.raises(ConfigError, match="predictors"):
        build_hybrid(relu_model, hot_sets(5, 172, 0.3), p, source="predictor")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_over_jax_distributed_run_the_documented_command(tmp_path, tiny_sparse_tokens):
    """The multi-machine launch of experiments/hybrid/README.md, as two local processes: the mesh spans one CPU
    accelerator per process, each process its own host; both print the single-device sparse model's tokens."""
    _, want = tiny_sparse_tokens
    model = shutil.copy(PRED_MODEL, tmp_path)
    ckpt = load_checkpoint(model)
    ranks = [p.rank for p in ckpt.weights.predictors]
    budget = plan_budget(ckpt.config, 0, predictor_ranks=ranks, n_devices=2, allow_all_cold=True).dense_bytes + 300_000
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}

    def cmd(i: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pijax.run",
            "task=generate",
            "sparsity=predictor",
            "index=uniform",
            f"budget={budget}",
            f"model.path={model}",
            "hardware=cpu1",
            f"hardware.coordinator=127.0.0.1:{port}",
            "hardware.num_processes=2",
            f"hardware.process_id={i}",
            f"generate.prompt='{PROMPT}'",
            "generate.max_new_tokens=8",
            "sparsity.max_tokens=2048",
            f"hydra.run.dir={tmp_path}/p{i}",
        ]

    root = Path(__file__).resolve().parents[1]
    procs = [
        subprocess.Popen(cmd(i), env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in (0, 1)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    recs = [json.loads((tmp_path / f"p{i}" / "hybrid.json").read_text()) for i in (0, 1)]
    assert all(r["n_accel"] == 2 and len(r["resident_per_device"]) == 1 for r in recs)
    assert recs[0]["new_ids"] == recs[1]["new_ids"] == want[:8]
