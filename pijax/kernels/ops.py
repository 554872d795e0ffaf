"""The two kernel operations, each with its C++ path (jax.ffi, few tokens) and its pure-JAX reference.

- `linear(x, w)`: x [..., D] times the rows of w [N, D] -> [..., N], for any weight format (llama.cpp's block
  formats, `BlockRows`, go to `pijax.kernels.qops`, which quantizes x to 8 bits as llama.cpp does); `linear3`:
  three of them on the same x (attention's q, k, v) in one kernel call.
- `sparse_ffn(x, logits, up, gate, down_t, ...)`: per token, the neurons whose predictor logit >= threshold
  (at most `capacity`, the top-scoring, as `pijax.kernels.reference.select_rows`), or every neuron when
  `logits` is None, through act(gate, up) and the down projection: y [M, D], and how many neurons each token
  selected [M].

The C++ path is taken on the CPU backend when the library is available (see `pijax.kernels.build`): row
products (`linear`, `linear3`, and a dense `sparse_ffn`) for any number of tokens, a prompt's through the
multi-token tiles (cpu_tiles.inc: each row read once for all tokens, every token's sums those of the one-token
kernel); a predictor-gated `sparse_ffn` for at most `MAX_KERNEL_TOKENS` tokens. Otherwise, or with
`use_kernel=False`, the reference runs: dequantize to f32, dense products, the selection as a mask. Both compute
in f32 and agree to rounding (the kernel sums in another order). For f32 weights `linear` takes the kernel for
large matrices and few tokens on a single CPU device (see `set_f32_kernel`); a prompt's f32 products stay XLA's
dot, which is as fast as the tiles there (experiments/bench/micro/prefill_tiles.py).
Dimension legend: see `pijax.model.layers`; M = tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from pijax.config import FfnActivation
from pijax.kernels import build
from pijax.kernels.blocks import BlockRows
from pijax.kernels.formats import QuantRows, Weight, dequantize
from pijax.kernels.qops import block_linear, block_sparse_ffn, block_sparse_ffn_reference
from pijax.kernels.reference import down_project, ffn_activation, keep_mask, rows_activation

MAX_KERNEL_TOKENS = 8
# f32 matrices at least this large (elements) go through the kernel by default: on a chain of a decode step's
# matvecs it reads f32 ~15% faster than XLA's dot (experiments/bench/README.md); below it XLA's inline dot
# avoids the custom call's fixed cost.
F32_KERNEL_MIN_ELEMENTS = 1 << 18
_ACT_CODES = {"silu": 0, "relu": 1, "drelu": 2}
_NO_SCALE = np.zeros((0,), np.float32)
_f32_kernel: bool | None = None
_one_device: bool | None = None


def _data_scale(w: Weight) -> tuple[jax.Array, jax.Array]:
    if isinstance(w, QuantRows):
        return w.q, w.scale
    return w, jnp.asarray(_NO_SCALE)


def rows_kernel_ok(use_kernel: bool | None = None) -> bool:
    """Whether row products (any number of tokens) take the C++ path. use_kernel None: when available on jax's
    default backend; True: whenever the library loads (the caller places the call on a CPU device, as the hybrid
    engine's host part does on a GPU machine)."""
    if use_kernel is False:
        return False
    return build.load() is not None if use_kernel else build.available()


def kernel_ok(n_tokens: int, use_kernel: bool | None = None) -> bool:
    """Whether a predictor-gated sparse FFN on n_tokens tokens takes the C++ path (as `rows_kernel_ok`, for at
    most MAX_KERNEL_TOKENS tokens)."""
    return n_tokens <= MAX_KERNEL_TOKENS and rows_kernel_ok(use_kernel)


def set_f32_kernel(on: bool | None) -> bool | None:
    """Route f32 `linear` calls of few tokens to the C++ kernel always (True), never (False), or, by default
    (None), for matrices of at least F32_KERNEL_MIN_ELEMENTS in a one-device program (`one_device`; without it:
    when jax sees a single device. A custom call cannot be partitioned, so sharded layouts keep XLA's dot). Returns the old setting; takes effect for functions
    traced afterwards."""
    global _f32_kernel
    old, _f32_kernel = _f32_kernel, on
    return old


@contextlib.contextmanager
def one_device(on: bool | None) -> Iterator[None]:
    """Trace under this when the program's arrays all live on one device (True) or may be partitioned (False):
    the default f32 rule then takes the kernel by that, not by how many devices jax sees. (A custom call cannot
    be partitioned, but a one-device program beside other devices, as the bench's engines next to its virtual
    host device, has nothing to partition; with XLA's dots there it ran two thread pools on the same cores.)
    None leaves the enclosing setting as it is."""
    global _one_device
    old, _one_device = _one_device, (_one_device if on is None else on)
    try:
        yield
    finally:
        _one_device = old


def _single_device() -> bool:
    return jax.device_count() == 1 if _one_device is None else _one_device


def _f32_via_kernel(size: int, n_tokens: int, f32_kernel: bool | None) -> bool:
    choice = _f32_kernel if f32_kernel is None else f32_kernel
    if choice is None:
        return size >= F32_KERNEL_MIN_ELEMENTS and n_tokens <= MAX_KERNEL_TOKENS and _single_device()
    return choice


def _is_f32(w: Weight) -> bool:
    return not isinstance(w, (QuantRows, BlockRows)) and w.dtype == jnp.float32


def dense_kernel_ok(n_tokens: int, w: Weight) -> bool:
    """Whether a dense product over `w` for n_tokens tokens takes the C++ kernel (f32: as `set_f32_kernel` says)."""
    return rows_kernel_ok() and (not _is_f32(w) or _f32_via_kernel(w.size, n_tokens, None))


def linear(x: jax.Array, w: Weight, *, use_kernel: bool | None = None, f32_kernel: bool | None = None) -> jax.Array:
    """x [..., D] @ w[N, D]^T -> [..., N] in f32 (x's dtype for f32 weights on the XLA path)."""
    lead = x.shape[:-1]
    m = int(np.prod(lead)) if lead else 1
    if isinstance(w, BlockRows):
        return block_linear(x, w, kernel=rows_kernel_ok(use_kernel))
    is_f32 = _is_f32(w)
    if (is_f32 and not _f32_via_kernel(w.size, m, f32_kernel)) or not rows_kernel_ok(use_kernel):
        return jnp.einsum("...d,nd->...n", x, w if is_f32 else dequantize(w))
    data, scale = _data_scale(w)
    n = w.shape[0]
    y = jax.ffi.ffi_call("pijax_rows_dot", jax.ShapeDtypeStruct((m, n), jnp.float32), vmap_method="sequential")(
        x.reshape(m, x.shape[-1]).astype(jnp.float32), data, scale
    )
    return y.reshape(*lead, n)


def linear3(x: jax.Array, w0: Weight, w1: Weight, w2: Weight) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(linear(x, w0), linear(x, w1), linear(x, w2)); in ONE kernel call when all three are f32/f16/bf16 arrays of
    one dtype that the kernel takes (f32: the three together at least F32_KERNEL_MIN_ELEMENTS, as `linear`
    decides for one matrix). The results are those of three `linear` calls on the kernel."""
    ws = (w0, w1, w2)
    lead = x.shape[:-1]
    m = int(np.prod(lead)) if lead else 1
    plain = all(not isinstance(w, QuantRows) and w.dtype == w0.dtype for w in ws)
    if not plain or w0.dtype not in (jnp.float32, jnp.float16, jnp.bfloat16) or not rows_kernel_ok():
        return linear(x, w0), linear(x, w1), linear(x, w2)
    if w0.dtype == jnp.float32 and not _f32_via_kernel(sum(w.size for w in ws), m, None):
        return linear(x, w0), linear(x, w1), linear(x, w2)
    shapes = tuple(jax.ShapeDtypeStruct((m, w.shape[0]), jnp.float32) for w in ws)
    ys = jax.ffi.ffi_call("pijax_rows_dot3", shapes, vmap_method="sequential")(
        x.reshape(m, x.shape[-1]).astype(jnp.float32), *ws
    )
    return tuple(y.reshape(*lead, w.shape[0]) for y, w in zip(ys, ws, strict=True))  # type: ignore[return-value]


def sparse_ffn(
    x_md: jax.Array,
    logits_mf: jax.Array | None,
    up: Weight,
    gate: Weight | None,
    down_t: Weight,
    *,
    kind: FfnActivation,
    threshold: float = 0.0,
    capacity: int | None = None,
    skip_inactive: bool = True,
    use_kernel: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(y [M, D] f32, selected neurons per token [M] int32); see the module docstring.

    `skip_inactive` (kernel only; the result is the same): for ReLU-family activations, skip the up and down_t
    rows of a selected neuron whose gate product is <= 0, as its output is exactly zero."""
    m, d = x_md.shape
    n_ff = up.shape[0]
    cap = n_ff if capacity is None else int(capacity)
    if logits_mf is None and m > MAX_KERNEL_TOKENS and not _is_f32(up) and rows_kernel_ok(use_kernel):
        y = dense_ffn_tokens(x_md, up, gate, down_t, kind=kind, use_kernel=use_kernel)
        return y, jnp.full((m,), n_ff, jnp.int32)
    if isinstance(up, BlockRows):
        return block_sparse_ffn(
            x_md,
            logits_mf,
            up,
            gate,
            down_t,
            kind=kind,
            threshold=threshold,
            capacity=cap,
            skip_inactive=skip_inactive,
            kernel=kernel_ok(m, use_kernel),
        )
    if not kernel_ok(m, use_kernel):
        return sparse_ffn_reference(x_md, logits_mf, up, gate, down_t, kind=kind, threshold=threshold, capacity=cap)
    dense = logits_mf is None
    act = _ACT_CODES[kind]
    up_d, up_s = _data_scale(up)
    down_d, down_s = _data_scale(down_t)
    gate_d, gate_s = (up_d, jnp.asarray(_NO_SCALE)) if gate is None else _data_scale(gate)
    logits = jnp.zeros((m, 0), jnp.float32) if dense else logits_mf.astype(jnp.float32)
    call = jax.ffi.ffi_call(
        "pijax_sparse_ffn",
        (jax.ShapeDtypeStruct((m, d), jnp.float32), jax.ShapeDtypeStruct((m,), jnp.int32)),
        vmap_method="sequential",
    )
    return call(
        x_md.astype(jnp.float32),
        logits,
        up_d,
        gate_d,
        down_d,
        up_s,
        gate_s,
        down_s,
        threshold=np.float32(threshold),
        capacity=np.int64(cap),
        act=np.int32(act),
        has_gate=np.int32(gate is not None),
        dense=np.int32(dense),
        skip=np.int32(skip_inactive),
    )


def down_tdot(a_mf: jax.Array, down_t: Weight) -> jax.Array:
    """a [M, F] @ down_t [F, D] -> [M, D] f32 on the kernel (threads over columns, every row read once)."""
    if isinstance(down_t, BlockRows):  # a dense block-format FFN keeps down_df (pijax.model.ffn); rare here
        return jnp.einsum("mf,fd->md", a_mf, down_t.dequantize())
    data, scale = _data_scale(down_t)
    call = jax.ffi.ffi_call(
        "pijax_rows_tdot", jax.ShapeDtypeStruct((a_mf.shape[0], down_t.shape[1]), jnp.float32), vmap_method="sequential"
    )
    return call(a_mf.astype(jnp.float32), data, scale)


def dense_ffn_tokens(
    x_md: jax.Array,
    up: Weight,
    gate: Weight | None,
    down_t: Weight,
    *,
    kind: FfnActivation,
    use_kernel: bool | None = None,
) -> jax.Array:
    """Every neuron for a prompt's tokens, [M, D] f32: the gate and up products on the multi-token row kernels
    (BlockRows: the input quantized as in `linear`), the activation, then the down projection (`down_tdot`)."""
    gate_y = None if gate is None else linear(x_md, gate, use_kernel=use_kernel)
    act = ffn_activation(gate_y, linear(x_md, up, use_kernel=use_kernel), kind)
    return down_tdot(act, down_t)


def sparse_ffn_reference(
    x_md: jax.Array,
    logits_mf: jax.Array | None,
    up: Weight,
    gate: Weight | None,
    down_t: Weight,
    *,
    kind: FfnActivation,
    threshold: float = 0.0,
    capacity: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The pure-JAX `sparse_ffn`: dense products in f32, the selection applied as a mask."""
    if isinstance(up, BlockRows):
        return block_sparse_ffn_reference(
            x_md, logits_mf, up, gate, down_t, kind=kind, threshold=threshold, capacity=capacity
        )
    m, _ = x_md.shape
    n_ff = up.shape[0]
    x = x_md.astype(jnp.float32)
    act = rows_activation(x, dequantize(up), None if gate is None else dequantize(gate), kind)
    if logits_mf is None:
        keep = jnp.ones((m, n_ff), jnp.bool_)
    else:
        keep = keep_mask(logits_mf, logits_mf >= threshold, n_ff if capacity is None else int(capacity))
    y = down_project(jnp.where(keep, act, 0.0)[None], dequantize(down_t))[0]
    return y, keep.sum(axis=-1).astype(jnp.int32)
