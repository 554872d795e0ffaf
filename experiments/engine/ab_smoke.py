import logging, statistics, time, sys
import jax
import pijax
from pijax.bench.synth import ensure_synth_model
from pijax.layout.config import HardwareConfig
from pijax.layout.devices import setup_devices
from pijax.model.generate import SamplingConfig
from pijax.engine.profile import format_split, step_split
from pijax.engine.pipeline import profile_windows
from pijax.sparsity.profile import profile
hw = HardwareConfig(platform="cpu", n_accel=1)
setup_devices(hw)
m = pijax.load_model(ensure_synth_model("tinyllama-1.1b", n_layer=6, progress=False))
stats = profile(m, profile_windows(m, None, 128, 2048), mode="relu", progress=False)
ids = list(range(1, 9))
engines = {"sparse": m.sparse(mode="predictor").engine}
for b in sys.argv[1].split(","):
    engines[f"hybrid {b}%"] = m.hybrid(f"ffn:{b}%", policy="neuron_greedy", hardware=hw, stats=stats, profile_tokens=2048, index_path=f"/tmp/engine_ab_{b}.gpuidx").engine
res = {k: [] for k in engines}
for k, e in engines.items():
    e.generate(ids, 4, SamplingConfig(), eos_id=None)
for r in range(4):
    for k, e in engines.items():
        o = e.generate(ids, 16, SamplingConfig(), eos_id=None)
        res[k].append(o.decode_steps / o.decode_s)
for k, v in res.items():
    print(f"{k:14s} median {statistics.median(v):6.2f} tok/s  {[round(x,1) for x in v]}  ratio {statistics.median(v)/statistics.median(res['sparse']):.2f}", flush=True)
hw2 = HardwareConfig(platform="cpu", n_accel=1, overlap=True)
h = m.hybrid("ffn:50%", policy="neuron_greedy", hardware=hw2, stats=stats, profile_tokens=2048, index_path="/tmp/engine_ab_50.gpuidx")
print("split 50% (overlap on):", format_split(step_split(h.engine, ids, 16)))
