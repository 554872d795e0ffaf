"""The public engine API: `m.sparse(mode=...)` and `m.hybrid(budget=...)` give the same numbers in every mode.

- relu and oracle modes equal the dense model (every backend);
- the hybrid engine equals the single-device sparse engine at several budgets on 1, 2 and 4 virtual accelerators,
  on the CPU kernels and on XLA;
- bad input is one clear error; the default single-CPU-device route runs the kernels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pijax
from pijax.engine import setup
from pijax.errors import BudgetError, ConfigError
from pijax.kernels import build
from pijax.layout.config import HardwareConfig
from pijax.model.generate import SamplingConfig
from pijax.paths import ASSETS, STORIES260K
from pijax.sparsity.profile import profile

PRED = ASSETS / "stories260K_relu_predictors.gguf"
PROMPT = "Once upon a time, there was a"
N_PROMPT = 5


def stepped_logits(engine, ids: list[int]) -> np.ndarray:
    """Logits after the prompt's prefill, then after each decode step (the few-token paths the kernels take)."""
    key, greedy = jax.random.key(0), SamplingConfig()
    _, lg, cache = engine.prefill(ids[:N_PROMPT], 32, greedy, key)
    out = [np.asarray(lg[0])]
    for pos in range(N_PROMPT, len(ids)):
        _, lg, cache = engine.decode_step(cache, jnp.asarray([ids[pos]], jnp.int32), pos, greedy, key)
        out.append(np.asarray(lg[0]))
    return np.stack(out)


def close(a: np.ndarray, b: np.ndarray, floor: float = 1e-5) -> None:
    """Equal to the f32 floor: the backends sum in different orders."""
    np.testing.assert_allclose(a, b, atol=floor * max(1.0, float(np.abs(b).max())), rtol=0)


@pytest.fixture(scope="module")
def model():
    return pijax.load_model(PRED)


@pytest.fixture(scope="module")
def ids(model):
    return model.tokenizer.encode(PROMPT, bos=True)


@pytest.fixture(scope="module")
def sparse_ref(model, ids):
    """The single-device sparse engine (predictor mode, no cap) on the kernels: stepped and full logits."""
    s = model.sparse(mode="predictor", backend="kernels")
    return stepped_logits(s.engine, ids), s.logits(ids)


@pytest.fixture(scope="module")
def stats(model):
    from pijax.engine.pipeline import profile_windows

    return profile(model, profile_windows(model, None, 64, 2048), mode="relu", progress=False)


@pytest.mark.parametrize(("mode", "backend"), [("relu", "kernels"), ("relu", "xla"), ("oracle", "xla")])
def test_relu_and_oracle_modes_equal_dense(model, ids, mode, backend):
    s = model.sparse(mode=mode, backend=backend)
    assert s.setup.backend == backend
    close(stepped_logits(s.engine, ids), stepped_logits(model.engine, ids))
    close(s.logits(ids), model.logits(ids))
    assert s.generate(PROMPT, max_new_tokens=8).new_ids == model.generate(PROMPT, max_new_tokens=8).new_ids
    assert not hasattr(model, "setup")  # the dense model is left as it was
    ffn = model.module.layers[0].ffn
    assert ffn.selector.mode == "dense" and ffn.backend == "xla"


def test_predictor_mode_on_both_backends_agrees(model, ids, sparse_ref):
    s = model.sparse(mode="predictor", backend="xla")
    close(stepped_logits(s.engine, ids), sparse_ref[0])
    close(s.logits(ids), sparse_ref[1])


# (accelerators, budgets, backend): 1, 2 and 4 virtual accelerators; budgets from all-cold to all-hot.
HYBRID_CASES = [
    (1, ("ffn:0%", "ffn:50%", "ffn:100%"), "auto"),
    (2, ("ffn:30%",), "xla"),
    (4, ("ffn:80%",), "auto"),
]


