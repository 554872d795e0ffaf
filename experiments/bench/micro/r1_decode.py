"""R1 on a quiet machine: SmolLM2-135M f32 decode with every product on the kernels (load_model's default on one
CPU device) against every product in XLA, interleaved in one process, and the per-token overhead.

`python experiments/bench/micro/r1_decode.py [ROUNDS]` (default 7; ~2 min on 2 quiet cores). Prints ms/token of
each engine per round (64-token prompt, 128 new tokens, greedy), their ratio round by round, and
`pijax.bench.decode_real.per_token_overhead` (dispatch of a step's arguments, host loop). Use it to check that the
kernel route is the faster one on the machine at hand before the real run (`python -m pijax.bench.decode --model
smollm2-135m`), which measures the default route only.
"""

import statistics
import sys

import numpy as np

import pijax
from pijax.bench.decode_real import per_token_overhead, weights_file
from pijax.kernels import ops
from pijax.model.generate import Engine, SamplingConfig

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
model = pijax.load_model(weights_file("smollm2-135m", "f32_copy"))
prompt = np.random.default_rng(0).integers(3, model.config.n_vocab, 64).tolist()
greedy = SamplingConfig()
print("overhead:", {k: round(v, 3) for k, v in per_token_overhead(model, prompt).items()}, flush=True)
kernel = Engine(model.module)
kernel.generate(prompt, 128, greedy)
old = ops.set_f32_kernel(False)  # traced from here on: every product in XLA
xla = Engine(model.module)
xla.generate(prompt, 128, greedy)
ops.set_f32_kernel(old)
ms: dict[str, list[float]] = {"kernels": [], "xla": []}
for _ in range(rounds):
    for name, eng in (("kernels", kernel), ("xla", xla)):
        out = eng.generate(prompt, 128, greedy)
        ms[name].append(1e3 * out.decode_s / out.decode_steps)
for name, v in ms.items():
    print(
        f"{name:8s} ms/token median {statistics.median(v):6.2f} min {min(v):6.2f} ({1e3 / statistics.median(v):.1f} tok/s)"
    )
print(
    "kernels / xla time, round by round:",
    " ".join(f"{a / b:.2f}" for a, b in zip(ms["kernels"], ms["xla"], strict=True)),
)
