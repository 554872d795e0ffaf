"""Interleaved smoke comparison (same process, same model, rounds alternating between engines, so machine load
hits every engine alike): the single-device sparse engine against the hybrid engine at some budgets, then the
hybrid step's time split at 50%. A short run for a shared machine; the measured table is the lead's.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 PYTHONPATH=$PWD \
        python experiments/engine/ab_smoke.py --budgets 0,20,50,80,100 --n-layer 6 --rounds 4
"""

from __future__ import annotations

import argparse
import statistics

import pijax
from pijax.bench.synth import ensure_synth_model
from pijax.engine.pipeline import profile_windows
from pijax.engine.profile import format_split, step_split
from pijax.layout.config import HardwareConfig
from pijax.layout.devices import setup_devices
from pijax.model.generate import SamplingConfig
from pijax.sparsity.profile import profile


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tinyllama-1.1b")
    ap.add_argument("--n-layer", type=int, default=None)
    ap.add_argument("--budgets", default="100,50")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--policy", default="neuron_greedy")
    args = ap.parse_args()
    hw = HardwareConfig(platform="cpu", n_accel=1)
    setup_devices(hw)
    over = {} if args.n_layer is None else {"n_layer": args.n_layer}
    m = pijax.load_model(ensure_synth_model(args.preset, progress=False, **over))
    stats = profile(m, profile_windows(m, None, 128, 2048), mode="relu", progress=False)
    opts = {"policy": args.policy, "stats": stats, "profile_tokens": 2048}
    ids = list(range(1, 9))
    engines = {"dense": m.engine, "sparse": m.sparse(mode="predictor").engine}
    for b in args.budgets.split(","):
        h = m.hybrid(f"ffn:{b}%", hardware=hw, index_path=f"/tmp/engine_ab_{b}.gpuidx", **opts)
        engines[f"hybrid ffn:{b}%"] = h.engine
    res: dict[str, list[float]] = {k: [] for k in engines}
    for e in engines.values():
        e.generate(ids, 4, SamplingConfig(), eos_id=None)  # compile
    for _ in range(args.rounds):
        for k, e in engines.items():
            o = e.generate(ids, args.tokens, SamplingConfig(), eos_id=None)
            res[k].append(o.decode_steps / o.decode_s)
    sp, de = statistics.median(res["sparse"]), statistics.median(res["dense"])
    for k, v in res.items():
        med = statistics.median(v)
        print(
            f"{k:16s} median {med:6.2f} tok/s (min {min(v):.2f}, max {max(v):.2f})  {med / sp:.2f}x sparse  {med / de:.2f}x dense"
        )
    hw2 = HardwareConfig(platform="cpu", n_accel=1, overlap=True)  # hot rows as their own call: timed apart
    h = m.hybrid("ffn:50%", hardware=hw2, index_path="/tmp/engine_ab_50.gpuidx", **opts)
    print("split ffn:50% (overlap on):", format_split(step_split(h.engine, ids, args.tokens)))


if __name__ == "__main__":
    main()
