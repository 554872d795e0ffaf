"""Decode attention against the KV cache in a donated, in-place step, per read and per model shape: the old
[B, S, K, E] cache read by two batched matvecs ("old", for which XLA writes a transposed copy of both caches of
every layer, every step) against the head-major [B, K, S, E] cache read by each of pijax's decode reads
(`pijax.kernels.attention`: "kernel", "reduce", "dot"), and the read `decode_read` picks for that shape.

`PYTHONPATH=$PWD python experiments/bench/micro/cache_layout.py [ROUNDS] [S]`: per shape, the median and minimum
ms per step of all layers, every read run once per round in turn (interleaved), and how many cache-sized buffers
each compiled step writes besides the two in-place updates per layer ("extra": 0 means the cache is not
copied). Shapes: SmolLM2 (3 KV heads x 3, E 64, 30 layers), LLaMA-2-7B (32 x 1, E 128, 4 layers), TinyLlama
(4 x 8, E 64, 22 layers), at S = 256 cache positions (or S).

History: the quiet A/B of the old layout against "reduce" (issue 14, 30 rounds): SmolLM2 4.18 / 3.47 ms, TinyLlama
3.87 / 4.38, 7B 17.2 / 44.8. The figures behind `decode_read` are in its docstring.
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from pijax.kernels.attention import READS, decode_attention, decode_read

SHAPES = {"smollm2": (1, 3, 3, 256, 64, 30), "llama2-7b": (1, 32, 1, 256, 128, 4), "tinyllama": (1, 4, 8, 256, 64, 22)}


def extra_cache_writes(hlo: str, cache_elems: int, n_layer: int) -> int:
    """Instructions of the entry computation that produce a cache-sized array, less the 2 updates per layer."""
    entry = hlo[hlo.index("ENTRY") :]
    sized = 0
    for line in entry.splitlines()[1:]:
        if "=" not in line or " parameter(" in line or " bitcast(" in line or " tuple(" in line:
            continue
        shape = line.split("=", 1)[1].strip().split(" ", 1)[0]
        if "[" not in shape or shape.startswith("("):
            continue
        dims = shape[shape.index("[") + 1 : shape.index("]")]
        if dims and int(np.prod([int(d) for d in dims.split(",")])) == cache_elems:
            sized += 1
    return sized - 2 * n_layer


def make(read, B, K, G, S, E, L):
    scale = 1.0 / np.sqrt(E)

    def layer(c, q, kn, vn, pos):
        zero = jnp.zeros((), jnp.int32)
        if read == "old":
            k = jax.lax.dynamic_update_slice(c["k"], kn.transpose(0, 2, 1, 3), (zero, pos, zero, zero))
            v = jax.lax.dynamic_update_slice(c["v"], vn.transpose(0, 2, 1, 3), (zero, pos, zero, zero))
            s = jnp.einsum("bkge,bske->bkgs", q, k) * scale
            s = jnp.where((jnp.arange(S) <= pos)[None, None, None, :], s, -jnp.inf)
            o = jnp.einsum("bkgs,bske->bkge", jax.nn.softmax(s, -1), v)
        else:
            k = jax.lax.dynamic_update_slice(c["k"], kn, (zero, zero, pos, zero))
            v = jax.lax.dynamic_update_slice(c["v"], vn, (zero, zero, pos, zero))
            o = decode_attention(q, k, v, pos, scale, read)
        return o, {"k": k, "v": v}

    def step(cs, q, kn, vn, pos):
        new = []
        x = q
        for c in cs:
            o, c = layer(c, x, kn * x[:, :, :1], vn, pos)  # the new key depends on the layer's input, as in a model
            x = x + o
            new.append(c)
        return x, new

    shp = (B, S, K, E) if read == "old" else (B, K, S, E)
    rng = np.random.default_rng(0)
    cs = [{n: jnp.asarray(rng.random(shp, np.float32)) for n in ("k", "v")} for _ in range(L)]
    f = jax.jit(step, donate_argnums=0)
    q = jnp.ones((B, K, G, E))
    kn = jnp.ones((B, K, 1, E))
    pos = jnp.asarray(S - 3, jnp.int32)
    extra = extra_cache_writes(f.lower(cs, q, kn, kn, pos).compile().as_text(), B * K * S * E, L)
    st = {"c": cs}

    def run():
        x, st["c"] = f(st["c"], q, kn, kn, pos)
        return x

    return run, extra


if __name__ == "__main__":
    ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    n_pos = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    for name, shape in SHAPES.items():
        shape = (*shape[:3], n_pos, *shape[4:])
        reads = ["old", *READS]
        fs, extra = {}, {}
        for r in reads:
            fs[r], extra[r] = make(r, *shape)
            jax.block_until_ready(fs[r]())
            jax.block_until_ready(fs[r]())
        ts = {r: [] for r in reads}
        for _ in range(ROUNDS):
            for r, f in fs.items():
                t = time.perf_counter()
                jax.block_until_ready(f())
                ts[r].append(time.perf_counter() - t)
        chosen = decode_read(shape[1], shape[2], shape[3], shape[4])
        print(f"{name} (B, K, G, S, E, L) = {shape}; decode_read picks {chosen!r}", flush=True)
        for r in reads:
            v = ts[r]
            print(f"  {r:7s} median {1e3 * statistics.median(v):7.3f} ms  min {1e3 * min(v):7.3f} ms  extra {extra[r]}")
