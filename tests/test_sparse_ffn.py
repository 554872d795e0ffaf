"""The single-device sparse FFN: exactness against dense (oracle, predictor), capacity selection, cheaper work,
and clear errors for inputs that do not fit the model."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pijax
from pijax.errors import ConfigError, DataError, TensorError
from pijax.io.weights import LayerWeights, PredictorWeights
from pijax.model.ffn import FFN
from pijax.model.generate import SamplingConfig
from pijax.model.predictor import Predictor
from pijax.model.rows import Selector
from pijax.model.sparse_ffn import calibrate_capacities, densify, mask_counts, sparsify
from pijax.sparsity.stats import ActivationStats

TINY = Path(__file__).parent / "data" / "powerinfer_model_tiny" / "stories260K_relu.powerinfer.gguf"
PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play"


@pytest.fixture(scope="module")
def relu_model():
    return pijax.load_model(ffn_act="relu")


@pytest.fixture(scope="module")
def prompt_ids(relu_model):
    return relu_model.tokenizer.encode(PROMPT, bos=True)


def _logits_fn(model):
    gd, st = nnx.split(model.module)
    return jax.jit(lambda t: nnx.merge(gd, st)(t))


def _teacher_forced_decode(model, ids, steps=6):
    """Prefill logits of the last prompt token, then `steps` one-token decode logits on a fixed continuation."""
    eng = model.engine
    greedy = SamplingConfig(0.0, 0, 1.0)
    key = jax.random.key(0)
    _, logits, cache = eng.prefill(ids, 64, greedy, key)
    out = [np.asarray(logits)]
    for i in range(steps):
        tok = jnp.asarray([ids[1 + i]], jnp.int32)  # a fixed token stream, the same for both models
        _, logits, cache = eng.decode_step(cache, tok, len(ids) + i, greedy, key)
        out.append(np.asarray(logits))
    return np.concatenate(out)


def _true_capacities(model, ids):
    """Per-layer capacity = the most active neurons any token of `ids` has (so nothing is ever dropped)."""
    counts = mask_counts(model, np.asarray([ids], np.int32), mode="oracle")
    return [int(c) for c in counts.max(axis=0)]


def test_oracle_relu_sparse_logits_equal_dense_prefill_and_decode(relu_model, prompt_ids):
    model = relu_model
    ids = prompt_ids
    dense_full = model.logits(ids)
    dense_dec = _teacher_forced_decode(model, ids)
    caps = _true_capacities(model, ids + ids[1:8])
    assert max(caps) < model.config.n_ff  # the cap really binds the gather size
    sparsify(model, mode="oracle", capacities=caps)
    try:
        assert model.module.layers[0].ffn.selector == Selector("oracle", capacity=caps[0])
        np.testing.assert_allclose(model.logits(ids), dense_full, atol=1e-5, rtol=0)  # prefill: masked path
        np.testing.assert_allclose(_teacher_forced_decode(model, ids), dense_dec, atol=1e-5, rtol=0)  # gathers
    finally:
        densify(model)
    assert model.module.layers[0].ffn.selector.mode == "dense"
    np.testing.assert_array_equal(model.logits(ids), dense_full)


def test_oracle_gather_path_for_many_tokens_equals_dense(relu_model, prompt_ids):
    model = relu_model
    tok = jnp.asarray([prompt_ids])
    dense = _logits_fn(model)(tok)
    sparsify(model, mode="oracle", capacities=_true_capacities(model, prompt_ids), max_gather_rows=1 << 20)
    try:
        np.testing.assert_allclose(_logits_fn(model)(tok), dense, atol=1e-5, rtol=0)
    finally:
        densify(model)


class _MaskedDense(nnx.Module):
    """Reference: the dense FFN with the predictor's mask applied to act (every neuron computed)."""

    def __init__(self, dense, predictor, capacity):
        self.dense, self.predictor, self.capacity = dense, predictor, capacity

    def activations(self, h):
        return self.dense.activations(h)

    def __call__(self, h, ffn_in, pos=0):
        logits = self.predictor(ffn_in)
        kth = jax.lax.top_k(logits, self.capacity)[0][..., -1:]
        keep = (logits >= 0.0) & (logits >= kth)
        act = jnp.where(keep, self.dense.activations(h), 0.0)
        return jnp.einsum("btf,fd->btd", act, self.dense.w_down_fd[...])


