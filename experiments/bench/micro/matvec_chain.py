"""22 layers of attention-shaped matvecs (q,k,v,o) + predictor (fc1 256, fc2) + head, in one jitted call:
XLA (f32) vs the kernel rows_dot per format. Prints ms and effective GB/s against a probe.

`python experiments/bench/micro/matvec_chain.py REPEATS f32,f16,int8`
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from pijax.kernels import build
from pijax.kernels.formats import nbytes, to_format
from pijax.kernels.ops import linear

build.set_threads(2)
L, D, KV, V, R, F = 22, 2048, 256, 32000, 256, 5632
rng = np.random.default_rng(0)
shapes = [(D, D), (KV, D), (KV, D), (D, D), (R, D), (F, R)]
W32 = [[jnp.asarray(rng.standard_normal(s, np.float32) * 0.02) for s in shapes] for _ in range(L)]
H32 = jnp.asarray(rng.standard_normal((V, D), np.float32) * 0.02)
x0 = jnp.asarray(rng.standard_normal((1, D), np.float32))


def chain(kern):
    def f(W, head, x):
        for l in range(L):
            q = linear(x, W[l][0], f32_kernel=kern)
            k = linear(x, W[l][1], f32_kernel=kern)
            v = linear(x, W[l][2], f32_kernel=kern)
            o = linear(q + jnp.tile(v + k, (1, D // KV)), W[l][3], f32_kernel=kern)
            p = linear(jax.nn.relu(linear(x, W[l][4], f32_kernel=kern)), W[l][5], f32_kernel=kern)
            x = x + 1e-3 * o + 1e-3 * p[:, :D]
        return linear(x, head, f32_kernel=kern).sum() + x.sum()

    return jax.jit(f)


cases = {}
for fmt in sys.argv[2].split(",") if len(sys.argv) > 2 else ["f32", "f16", "int8"]:
    W = [[to_format(a, fmt) for a in w] for w in W32]
    H = to_format(H32, fmt)
    nb = sum(nbytes(a) for w in W for a in w) + nbytes(H)
    for kern in (False, True) if fmt == "f32" else (True,):
        cases[f"{fmt} {'kernel' if kern else 'xla'}"] = (chain(kern), W, H, nb)
for f, W, H, _ in cases.values():
    f(W, H, x0).block_until_ready()
ts = {k: [] for k in cases}
for _r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 15):
    for k, (f, W, H, _) in cases.items():
        t = time.perf_counter()
        f(W, H, x0).block_until_ready()
        ts[k].append(time.perf_counter() - t)
a = jnp.ones(300_000_000, jnp.float32)
s = jax.jit(lambda a: a.sum())
s(a).block_until_ready()
bw = []
for _ in range(5):
    t = time.perf_counter()
    s(a).block_until_ready()
    bw.append(a.nbytes / (time.perf_counter() - t))
bwm = statistics.median(bw)
print(f"probe {bwm / 1e9:.1f} GB/s")
for k, v in ts.items():
    m = statistics.median(v)
    nb = cases[k][3]
    print(
        f"{k:12s} {nb / 1e6:6.0f} MB {1e3 * m:7.2f} ms [{1e3 * min(v):.2f}, {1e3 * max(v):.2f}] {nb / m / 1e9:5.1f} GB/s  bound {1e3 * nb / bwm:.1f} ms"
    )
