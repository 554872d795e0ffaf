"""Budgets that mean what they say: the plan reserves the temporaries XLA really compiles, not a 10x formula."""

from __future__ import annotations

import pytest

from pijax.api import load_model
from pijax.engine.pipeline import prepare_hybrid
from pijax.index import IndexConfig, plan_budget
from pijax.index.compute_buffers import SAFETY_MARGIN, xla_temp_bytes
from pijax.layout.config import HardwareConfig
from pijax.layout.memory import engine_temp_bytes
from pijax.model.generate import Engine, SamplingConfig
from pijax.paths import RELU_STORIES260K


@pytest.fixture(scope="module")
def relu_model():
    return load_model(RELU_STORIES260K)


def test_the_reserve_covers_what_the_dense_engine_really_compiles(relu_model):
    engine = Engine(relu_model.module)
    prompt = list(range(1, 17))  # a 16-token prefill into the engine's smallest cache (128 positions)
    engine.generate(prompt, 4, SamplingConfig())
    compiled = engine_temp_bytes(engine)
    n_cache = engine.cache_size(len(prompt), 4)
    plan = plan_budget(relu_model.config, "1GiB", n_ctx=n_cache, n_batch=len(prompt))
    assert compiled is not None and 0 < compiled <= plan.compute_buffer_bytes
    measured = xla_temp_bytes(relu_model.config, n_cache, len(prompt))
    assert max(measured.values()) == compiled  # shapes alone compile to the same programs as the loaded model
    assert plan.compute_buffer_bytes == pytest.approx(compiled * SAFETY_MARGIN, abs=1)
    assert plan.compute_source.startswith("xla")


def test_a_small_budget_now_places_hot_rows_on_stories260k(relu_model, tmp_path):
    cfg = relu_model.config
    xla = plan_budget(cfg, "12MB")
    old = plan_budget(cfg, "12MB", compute_buffers="formula", n_batch=512, allow_all_cold=True)
    assert not old.fits and old.capacity_neurons == 0  # the formula reserved 36.7 MB for temporaries
    assert xla.compute_buffer_bytes < old.compute_buffer_bytes / 4
    assert xla.capacity_neurons > 0
    setup = prepare_hybrid(
        relu_model,
        "12MB",
        index_cfg=IndexConfig(policy="uniform", path=str(tmp_path / "x.gpuidx")),
        hardware=HardwareConfig(),
        source="dense",
        profile_tokens=2048,
    )
    assert sum(setup.engine.hybrid.n_hot) > 0 and setup.report.fits
    assert setup.report.compute_planned == setup.plan.compute_buffer_bytes
    assert "compute (planned)" in setup.report.summary()
