"""Decode attention of one query against a KV cache, 4 layers: the old fused multiply-and-reduce over cache
positions (A) against two batched matvecs (B, what pijax/model/layers.py does now).

`python experiments/bench/micro/cache_attention.py KV_HEADS GROUP` (7B shape: 32 1
TinyLlama shape: 4 8).
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

S, KV, G, E = 256, int(sys.argv[1]), int(sys.argv[2]), 128
L = 4
rng = np.random.default_rng(0)
caches = [
    {
        "k": jnp.asarray(rng.standard_normal((1, S, KV, E)), jnp.float32),
        "v": jnp.asarray(rng.standard_normal((1, S, KV, E)), jnp.float32),
    }
    for _ in range(L)
]
q0 = jnp.asarray(rng.standard_normal((1, KV, G, E)), jnp.float32)
kn = jnp.asarray(rng.standard_normal((1, 1, KV, E)), jnp.float32)
pos = 100


def A(caches, q):
    outs = []
    for c in caches:
        start = (0, pos, 0, 0)
        k = jax.lax.dynamic_update_slice(c["k"], kn, start)
        v = jax.lax.dynamic_update_slice(c["v"], kn, start)
        scores = jnp.einsum("bkge,bske->bskg", q, k) / np.sqrt(E)
        scores = jnp.where((jnp.arange(S) <= pos)[None, :, None, None], scores, -jnp.inf)
        probs = jax.nn.softmax(scores, axis=1)
        out = jnp.sum(probs[..., None] * v[:, :, :, None, :], axis=1)
        outs.append(out)
        q = q + 1e-3 * out
    return q


def B(caches, q):
    for c in caches:
        start = (0, pos, 0, 0)
        k = jax.lax.dynamic_update_slice(c["k"], kn, start)
        v = jax.lax.dynamic_update_slice(c["v"], kn, start)
        scores = jnp.einsum("bkge,bske->bkgs", q, k) / np.sqrt(E)
        scores = jnp.where((jnp.arange(S) <= pos)[None, None, None, :], scores, -jnp.inf)
        probs = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bkgs,bske->bkge", probs, v)
        q = q + 1e-3 * out
    return q


for name, f in (("A current", A), ("B einsum", B), ("A current", A)):
    g = jax.jit(f)
    r = g(caches, q0).block_until_ready()
    ts = []
    for _ in range(20):
        t = time.perf_counter()
        g(caches, q0).block_until_ready()
        ts.append(time.perf_counter() - t)
    print(name, KV, G, round(1e3 * statistics.median(ts), 2), "ms")
print("max diff", float(jnp.abs(jax.jit(A)(caches, q0) - jax.jit(B)(caches, q0)).max()))
