"""A prompt's products on SmolLM2-135M's shapes (one layer: q/k/v/o 576x576/192, gate/up 1536x576, down), per
weight format: the multi-token kernels (cpu_tiles.inc, cpu_quant.inc) against XLA's path for that format
(f32: its dot; others: dequantize + dot, what prompts ran before the tiles). Prints ms per layer and GFLOP/s.

`python experiments/bench/micro/prefill_tiles.py [TOKENS] [REPEATS] [f32,f16,int8,q8_0,q4_1]`
On a busy machine, `PIJAX_KERNEL_THREADS=1 XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1" TIMER=cpu ...` compares one thread of each by the process's CPU time instead.
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from pijax.kernels import build, ops
from pijax.kernels.blocks import BLOCK_FORMATS, quantize_blocks
from pijax.kernels.formats import to_format

M = int(sys.argv[1]) if len(sys.argv) > 1 else 64
REPEATS = int(sys.argv[2]) if len(sys.argv) > 2 else 30
FORMATS = (sys.argv[3] if len(sys.argv) > 3 else "f32,f16,int8,q8_0,q4_1").split(",")
D, KV, F = 576, 192, 1536
build.set_threads(int(os.environ.get("PIJAX_KERNEL_THREADS", "2")))
rng = np.random.default_rng(0)
shapes = {"q": (D, D), "k": (KV, D), "v": (KV, D), "o": (D, D), "gate": (F, D), "up": (F, D), "down_t": (F, D)}
W32 = {n: rng.standard_normal(s).astype(np.float32) * 0.05 for n, s in shapes.items()}
x = jnp.asarray(rng.standard_normal((M, D)).astype(np.float32))
flops = 2 * M * sum(a * b for a, b in shapes.values())


def layer(kernel: bool):
    """One layer's products; kernel=True: the tiles for every format, f32 included (set_f32_kernel)."""
    ops.set_f32_kernel(kernel)

    def f(ws, x):
        q, k, v = (ops.linear(x, ws[n], use_kernel=kernel) for n in "qkv")
        h = x + 1e-3 * ops.linear(q + jnp.tile(k + v, (1, D // KV)), ws["o"], use_kernel=kernel)
        if kernel:
            return ops.dense_ffn_tokens(h, ws["up"], ws["gate"], ws["down_t"], kind="silu")
        return ops.sparse_ffn_reference(h, None, ws["up"], ws["gate"], ws["down_t"], kind="silu")[0]

    return jax.jit(f)


CLOCK = time.process_time if os.environ.get("TIMER") == "cpu" else time.perf_counter


def timed(fn, *args) -> float:
    fn(*args).block_until_ready()
    best = float("inf")
    for _ in range(REPEATS):
        t = CLOCK()
        fn(*args).block_until_ready()
        best = min(best, CLOCK() - t)
    return best


print(f"{M} tokens, {build.status()}")
for fmt in FORMATS:
    if fmt in BLOCK_FORMATS:  # a dense block load keeps the FFN's down matrix [D, F]: a plain row product
        ws = {n: quantize_blocks(w, fmt) for n, w in W32.items()}
    else:
        ws = {n: to_format(jnp.asarray(w), fmt) for n, w in W32.items()}
    t_k = timed(layer(True), ws, x)
    t_x = timed(layer(False), ws, x)
    print(
        f"{fmt:5s} kernels {1e3 * t_k:7.3f} ms ({flops / t_k / 1e9:6.1f} GFLOP/s)   "
        f"xla {1e3 * t_x:7.3f} ms ({flops / t_x / 1e9:6.1f} GFLOP/s)   xla/kernels {t_x / t_k:.2f}"
    )
