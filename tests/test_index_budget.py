"""Accelerator-memory accounting (pijax.index.budget): byte strings, the dense parts, capacity and its errors."""

from __future__ import annotations

import math

import pytest

from pijax.config import ModelConfig
from pijax.errors import BudgetError, ConfigError
from pijax.index import parse_bytes, plan_budget
from pijax.index.budget import resolve_budget

STORIES = ModelConfig(n_vocab=512, n_ctx=256, n_embd=64, n_ff=172, n_layer=5, n_head=8, n_head_kv=4, rope_dim=8)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("6GiB", 6 * 2**30),
        ("6 GiB", 6 * 2**30),
        ("6G", 6 * 2**30),
        ("2GB", 2 * 10**9),
        ("512MiB", 512 * 2**20),
        ("1.5KiB", 1536),
        ("123", 123),
        ("123B", 123),
        (4096, 4096),
        (1e3, 1000),
    ],
)
def test_parse_bytes_accepts_common_forms(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["", "six GiB", "6 GiBs", "-1GiB", "6XB", "1e", True, -5, float("nan"), None, "∞"])
def test_parse_bytes_rejects_bad_input_with_config_error(bad):
    with pytest.raises(ConfigError):
        parse_bytes(bad)


def test_dense_parts_follow_the_documented_formulas():
    cfg = STORIES
    plan = plan_budget(
        cfg,
        "64MiB",
        weight_dtype="f16",
        kv_dtype="f16",
        n_batch=32,
        predictor_ranks=[16] * 5,
        compute_buffers="formula",
    )
    d, dkv, f, layers = 64, 32, 172, 5
    assert plan.attention_bytes == layers * ((2 * d * d + 2 * dkv * d) * 2 + d * 4)
    assert plan.predictor_bytes == layers * (16 * d + f * 16) * 2
    assert plan.ffn_norm_bytes == layers * d * 4
    assert plan.output_bytes == 512 * d * 2 + d * 4
    assert plan.kv_cache_bytes == 2 * layers * 256 * dkv * 2
    assert plan.compute_buffer_bytes == 32 * (4 * d + 2 * dkv + 8 * 256 + 4 * f + 16 + 512) * 4
    assert plan.neuron_map_bytes == layers * f * 4
    assert plan.bytes_per_neuron == 3 * d * 2
    assert plan.remaining_bytes == 64 * 2**20 - plan.dense_bytes
    assert plan.capacity_neurons == min(plan.remaining_bytes // (plan.bytes_per_neuron + 4), layers * f)


def test_capacity_grows_with_budget_and_never_exceeds_it():
    base = plan_budget(STORIES, 0, allow_all_cold=True).dense_bytes
    per = plan_budget(STORIES, base).bytes_per_neuron + 4
    for n in (0, 1, 100, 859):
        plan = plan_budget(STORIES, base + n * per)
        assert plan.capacity_neurons == n
        assert plan.dense_bytes + plan.hot_bytes_at_capacity <= plan.budget_bytes
    assert plan_budget(STORIES, base + 10_000 * per).capacity_neurons == 860


def test_ungated_models_pay_two_rows_per_neuron():
    assert plan_budget(STORIES, "1GiB", gated=False).bytes_per_neuron == 2 * 64 * 4


def test_dense_part_too_large_names_the_bytes_needed():
    need = plan_budget(STORIES, 0, allow_all_cold=True).dense_bytes
    with pytest.raises(BudgetError, match=f"{need:,d} bytes"):
        plan_budget(STORIES, need - 1)
    plan = plan_budget(STORIES, need - 1, allow_all_cold=True)
    assert not plan.fits and plan.capacity_neurons == 0


def test_powerinfer_rounding_reproduces_its_formula_capped_at_exact():
    base = plan_budget(STORIES, 0, allow_all_cold=True).dense_bytes
    budget = base + 50_000
    plan = plan_budget(STORIES, budget, rounding="powerinfer")
    pi = math.floor(50_000 / (172 * 4 * 4.5)) * 4
    exact = plan_budget(STORIES, budget).capacity_neurons
    assert plan.capacity_neurons == min(pi, exact) == pi


def test_more_devices_replicate_the_dense_part():
    one = plan_budget(STORIES, "1GiB")
    two = plan_budget(STORIES, "1GiB", n_devices=2)
    assert two.dense_bytes == 2 * one.dense_bytes
    sharded = plan_budget(STORIES, "1GiB", n_devices=2, replicate_dense=False)
    assert sharded.dense_bytes == one.dense_bytes + one.compute_buffer_bytes


def test_bad_plan_arguments_raise_config_error():
    with pytest.raises(ConfigError):
        plan_budget(STORIES, "1GiB", predictor_ranks=[16] * 4)
    with pytest.raises(ConfigError):
        plan_budget(STORIES, "1GiB", weight_dtype="q3_k_fancy")
    with pytest.raises(ConfigError):
        plan_budget(STORIES, "1GiB", rounding="sloppy")


@pytest.mark.parametrize("devices", [1, 2])
def test_plan_budget_reads_a_share_of_the_ffn_under_its_own_settings(devices):
    kw = {"predictor_ranks": [16] * 5, "n_devices": devices, "n_ctx": 64}
    total = STORIES.n_layer * STORIES.n_ff
    for pct, want in ((0, 0), (50, math.ceil(0.5 * total)), (100, total)):
        plan = plan_budget(STORIES, f"ffn:{pct}%", **kw)
        assert plan.capacity_neurons == want
        assert plan.budget_bytes == resolve_budget(f"ffn:{pct}%", STORIES, **kw)
    assert plan_budget(STORIES, " FFN : 12.5 % ", **kw).capacity_neurons == math.ceil(0.125 * total)


@pytest.mark.parametrize("bad", ["ffn:150%", "ffn:", "ffn30%", "ffn:-5%"])
def test_a_bad_share_of_the_ffn_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        plan_budget(STORIES, bad)
