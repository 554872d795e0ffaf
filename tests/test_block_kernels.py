"""llama.cpp's block formats (Q8_0, Q4_0, Q4_1): the layout against gguf's own dequantizer, each C++ kernel against
its XLA reference (the same 8-bit quantized input, so they differ by f32 summation order only), the AVX2 build,
and GGUF files loaded straight into the formats (stories260K, a Q8_0 copy of it, SmolLM2's Q4_1 file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pijax
from pijax.errors import ConfigError
from pijax.io.convert import convert_gguf
from pijax.io.gguf import read_gguf
from pijax.kernels import build, ops
from pijax.kernels.blocks import BLOCK_FORMATS, BlockRows, quantize_acts, quantize_blocks
from pijax.model.convert import use_kernels
from pijax.model.generate import SamplingConfig
from pijax.paths import STORIES260K

KINDS = tuple(BLOCK_FORMATS)
needs_kernels = pytest.mark.skipif(not build.available(), reason=f"no CPU kernels: {build.status()}")


def _rand(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * scale


def _close(a: jax.Array, b: jax.Array, rel: float = 2e-5) -> None:
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, atol=rel * max(1.0, float(np.abs(b).max())), rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_block_layout_is_llamacpps(kind: str) -> None:
    w = _rand((5, 96), 0)
    q = quantize_blocks(w, kind)
    assert q.shape == (5, 96) and q[...] is q and q.nbytes == 5 * 3 * BLOCK_FORMATS[kind][0]
    want = gguf.quants.dequantize(np.asarray(q.blocks), BLOCK_FORMATS[kind][1])
    np.testing.assert_array_equal(np.asarray(q.dequantize()), want)
    assert np.abs(want - w).max() < (0.02 if kind == "q8_0" else 0.3)


def test_input_quantization_is_8_bit_blocks() -> None:
    x = jnp.asarray(_rand((2, 64), 1))
    xq = np.asarray(quantize_acts(x)).reshape(2, 2, 32)
    amax = np.abs(np.asarray(x)).reshape(2, 2, 32).max(-1, keepdims=True)
    scale = (amax / 127).astype(np.float16).astype(np.float32)
    q = xq / scale
    np.testing.assert_allclose(q, np.round(q), atol=1e-4)
    assert np.abs(q).max() <= 127.0 + 1e-4
    assert np.abs(xq - np.asarray(x).reshape(2, 2, 32)).max() <= float(scale.max())


@needs_kernels
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("m", "d", "n"), [(1, 64, 172), (3, 96, 37), (1, 2048, 300), (8, 576, 70)])
def test_block_linear_kernel_matches_the_reference(kind: str, m: int, d: int, n: int) -> None:
    x, w = jnp.asarray(_rand((m, d), 2)), quantize_blocks(_rand((n, d), 3, 0.05), kind)
    y, ref = ops.linear(x, w, use_kernel=True), ops.linear(x, w, use_kernel=False)
    _close(y, ref)
    # the reference is the product on the 8-bit input: within its rounding of the f32 product
    f32 = jnp.einsum("md,nd->mn", x, w.dequantize())
    assert 1e-4 < float(jnp.abs(ref - f32).max()) < 0.05 * float(jnp.abs(f32).max())


@needs_kernels
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("act", ["relu", "silu", "drelu"])
@pytest.mark.parametrize("gated", [True, False])
def test_block_sparse_ffn_kernel_matches_the_reference(kind: str, act: str, gated: bool) -> None:
    m, d, f = 3, 96, 200
    x, logits = jnp.asarray(_rand((m, d), 4)), jnp.asarray(_rand((m, f), 5))
    up, gate, down = (quantize_blocks(_rand((f, d), s, 0.1), kind) for s in (6, 7, 8))
    gate = gate if gated else None
    for cap in (f, 7):
        ref, n_ref = ops.sparse_ffn_reference(x, logits, up, gate, down, kind=act, threshold=0.3, capacity=cap)
        for skip in (True, False):
            y, n = ops.sparse_ffn(
                x, logits, up, gate, down, kind=act, threshold=0.3, capacity=cap, skip_inactive=skip, use_kernel=True
            )
            np.testing.assert_array_equal(n, n_ref)
            _close(y, ref)
    y, n = ops.sparse_ffn(x, None, up, gate, down, kind=act, use_kernel=True)
    assert (np.asarray(n) == f).all()
    _close(y, ops.sparse_ffn_reference(x, None, up, gate, down, kind=act)[0])


@pytest.mark.skipif("avx2" not in build._cpu_flags(), reason="this CPU has no AVX2 to run the AVX2 build on")
def test_block_kernels_avx2_build(tmp_path: Path) -> None:
    """The AVX2 code (vpmaddubsw instead of VNNI), built with -march=haswell, in a process of its own."""
    code = (
        "import json, numpy as np, jax.numpy as jnp\n"
        "from pijax.kernels import build, ops\n"
        "from pijax.kernels.blocks import quantize_blocks\n"
        "r = np.random.default_rng(0); f = lambda *s: r.normal(size=s).astype(np.float32)\n"
        "x, lg = jnp.asarray(f(3, 192)), jnp.asarray(f(3, 96))\n"
        "rel = lambda p, q: float(jnp.abs(p - q).max() / jnp.abs(q).max())\n"
        "out = []\n"
        "for kind in ('q8_0', 'q4_0', 'q4_1'):\n"
        "    u, g, d = (quantize_blocks(f(96, 192) * 0.1, kind) for _ in range(3))\n"
        "    kw = dict(kind='silu', threshold=0.2, capacity=40)\n"
        "    a = ops.sparse_ffn(x, lg, u, g, d, use_kernel=True, **kw)[0]\n"
        "    b = ops.sparse_ffn(x, lg, u, g, d, use_kernel=False, **kw)[0]\n"
        "    out.append(max(rel(a, b), rel(ops.linear(x, u, use_kernel=True), ops.linear(x, u, use_kernel=False))))\n"
        "    p = jnp.asarray(f(13, 192))  # a prompt: the multi-token tiles\n"
        "    out.append(rel(ops.linear(p, u, use_kernel=True), ops.linear(p, u, use_kernel=False)))\n"
        "print(json.dumps([build.isa(), out]))\n"
    )
    env = dict(os.environ, PIJAX_KERNEL_MARCH="haswell", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    isa, diffs = json.loads(out.stdout.strip().splitlines()[-1])
    assert isa == "avx2"
    assert max(diffs) < 1e-5


def _decode_logits(model: pijax.Model, ids: list[int], start: int) -> np.ndarray:
    """Logits of positions start..len(ids)-1, one decode step each (the kernel path: one token per call)."""
    g, key = SamplingConfig(), jax.random.key(0)
    _, logits, cache = model.engine.prefill(ids[:start], 64, g, key)
    out = []
    for i in range(start, len(ids)):
        _, logits, cache = model.engine.decode_step(cache, jnp.asarray([ids[i]], jnp.int32), i, g, key)
        out.append(np.asarray(logits).reshape(-1))
    return np.stack(out)


@pytest.fixture(scope="module")
def stories_f32() -> tuple[pijax.Model, list[int], np.ndarray]:
    model = pijax.load_model(STORIES260K)
    ids = model.tokenizer.encode("Once upon a time, there was a little girl named Lily", bos=True)
    return model, ids, np.asarray(model.engine.logits(ids))


@needs_kernels
@pytest.mark.parametrize("dtype", ["q8_0", "q4_1"])
def test_stories_decode_on_the_kernels_equals_the_reference_forward(dtype: str, stories_f32) -> None:
    _, ids, f32 = stories_f32
    model = pijax.load_model(STORIES260K, dtype=dtype)
    block = model.module.layers[0]
    assert block.ffn.w_down_df is not None and block.ffn.selector.mode == "dense"  # llama.cpp's products
    assert block.attn.w_q_nd[...].kind == dtype
    full = np.asarray(model.engine.logits(ids))  # more than 8 tokens: the multi-token kernels
    steps = _decode_logits(model, ids, 4)  # one token per call: the C++ kernels
    # a last-bit difference in a layer's input can flip one rounding of its 8-bit quantization: allow a few
    # of those (each moves a logit by about a quantization step), far below the format's own error
    span = float(np.ptp(full))
    np.testing.assert_allclose(steps, full[4:], atol=0.01 * span, rtol=0)
    assert (steps.argmax(-1) == full[4:].argmax(-1)).mean() >= 0.9
    assert np.abs(full - f32).max() < (0.05 if dtype == "q8_0" else 0.3) * span


def test_a_q8_0_file_loads_its_bytes_and_decodes_like_f32(tmp_path: Path, stories_f32) -> None:
    _, ids, f32 = stories_f32
    path = convert_gguf(STORIES260K, tmp_path / "stories-q8_0.gguf", "q8_0", progress=False)
    model = pijax.load_model(path, dtype="native")
    wq = model.module.layers[0].attn.w_q_nd[...]
    assert isinstance(wq, BlockRows) and wq.kind == "q8_0"
    raw = np.asarray(read_gguf(path).raw("blk.0.attn_q.weight")).reshape(wq.blocks.shape)
    np.testing.assert_array_equal(np.asarray(wq.blocks), raw)  # the file's bytes, no f32 round trip
    logits = np.asarray(model.engine.logits(ids))
    assert np.abs(logits - f32).max() < 0.05 * float(np.ptp(f32))
    assert (logits.argmax(-1) == f32.argmax(-1)).mean() >= 0.9


@needs_kernels
def test_kernel_ffn_runs_block_rows_sparse(stories_f32) -> None:
    """The FFN on the kernels with Q8_0 rows (down_t re-quantized along D): equals the f32 function up to that
    re-quantization."""
    _, ids, f32 = stories_f32
    m = pijax.load_model(STORIES260K)
    use_kernels(m, "q8_0")
    assert m.module.layers[0].ffn.backend == "kernels"
    assert m.module.layers[0].ffn.w_down_fd[...].kind == "q8_0"
    steps = _decode_logits(m, ids, 4)
    assert np.abs(steps - f32[4:]).max() < 0.05 * float(np.ptp(f32))


def test_unknown_load_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        pijax.load_model(STORIES260K, dtype="q3_k")


@pytest.fixture(scope="module")
def smollm2_native(smollm2_path: Path) -> pijax.Model:
    return pijax.load_model(smollm2_path, dtype="native")


@needs_kernels
def test_smollm2_native_keeps_the_files_types_and_agrees_with_llamacpp(smollm2_native, smollm2_path) -> None:
    llama = smollm2_native.module
    assert llama.layers[0].attn.w_q_nd[...].kind == "q4_1" and llama.w_out_vd[...].kind == "q8_0"
    assert llama.layers[0].ffn.w_down_df[...].kind == "q4_1"
    raw = np.asarray(read_gguf(smollm2_path).raw("blk.3.ffn_down.weight"))
    np.testing.assert_array_equal(np.asarray(llama.layers[3].ffn.w_down_df[...].blocks).reshape(-1), raw)
    z = np.load(Path(__file__).parent / "data" / "smollm2_llamacpp.npz")
    seq = np.concatenate([z["ids_0"], z["gen_0"]]).tolist()[:24]
    # teacher-forced, one decode step (kernel call) per position, against llama.cpp's top-1 (on the F32 copy)
    steps = _decode_logits(smollm2_native, seq, 1)
    assert np.mean(steps.argmax(-1) == z["top_ids_0"][1:24, 0]) >= 0.9
