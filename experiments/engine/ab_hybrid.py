"""Interleaved A/B of the hybrid engine against the single-device sparse engine, built as `pijax.bench.decode`
builds them (sparse: `load_llama` of the model file, kernels, huge pages; hybrid: `prepare_hybrid` with the
file's predictors, capacities at quantile 1.0). Rounds alternate between the engines in one process, so machine
load hits every engine alike: on a shared machine only these ratios mean anything.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 PYTHONPATH=$PWD \
        python experiments/engine/ab_hybrid.py --preset small --budgets 0,50,100 --rounds 5 --tokens 32

--split also prints the step's time split at each budget (`pijax.engine.profile.step_split`, on an engine built
with overlap on, so that the split layers' hot rows are timed apart from attention): `--rounds 0 --split
--budgets 50` gives only the split at 50%.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from typing import Any

import jax
import numpy as np

from pijax.api import load_model
from pijax.bench.synth import ensure_synth_model
from pijax.engine.pipeline import prepare_hybrid, profile_windows
from pijax.engine.profile import format_split, step_split
from pijax.index import IndexConfig
from pijax.kernels import build
from pijax.layout.config import HardwareConfig
from pijax.layout.devices import setup_devices
from pijax.model.convert import load_llama
from pijax.model.generate import Engine, SamplingConfig
from pijax.sparsity.profile import profile


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--n-layer", type=int, default=None)
    ap.add_argument("--budgets", default="0,50,100")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--policy", default="powerinfer")
    ap.add_argument("--dense", action="store_true", help="also the dense (XLA FFN) engine")
    ap.add_argument("--split", action="store_true", help="print the step's time split at each budget")
    ap.add_argument(
        "--twin",
        default=None,
        help="more hybrids per budget, modified: overlap (hot rows as their own call), devput (copies by jax.device_put), huge (the hybrid's weights on huge pages)",
    )
    args = ap.parse_args()
    placement = setup_devices(HardwareConfig(platform="cpu", n_accel=1))
    build.set_threads(2)
    over = {} if args.n_layer is None else {"n_layer": args.n_layer}
    path = ensure_synth_model(args.preset, progress=False, **over)
    engines = {"sparse": Engine(load_llama(path, "f32", progress=False))}
    if args.dense:
        engines["dense"] = Engine(load_llama(path, "f32", xla_ffn=True, progress=False))
    with jax.default_device(placement.host):
        m = load_model(path)
        windows = profile_windows(m, None, 128, 2048)
        stats = profile(m, windows, mode="relu", progress=False)
    prompt = np.random.default_rng(0).integers(3, m.config.n_vocab, 8).tolist()
    n_ctx = Engine(m.module).cache_size(len(prompt), args.tokens)
    tmp = tempfile.mkdtemp(prefix="ab-hybrid-")

    def hybrid(b: str, hw: HardwareConfig) -> Any:
        index_cfg = IndexConfig(policy=args.policy, path=f"{tmp}/{b}.gpuidx")
        return prepare_hybrid(
            m,
            f"ffn:{b}%",
            index_cfg=index_cfg,
            hardware=hw,
            placement=placement,
            stats=stats,
            profile_tokens=2048,
            n_ctx=n_ctx,
        )

    for b in args.budgets.split(","):
        setup = hybrid(b, HardwareConfig(platform="cpu", n_accel=1))
        engines[f"hybrid ffn:{b}%"] = setup.engine
        for twin in args.twin.split(",") if args.twin else []:
            hw = HardwareConfig(platform="cpu", n_accel=1, overlap=twin == "overlap")
            e = hybrid(b, hw).engine
            if twin == "huge":  # the hybrid's CPU buffers on transparent huge pages, as load_llama's (sparse)
                print(f"huge pages advised: {build.use_hugepages(e.hybrid.parts()) >> 20} MiB")
            if twin == "devput":  # the copies as jax.device_put
                from pijax.layout.devices import to_local, to_mesh

                for name, dst in (("_to_host_copy", placement.on_host), ("_to_accel_copy", placement.replicated)):
                    setattr(e, name, lambda x, dst=dst: to_mesh(to_local(x), dst))
            engines[f"{twin} ffn:{b}%"] = e
    res: dict[str, list[float]] = {k: [] for k in engines}
    greedy = SamplingConfig()
    ref = None
    for k, e in engines.items():
        out = e.generate(prompt, args.tokens, greedy, eos_id=None)  # compile
        if k != "dense":
            ref = ref or out.new_ids
            same = "same tokens as sparse" if out.new_ids == ref else "DIFFERENT tokens from sparse"
            print(f"{k}: {same}", flush=True)
    for _ in range(args.rounds):
        for k, e in engines.items():
            o = e.generate(prompt, args.tokens, greedy, eos_id=None)
            res[k].append(o.decode_steps / o.decode_s)
    sp, spx = (statistics.median(res["sparse"]), max(res["sparse"])) if args.rounds else (1.0, 1.0)
    for k, v in res.items() if args.rounds else ():
        med = statistics.median(v)
        print(
            f"{k:18s} median {med:7.2f} tok/s (min {min(v):.2f}, max {max(v):.2f})  {med / sp:.2f}x sparse"
            f" (best/best {max(v) / spx:.2f}x)"
        )
    if args.split:  # overlap on: the split layers' hot rows are then a call of their own, timed apart
        for b in args.budgets.split(","):
            e = hybrid(b, HardwareConfig(platform="cpu", n_accel=1, overlap=True)).engine
            print(f"split ffn:{b}% (overlap on):", format_split(step_split(e, prompt, args.tokens)), flush=True)


if __name__ == "__main__":
    main()
