"""The dense engine is the same model as llama.cpp: logits, greedy continuations, the KV-cache path, ReGLU files."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

import pijax
from pijax.io.checkpoint import Checkpoint, load_checkpoint
from pijax.kernels.reference import ffn_activation
from pijax.model.ffn import FFN
from pijax.model.generate import Engine, SamplingConfig
from pijax.model.llama import Llama

DATA = Path(__file__).parent / "data"
REF = DATA / "stories260k_llamacpp.npz"
RELU_FILE = DATA / "powerinfer_model_tiny" / "stories260K_relu.powerinfer.gguf"
N_PROMPTS = 4


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(REF) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def model() -> pijax.Model:
    return pijax.load_model(pijax.paths.STORIES260K)


@pytest.mark.parametrize("i", range(N_PROMPTS))
def test_logits_match_llamacpp(model: pijax.Model, ref: dict[str, np.ndarray], i: int) -> None:
    ids = ref[f"ids_{i}"].tolist()
    assert ids[0] == model.tokenizer.bos_id  # the reference ids include BOS
    logits = model.logits(ids)
    assert logits.shape == (len(ids), model.config.n_vocab) and logits.dtype == np.float32
    diff = np.abs(logits - ref[f"logits_{i}"]).max(axis=-1)
    assert diff.max() <= 1e-4, f"worst position {diff.argmax()}: {diff.max()}"


@pytest.mark.parametrize("i", range(N_PROMPTS))
def test_greedy_continuation_matches_llamacpp(model: pijax.Model, ref: dict[str, np.ndarray], i: int) -> None:
    want = ref[f"gen_{i}"].tolist()
    out = model.generate(ref[f"ids_{i}"].tolist(), max_new_tokens=len(want))
    assert out.new_ids == want
    assert out.text == str(ref[f"gentext_{i}"])


def test_text_prompt_is_encoded_with_bos(model: pijax.Model, ref: dict[str, np.ndarray]) -> None:
    out = model.generate(str(ref["text_0"]), max_new_tokens=8)
    assert out.prompt_ids == ref["ids_0"].tolist()
    assert out.new_ids == ref["gen_0"][:8].tolist()


def test_prefill_equals_token_by_token_decode(model: pijax.Model, ref: dict[str, np.ndarray]) -> None:
    ids = ref["ids_1"].tolist()
    full = model.logits(ids)
    engine = model.engine
    greedy, key = SamplingConfig(), jax.random.key(0)
    n_first = 7
    tok, logits, cache = engine.prefill(ids[:n_first], 32, greedy, key)
    got = [np.asarray(logits[0])]
    assert int(tok[0]) == int(np.argmax(got[0]))
    for pos in range(n_first, len(ids)):
        _, logits, cache = engine.decode_step(cache, np.asarray([ids[pos]], np.int32), pos, greedy, key)
        got.append(np.asarray(logits[0]))
    np.testing.assert_allclose(np.stack(got), full[n_first - 1 :], atol=2e-5, rtol=0)


def test_trace_matches_forward_and_exposes_ffn_inputs(model: pijax.Model, ref: dict[str, np.ndarray]) -> None:
    module = model.module
    tokens = np.asarray(ref["ids_2"])[None]
    logits, records = model.engine.trace(tokens)
    np.testing.assert_allclose(np.asarray(logits[0]), model.logits(tokens[0].tolist()), atol=1e-4, rtol=0)
    cfg = model.config
    assert len(records) == cfg.n_layer
    for block, rec in zip(module.layers, records, strict=True):
        assert rec["ffn_in"].shape == (1, tokens.shape[1], cfg.n_embd)
        assert rec["act"].shape == (1, tokens.shape[1], cfg.n_ff)
        # the FFN output is down_t^T of the recorded activations
        y = block.ffn(block.ffn_norm(rec["ffn_in"]), rec["ffn_in"])
        np.testing.assert_allclose(y, rec["act"] @ block.ffn.w_down_fd[...], atol=1e-5, rtol=0)


class _ScaledFFN(nnx.Module):
    """A stand-in FFN: the dense one's output times a factor (tests that block.ffn is replaceable)."""

    def __init__(self, inner: FFN, factor: float):
        self.inner, self.factor = inner, factor

    def __call__(self, h_btd: jax.Array, ffn_in_btd: jax.Array, pos: jax.Array | int = 0) -> jax.Array:
        return self.factor * self.inner(h_btd, ffn_in_btd, pos)


def test_block_ffn_is_replaceable(ref: dict[str, np.ndarray]) -> None:
    m = pijax.load_model()
    ids = ref["ids_0"].tolist()
    base = m.logits(ids)
    for block in m.module.layers:
        block.ffn = _ScaledFFN(block.ffn, 1.0)
    m.refresh()
    np.testing.assert_allclose(m.logits(ids), base, atol=1e-6, rtol=0)
    m.module.layers[2].ffn.factor = 0.0
    m.refresh()
    assert np.abs(m.logits(ids) - base).max() > 1e-2


