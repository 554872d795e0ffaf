"""Prefill of a 64-token prompt on SmolLM2-135M per precision: pijax on its kernels (the multi-token tiles), pijax
on the XLA reference (the library switched off: what prompts ran before the tiles), and llama.cpp on the same file
with the same threads. Best of REPEATS each; wall time, or with TIMER=cpu the process's CPU time (one thread
each: `PIJAX_KERNEL_THREADS=1 XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
TIMER=cpu taskset -c 1 ...`, indicative on a busy machine). The paired figures of record are
`python -m pijax.bench.decode --model smollm2-135m --targets R1,R2,R3` (prefill table).

`python experiments/bench/micro/prefill_model.py [WEIGHTS:DTYPE,...] [REPEATS]`, e.g.
`f32_copy:f32,f16_copy:f16,f32_copy:int8,q8_0_copy:native,original:native 10` (int8 is pijax's own format: its
llama.cpp column is the F32 file's).
"""

import os
import sys
import time

import jax
import numpy as np

import pijax
from pijax.bench.decode_real import weights_file
from pijax.kernels import build
from pijax.model.generate import Engine, SamplingConfig

THREADS = int(os.environ.get("PIJAX_KERNEL_THREADS", "2"))
CLOCK = time.process_time if os.environ.get("TIMER") == "cpu" else time.perf_counter
SPECS = (sys.argv[1] if len(sys.argv) > 1 else "f32_copy:f32,f16_copy:f16,q8_0_copy:native,original:native").split(",")
REPEATS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
build.set_threads(THREADS)


def best(fn) -> float:
    fn()
    out = float("inf")
    for _ in range(REPEATS):
        t = CLOCK()
        fn()
        out = min(out, CLOCK() - t)
    return out


def llamacpp_prefill(path, prompt) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path), n_threads=THREADS, n_threads_batch=THREADS, n_ctx=256, n_batch=64, n_ubatch=64,
        verbose=False,
    )  # fmt: skip

    def run() -> None:
        llm.reset()
        llm.eval(prompt)

    return len(prompt) / best(run)


available = build.available
for spec in SPECS:
    weights, dtype = spec.split(":")
    path = weights_file("smollm2-135m", weights)
    model = pijax.load_model(path, dtype=dtype)
    ids = np.random.default_rng(0).integers(3, model.config.n_vocab, 64).tolist()
    tok_s = {}
    for name, avail in (("kernels", available), ("xla", lambda: False)):
        build.available = avail  # read when the prefill is traced
        eng, key = Engine(model.module), jax.random.key(0)
        tok_s[name] = len(ids) / best(
            lambda eng=eng, key=key, ids=ids: jax.block_until_ready(eng.prefill(ids, 256, SamplingConfig(), key))
        )
    build.available = available
    lc = llamacpp_prefill(path, ids)
    print(
        f"{weights}:{dtype}: pijax kernels {tok_s['kernels']:.0f} tok/s, pijax XLA reference {tok_s['xla']:.0f}, "
        f"llama.cpp {lc:.0f} -> {tok_s['kernels'] / lc:.2f}x ({THREADS} threads, {CLOCK.__name__})",
        flush=True,
    )
