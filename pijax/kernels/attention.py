"""Decode attention: one query position against the head-major KV cache [B, K, S, E], and the rule that picks
how it is read (`decode_read`), from the backend and the shapes alone, never from a benchmark run.

The reads, all computing softmax(q k^T * scale) v over positions 0..pos in f32:
- "kernel": the C++ call `pijax_decode_attention` (cpu_attention.inc). It takes the 4-D cache buffers as they
  are, so XLA hands it the in-place-updated cache with no copy, and reads each head's positions as rows.
- "reduce": multiply-and-reduce fusions. XLA:CPU also reads the updated cache where it lies (no copy), but the
  value reduction runs over a non-minor axis and is slow where there are many KV heads.
- "dot": einsum batched matvecs. On XLA:CPU a dot reads the cache through a reshape, and XLA duplicates the
  cache update into a fresh buffer for it (8 cache-sized copies per layer per step on SmolLM2); it is the read
  for other backends (GPU), where a batched matvec is the library's own.

The rule and the A/B behind it (the three reads against the old [B, S, K, E] layout,
experiments/bench/micro/cache_layout.py): see `decode_read`.
Dimension legend: see `pijax.model.layers`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pijax.kernels import build

READS = ("kernel", "reduce", "dot")


def decode_read(n_kv: int, group: int, n_pos: int, head_dim: int) -> str:
    """Which read decode attention uses for a cache of n_kv heads x n_pos positions x head_dim and `group` queries
    per KV head, on jax's default backend.

    - not CPU: "dot" (batched matvecs are the accelerator library's own; XLA:CPU's copies do not apply).
    - CPU with the kernel library: "kernel" at every shape. A/B medians [minima], ms per step of all layers,
      S = 256, old layout / kernel / reduce / dot, 15 interleaved rounds at load average 20 (2 cores; noisy, the
      lead re-runs it quietly): SmolLM2 (3 x 3 heads, E 64, 30 layers) 7.5 [2.8] / 1.8 [1.4] / 2.8 [2.6] / 8.4
      [3.7]; TinyLlama (4 x 8, E 64, 22 layers) 3.8 [3.4] / 2.6 [1.9] / 4.3 [4.0] / 4.4 [3.9]; LLaMA-2-7B
      (32 x 1, E 128, 4 layers) 43 [20] / 16 [4.1] / 138 [116] / 137 [104]. A second run at load 27 kept the
      order at every shape, and so did S = 1024 (7 rounds, load 16; medians old / kernel / reduce / dot:
      SmolLM2 52 / 17 / 28 / 176, TinyLlama 48 / 28 / 56 / 163, 7B 284 / 54 / 1320 / 448). The old layout's
      quiet figures (issue 14): 4.18 / 3.87 / 17.2 ms; reduce's 3.47 /
      4.38 / 44.8.
    - CPU without it: "reduce", the only XLA read that leaves the cache un-copied.
    """
    del n_kv, group, n_pos, head_dim  # the A/B found one winner per backend at every shape measured
    if jax.default_backend() != "cpu":
        return "dot"
    return "kernel" if build.available() else "reduce"


def decode_attention(
    q_bkge: jax.Array,
    k_bkse: jax.Array,
    v_bkse: jax.Array,
    pos: jax.Array | int,
    scale: float,
    read: str | None = None,
) -> jax.Array:
    """softmax(q k^T * scale) v over cache positions 0..pos, [B, K, G, E] in q's dtype; `read` None: `decode_read`."""
    _, kv, g, e = q_bkge.shape
    read = read or decode_read(kv, g, k_bkse.shape[2], e)
    pos = jnp.asarray(pos, jnp.int32)
    if read == "kernel":
        if build.load() is None:
            raise RuntimeError(f"decode attention read 'kernel' needs the kernel library: {build.status()}")
        out = jax.ffi.ffi_call("pijax_decode_attention", jax.ShapeDtypeStruct(q_bkge.shape, jnp.float32))(
            q_bkge.astype(jnp.float32), k_bkse, v_bkse, pos, scale=np.float32(scale)
        )
        return out.astype(q_bkge.dtype)
    valid = (jnp.arange(k_bkse.shape[2]) <= pos)[None, None, None, :]
    if read == "reduce":
        scores = jnp.sum(q_bkge[:, :, :, None, :] * k_bkse[:, :, None, :, :], axis=-1) * scale
    elif read == "dot":
        scores = jnp.einsum("bkge,bkse->bkgs", q_bkge, k_bkse) * scale
    else:
        raise ValueError(f"unknown decode attention read {read!r}; known: {', '.join(READS)}")
    probs = jax.nn.softmax(jnp.where(valid, scores, -jnp.inf), axis=-1)
    if read == "reduce":
        return jnp.sum(probs[..., None] * v_bkse[:, :, None, :, :], axis=-2)
    return jnp.einsum("bkgs,bkse->bkge", probs, v_bkse)