def test_powerinfer_file_runs_as_reglu(model: pijax.Model, ref: dict[str, np.ndarray]) -> None:
    relu_file = pijax.load_model(RELU_FILE)
    assert relu_file.config.ffn_act == "relu"
    relu_override = pijax.load_model(pijax.paths.STORIES260K, ffn_act="relu")
    ids = ref["ids_3"].tolist()
    got = relu_file.logits(ids)
    np.testing.assert_allclose(got, relu_override.logits(ids), atol=1e-5, rtol=0)
    assert np.abs(got - model.logits(ids)).max() > 0.1  # not the SiLU model
    assert relu_file.generate(ids, 16).new_ids == relu_override.generate(ids, 16).new_ids


def _numpy_forward(ckpt: Checkpoint, ids: list[int]) -> np.ndarray:
    """An independent float64 reference forward (adjacent-pair RoPE, GQA) for checking the other activations."""
    cfg, w = ckpt.config, ckpt.weights
    t, e, g = len(ids), cfg.head_dim, cfg.n_head // cfg.n_head_kv

    def norm(x: np.ndarray, wt: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + cfg.norm_eps) * wt

    def rope(x: np.ndarray) -> np.ndarray:  # x [T, heads, E]
        i = np.arange(cfg.rope_dim // 2)
        ang = np.arange(t)[:, None, None] * cfg.rope_base ** (-2 * i / cfg.rope_dim)
        x0, x1 = x[..., 0 : cfg.rope_dim : 2], x[..., 1 : cfg.rope_dim : 2]
        out = x.copy()
        out[..., 0 : cfg.rope_dim : 2] = x0 * np.cos(ang) - x1 * np.sin(ang)
        out[..., 1 : cfg.rope_dim : 2] = x0 * np.sin(ang) + x1 * np.cos(ang)
        return out

    x = w.token_embd[ids].astype(np.float64)
    for lw in w.layers:
        a = norm(x, lw.attn_norm)
        q = rope((a @ lw.wq.T).reshape(t, cfg.n_head, e))
        k = rope((a @ lw.wk.T).reshape(t, cfg.n_head_kv, e))
        v = (a @ lw.wv.T).reshape(t, cfg.n_head_kv, e)
        k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
        s = np.einsum("the,she->hts", q, k) / np.sqrt(e)
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        x = x + np.einsum("hts,she->the", p, v).reshape(t, -1) @ lw.wo.T
        hn = norm(x, lw.ffn_norm)
        act = np.asarray(ffn_activation(hn @ lw.gate.T, hn @ lw.up.T, cfg.ffn_act))
        x = x + act @ lw.down_t
    return norm(x, w.output_norm) @ w.output.T


@pytest.mark.parametrize(("act", "rope_dim"), [("silu", 8), ("relu", 8), ("drelu", 8), ("silu", 4)])
def test_forward_matches_a_numpy_reference(ref: dict[str, np.ndarray], act: str, rope_dim: int) -> None:
    """Each FFN activation, and RoPE on only part of each head (rope_dim < head_dim)."""
    ckpt = load_checkpoint(pijax.paths.STORIES260K, ffn_act=act)
    ckpt.config = ckpt.config.replace(rope_dim=rope_dim)
    engine = Engine(Llama(ckpt.config, ckpt.weights, rngs=nnx.Rngs(0)))
    ids = ref["ids_1"].tolist()
    np.testing.assert_allclose(engine.logits(ids), _numpy_forward(ckpt, ids), atol=1e-4, rtol=0)


def test_random_init_runs_and_counts_weight_bytes() -> None:
    cfg = load_checkpoint(pijax.paths.STORIES260K).config.replace(n_layer=2, ffn_act="relu")
    module = Llama(cfg, None, rngs=nnx.Rngs(0))
    n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(module, nnx.Param)))
    row = cfg.n_embd * 4
    assert module.weight_bytes_per_token() == n_params * 4 - cfg.n_vocab * row + row
    out = Engine(module).generate([1, 5, 9], 5, SamplingConfig())
    assert len(out.new_ids) == 5 and all(0 <= i < cfg.n_vocab for i in out.new_ids)


def test_bad_token_ids_are_rejected(model: pijax.Model) -> None:
    with pytest.raises(pijax.PijaxError, match="outside the vocabulary"):
        model.logits([1, model.config.n_vocab])
    with pytest.raises(pijax.PijaxError, match="empty"):
        model.logits([])
    with pytest.raises(pijax.PijaxError, match="integers"):
        model.logits([1.0, 2.5])
