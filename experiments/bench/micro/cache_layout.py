"""Decode attention against the KV cache in a donated, in-place step: the old [B, S, K, E] cache read by two
batched matvecs ("old", which XLA fed by a transposed copy of both caches of every layer, every step) against the
head-major [B, K, S, E] cache read by multiply-and-reduce fusions ("new", what pijax/model/layers.py does: no copy).

`python experiments/bench/micro/cache_layout.py [ROUNDS]`: medians and minima (ms per step of all layers),
interleaved, for the SmolLM2 shape (3 KV heads x 3, 30 layers), the LLaMA-2-7B shape (32 x 1, 4 layers) and the
TinyLlama shape (4 x 8, 22 layers), S = 256. On the busy machine of issue 14 (load average 12) the minima were
2.9 / 2.4 ms (SmolLM2), 44.8 / 91.5 ms (7B, 4 layers: new 2x slower), 2.9 / 3.8 ms (TinyLlama): re-measure quietly.
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def make(mode, B, K, G, S, E, L):
    def layer(c, q, kn, vn, pos):
        zero = jnp.zeros((), jnp.int32)
        if mode == "old":
            k = jax.lax.dynamic_update_slice(c["k"], kn.transpose(0, 2, 1, 3), (zero, pos, zero, zero))
            v = jax.lax.dynamic_update_slice(c["v"], vn.transpose(0, 2, 1, 3), (zero, pos, zero, zero))
            s = jnp.einsum("bkge,bske->bkgs", q, k)
            p = jax.nn.softmax(s, -1)
            o = jnp.einsum("bkgs,bske->bkge", p, v)
        else:
            k = jax.lax.dynamic_update_slice(c["k"], kn, (zero, zero, pos, zero))
            v = jax.lax.dynamic_update_slice(c["v"], vn, (zero, zero, pos, zero))
            s = (q[:, :, :, None, :] * k[:, :, None, :, :]).sum(-1)
            p = jax.nn.softmax(s, -1)
            o = (p[..., None] * v[:, :, None]).sum(-2)
        return o, {"k": k, "v": v}

    def step(cs, q, kn, vn, pos):
        new = []
        x = q
        for c in cs:
            o, c = layer(c, x, kn, vn, pos)
            x = x + o
            new.append(c)
        return x, new

    shp = (B, S, K, E) if mode == "old" else (B, K, S, E)
    cs = [
        {"k": jnp.asarray(np.random.rand(*shp), jnp.float32), "v": jnp.asarray(np.random.rand(*shp), jnp.float32)}
        for _ in range(L)
    ]
    f = jax.jit(step, donate_argnums=0)
    q = jnp.ones((B, K, G, E))
    kn = jnp.ones((B, K, 1, E))
    pos = jnp.asarray(S - 3, jnp.int32)
    st = {"c": cs}

    def run():
        x, st["c"] = f(st["c"], q, kn, kn, pos)
        return x

    return run


ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 40
for shape in [(1, 3, 3, 256, 64, 30), (1, 32, 1, 256, 128, 4), (1, 4, 8, 256, 64, 22)]:
    fs = {m: make(m, *shape) for m in ("old", "new")}
    ts = {m: [] for m in fs}
    for m in fs:
        jax.block_until_ready(fs[m]())
        jax.block_until_ready(fs[m]())
    for _ in range(ROUNDS):
        for m, f in fs.items():
            t = time.perf_counter()
            jax.block_until_ready(f())
            ts[m].append(time.perf_counter() - t)
    print(shape, {m: f"min {1e3 * min(v):.3f} med {1e3 * statistics.median(v):.3f} ms" for m, v in ts.items()})
