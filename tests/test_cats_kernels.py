"""The CATS-thresholded FFN on the CPU kernels (pijax.kernels.cats): the same neurons as the XLA threshold path
(criterion "cats": |SiLU(gate)| > t), the same output to f32 rounding, at f32/f16 and llama.cpp's block formats;
on random rows and on SmolLM2's own rows, and through `Model.sparse(mode="threshold", criterion="cats")`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pijax.kernels import build
from pijax.kernels.blocks import quantize_blocks
from pijax.kernels.cats import cats_ffn, cats_ffn_reference
from pijax.model.rows import Selector, block_ffn, kernels_run

pytestmark = pytest.mark.skipif(not build.available(), reason=f"CPU kernels unavailable: {build.status()}")

F, D = 512, 256


def _rows(fmt: str, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(F, D)).astype(np.float32) * 0.06 for _ in range(3)]
    if fmt in ("f32", "f16"):
        return [jnp.asarray(w, jnp.float32 if fmt == "f32" else jnp.float16) for w in ws]
    return [quantize_blocks(w, fmt) for w in ws]


def _cut(x: jax.Array, gate: jax.Array, sparsity: float) -> float:
    from pijax.kernels.formats import dequantize

    return float(jnp.quantile(jnp.abs(jax.nn.silu(x @ dequantize(gate).T)), sparsity))


@pytest.mark.parametrize("fmt", ["f32", "f16", "q8_0", "q4_0", "q4_1"])
@pytest.mark.parametrize("m", [1, 3])
def test_kernel_keeps_the_reference_rows_and_sums(fmt: str, m: int) -> None:
    up, gate, down = _rows(fmt)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(m, D)).astype(np.float32))
    t = _cut(x, gate, 0.4)

    def kern(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return cats_ffn(x, up, gate, down, kind="silu", threshold=t, kernel=True)

    assert "pijax_" in jax.jit(kern).lower(x).as_text()  # the C++ path, not a silent fallback
    y, n = jax.jit(kern)(x)
    y_ref, n_ref = cats_ffn_reference(x, up, gate, down, kind="silu", threshold=t)
    np.testing.assert_array_equal(np.asarray(n), np.asarray(n_ref))
    assert int(n.min()) > 0.45 * F and int(n.max()) < 0.75 * F  # about 40% skipped
    scale = float(jnp.abs(y_ref).max())
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), atol=2e-5 * scale, rtol=0)


def test_kernels_backend_equals_the_xla_threshold_path() -> None:
    up, gate, down = _rows("f32", seed=2)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, D)).astype(np.float32))
    sel = Selector("threshold", threshold=_cut(x, gate, 0.5), criterion="cats")
    assert kernels_run(sel, F) and not kernels_run(Selector("threshold", criterion="oracle"), F)
    assert not kernels_run(Selector("threshold", capacity=100, criterion="cats"), F)
    y_k, n_k = block_ffn(x, None, up, gate, down, "silu", sel, "kernels")
    y_x, _ = block_ffn(x, None, up, gate, down, "silu", sel, "xla")
    g = jax.nn.silu(x @ gate.T)
    np.testing.assert_array_equal(np.asarray(n_k), np.asarray((jnp.abs(g) > sel.threshold).sum(-1)))
    np.testing.assert_allclose(np.asarray(y_k), np.asarray(y_x), atol=1e-5 * float(jnp.abs(y_x).max()), rtol=0)


# ---------------------------------------------------------------- SmolLM2 (loaded once for the module)


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    import pijax
    from pijax.corpus import split_windows
    from pijax.sparsity.thresholds import calibrate_thresholds

    m = pijax.load_model(smollm2_path)
    win = split_windows(m.tokenizer, None, "train", 64, 4 * 64)
    cut = calibrate_thresholds(m.module, win, 0.4, criterion="cats", progress=False)
    return m, cut


def test_smollm2_cats_on_the_kernels_matches_xla(smollm2) -> None:
    from pijax.model.sparse_ffn import sparsify

    m, cut = smollm2
    ids = m.tokenizer.encode("Once upon a time, a little fox", bos=True)[:8]
    outs = {}
    for backend in ("kernels", "xla"):
        s = m.sparse("oracle", backend="xla")  # a clone with every row; then CATS on `backend`
        sparsify(s, mode="threshold", act_thresholds=cut, criterion="cats", backend=backend)
        outs[backend] = np.asarray(s.logits(ids))
    dense = np.asarray(m.logits(ids))
    k, x = outs["kernels"], outs["xla"]
    assert np.abs(k - x).max() < 2e-3 * np.abs(x).max()  # same selection: the sums differ by f32 rounding only
    assert (k.argmax(-1) == x.argmax(-1)).all()
    assert np.abs(k - dense).max() > 1e-2  # and CATS at 40% did change the logits


@pytest.mark.parametrize("fmt", ["q8_0", "q4_1"])
def test_smollm2_block_rows_keep_the_reference_rows(smollm2, smollm2_path, fmt: str) -> None:
    """On SmolLM2's own layer-5 rows in a block format, with its own normed FFN input: the kernel keeps exactly
    the rows the reference keeps (the gate product on the same 8-bit input) and sums them alike."""
    from pijax.io.gguf import read_gguf
    from pijax.model.load_blocks import block_matrix

    m, cut = smollm2
    f = read_gguf(smollm2_path)
    up, gate = (block_matrix(f, f"blk.5.ffn_{n}.weight", fmt) for n in ("up", "gate"))
    down = block_matrix(f, "blk.5.ffn_down.weight", fmt, transpose=True)
    ids = jnp.asarray([m.tokenizer.encode("The cat sat on the mat and", bos=True)[:6]])
    _, trace = m.module.trace(ids)
    block = m.module.layers[5]
    h = block.ffn_norm(trace[5]["ffn_in"])[0]  # [6, D]
    y, n = jax.jit(lambda h: cats_ffn(h, up, gate, down, kind="silu", threshold=float(cut[5]), kernel=True))(h)
    y_ref, n_ref = cats_ffn_reference(h, up, gate, down, kind="silu", threshold=float(cut[5]))
    np.testing.assert_array_equal(np.asarray(n), np.asarray(n_ref))
    assert 0.2 < 1 - float(n.mean()) / m.config.n_ff < 0.7  # near the 40% calibrated for (6 tokens vary)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), atol=1e-4 * float(jnp.abs(y_ref).max()), rtol=0)


def test_model_sparse_cats_picks_the_kernels_and_equals_xla() -> None:
    import pijax
    from pijax.paths import STORIES260K

    m = pijax.load_model(STORIES260K)
    ids = m.tokenizer.encode("Once upon a time", bos=True)
    got = {
        b: m.sparse("threshold", criterion="cats", sparsity=0.4, calibration_tokens=2048, backend=b)
        for b in ("auto", "xla")
    }
    assert got["auto"].setup.backend == "kernels" and got["xla"].setup.backend == "xla"
    np.testing.assert_array_equal(got["auto"].setup.act_thresholds, got["xla"].setup.act_thresholds)
    k, x = np.asarray(got["auto"].logits(ids)), np.asarray(got["xla"].logits(ids))
    assert np.abs(k - x).max() < 1e-3 * np.abs(x).max() and (k.argmax(-1) == x.argmax(-1)).all()
    assert not np.allclose(k, np.asarray(m.logits(ids)), atol=1e-3)  # 40% of the neurons were skipped
