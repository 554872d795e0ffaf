"""Weight storage formats for CPU decoding: f32, f16, bf16, int8 rows with one f32 scale per row, and llama.cpp's
block formats q8_0 / q4_0 / q4_1 (`pijax.kernels.blocks.BlockRows`).

A weight matrix is always a set of rows `[N, D]` (a neuron, a query dim, a vocabulary entry) dotted with the
input. Low-precision formats only change how the rows are stored; compute stays f32. `QuantRows` is a pytree,
so it can be the value of an `nnx.Param` and flows through `nnx.split`/`jax.jit` like an array; `w[...]` on it
returns itself, so modules that read `self.w[...]` work unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from pijax.errors import ConfigError
from pijax.kernels.blocks import BLOCK_FORMATS, BlockRows, quantize_blocks

WeightFormat = Literal["f32", "f16", "bf16", "int8", "q8_0", "q4_0", "q4_1"]
WEIGHT_FORMATS: tuple[str, ...] = ("f32", "f16", "bf16", "int8")
# Every format a matrix may be kept in: pijax's own, and llama.cpp's block formats (rows of a multiple of 32).
ALL_FORMATS: tuple[str, ...] = (*WEIGHT_FORMATS, *BLOCK_FORMATS)
_FLOAT_DTYPES = {"f32": jnp.float32, "f16": jnp.float16, "bf16": jnp.bfloat16}


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class QuantRows:
    """Symmetric per-row int8: row n is q[n] * scale[n], with scale = max|row| / 127."""

    q: jax.Array  # [N, D] int8
    scale: jax.Array  # [N] f32

    def __getitem__(self, key: object) -> QuantRows:
        if key is not Ellipsis:
            raise TypeError("QuantRows only supports w[...]; dequantize() it for indexing")
        return self

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.q.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int8)

    @property
    def size(self) -> int:
        return int(self.q.size)

    @property
    def nbytes(self) -> int:
        return int(self.q.size) + 4 * int(self.scale.size)

    def dequantize(self) -> jax.Array:
        return self.q.astype(jnp.float32) * self.scale[:, None]


Weight = jax.Array | QuantRows | BlockRows


@jax.jit
def quantize_rows(w_nd: jax.Array) -> QuantRows:
    """int8 rows with per-row scales (round to nearest); an all-zero row gets scale 1."""
    w = w_nd.astype(jnp.float32)
    amax = jnp.max(jnp.abs(w), axis=1)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)
    q = jnp.clip(jnp.round(w / scale[:, None]), -127, 127).astype(jnp.int8)
    return QuantRows(q, scale.astype(jnp.float32))


def check_format(fmt: str) -> WeightFormat:
    if fmt not in ALL_FORMATS:
        raise ConfigError(f"weight format {fmt!r} is not one of {ALL_FORMATS}")
    return fmt  # type: ignore[return-value]


def to_format(w: Weight, fmt: WeightFormat) -> Weight:
    """A matrix in storage format `fmt` (from any format; int8 is re-quantized from its f32 value)."""
    check_format(fmt)
    if fmt in BLOCK_FORMATS:
        return w if isinstance(w, BlockRows) and w.kind == fmt else quantize_blocks(dequantize(w), fmt)
    if fmt == "int8":
        return w if isinstance(w, QuantRows) else quantize_rows(w)
    dense = w.dequantize() if isinstance(w, QuantRows) else w
    return dense.astype(_FLOAT_DTYPES[fmt])


def format_of(w: Weight) -> WeightFormat:
    if isinstance(w, QuantRows):
        return "int8"
    if isinstance(w, BlockRows):
        return w.kind  # type: ignore[return-value]
    for name, dt in _FLOAT_DTYPES.items():
        if w.dtype == dt:
            return name  # type: ignore[return-value]
    raise ConfigError(f"no weight format stores dtype {w.dtype}")


def dequantize(w: Weight) -> jax.Array:
    """The f32 matrix."""
    return w.dequantize() if isinstance(w, QuantRows | BlockRows) else w.astype(jnp.float32)


def nbytes(w: Weight) -> int:
    return w.nbytes if isinstance(w, QuantRows | BlockRows) else int(w.size) * np.dtype(w.dtype).itemsize


def row_bytes(w: Weight) -> int:
    """Bytes of one row (int8: its scale included)."""
    return nbytes(w) // int(w.shape[0])
