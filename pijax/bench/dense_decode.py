"""Benchmark: dense f32 decode tokens/s against the memory-bandwidth bound (not a test).

Measures, in one process: decode tokens/s of stories260K and of a randomly initialised TinyLlama-1.1B-shape
model, and the read bandwidth (the fastest of three readers of a 1.2 GB f32 array, see BandwidthProbe),
re-measured right before every decode repeat because the machine is shared. Bound = bandwidth / weight bytes
read per token (every weight but the embedding table, of which one row is read); ratio = tok/s / bound per
repeat. Medians over repeats, after a warm-up run.

    OPENBLAS_NUM_THREADS=1 JAX_PLATFORMS=cpu python -m pijax.bench.dense_decode
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from pijax.config import ModelConfig
from pijax.io.checkpoint import load_checkpoint
from pijax.model.generate import Engine, SamplingConfig
from pijax.model.llama import Llama
from pijax.paths import STORIES260K

TINYLLAMA_SHAPE = ModelConfig(
    n_vocab=32000,
    n_ctx=2048,
    n_embd=2048,
    n_ff=5632,
    n_layer=22,
    n_head=32,
    n_head_kv=4,
    rope_dim=64,
    rope_base=10000.0,
    norm_eps=1e-5,
    ffn_act="silu",
    name="random TinyLlama-1.1B shape",
)


@dataclasses.dataclass
class DecodeResult:
    model: str
    decode_tok_s: float  # medians over repeats
    bandwidth_GBps: float
    bound_tok_s: float
    ratio: float  # median over repeats of (tok/s x bytes per token / bandwidth measured just before)
    weight_bytes_per_token: int
    per_repeat: list[dict[str, float]]


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class BandwidthProbe:
    """Read bandwidth over one large f32 array, the fastest of four readers: a jitted XLA sum and an XLA
    matrix-vector product over it viewed as [N/2048, 2048] (both threads, as decode uses), numpy's single-thread
    sum (the steadier one when another process holds a core), and the kernel library's multi-threaded streaming
    read of a buffer of the same size (`pijax.kernels.bandwidth`; best of the passes, as llama.cpp's rate is)."""

    ROW = 2048

    def __init__(self, gbytes: float = 1.2):
        n = int(gbytes * 1e9) // 4 // self.ROW * self.ROW
        self.arr = jnp.ones((n,), jnp.float32)
        self.host = np.asarray(self.arr)  # a zero-copy view on CPU
        vec = jnp.ones((self.ROW,), jnp.float32)
        self._readers: dict[str, Callable[[], object]] = {
            "jax_sum": functools.partial(jax.jit(jnp.sum), self.arr),
            "jax_matvec": functools.partial(jax.jit(lambda a, v: a.reshape(-1, self.ROW) @ v), self.arr, vec),
        }

    def measure_each(self, repeats: int = 5) -> dict[str, float]:
        """Bytes/s of each reader, the median of `repeats` full reads."""
        out = {
            name: self.arr.nbytes / _median_time(lambda f=fn: f().block_until_ready(), repeats)
            for name, fn in self._readers.items()
        }
        out["numpy_sum"] = self.host.nbytes / _median_time(self.host.sum, repeats)
        from pijax.kernels.bandwidth import read_bandwidth

        # The kernel library's streaming read (its own thread pool, huge pages): the XLA readers alone stayed
        # below what llama.cpp sustains (issue 14), which inflated every share of the bound.
        k = read_bandwidth(self.arr.nbytes / 1e9, repeats=repeats)
        if k is not None:
            out["kernel_stream"] = k.gbps * 1e9
        return out

    def measure(self, repeats: int = 5) -> float:
        return max(self.measure_each(repeats).values())


def decode_speed(
    module: Llama, name: str, probe: BandwidthProbe, n_prompt: int, n_new: int, repeats: int
) -> DecodeResult:
    """Greedy decode of n_new tokens per repeat; the bandwidth is re-measured right before each repeat so that
    a load change on a shared machine moves both numbers of a ratio together."""
    engine = Engine(module)
    prompt = np.random.default_rng(0).integers(3, module.cfg.n_vocab, n_prompt).tolist()
    greedy = SamplingConfig()
    engine.generate(prompt, n_new, greedy)  # warm-up: compile and touch every page
    wbytes = module.weight_bytes_per_token()
    rows = []
    for _ in tqdm(range(repeats), desc=f"decode {name}", leave=False):
        bw = probe.measure()
        out = engine.generate(prompt, n_new, greedy)
        tok_s = out.decode_steps / out.decode_s
        rows.append({"decode_tok_s": tok_s, "bandwidth_GBps": bw / 1e9, "ratio": tok_s * wbytes / bw})
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    bound = med["bandwidth_GBps"] * 1e9 / wbytes
    return DecodeResult(name, med["decode_tok_s"], med["bandwidth_GBps"], bound, med["ratio"], wbytes, rows)


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--new-tokens", type=int, default=24, help="decode steps per repeat (TinyLlama shape)")
    ap.add_argument("--skip-tinyllama", action="store_true")
    ap.add_argument("--json", type=str, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    load_before = os.getloadavg()
    probe = BandwidthProbe()
    bw0 = probe.measure_each()
    print("read bandwidth at start: " + ", ".join(f"{k} {v / 1e9:.1f} GB/s" for k, v in bw0.items()))
    results = []
    ckpt = load_checkpoint(STORIES260K)
    small = Llama(ckpt.config, ckpt.weights, rngs=nnx.Rngs(0))
    results.append(decode_speed(small, "stories260K", probe, 16, 240, args.repeats))
    del small, ckpt
    if not args.skip_tinyllama:
        t = time.perf_counter()
        big = Llama(TINYLLAMA_SHAPE, None, rngs=nnx.Rngs(0))
        jax.block_until_ready(nnx.state(big))
        print(f"random TinyLlama-shape init: {time.perf_counter() - t:.1f} s")
        results.append(
            decode_speed(big, "TinyLlama-1.1B shape (random, f32)", probe, 16, args.new_tokens, args.repeats)
        )
        del big
        gc.collect()

    load_after = os.getloadavg()
    print(f"\n1-minute load average: {load_before[0]:.1f} before, {load_after[0]:.1f} after ({os.cpu_count()} cpus)")
    print("\n| model | decode tok/s | weight bytes / token | read bandwidth | bound tok/s | ratio |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.model} | {r.decode_tok_s:.2f} | {r.weight_bytes_per_token / 1e6:.2f} MB | "
            f"{r.bandwidth_GBps:.1f} GB/s | {r.bound_tok_s:.2f} | {100 * r.ratio:.0f}% |"
        )
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__},
        "load_average_before_after": [load_before, load_after],
        "bandwidth_at_start_GBps": {k: v / 1e9 for k, v in bw0.items()},
        "results": [dataclasses.asdict(r) for r in results],
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return report


if __name__ == "__main__":
    main()