@pytest.mark.parametrize(("n_accel", "budgets", "backend"), HYBRID_CASES)
def test_hybrid_equals_the_sparse_engine(model, ids, sparse_ref, stats, tmp_path, n_accel, budgets, backend):
    hw = HardwareConfig(platform="cpu", n_accel=n_accel)
    for budget in budgets:
        h = model.hybrid(
            budget,
            policy="neuron_greedy",
            hardware=hw,
            backend=backend,
            stats=stats,
            index_path=tmp_path / f"{budget[4:-1]}.gpuidx",
            capacity_quantile=None,
        )
        want = "xla" if backend == "xla" else "kernels"
        hot, cold = (part.split(": ")[1] for part in h.setup.engine.hybrid.backends().split(", "))
        assert hot in (want, "none") and cold in (want, "none")
        close(stepped_logits(h.engine, ids), sparse_ref[0])
        close(h.logits(ids), sparse_ref[1])
        report = h.resident_report()
        assert report.budget_bytes == h.setup.plan.budget_bytes
        assert len(h.index.buckets) == model.config.n_layer


def test_hybrid_generates_like_the_sparse_engine(model, stats, tmp_path):
    s = model.sparse(mode="predictor")
    h = model.hybrid("ffn:50%", policy="powerinfer", stats=stats, profile_tokens=2048, index_path=tmp_path / "p.gpuidx")
    out = h.generate(PROMPT, max_new_tokens=12)
    assert out.new_ids == s.generate(PROMPT, max_new_tokens=12).new_ids
    assert out.text and out.decode_tok_s > 0


def test_bad_input_is_one_clear_error(model, tmp_path, monkeypatch):
    def one_line(call, error, match):
        with pytest.raises(error, match=match) as got:
            call()
        assert "\n" not in str(got.value)

    one_line(lambda: model.sparse(mode="bogus"), ConfigError, "mode='bogus' is not one of")
    one_line(lambda: model.hybrid("ffn:50%", mode="bogus"), ConfigError, "mode='bogus' is not one of")
    one_line(lambda: model.sparse(mode="relu", backend="gpu-please"), ConfigError, "not one of")
    one_line(lambda: model.sparse(mode="oracle", backend="kernels"), ConfigError, "dense activations")
    silu = pijax.load_model(STORIES260K)
    one_line(lambda: silu.sparse(mode="relu"), ConfigError, "SiLU")
    one_line(lambda: silu.hybrid("ffn:50%"), ConfigError, "SiLU model")
    one_line(lambda: silu.hybrid("ffn:50%", mode="threshold"), ConfigError, "SiLU model")
    below = lambda: model.hybrid(100_000, index_path=tmp_path / "x.gpuidx")  # noqa: E731
    one_line(below, BudgetError, "dense part")
    monkeypatch.setattr(setup.build, "load", lambda: None)
    monkeypatch.setattr(setup.build, "status", lambda: "disabled for this test")
    unavailable = "backend 'kernels' was requested but is unavailable"
    one_line(lambda: model.sparse(mode="relu", backend="kernels"), ConfigError, unavailable)
    one_line(
        lambda: model.hybrid("ffn:50%", backend="kernels", index_path=tmp_path / "y.gpuidx"), ConfigError, unavailable
    )
    assert model.sparse(mode="relu").setup.backend == "xla"  # auto falls back, and says so in its log line


def test_threshold_mode_skips_the_asked_share_on_a_silu_model():
    silu = pijax.load_model(STORIES260K)
    s = silu.sparse(mode="threshold", sparsity=0.5, calibration_tokens=2048)
    assert s.setup.backend == "xla" and s.setup.act_thresholds.shape == (silu.config.n_layer,)
    ids = silu.tokenizer.encode(PROMPT, bos=True)
    ref = silu.logits(ids)
    got = s.logits(ids)
    assert not np.allclose(got, ref)  # an approximation: something was skipped
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.5


def test_default_single_cpu_device_route_runs_the_kernels():
    """A plain process (one CPU device, no XLA flags): m.sparse() picks the kernels, says so, equals dense."""
    code = (
        "import json, logging, io, numpy as np, pijax\n"
        "buf = io.StringIO(); logging.basicConfig(stream=buf, level=logging.INFO)\n"
        f"m = pijax.load_model({str(PRED)!r}); ids = [1, 403, 407, 261]\n"
        "s = m.sparse(mode='relu')\n"
        "import jax\n"
        "print(json.dumps([jax.device_count(), s.setup.backend, float(np.abs(s.logits(ids) - m.logits(ids)).max()),"
        " s.generate(ids, 8).new_ids == m.generate(ids, 8).new_ids, buf.getvalue()]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    n_dev, backend, diff, same, log = json.loads(out.stdout.strip().splitlines()[-1])
    assert n_dev == 1 and backend == ("kernels" if build.available() else "xla")
    assert diff < 1e-4 and same
    assert f"FFN backend: {backend}" in log
