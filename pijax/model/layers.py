"""The LLaMA building blocks other than the FFN: RMSNorm, RoPE in GGUF's layout, grouped-query attention, KV cache.

Dimension legend for every einsum in `pijax.model`: B batch, T time (query positions), S cache positions,
D model (n_embd), F ffn neurons, H query heads, K kv heads, G query heads per kv head (H = K*G), E head dim,
N fused heads x head dim (H*E or K*E, the rows of a q/k/v weight), V vocab, R predictor rank.

RoPE follows llama.cpp's mode 0 (the one it uses for LLaMA GGUF files, whose q/k rows are stored in Meta's
interleaved order): within a head, dims (2i, 2i+1) are rotated together by angle pos * base^(-2i/rope_dim) for
2i < rope_dim; dims past rope_dim pass through. Query head h reads kv head h // G, as ggml's broadcast does.

The KV cache is a plain pytree: a list with one dict(k=[B, K, S, E], v=[B, K, S, E]) per layer, updated with
`dynamic_update_slice` so that a jitted step that donates it updates it in place. It is head-major so that decode
attention reads each head's positions as contiguous rows: with [B, S, K, E] XLA:CPU copied both caches of every
layer into a transposed layout on every step (60 copies per token on SmolLM2).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pijax.config import ModelConfig
from pijax.io.weights import LayerWeights
from pijax.kernels.attention import decode_attention
from pijax.kernels.ops import linear, linear3  # f32: the plain einsum or a kernel; other formats: the kernels

LayerCache = dict[str, jax.Array]
KVCache = list[LayerCache]

INIT_STD = 0.02


def param(value: np.ndarray | None, shape: tuple[int, ...], rngs: nnx.Rngs, dtype: jnp.dtype) -> nnx.Param:
    """A weight from a checkpoint array, or N(0, INIT_STD) drawn directly in `dtype` when `value` is None."""
    if value is not None:
        arr = np.asarray(value)
        if arr.size != int(np.prod(shape)):
            raise ValueError(f"weight of shape {arr.shape} cannot become {shape}")
        return nnx.Param(jnp.asarray(arr.reshape(shape), dtype=dtype))
    return nnx.Param(_normal(rngs.params(), shape, jnp.dtype(dtype)))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _normal(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
    # Jitted so that the scaling fuses with the draw: no second full-size temporary.
    return jax.random.normal(key, shape, dtype) * INIT_STD


class RMSNorm(nnx.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis."""

    def __init__(self, dim: int, eps: float, weight: np.ndarray | None = None, *, dtype: jnp.dtype = jnp.float32):
        w = np.ones(dim, np.float32) if weight is None else weight
        self.weight = nnx.Param(jnp.asarray(w, dtype=dtype))
        self.eps = float(eps)

    def __call__(self, x: jax.Array) -> jax.Array:
        ms = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        return x * jax.lax.rsqrt(ms + self.eps) * self.weight[...]


def rope_angles(positions_bt: jax.Array, rope_dim: int, base: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin of the rotation angles, each [B, T, rope_dim // 2]."""
    inv_freq = np.power(base, -np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim).astype(np.float32)
    ang = positions_bt.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    return jnp.cos(ang), jnp.sin(ang)


def apply_rope(x_bthe: jax.Array, cos_bti: jax.Array, sin_bti: jax.Array) -> jax.Array:
    """Rotate adjacent pairs (2i, 2i+1) of the first 2 * cos.shape[-1] dims of every head."""
    n_rot = 2 * cos_bti.shape[-1]
    b, t, h, e = x_bthe.shape
    pairs = x_bthe[..., :n_rot].reshape(b, t, h, n_rot // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    c, s = cos_bti[:, :, None, :], sin_bti[:, :, None, :]
    rot = jnp.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1).reshape(b, t, h, n_rot)
    return rot if n_rot == e else jnp.concatenate([rot, x_bthe[..., n_rot:]], axis=-1)


def init_cache(cfg: ModelConfig, batch: int, n_ctx: int, dtype: jnp.dtype = jnp.float32) -> KVCache:
    """An all-zero KV cache for `n_ctx` positions (at most cfg.n_ctx)."""
    shape = (batch, cfg.n_head_kv, n_ctx, cfg.head_dim)
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.n_layer)]


