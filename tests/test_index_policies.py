"""Index policies: exact optimality against scipy's MILP, PowerInfer's case8 answer, and each policy's contract."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from pijax.errors import ConfigError, DataError
from pijax.index import POLICIES, get_preset, solve
from pijax.index.cost_model import predicted_token_seconds
from pijax.index.hardware import HardwareProfile
from pijax.index.milp import milp_group_optimum, objective

CASE8 = Path(__file__).parent / "data" / "powerinfer_gpuidx_case8"
CASE8_HOT = [1536, 2048, 256, 1536, 256, 256, 256, 512]


def power_law_counts(seed: int, n_layer: int, n_ff: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    skew = rng.uniform(0.6, 2.0, size=(n_layer, 1))
    return np.floor(1e5 * rng.pareto(skew, size=(n_layer, n_ff))).astype(np.int64)


def assert_valid(buckets, n_layer, n_ff):
    assert len(buckets) == n_layer
    for ids in buckets:
        assert ids.dtype == np.int32
        assert np.all(np.diff(ids) > 0) and (len(ids) == 0 or (ids[0] >= 0 and ids[-1] < n_ff))


@pytest.mark.parametrize(
    ("seed", "n_layer", "n_ff", "group_size"),
    [(0, 3, 512, 256), (1, 6, 1000, 256), (2, 4, 300, 64), (3, 8, 2048, 256), (4, 5, 172, 256), (5, 7, 96, 7)],
)
def test_powerinfer_reaches_the_milp_optimum(seed, n_layer, n_ff, group_size):
    counts = power_law_counts(seed, n_layer, n_ff)
    rng = np.random.default_rng(100 + seed)
    for capacity in rng.integers(0, n_layer * n_ff + group_size, size=4):
        buckets = solve("powerinfer", counts, int(capacity), group_size=group_size)
        assert_valid(buckets, n_layer, n_ff)
        n_groups = sum(-(-len(b) // group_size) for b in buckets)
        assert n_groups * group_size <= capacity
        best, _ = milp_group_optimum(counts, int(capacity), group_size)
        assert objective(buckets, counts) == pytest.approx(best, rel=1e-12, abs=0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neuron_greedy_reaches_the_neuron_level_milp_optimum(seed):
    counts = power_law_counts(seed, 4, 200).astype(np.float64) + np.random.default_rng(seed).random((4, 200))
    for capacity in (0, 1, 137, 555, 800, 900):
        buckets = solve("neuron_greedy", counts, capacity)
        assert sum(map(len, buckets)) == min(capacity, 800)
        best, milp_buckets = milp_group_optimum(counts, capacity, 1)
        assert objective(buckets, counts) == pytest.approx(best, rel=1e-12)
        # Distinct float counts: the optimum is unique, so the sets themselves agree.
        assert all(np.array_equal(a, b) for a, b in zip(buckets, milp_buckets, strict=True))


def test_case8_reproduces_powerinfers_counts_and_buckets():
    counts = np.load(CASE8 / "activation_counts.npy")
    buckets = solve("powerinfer", counts, 6656)
    assert [len(b) for b in buckets] == CASE8_HOT
    for layer, ids in enumerate(buckets):
        top = np.sort(np.argsort(-counts[layer])[: CASE8_HOT[layer]])
        assert np.array_equal(ids, top)
    from pijax.index import load_gpuidx

    reference = load_gpuidx(CASE8 / "case8.gpuidx")
    assert all(np.array_equal(a, b) for a, b in zip(buckets, reference.buckets, strict=True))


def test_partial_final_group_is_charged_a_full_group():
    """n_ff 300 with groups of 256: the group of 44 least active neurons costs 256, like zero-padded counts."""
    counts = power_law_counts(7, 3, 300)
    padded = np.concatenate([counts, np.zeros((3, 212), np.int64)], axis=1)
    for capacity in (0, 255, 256, 300, 511, 512, 700, 900, 1536):
        got = solve("powerinfer", counts, capacity)
        want = [b[b < 300] for b in solve("powerinfer", padded, capacity)]
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
        assert sum(256 * -(-len(b) // 256) for b in got) <= capacity
    # A layer smaller than one group (stories260K: n_ff 172) is all hot or all cold.
    small = power_law_counts(8, 5, 172)
    sizes = [len(b) for b in solve("powerinfer", small, 600)]
    assert sorted(sizes) == [0, 0, 0, 172, 172]
    hot_layers = np.flatnonzero(sizes)
    assert set(hot_layers) == set(np.argsort(-small.sum(axis=1))[:2])


def test_ties_rank_lower_layer_then_lower_id_first():
    counts = np.ones((3, 512), np.int64)
    buckets = solve("powerinfer", counts, 768)
    assert [len(b) for b in buckets] == [512, 256, 0]
    assert np.array_equal(buckets[1], np.arange(256))
    assert np.array_equal(solve("neuron_greedy", counts, 5)[0], np.arange(5))


def test_uniform_random_all_none():
    counts = power_law_counts(9, 4, 100)
    uni = solve("uniform", counts, 203)
    assert [len(b) for b in uni] == [50] * 4
    assert all(np.array_equal(b, np.sort(np.argsort(-c, kind="stable")[:50])) for b, c in zip(uni, counts, strict=True))
    r1, r2 = solve("random", counts, 150, seed=3), solve("random", counts, 150, seed=3)
    assert sum(map(len, r1)) == 150 and all(np.array_equal(a, b) for a, b in zip(r1, r2, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(r1, solve("random", counts, 150, seed=4), strict=True))
    assert_valid(r1, 4, 100)
    assert [len(b) for b in solve("all", counts, 0)] == [100] * 4
    assert [len(b) for b in solve("none", counts, 10**6)] == [0] * 4
    assert set(POLICIES) >= {"powerinfer", "neuron_greedy", "uniform", "random", "all", "none", "cost_model"}


def brute_force_cost_model(counts, capacity, hw, group_size, **kw):
    n_layer, n_ff = counts.shape
    order = np.argsort(-counts, axis=1, kind="stable")
    n_groups = -(-n_ff // group_size)
    best = None
    for ks in itertools.product(range(n_groups + 1), repeat=n_layer):
        if sum(ks) * group_size > capacity:
            continue
        buckets = [np.sort(order[i, : min(k * group_size, n_ff)]) for i, k in enumerate(ks)]
        t = predicted_token_seconds(buckets, counts, hw, **kw)
        best = t if best is None else min(best, t)
    return best


@pytest.mark.parametrize("sync_us", [0.0, 2.0, 50.0])
def test_cost_model_is_exact_for_its_objective(sync_us):
    hw = HardwareProfile("toy", 100.0, 10.0, 10.0, 0, sync_us)
    counts = power_law_counts(11, 3, 38)
    kw = {"recall": 0.8, "precision": 0.5, "n_tokens": int(counts.max()) + 1, "bytes_per_neuron": 3 * 4096 * 2}
    for capacity in (0, 10, 37, 60, 120):
        buckets = solve("cost_model", counts, capacity, hardware=hw, group_size=10, **kw)
        assert sum(10 * -(-len(b) // 10) for b in buckets) <= capacity
        got = predicted_token_seconds(buckets, counts, hw, **kw)
        assert got == pytest.approx(brute_force_cost_model(counts, capacity, hw, 10, **kw), rel=1e-12)
        greedy = predicted_token_seconds(solve("powerinfer", counts, capacity, group_size=10), counts, hw, **kw)
        assert got <= greedy * (1 + 1e-12)


def test_cost_model_needs_hardware_and_presets_exist():
    counts = power_law_counts(12, 2, 64)
    with pytest.raises(ConfigError, match="hardware"):
        solve("cost_model", counts, 10)
    assert {"rtx4090", "a100_80gb", "h100", "laptop"} <= set(__import__("pijax.index").index.PRESETS)
    assert_valid(solve("cost_model", counts, 64, hardware=get_preset("rtx4090"), group_size=16), 2, 64)


def test_bad_requests_raise_clear_errors():
    counts = power_law_counts(13, 2, 16)
    with pytest.raises(ConfigError, match="unknown index policy"):
        solve("hottest", counts, 4)
    with pytest.raises(ConfigError, match="takes no parameter"):
        solve("uniform", counts, 4, group_size=2)
    with pytest.raises(ConfigError):
        solve("powerinfer", counts, 4, group_size=0)
    with pytest.raises(ConfigError):
        solve("powerinfer", counts, -1)
    with pytest.raises(DataError):
        solve("powerinfer", -counts - 1, 4)
    with pytest.raises(DataError):
        solve("powerinfer", counts[0], 4)
    with pytest.raises(DataError):
        solve("powerinfer", np.full((2, 3), np.nan), 4)


def test_layers_offloads_whole_layers_from_the_first_within_the_budget():
    """index=layers (llama.cpp's -ngl): at each budget, a prefix of whole layers, never over the planned capacity,
    and more budget never removes a hot layer."""
    from pijax.config import ModelConfig
    from pijax.index import plan_budget

    cfg = ModelConfig(n_vocab=512, n_ctx=256, n_embd=64, n_ff=172, n_layer=5, n_head=8, n_head_kv=4, rope_dim=8)
    counts = power_law_counts(5, cfg.n_layer, cfg.n_ff)
    counts[-1] *= 100  # the hottest layer last: the policy ignores counts, as -ngl does
    previous = 0
    for pct in range(0, 101, 5):
        plan = plan_budget(cfg, f"ffn:{pct}%", n_batch=32)
        buckets = solve("layers", counts, plan.capacity_neurons)
        assert_valid(buckets, cfg.n_layer, cfg.n_ff)
        n_hot = sum(len(b) == cfg.n_ff for b in buckets)
        assert [len(b) for b in buckets] == [cfg.n_ff] * n_hot + [0] * (cfg.n_layer - n_hot)
        assert n_hot * cfg.n_ff <= plan.capacity_neurons and n_hot == plan.capacity_neurons // cfg.n_ff
        assert n_hot >= previous
        previous = n_hot
    assert previous == cfg.n_layer
    assert "layers" in POLICIES
