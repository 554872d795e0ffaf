"""Simulated hardware: the cost model's formula applied per traced token, budgets that fit each profile's memory,
the trace file, and the error measure used to check the model against measured CPU runs."""

from __future__ import annotations

import numpy as np
import pytest

from pijax.bench.simulate import (
    SIMULATED,
    Trace,
    budget_for_fraction,
    capacity_trace,
    prediction_errors,
    simulate_curves,
    simulate_seconds,
)
from pijax.config import ModelConfig
from pijax.errors import DataError
from pijax.index.hardware import HardwareProfile

HW = HardwareProfile("t", accel_bandwidth_gbs=100.0, host_bandwidth_gbs=10.0, pcie_gbs=5.0, accel_memory_bytes=0,
                     sync_us_per_layer=20.0)  # fmt: skip


def test_seconds_per_token_follow_the_documented_formula():
    masks = np.array([[[1, 1, 0, 0]], [[1, 0, 1, 1]]], bool)  # 2 tokens, 1 layer, 4 neurons
    trace = Trace(masks, "true", counts=masks.sum(0), n_counted_tokens=2)
    b, xfer, dense = 1000, 64, 5000
    got = simulate_seconds(trace, [np.array([0])], HW, bytes_per_neuron=b, transfer_bytes=xfer, dense_bytes=dense)
    sync = 20e-6 + xfer / 5e9
    t0 = dense / 100e9 + max(b * 1 / 100e9, b * 1 / 10e9) + sync  # token 0: 1 hot row, 1 cold row
    t1 = dense / 100e9 + max(b * 1 / 100e9, b * 2 / 10e9) + sync  # token 1: 1 hot row, 2 cold rows
    assert got == pytest.approx((t0 + t1) / 2, rel=1e-9)
    all_hot = simulate_seconds(
        trace, [np.arange(4)], HW, bytes_per_neuron=b, transfer_bytes=xfer, dense_bytes=dense
    )  # no host part and no hand-over
    assert all_hot == pytest.approx(dense / 100e9 + b * 2.5 / 100e9, rel=1e-9)


def _tiny_cfg() -> ModelConfig:
    return ModelConfig(n_vocab=64, n_ctx=128, n_embd=32, n_ff=128, n_layer=3, n_head=4, n_head_kv=2, rope_dim=8,
                       ffn_act="relu")  # fmt: skip


def test_curves_are_labelled_simulated_and_more_vram_is_faster_when_the_host_is_slow():
    cfg = _tiny_cfg()
    rng = np.random.default_rng(0)
    p = np.linspace(0.9, 0.01, cfg.n_ff)  # a skewed activation law per layer
    masks = rng.random((64, cfg.n_layer, cfg.n_ff)) < p
    trace = Trace(masks, "true", counts=masks.sum(0), n_counted_tokens=64)
    rows = simulate_curves(
        trace, cfg, profiles=["rtx4090", "laptop"], policies=["neuron_greedy"], ffn_fractions=[0.0, 0.5, 1.0],
        progress=False,
    )  # fmt: skip
    assert {r["label"] for r in rows} == {SIMULATED} and len(rows) == 6
    for hw in ("rtx4090", "laptop"):
        mine = sorted((r for r in rows if r["hardware"] == hw), key=lambda r: r["vram_bytes"])
        speeds = [r["sim_decode_tok_s"] for r in mine]
        assert speeds == sorted(speeds) and speeds[-1] > 2 * speeds[0]
        shares = [r["hot_row_share"] for r in mine]
        assert shares[0] == 0.0 and shares[-1] == 1.0
        # hot neurons first: half the FFN already carries far more than half of the computed rows
        assert shares[1] > 0.7


def test_points_that_exceed_the_profiles_memory_are_left_out():
    cfg = _tiny_cfg()
    masks = np.ones((4, cfg.n_layer, cfg.n_ff), bool)
    trace = Trace(masks, "true", counts=masks.sum(0), n_counted_tokens=4)
    budget, _ = budget_for_fraction(cfg, 0.5, weight_dtype="f16")
    small = HardwareProfile("small", 100.0, 10.0, 5.0, budget, 10.0)
    from pijax.index import hardware

    hardware.PRESETS["small_test"] = small
    try:
        rows = simulate_curves(
            trace, cfg, profiles=["small_test"], policies=["uniform"], ffn_fractions=[0.0, 0.5, 1.0], progress=False
        )
    finally:
        del hardware.PRESETS["small_test"]
    assert [r["ffn_fraction"] for r in rows] == [0.0, 0.5] and all(r["vram_bytes"] <= budget for r in rows)


def test_trace_round_trips_and_rejects_bad_files(tmp_path):
    masks = np.random.default_rng(1).random((5, 2, 13)) < 0.3
    t = Trace(masks, "predicted", counts=np.arange(26).reshape(2, 13), n_counted_tokens=99, model="m.gguf")
    back = Trace.load(t.save(tmp_path / "trace.npz"))
    assert (back.masks == masks).all() and back.kind == "predicted" and back.n_counted_tokens == 99
    (tmp_path / "bad.npz").write_bytes(b"not a trace")
    with pytest.raises(DataError):
        Trace.load(tmp_path / "bad.npz")


def test_prediction_error_is_relative_to_the_measurement():
    rows = [{"m": "10", "p": "12"}, {"m": "20", "p": "15"}, {"m": "", "p": "1"}, {"m": "5"}]
    err = prediction_errors(rows, "m", "p")
    assert err["n"] == 2
    assert err["mean_abs_error"] == pytest.approx((0.2 + 0.25) / 2)
    assert err["max_abs_error"] == pytest.approx(0.25)
    assert prediction_errors([], "m", "p") == {"n": 0}


def test_capacity_trace_computes_the_engines_fixed_row_counts():
    buckets = [np.array([0, 1, 2, 3]), np.array([5])]
    t = capacity_trace(buckets, hot_per_shard=[1, 3], cold=[2, 9], n_ff=8, n_shards=2)
    assert t.n_tokens == 1 and t.kind == "capacity"
    hot0, hot1 = t.masks[0, 0, :4].sum(), t.masks[0, 1, 5]
    assert hot0 == 2 and t.masks[0, 0, 4:].sum() == 2  # 1 per shard x 2 shards; 2 cold rows
    assert hot1 and t.masks[0, 1].sum() == 1 + 7  # the cap exceeds the hot set; all 7 cold rows


def test_check_table_gives_each_points_error_and_the_share_within_25_percent():
    from pijax.bench.sim_check import check_markdown

    rows = [
        {"model": "m", "point": "dense", "measured_tok_s": 100.0, "predicted_tok_s": 120.0, "error": 0.2,
         "load_avg": 1.0, "error_start": 0.5, "decode_tok_s_all": "90.0 100.0 135.0"},
        {"model": "m", "point": "hybrid:50%", "measured_tok_s": 50.0, "predicted_tok_s": 25.0, "error": -0.5,
         "load_avg": 1.5},
    ]  # fmt: skip
    table = check_markdown(rows)
    assert "| m | dense | 100.0 | 120.0 | +20% | +50% | 1.50x | 1.0 |" in table  # rounds spread: 135 / 90
    assert "| m | hybrid:50% | 50.0 | 25.0 | -50% | - | - | 1.5 |" in table
    assert "- m: 1/2 points within +-25%, max abs error 50% (start-of-run terms: 0/1, max abs error 50%)" in table