def _cache_write(cache_bkse: jax.Array, new_bkte: jax.Array, pos: jax.Array | int) -> jax.Array:
    """The cache with positions pos.. overwritten by the new ones."""
    zero = jnp.zeros((), jnp.int32)
    want = jax.typeof(cache_bkse).sharding
    if not want.mesh.empty and jax.typeof(new_bkte).sharding.mesh.empty:
        # A C++ kernel's k/v carry no mesh; on an explicit mesh the in-place update needs the cache's sharding.
        new_bkte = jax.sharding.reshard(new_bkte, want)
    return jax.lax.dynamic_update_slice(
        cache_bkse, new_bkte.astype(cache_bkse.dtype), (zero, zero, jnp.asarray(pos, jnp.int32), zero)
    )


class Attention(nnx.Module):
    """Grouped-query causal self-attention with RoPE; weights stored [out, in] as in GGUF.

    The weights stay 2-D (heads fused into N): with heads split out, XLA:CPU chose to copy a transposed weight
    on every call, which made decode 4x slower than the bandwidth bound."""

    def __init__(
        self,
        cfg: ModelConfig,
        weights: LayerWeights | None = None,
        *,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        h, k, e, d = cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.n_embd
        w = weights
        self.w_q_nd = param(None if w is None else w.wq, (h * e, d), rngs, dtype)
        self.w_k_nd = param(None if w is None else w.wk, (k * e, d), rngs, dtype)
        self.w_v_nd = param(None if w is None else w.wv, (k * e, d), rngs, dtype)
        self.w_o_dn = param(None if w is None else w.wo, (d, h * e), rngs, dtype)
        self.n_head, self.n_head_kv, self.head_dim = h, k, e

    def __call__(
        self,
        x_btd: jax.Array,
        cos_bti: jax.Array,
        sin_bti: jax.Array,
        cache: LayerCache | None = None,
        pos: jax.Array | int = 0,
    ) -> tuple[jax.Array, LayerCache | None]:
        """Attention output [B, T, D]. With a cache, the T new positions start at `pos` and are written into
        it, and the queries attend to all cached positions up to their own; without one, to the sequence."""
        b, t, _ = x_btd.shape
        g = self.n_head // self.n_head_kv
        h, kv, e = self.n_head, self.n_head_kv, self.head_dim
        q, k, v = linear3(x_btd, self.w_q_nd[...], self.w_k_nd[...], self.w_v_nd[...])
        q, k, v = q.reshape(b, t, h, e), k.reshape(b, t, kv, e), v.reshape(b, t, kv, e)
        q, k = apply_rope(q, cos_bti, sin_bti), apply_rope(k, cos_bti, sin_bti)
        q_pos = jnp.arange(t) + pos
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, E]: the new positions only
        if cache is not None:
            k, v = _cache_write(cache["k"], k, pos), _cache_write(cache["v"], v, pos)
            cache = {"k": k, "v": v}
            k_pos = jnp.arange(k.shape[2])
        else:
            k_pos = jnp.arange(t) + pos
        q = q.reshape(b, t, kv, g, e)
        scale = 1.0 / np.sqrt(e)
        if t == 1 and cache is not None:
            # One query against the head-major cache, read where it lies (the read per backend: decode_read).
            out = decode_attention(q[:, 0], k, v, pos, scale).reshape(b, 1, h * e)
        else:
            scores = jnp.einsum("btkge,bkse->bkgts", q, k) * scale
            scores = jnp.where(k_pos[None, :] <= q_pos[:, None], scores, -jnp.inf)
            probs = jax.nn.softmax(scores, axis=-1)
            out = jnp.einsum("bkgts,bkse->btkge", probs, v).reshape(b, t, h * e)
        return linear(out, self.w_o_dn[...]), cache
