"""22 layers of TinyLlama-shaped sparse FFN rows (10% selected, random) in one jitted call, per format.

`python experiments/bench/micro/ffn_rows_chain.py REPEATS f32,int8`; SHAPE=4,4096,11008 for LLaMA-7B-shaped layers.
"""

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from pijax.kernels import build
from pijax.kernels.formats import row_bytes, to_format
from pijax.kernels.ops import sparse_ffn

build.set_threads(2)

L, D, F = (int(v) for v in os.environ.get("SHAPE", "22,2048,5632").split(","))
rng = np.random.default_rng(0)
x0 = jnp.asarray(rng.standard_normal((1, D), np.float32))
lg = [jnp.asarray(rng.standard_normal((1, F), np.float32)) for _ in range(L)]
thr = float(np.quantile(np.asarray(lg[0]), 0.9))
for fmt in sys.argv[2].split(","):
    W = [
        [to_format(jnp.asarray(rng.standard_normal((F, D), np.float32) * 0.02), fmt) for _ in range(3)]
        for _ in range(L)
    ]
    build.use_hugepages(W)

    def f(W, lg, x, skip):
        for l in range(L):
            y, n = sparse_ffn(x, lg[l], W[l][0], W[l][1], W[l][2], kind="relu", threshold=thr, skip_inactive=skip)
            x = x + y
        return x, n

    for skip in (False, True):
        g = jax.jit(lambda W, lg, x, skip=skip: f(W, lg, x, skip))
        _, n = g(W, lg, x0)
        n.block_until_ready()
        ts = []
        for _r in range(int(sys.argv[1])):
            t = time.perf_counter()
            g(W, lg, x0)[0].block_until_ready()
            ts.append(time.perf_counter() - t)
        m = statistics.median(ts)
        nb = L * int(n[0]) * 3 * row_bytes(W[0][0])
        print(
            f"{fmt} skip={skip} sel={int(n[0])} {nb / 1e6:.0f} MB(full rows) {1e3 * m:.2f} ms [{1e3 * min(ts):.2f}] {nb / m / 1e9:.1f} GB/s"
        )
