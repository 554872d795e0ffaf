"""The kernel operations on `BlockRows` weights (llama.cpp's Q8_0 / Q4_0 / Q4_1), each with its XLA reference.

`pijax.kernels.ops.linear` and `.sparse_ffn` hand BlockRows weights here. The C++ path (cpu_quant.inc) quantizes
the input per token to 8-bit blocks and takes integer dot products, as llama.cpp does; the reference computes the
same product from the dequantized weights and the dequantized 8-bit input (`pijax.kernels.blocks`), so the two
agree to f32 rounding. A prompt's tokens take the same kernel (each row read once for all of them, every token's
sum the one-token kernel's); the reference runs a predictor-gated FFN over more than `MAX_KERNEL_TOKENS` tokens
and every non-CPU backend. In the sparse FFN the down_t rows are added in f32, scaled by the activation: no input of
theirs is quantized (as in PowerInfer's and llama.cpp's axpy paths).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pijax.config import FfnActivation
from pijax.kernels.blocks import KIND_CODES, BlockRows, linear_reference
from pijax.kernels.reference import down_project, ffn_activation, keep_mask

_ACT_CODES = {"silu": 0, "relu": 1, "drelu": 2}


def block_linear(x: jax.Array, w: BlockRows, *, kernel: bool) -> jax.Array:
    """x [..., D] @ w[N, D]^T -> [..., N] f32, the input quantized to 8-bit blocks."""
    if not kernel:
        return linear_reference(x, w)
    lead = x.shape[:-1]
    m = int(np.prod(lead)) if lead else 1
    n = w.shape[0]
    call = jax.ffi.ffi_call("pijax_qrows_dot", jax.ShapeDtypeStruct((m, n), jnp.float32), vmap_method="sequential")
    y = call(x.reshape(m, x.shape[-1]).astype(jnp.float32), w.blocks, kind=np.int32(KIND_CODES[w.kind]))
    return y.reshape(*lead, n)


def block_sparse_ffn(
    x_md: jax.Array,
    logits_mf: jax.Array | None,
    up: BlockRows,
    gate: BlockRows | None,
    down_t: BlockRows,
    *,
    kind: FfnActivation,
    threshold: float,
    capacity: int,
    skip_inactive: bool,
    kernel: bool,
) -> tuple[jax.Array, jax.Array]:
    """`pijax.kernels.ops.sparse_ffn` for BlockRows weights (all three in one format)."""
    kinds = {up.kind, down_t.kind} | ({gate.kind} if gate is not None else set())
    if len(kinds) != 1 or not all(isinstance(w, BlockRows) for w in (up, down_t, gate or up)):
        raise ValueError(f"the sparse FFN's up, gate and down_t must share one block format, got {sorted(kinds)}")
    m, d = x_md.shape
    if not kernel:
        return block_sparse_ffn_reference(
            x_md, logits_mf, up, gate, down_t, kind=kind, threshold=threshold, capacity=capacity
        )
    dense = logits_mf is None
    logits = jnp.zeros((m, 0), jnp.float32) if dense else logits_mf.astype(jnp.float32)
    call = jax.ffi.ffi_call(
        "pijax_qsparse_ffn",
        (jax.ShapeDtypeStruct((m, d), jnp.float32), jax.ShapeDtypeStruct((m,), jnp.int32)),
        vmap_method="sequential",
    )
    return call(
        x_md.astype(jnp.float32),
        logits,
        up.blocks,
        (up if gate is None else gate).blocks,
        down_t.blocks,
        threshold=np.float32(threshold),
        capacity=np.int64(capacity),
        act=np.int32(_ACT_CODES[kind]),
        has_gate=np.int32(gate is not None),
        dense=np.int32(dense),
        skip=np.int32(skip_inactive),
        kind=np.int32(KIND_CODES[up.kind]),
    )


def block_sparse_ffn_reference(
    x_md: jax.Array,
    logits_mf: jax.Array | None,
    up: BlockRows,
    gate: BlockRows | None,
    down_t: BlockRows,
    *,
    kind: FfnActivation,
    threshold: float = 0.0,
    capacity: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The XLA `block_sparse_ffn`: gate/up products on the 8-bit-quantized input, the selection as a mask, the
    down projection in f32."""
    m, _ = x_md.shape
    n_ff = up.shape[0]
    x = x_md.astype(jnp.float32)
    act = ffn_activation(None if gate is None else linear_reference(x, gate), linear_reference(x, up), kind)
    if logits_mf is None:
        keep = jnp.ones((m, n_ff), jnp.bool_)
    else:
        keep = keep_mask(logits_mf, logits_mf >= threshold, n_ff if capacity is None else int(capacity))
    y = down_project(jnp.where(keep, act, 0.0)[None], down_t.dequantize())[0]
    return y, keep.sum(axis=-1).astype(jnp.int32)
