"""llama.cpp's block formats as pijax weight rows: Q8_0, Q4_0 and Q4_1, and their XLA reference.

A `BlockRows` matrix [N, D] keeps the GGUF bytes as they are in the file: row n is D/32 blocks of 32 weights,
each block its f16 scale d (and, for Q4_1, its f16 min m) then its quants, so a neuron's row is one contiguous
run of bytes and a GGUF tensor loads with no conversion at all:
- Q8_0 (34 bytes): d, 32 int8 q; w = d * q.
- Q4_0 (18 bytes): d, 16 bytes of nibbles (weights 0-15 low, 16-31 high); w = d * (q - 8).
- Q4_1 (20 bytes): d, m, 16 bytes of nibbles; w = d * q + m.

Products against these rows quantize the input the way llama.cpp does before its integer dot products: per
token, blocks of 32 values, scale amax / 127 rounded to f16, q = round(x / scale) (`quantize_acts`). The C++
kernels (cpu_quant.inc) compute exactly that product with integer dots; the XLA reference here computes it as
dequantized weights times the dequantized q8 input, which is the same sum in another order.
"""

from __future__ import annotations

import dataclasses

import gguf
import jax
import jax.numpy as jnp
import numpy as np

from pijax.errors import ConfigError

BLOCK = 32
# format name -> (bytes per block of 32 weights, ggml type)
BLOCK_FORMATS: dict[str, tuple[int, gguf.GGMLQuantizationType]] = {
    "q8_0": (34, gguf.GGMLQuantizationType.Q8_0),
    "q4_0": (18, gguf.GGMLQuantizationType.Q4_0),
    "q4_1": (20, gguf.GGMLQuantizationType.Q4_1),
}
# The kernels' code for each format (the `kind` attribute of the ffi calls).
KIND_CODES = {"q8_0": 0, "q4_0": 1, "q4_1": 2}
FORMAT_OF_GGML = {t: name for name, (_, t) in BLOCK_FORMATS.items()}


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class BlockRows:
    """A matrix [N, D] in one of llama.cpp's block formats: `blocks` [N, D/32 * block bytes] uint8."""

    blocks: jax.Array
    kind: str = dataclasses.field(metadata={"static": True})

    def __getitem__(self, key: object) -> BlockRows:
        if key is not Ellipsis:
            raise TypeError("BlockRows only supports w[...]; dequantize() it for indexing")
        return self

    @property
    def shape(self) -> tuple[int, int]:
        n, nbytes = self.blocks.shape
        return int(n), int(nbytes) // BLOCK_FORMATS[self.kind][0] * BLOCK

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self) -> int:
        return int(self.blocks.size)

    def dequantize(self) -> jax.Array:
        return dequantize_blocks(self.blocks, self.kind)


def _f16(b: jax.Array) -> jax.Array:
    """[..., 2] uint8 (little-endian f16) -> [...] f32."""
    return jax.lax.bitcast_convert_type(b, jnp.float16).astype(jnp.float32)


def dequantize_blocks(blocks: jax.Array, kind: str, *, with_min: bool = True) -> jax.Array:
    """[N, D/32 * bytes] uint8 -> [N, D] f32 (`with_min=False`: Q4_1 without its per-block min m)."""
    size = BLOCK_FORMATS[kind][0]
    n = blocks.shape[0]
    b = blocks.reshape(n, -1, size)
    d = _f16(b[..., 0:2])[..., None]
    if kind == "q8_0":
        w = d * jax.lax.bitcast_convert_type(b[..., 2:], jnp.int8).astype(jnp.float32)
    else:
        qs = b[..., 4:] if kind == "q4_1" else b[..., 2:]
        q = jnp.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(jnp.float32)
        offset = -8.0 * d if kind == "q4_0" else (_f16(b[..., 2:4])[..., None] if with_min else 0.0)
        w = d * q + offset
    return w.reshape(n, -1)


def block_mins(blocks: jax.Array) -> jax.Array:
    """The per-block mins m of Q4_1 rows: [N, D/32] f32."""
    return _f16(blocks.reshape(blocks.shape[0], -1, BLOCK_FORMATS["q4_1"][0])[..., 2:4])


def check_block_format(kind: str) -> str:
    if kind not in BLOCK_FORMATS:
        raise ConfigError(f"block format {kind!r} is not one of {tuple(BLOCK_FORMATS)}")
    return kind


def quantize_blocks(w_nd: np.ndarray | jax.Array, kind: str) -> BlockRows:
    """A float matrix in block format `kind` with llama.cpp's reference quantizer (gguf.quants, on the host)."""
    check_block_format(kind)
    w = np.asarray(w_nd, np.float32)
    if w.ndim != 2 or w.shape[1] % BLOCK:
        raise ConfigError(f"a {kind} matrix needs rows of a multiple of {BLOCK} values, got shape {w.shape}")
    return BlockRows(jnp.asarray(gguf.quants.quantize(w, BLOCK_FORMATS[kind][1])), kind)


def _acts(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [..., D] quantized as the kernels do: (the dequantized 8-bit values [..., D], the f16-rounded block sums
    s = scale * sum(q) [..., D/32] that meet Q4_1's mins)."""
    xb = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, BLOCK)
    amax = jnp.max(jnp.abs(xb), axis=-1, keepdims=True)
    q = jnp.round(xb * jnp.where(amax > 0, 127.0 / jnp.where(amax > 0, amax, 1.0), 0.0))
    d = amax / 127.0
    s = (d[..., 0] * q.sum(-1)).astype(jnp.float16).astype(jnp.float32)
    return (q * d.astype(jnp.float16).astype(jnp.float32)).reshape(x.shape), s


def quantize_acts(x: jax.Array) -> jax.Array:
    """x [..., D] f32 as the kernels see it: per block of 32, q = round(x * 127 / amax) times the f16-rounded
    scale amax / 127 (llama.cpp's quantize_row_q8_0 / q8_1)."""
    return _acts(x)[0]


def linear_reference(x: jax.Array, w: BlockRows) -> jax.Array:
    """x [..., D] @ w^T with x quantized as the kernel does: [..., N] f32. For Q4_1 the mins meet the f16 block
    sums of the input, as in llama.cpp's q4_1 x q8_1 dot."""
    xq, s = _acts(x)
    if w.kind != "q4_1":
        return jnp.einsum("...d,nd->...n", xq, w.dequantize())
    scaled = dequantize_blocks(w.blocks, w.kind, with_min=False)
    return jnp.einsum("...d,nd->...n", xq, scaled) + jnp.einsum("...b,nb->...n", s, block_mins(w.blocks))
