"""Smoke check of the engine's decode speed: dense, sparse (one device) and hybrid at several budgets, in one
process, plus the hybrid step's time split at 50%. Short runs only: the lead's measured table comes from
`python -m pijax.bench.decode --parts dense,sparse,hybrid` (see README.md).

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python experiments/engine/smoke_speed.py \
        --preset tinyllama-1.1b --n-layer 6 --tokens 24 --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import jax

import pijax
from pijax.bench.synth import ensure_synth_model
from pijax.engine.profile import format_split, step_split
from pijax.layout.config import HardwareConfig
from pijax.model.generate import SamplingConfig


def decode_tok_s(engine, ids, n_new: int, repeats: int) -> list[float]:
    engine.generate(ids, 4, SamplingConfig(), eos_id=None)  # compile
    out = []
    for _ in range(repeats):
        r = engine.generate(ids, n_new, SamplingConfig(), eos_id=None)
        out.append(r.decode_steps / r.decode_s)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tinyllama-1.1b")
    ap.add_argument("--n-layer", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budgets", default="0,20,50,80,100")
    ap.add_argument("--policy", default="neuron_greedy")
    ap.add_argument("--profile-tokens", type=int, default=4096)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    over = {} if args.n_layer is None else {"n_layer": args.n_layer}
    path = ensure_synth_model(args.preset, progress=False, **over)
    placement_hw = HardwareConfig(platform="cpu", n_accel=1)
    from pijax.layout.devices import setup_devices

    setup_devices(placement_hw)
    m = pijax.load_model(path)
    ids = list(range(1, 9))
    rows = []

    def report(name: str, speeds: list[float]) -> None:
        rows.append((name, statistics.median(speeds), min(speeds), max(speeds)))
        print(
            f"{name:28s} median {statistics.median(speeds):7.2f} tok/s (min {min(speeds):.2f}, max {max(speeds):.2f})",
            flush=True,
        )

    report("dense", decode_tok_s(m.engine, ids, args.tokens, args.repeats))
    from pijax.engine.pipeline import profile_windows
    from pijax.sparsity.profile import profile

    windows = profile_windows(m, None, 128, args.profile_tokens)
    stats = profile(m, windows, mode="relu", progress=False)  # once, for every budget's gpuidx
    opts = {"stats": stats, "profile_tokens": args.profile_tokens, "policy": args.policy}
    s = m.sparse(mode="predictor")
    sparse = decode_tok_s(s.engine, ids, args.tokens, args.repeats)
    report(f"sparse ({s.setup.backend})", sparse)
    del s
    for b in args.budgets.split(","):
        t0 = time.perf_counter()
        h = m.hybrid(f"ffn:{b}%", hardware=placement_hw, index_path=f"/tmp/engine_speed_{b}.gpuidx", **opts)
        print(f"  built in {time.perf_counter() - t0:.1f} s: {h.setup.engine.hybrid.backends()}", flush=True)
        report(f"hybrid ffn:{b}%", decode_tok_s(h.engine, ids, args.tokens, args.repeats))
        del h
        if b == "50":  # the hot rows as their own call (overlap on), so attention and hot FFN are timed apart
            hw = HardwareConfig(platform="cpu", n_accel=1, overlap=True)
            h = m.hybrid("ffn:50%", hardware=hw, index_path="/tmp/engine_speed_50.gpuidx", **opts)
            print("  split:", format_split(step_split(h.engine, ids, args.tokens)), flush=True)
            del h
    d = rows[0][1]
    sp = rows[1][1]
    for name, med, _, _ in rows[2:]:
        print(f"{name}: {med / sp:.2f}x sparse, {med / d:.2f}x dense")
    jax.clear_caches()


if __name__ == "__main__":
    main()
