"""Interleaved A/B of the single-device sparse engine's decode step, built as `pijax.bench.decode` builds it
(`load_llama` of the plain f32 file with the model file's predictors: the FFN on the kernels), traced under
different routes for everything else, all sharing one copy of the weights:
- "default": the engine as it is now: a one-device program takes the kernels for its large f32 products
  (`pijax.kernels.ops.one_device`) however many devices jax sees, and decode attention reads the cache with the
  kernel (`pijax.kernels.attention.decode_read`);
- "mixed": what the bench ran before (with its 2 virtual devices the f32 rule saw "several devices", so q/k/v/o,
  the predictor and the head were XLA dots beside the FFN kernels: two thread pools on the same cores);
- "xla-attn-read": "default" with decode attention read by the multiply-and-reduce fusions instead of the kernel;
- "counting": "default" in the bench's CountingEngine (the per-step selection counts handed to the host by a
  callback: the engine the bench times as "sparse").

    XLA_FLAGS=--xla_force_host_platform_device_count=2 PYTHONPATH=$PWD flock /tmp/pijax_big.lock \
        python experiments/engine/ab_sparse_step.py --preset tinyllama-1.1b --rounds 5 --tokens 32

Rounds alternate between the variants in one process: on a shared machine only the ratios mean anything.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Iterator

import jax
import numpy as np

import pijax.kernels.attention as attention
from pijax.bench.decode import model_files
from pijax.bench.decode_timing import CountingEngine
from pijax.kernels import ops
from pijax.model.convert import load_llama
from pijax.model.generate import Engine, SamplingConfig


@contextlib.contextmanager
def route(name: str) -> Iterator[None]:
    old = ops.set_f32_kernel(False if name == "mixed" else None)
    read = attention.decode_read
    if name == "xla-attn-read":
        attention.decode_read = lambda *a: "reduce"
    try:
        yield
    finally:
        ops.set_f32_kernel(old)
        attention.decode_read = read


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--n-prompt", type=int, default=32)
    ap.add_argument("--variants", default="default,mixed,xla-attn-read,counting")
    args = ap.parse_args()
    files = model_files(args.preset)
    llama = load_llama(files.plain_f32, "f32", predictors_from=files.pwri)
    prompt = np.random.default_rng(0).integers(3, llama.cfg.n_vocab, args.n_prompt).tolist()
    greedy = SamplingConfig()
    engines, ids = {}, {}
    for name in args.variants.split(","):
        with route(name):  # the route is fixed when the steps are traced, by the warm-up generation
            engines[name] = (CountingEngine if name == "counting" else Engine)(llama)
            ids[name] = engines[name].generate(prompt, args.tokens, greedy).new_ids
    print(f"{jax.device_count()} devices; same tokens in every variant: {len({tuple(v) for v in ids.values()}) == 1}")
    times: dict[str, list[float]] = {n: [] for n in engines}
    for _ in range(args.rounds):
        for name, eng in engines.items():
            out = eng.generate(prompt, args.tokens, greedy)
            times[name].append(out.decode_steps / out.decode_s)
    base = statistics.median(times[next(iter(times))])
    for name, v in times.items():
        med = statistics.median(v)
        print(f"{name:14s} decode {med:6.2f} tok/s [{min(v):.2f}, {max(v):.2f}]  x first {med / base:.2f}")


if __name__ == "__main__":
    main()