@pytest.mark.parametrize("cap_kind", ["all_predicted", "below_predicted"])
def test_predictor_path_on_powerinfer_model_matches_masked_dense(cap_kind):
    model = pijax.load_model(TINY)
    preds = model.checkpoint.weights.predictors
    assert preds is not None and model.config.ffn_act == "relu"
    ids = model.tokenizer.encode(PROMPT, bos=True)
    n_pred = mask_counts(model, np.asarray([ids], np.int32), mode="predictor")
    caps = [int(c) for c in n_pred.max(axis=0)]
    if cap_kind == "below_predicted":
        caps = [max(1, int(c) // 2) for c in n_pred.min(axis=0)]  # the cap drops the lowest-logit neurons
    tok = jnp.asarray([ids[:4]])  # 4 tokens: the gather path
    for i, block in enumerate(model.module.layers):
        block.ffn = _MaskedDense(block.ffn, Predictor.from_weights(preds[i]), caps[i])
    ref = _logits_fn(model)(tok)
    ref_long = _logits_fn(model)(jnp.asarray([ids]))
    for block in model.module.layers:
        block.ffn = block.ffn.dense
    sparsify(model, mode="predictor", capacities=caps)  # predictors default to the checkpoint's
    np.testing.assert_allclose(_logits_fn(model)(tok), ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(_logits_fn(model)(jnp.asarray([ids])), ref_long, atol=1e-5, rtol=0)


def _layer(f=64, d=16, seed=0, gate=True):
    rng = np.random.default_rng(seed)
    w = {k: rng.normal(size=(f, d)).astype(np.float32) for k in ("up", "gate", "down_t")}
    lw = LayerWeights(None, None, None, None, None, None, w["up"], w["gate"] if gate else None, w["down_t"])
    cfg = pijax.load_model().config.replace(n_ff=f, n_embd=d, ffn_act="relu")
    return cfg, FFN.from_weights(cfg, lw, rngs=nnx.Rngs(0)), w


def _sparse(cfg, dense, **selector):
    pred = selector.pop("predictor", None)
    return FFN(cfg, dense.w_up_fd, dense.w_gate_fd, dense.w_down_fd, selector=Selector(**selector), predictor=pred)


@pytest.mark.parametrize("n_tokens", [1, 3, 12])
def test_capacity_keeps_the_top_scoring_active_rows(n_tokens):
    cfg, dense, w = _layer()
    cap = 9
    sp = _sparse(cfg, dense, mode="oracle", capacity=cap)
    h = np.random.default_rng(1).normal(size=(1, n_tokens, cfg.n_embd)).astype(np.float32)
    got = np.asarray(sp(jnp.asarray(h), jnp.asarray(h)))
    act = np.maximum(h @ w["gate"].T, 0) * (h @ w["up"].T)
    order = np.argsort(-np.abs(act), axis=-1, kind="stable")[..., :cap]
    keep = np.zeros_like(act, bool)
    np.put_along_axis(keep, order, True, axis=-1)
    keep &= act != 0
    assert (keep.sum(-1) == cap).all()  # more than `cap` neurons were active, so the cap really cut
    want = np.where(keep, act, 0) @ w["down_t"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_decode_step_does_a_fraction_of_the_dense_work():
    """The gathered path's compiled cost scales with the capacity, not with n_ff (no timing involved)."""
    cfg, dense, _ = _layer(f=2048, d=256)
    rngs = nnx.Rngs(0)
    pred = Predictor(None, cfg.n_embd, cfg.n_ff, 16, rngs=rngs)
    sp = _sparse(cfg, dense, mode="predictor", capacity=cfg.n_ff // 10, predictor=pred)
    h = jnp.ones((1, 1, cfg.n_embd), jnp.float32)

    def cost(mod):
        gd, st = nnx.split(mod)
        c = jax.jit(lambda s, x: nnx.merge(gd, s)(x, x)).lower(st, h).compile().cost_analysis()
        c = c[0] if isinstance(c, list) else c
        return c["flops"]

    # predictor (rank 16) + 10% of the 3 row sets: well under a third of the dense work. (XLA's "bytes
    # accessed" counts a gather's whole operand, so the bytes saved are measured in the benchmark instead.)
    assert cost(sp) < 0.3 * cost(dense)


def test_predictor_module_matches_formula_and_checks_shapes():
    rng = np.random.default_rng(0)
    pw = PredictorWeights(rng.normal(size=(8, 16)).astype(np.float32), rng.normal(size=(32, 8)).astype(np.float32))
    p = Predictor(pw, 16, 32, 8, rngs=nnx.Rngs(0))
    x = rng.normal(size=(2, 3, 16)).astype(np.float32)
    want = np.maximum(x @ pw.fc1.T, 0) @ pw.fc2.T
    np.testing.assert_allclose(np.asarray(p(jnp.asarray(x))), want, rtol=1e-5, atol=1e-5)
    assert p.n_params == 8 * 16 + 32 * 8
    with pytest.raises(TensorError, match="do not fit"):
        Predictor(pw, 16, 32, 4, rngs=nnx.Rngs(0))


def test_calibrate_capacities_from_histogram_and_counts():
    hist = np.zeros((2, 11), np.int64)
    hist[0, 3] = 90
    hist[0, 7] = 10
    hist[1, 10] = 100
    stats = ActivationStats(np.zeros((2, 10)), np.zeros((2, 10)), 100, "relu", None, "m", "c", active_hist=hist)
    assert calibrate_capacities(stats, quantile=0.9) == [3, 10]
    assert calibrate_capacities(stats, quantile=0.95) == [7, 10]
    assert calibrate_capacities(stats, quantile=0.95, multiple=4) == [8, 10]  # rounded up, capped at n_ff
    counts = np.array([[1, 5], [2, 6], [9, 7]])
    assert calibrate_capacities(counts, quantile=1.0, n_ff=10) == [9, 7]
    assert calibrate_capacities(counts, quantile=0.5, slack=1.5, n_ff=10) == [3, 9]


def test_bad_inputs_give_clear_errors(relu_model):
    model = relu_model
    n = model.config.n_layer
    with pytest.raises(DataError, match=r"capacities are given for 3 layers, the model has 5"):
        sparsify(model, mode="oracle", capacities=[10, 10, 10])
    with pytest.raises(ConfigError, match="needs predictors"):
        sparsify(model, mode="predictor")
    with pytest.raises(ConfigError, match="act_thresholds"):
        sparsify(model, mode="threshold")
    with pytest.raises(ConfigError, match="capacity 0"):
        sparsify(model, mode="oracle", capacities=[0] * n)
    other = [PredictorWeights(np.zeros((4, 32), np.float32), np.zeros((172, 4), np.float32))] * n
    with pytest.raises(DataError, match="not for a model with n_embd 64"):
        sparsify(model, mode="predictor", predictors=other)
    tiny = pijax.load_model(TINY).checkpoint.weights.predictors
    with pytest.raises(DataError, match="predictors are given for 4 layers"):
        sparsify(model, mode="predictor", predictors=tiny[:4])
    assert all(b.ffn.selector.mode == "dense" for b in model.module.layers)  # a failed call changed nothing


@pytest.mark.parametrize("n_tokens", [1, 12])
def test_one_ffn_module_changes_selector_and_backend_over_the_same_weights(n_tokens):
    cfg, ffn, _ = _layer()
    up = ffn.w_up_fd
    h = jnp.asarray(np.random.default_rng(2).normal(size=(1, n_tokens, cfg.n_embd)).astype(np.float32))
    dense = np.asarray(ffn(h, h))
    for sel, backend in ((Selector("relu"), "kernels"), (Selector("relu"), "xla"), (Selector("oracle"), "xla")):
        ffn.configure(sel, backend)
        assert ffn.w_up_fd is up  # no copy of the rows
        np.testing.assert_allclose(np.asarray(ffn(h, h)), dense, atol=1e-5 * np.abs(dense).max(), rtol=0)
    with pytest.raises(ConfigError, match="needs the dense activations"):
        ffn.configure(Selector("threshold", threshold=0.1), "kernels")
    with pytest.raises(ConfigError, match="needs a predictor"):
        ffn.configure(Selector("predictor"))
    assert ffn.selector == Selector("oracle") and ffn.backend == "xla"  # a refused change left it as it was
    with pytest.raises(ConfigError, match="selector mode 'bogus' is not one of"):
        Selector("bogus")
    with pytest.raises(ConfigError, match="FFN backend 'gpu' is not one of"):
        ffn.configure(backend="gpu")
