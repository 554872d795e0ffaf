"""The CATS-thresholded FFN (Lee et al., 2024) on the CPU kernels, and its XLA reference.

CATS keeps neuron f of a token when |act(gate_f . x)| > t (t per layer, calibrated for a target sparsity on the
training split: `pijax.sparsity.thresholds`, criterion "cats"). Deciding needs every neuron's gate product, so
the gate matrix is read in full; the up and down_t rows are read only for the kept neurons: a decode step reads
gate + (1 - s) (up + down_t) of each FFN at sparsity s. The C++ path (cpu_cats.inc: `pijax_cats_ffn` for f32,
f16, bf16 rows, `pijax_qcats_ffn` for llama.cpp's block formats with the input quantized to 8-bit blocks) does
both phases in one call and returns how many neurons each token ran; the reference computes the same selection
and sum with dense products (block formats: on the same 8-bit-quantized input, `pijax.kernels.blocks`).
Selection and products agree with pijax.model.rows' XLA "threshold" path (criterion "cats") up to f32 rounding
at the cut-off. Dimension legend: see `pijax.model.layers`; M = tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pijax.config import FfnActivation
from pijax.kernels.blocks import KIND_CODES, BlockRows, linear_reference
from pijax.kernels.formats import QuantRows, Weight, dequantize
from pijax.kernels.reference import down_project, ffn_activation

_ACT_CODES = {"silu": 0, "relu": 1, "drelu": 2}


def cats_ffn(
    x_md: jax.Array,
    up: Weight,
    gate: Weight,
    down_t: Weight,
    *,
    kind: FfnActivation,
    threshold: float,
    kernel: bool,
) -> tuple[jax.Array, jax.Array]:
    """(y [M, D] f32, neurons each token ran [M] int32): the FFN over the neurons with |act(gate x)| > threshold.
    `kernel`: take the C++ path (the caller checked `pijax.kernels.ops.kernel_ok`); int8 rows (QuantRows) and
    mixed formats always take the reference."""
    ws = (up, gate, down_t)
    blocks = all(isinstance(w, BlockRows) for w in ws) and len({w.kind for w in ws}) == 1  # type: ignore[union-attr]
    plain = not any(isinstance(w, QuantRows | BlockRows) for w in ws) and len({w.dtype for w in ws}) == 1
    if not kernel or not (blocks or plain) or (plain and up.dtype not in (jnp.float32, jnp.float16, jnp.bfloat16)):
        return cats_ffn_reference(x_md, up, gate, down_t, kind=kind, threshold=threshold)
    m, d = x_md.shape
    out = (jax.ShapeDtypeStruct((m, d), jnp.float32), jax.ShapeDtypeStruct((m,), jnp.int32))
    attrs = {"threshold": np.float32(threshold), "act": np.int32(_ACT_CODES[kind])}
    x = x_md.astype(jnp.float32)
    if blocks:
        call = jax.ffi.ffi_call("pijax_qcats_ffn", out, vmap_method="sequential")
        return call(x, up.blocks, gate.blocks, down_t.blocks, kind=np.int32(KIND_CODES[up.kind]), **attrs)
    return jax.ffi.ffi_call("pijax_cats_ffn", out, vmap_method="sequential")(x, up, gate, down_t, **attrs)


def cats_ffn_reference(
    x_md: jax.Array, up: Weight, gate: Weight, down_t: Weight, *, kind: FfnActivation, threshold: float
) -> tuple[jax.Array, jax.Array]:
    """`cats_ffn` in XLA: dense gate and up products (block formats on the 8-bit-quantized input, as the kernel),
    the selection as a mask, the down projection in f32."""
    x = x_md.astype(jnp.float32)

    def prod(w: Weight) -> jax.Array:
        return linear_reference(x, w) if isinstance(w, BlockRows) else jnp.einsum("md,fd->mf", x, dequantize(w))

    g = prod(gate)
    keep = jnp.abs(ffn_activation(None, g, kind)) > threshold
    act = jnp.where(keep, ffn_activation(g, prod(up), kind), 0.0)
    return down_project(act[None], dequantize(down_t))[0], keep.sum(axis=-1).astype(jnp.int32)
