"""The multi-token (prefill) kernels: a prompt's row products and dense FFN in every weight format against the XLA
reference, odd token and row counts, each token's result equal to the one-token (decode) kernel's, and a model's
prefill routed through them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pijax
from pijax.kernels import build, formats, ops
from pijax.kernels.blocks import BLOCK_FORMATS, quantize_blocks
from pijax.paths import STORIES260K

needs_kernels = pytest.mark.skipif(not build.available(), reason=f"no CPU kernels: {build.status()}")
ALL = (*formats.WEIGHT_FORMATS, *BLOCK_FORMATS)
# More tokens than the one-token path takes (ops.MAX_KERNEL_TOKENS), not a multiple of the 4-token tile.
T = 13


def _rand(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * scale


def _weight(fmt: str, shape: tuple[int, int], seed: int) -> formats.Weight:
    w = _rand(shape, seed, 0.1)
    return quantize_blocks(w, fmt) if fmt in BLOCK_FORMATS else formats.to_format(jnp.asarray(w), fmt)


def _close(a: jax.Array, b: jax.Array, rel: float = 2e-5) -> None:
    """Equal up to f32 summation order: within rel of the largest output."""
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, atol=rel * max(1.0, float(np.abs(b).max())), rtol=0)


@needs_kernels
@pytest.mark.parametrize("fmt", ALL)
def test_prompt_rows_match_the_reference_and_the_decode_kernel(fmt: str) -> None:
    d = 96 if fmt in BLOCK_FORMATS else 100  # element formats: a row tail past the last 16 lanes too
    x, w = jnp.asarray(_rand((T, d), 1)), _weight(fmt, (37, d), 2)
    fn = jax.jit(lambda x, w: ops.linear(x, w, use_kernel=True, f32_kernel=True))
    assert "stablehlo.custom_call @pijax_" in fn.lower(x, w).as_text()  # the kernel, not the reference
    y = fn(x, w)
    _close(y, ops.linear(x, w, use_kernel=False))
    # T=1 is the decode kernel: each token's row of a prompt's product is that kernel's result, bit for bit
    one = np.concatenate([np.asarray(fn(x[i : i + 1], w)) for i in range(T)])
    np.testing.assert_array_equal(np.asarray(y), one)


@needs_kernels
@pytest.mark.parametrize("fmt", ["f16", "bf16", "int8", *BLOCK_FORMATS])
@pytest.mark.parametrize(("kind", "gated"), [("silu", True), ("relu", False)])
def test_prompt_dense_ffn_matches_the_reference(fmt: str, kind: str, gated: bool) -> None:
    d, f = 96, 75  # 75 rows: not a multiple of the row tile
    x = jnp.asarray(_rand((T, d), 3))
    up, gate, down = (_weight(fmt, (f, d), s) for s in (4, 5, 6))
    gate = gate if gated else None
    fn = jax.jit(lambda x, u, g, w: ops.sparse_ffn(x, None, u, g, w, kind=kind, use_kernel=True))
    if fmt not in BLOCK_FORMATS:  # block down_t rows (a sparse load's) go down in XLA
        assert "pijax_rows_tdot" in fn.lower(x, up, gate, down).as_text()
    y, n = fn(x, up, gate, down)
    ref, n_ref = ops.sparse_ffn_reference(x, None, up, gate, down, kind=kind)
    assert (np.asarray(n) == f).all() and (np.asarray(n_ref) == f).all()
    _close(y, ref, 5e-5)


@needs_kernels
@pytest.mark.parametrize("fmt", ["f16", "int8"])
def test_prompt_down_projection_matches_xla(fmt: str) -> None:
    a = jnp.asarray(_rand((T, 75), 7))
    w = _weight(fmt, (75, 100), 8)  # 100 columns: the column tail runs
    y = jax.jit(ops.down_tdot)(a, w)
    _close(y, jnp.einsum("mf,fd->md", a, formats.dequantize(w)))


@needs_kernels
@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_a_models_prefill_runs_on_the_kernels(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_model(dtype=...)'s prefill of a prompt longer than the one-token path runs its products on the
    kernels, and its logits are the reference's."""
    model = pijax.load_model(STORIES260K, dtype=dtype)
    ids = model.tokenizer.encode("Once upon a time, there was a little girl named Lily", bos=True)
    tokens = jnp.asarray([ids], jnp.int32)
    assert len(ids) > ops.MAX_KERNEL_TOKENS
    hlo = jax.jit(lambda t: model.module(t)).lower(tokens).as_text()
    wanted = ("pijax_qrows_dot",) if dtype == "q8_0" else ("pijax_rows_dot3", "pijax_rows_dot", "pijax_rows_tdot")
    assert all(f"stablehlo.custom_call @{t}(" in hlo for t in wanted)
    got = np.asarray(jax.jit(lambda t: model.module(t))(tokens))[0]
    monkeypatch.setattr(build, "available", lambda: False)  # the same weights through the XLA reference
    ref = np.asarray(jax.jit(lambda t: model.module(t))(tokens))[0]
    # Q8_0: a last-bit difference in a layer's input can flip one rounding of its 8-bit quantization (a
    # quantization step of one logit), as in test_block_kernels
    np.testing.assert_allclose(got, ref, atol=(1e-4 if dtype == "f16" else 0.01) * float(np.ptp(ref)), rtol=0)
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
