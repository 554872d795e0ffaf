"""Benchmarks of hybrid hot/cold execution (experiments/hybrid/README.md holds the commands and results).

    python -m pijax.bench.hybrid ffn    [--platform cpu|gpu] [--n-accel N] [--n-embd 4096 --n-ff 11008 ...]
        one layer's hot part, masked dense vs capacity-bounded gather (and the cold part on the host), us per call
    python -m pijax.bench.hybrid decode [--platform ...] [--n-embd 1024 --n-ff 4096 --n-layer 4 ...]
        decode tokens/s of a random ReLU model with random predictors: hot mode x overlap, and the dense engine
    python -m pijax.bench.hybrid sweep  [--platform ...] [--model PATH] [--fractions 0 0.1 ...]
        budget sweep on a model file: resident accelerator bytes vs budget, hot share of activations, tokens/s

Every subcommand appends rows to --csv (one row per measurement, with the device kind); `sweep` also draws --png.
Timings: median over --repeats calls after warm-up; each call waits for its result (decode latency).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def _setup(args: argparse.Namespace) -> Any:
    # Devices first: virtual CPU devices can only be asked for before jax starts.
    from pijax.layout.config import HardwareConfig
    from pijax.layout.devices import setup_devices

    return setup_devices(HardwareConfig(platform=args.platform, n_accel=args.n_accel))


def _time(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of fn() (waited for) over `repeats` calls after two warm-up calls."""
    import jax

    for _ in range(2):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _write_csv(path: str | None, rows: list[dict[str, Any]]) -> None:
    if not path or not rows:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    new = not p.exists()
    if not new:
        with p.open() as f:
            old_fields = next(csv.reader(f), [])
        if old_fields != fields:  # another subcommand's columns: keep both, unify the header
            with p.open() as f:
                old = list(csv.DictReader(f))
            fields = list(dict.fromkeys([*old_fields, *fields]))
            rows = old + rows
            new = True
    with p.open("w" if new else "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerows(rows)


def _device(placement: Any) -> dict[str, Any]:
    return {"device_kind": placement.accelerators[0].device_kind, "n_accel": placement.n_accel}


# ---- ffn: one layer's hot part, masked vs gather ---------------------------------------------------------------
def bench_ffn(placement: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    from statistics import NormalDist

    import jax
    import numpy as np
    from flax import nnx

    from pijax.engine.hybrid_ffn import ColdFFN, HotFFN, select
    from pijax.layout.devices import to_mesh
    from pijax.layout.pack import PackedLayer

    d, f = args.n_embd, args.n_ff
    k = round(args.hot * f)
    rng = np.random.default_rng(0)

    def rows(n: int) -> np.ndarray:
        return (rng.standard_normal((n, d), np.float32) * 0.02).astype(np.float32)

    packed = PackedLayer(
        np.arange(k, dtype=np.int32),
        np.arange(k, f, dtype=np.int32),
        rows(k),
        rows(k),
        rows(k),
        rows(f - k),
        rows(f - k),
        rows(f - k),
    )
    thr = NormalDist().inv_cdf(1.0 - args.active)
    per_shard = math.ceil(k / placement.n_accel)
    cap = min(per_shard, math.ceil(per_shard * args.active + 4 * math.sqrt(per_shard * args.active)))
    h = to_mesh(rng.standard_normal((1, 1, d), np.float32), placement.replicated)
    logits = to_mesh(rng.standard_normal((1, f), np.float32), placement.replicated)
    out = []
    for mode in ("dense", "masked", "gather"):
        hot = HotFFN(
            packed,
            placement,
            kind="relu",
            source="dense" if mode == "dense" else "predictor",
            threshold=thr,
            mode="gather" if mode == "gather" else "masked",
            capacity=cap,
            max_gather_rows=None,
        )
        gd, st = nnx.split(hot)
        fn = jax.jit(lambda st, h, lg, gd=gd: nnx.merge(gd, st)(h, lg))
        sec = _time(lambda fn=fn, st=st: fn(st, h, logits), args.repeats)
        out.append(
            {
                "bench": "ffn",
                "part": "hot",
                "mode": mode,
                "rows": k,
                "capacity": cap if mode == "gather" else per_shard,
                "us": sec * 1e6,
            }
        )
    n_cold = f - k
    cold_cap = min(n_cold, math.ceil(n_cold * args.active + 4 * math.sqrt(n_cold * args.active)))
    lg_cold = jax.device_put(rng.standard_normal((1, n_cold), np.float32), placement.on_host)
    h_host = jax.device_put(np.asarray(h.addressable_data(0)), placement.on_host)
    for gather in (False, True):
        cold = ColdFFN(
            packed,
            placement.on_host,
            kind="relu",
            source="predictor",
            capacity=cold_cap,
            max_gather_rows=None if gather else 0,
        )
        req = jax.jit(lambda lg, g=gather: select(lg, lg >= thr, cold_cap, g))(lg_cold)
        gd, st = nnx.split(cold)
        fn = jax.jit(lambda st, h, r, gd=gd: nnx.merge(gd, st)(h, r))
        sec = _time(lambda fn=fn, st=st, req=req: fn(st, h_host, req), args.repeats)
        out.append(
            {
                "bench": "ffn",
                "part": "cold (host)",
                "mode": "gather" if gather else "masked",
                "rows": n_cold,
                "capacity": cold_cap,
                "us": sec * 1e6,
            }
        )
    common = {**_device(placement), "n_embd": d, "n_ff": f, "hot_fraction": args.hot, "active": args.active}
    return [{**common, **r} for r in out]


# ---- decode: a random ReLU model, hot mode x overlap -------------------------------------------------------------
def _random_model(placement: Any, args: argparse.Namespace) -> tuple[Any, list[Any], list[float], Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from pijax.config import ModelConfig
    from pijax.model.llama import Llama
    from pijax.model.predictor import Predictor

    d, f, n_layer = args.n_embd, args.n_ff, args.n_layer
    heads = max(1, d // 64)
    cfg = ModelConfig(
        n_vocab=512,
        n_ctx=512,
        n_embd=d,
        n_ff=f,
        n_layer=n_layer,
        n_head=heads,
        n_head_kv=heads,
        rope_dim=64,
        ffn_act="relu",
        name=f"random-relu-{d}x{f}x{n_layer}",
    )
    with jax.default_device(placement.host):
        llama = Llama(cfg, None, rngs=nnx.Rngs(0))
        preds = [Predictor(None, d, f, args.rank, rngs=nnx.Rngs(100 + i)) for i in range(n_layer)]
        tokens = jnp.asarray(np.random.default_rng(1).integers(0, cfg.n_vocab, (1, 64)), jnp.int32)
        gd, st = nnx.split(llama)  # weights as arguments: closed over, they would be baked in as constants
        _, records = jax.jit(lambda st, t: nnx.merge(gd, st).trace(t))(st, tokens)
        # per-layer thresholds that make `active` of the neurons predicted active on this text
        thr = [float(jnp.quantile(p(r["ffn_in"]), 1.0 - args.active)) for p, r in zip(preds, records, strict=True)]
    return llama, preds, thr, tokens


def bench_decode(placement: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    import jax
    import numpy as np

    from pijax.engine.hybrid import build_hybrid
    from pijax.engine.hybrid_engine import HybridEngine
    from pijax.layout.capacity import calibrate_capacities
    from pijax.model.generate import Engine, SamplingConfig

    llama, preds, thr, tokens = _random_model(placement, args)
    cfg = llama.cfg
    k = round(args.hot * cfg.n_ff)
    buckets = [np.arange(k, dtype=np.int32) for _ in range(cfg.n_layer)]
    with jax.default_device(placement.host):
        caps = calibrate_capacities(
            llama, buckets, placement.n_accel, np.asarray(tokens), predictors=preds, pred_threshold=thr
        )
    prompt = [int(t) for t in np.asarray(tokens)[0, :8]]
    greedy = SamplingConfig()
    common = {
        **_device(placement),
        "n_embd": cfg.n_embd,
        "n_ff": cfg.n_ff,
        "n_layer": cfg.n_layer,
        "hot_fraction": args.hot,
        "active": args.active,
    }
    out = []
    for hot_mode in ("masked", "gather"):
        for overlap in (False, True):
            h = build_hybrid(
                llama,
                buckets,
                placement,
                predictors=preds,
                pred_threshold=thr,
                hot_mode=hot_mode,
                overlap=overlap,
                hot_capacities=caps.hot_per_shard,
                cold_capacities=caps.cold,
            )
            eng = HybridEngine(h, n_ctx=256)
            speeds = []
            for _ in range(args.runs):
                g = eng.generate(prompt, args.new_tokens, greedy, eos_id=None)
                speeds.append(g.decode_steps / g.decode_s)
            out.append(
                {
                    **common,
                    "bench": "decode",
                    "engine": "hybrid",
                    "mode": hot_mode,
                    "overlap": overlap,
                    "tok_s": statistics.median(speeds),
                }
            )
            del eng, h
    dense_dev = placement.accelerators[0]
    if not args.skip_dense:
        from flax import nnx

        gd, st = nnx.split(llama)
        moved = nnx.merge(gd, jax.device_put(st, dense_dev))
        eng = Engine(moved)
        speeds = [
            (lambda g: g.decode_steps / g.decode_s)(eng.generate(prompt, args.new_tokens, greedy))
            for _ in range(args.runs)
        ]
        out.append(
            {
                **common,
                "bench": "decode",
                "engine": "dense (one accelerator)",
                "mode": "",
                "overlap": "",
                "tok_s": statistics.median(speeds),
            }
        )
    return out


# ---- sweep: budgets on a model file ------------------------------------------------------------------------------
def bench_sweep(placement: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    import jax

    from pijax.api import load_model
    from pijax.corpus import load_corpus, token_windows
    from pijax.engine.pipeline import prepare_hybrid, profile_windows
    from pijax.index import IndexConfig, plan_budget
    from pijax.layout.capacity import active_counts
    from pijax.model.generate import SamplingConfig
    from pijax.sparsity.profile import profile

    with jax.default_device(placement.host):
        model = load_model(args.model)
    cfg = model.config
    preds = model.checkpoint.weights.predictors
    ranks = None if preds is None else [p.rank for p in preds]
    base = plan_budget(
        cfg, 0, n_ctx=args.n_ctx, predictor_ranks=ranks, n_devices=placement.n_accel, allow_all_cold=True
    )
    per_neuron = base.bytes_per_neuron + base.bucket_bytes_per_neuron
    with jax.default_device(placement.host):
        stats = profile(model, profile_windows(model, None, 128, args.profile_tokens), progress=False)
        _, held = load_corpus().split(0.1)
        held_windows = token_windows(model.tokenizer, held.docs, 128, max_tokens=args.eval_tokens)
    prompt = model.tokenizer.encode("Once upon a time, there was a little girl named Lily.", bos=True)
    rows = []
    for frac in args.fractions:
        budget = base.dense_bytes + math.ceil(frac * base.total_neurons * per_neuron)
        s = prepare_hybrid(
            model,
            budget,
            index_cfg=IndexConfig(policy=args.policy, path=args.index_path),
            placement=placement,
            stats=stats,
            n_ctx=args.n_ctx,
            profile_tokens=args.profile_tokens,
        )
        with jax.default_device(placement.host):
            counts = active_counts(model, s.index.buckets, placement.n_accel, held_windows)
        hot_pred = float(counts[..., : placement.n_accel].sum() / max(counts.sum(), 1))
        speeds = []
        for _ in range(args.runs):
            g = s.engine.generate(prompt, args.new_tokens, SamplingConfig(), eos_id=None)
            speeds.append(g.decode_steps / g.decode_s)
        stats_in_use = [v for v in s.report.memory_stats.values() if v is not None]
        rows.append(
            {
                **_device(placement),
                "bench": "sweep",
                "model": Path(args.model).name,
                "policy": args.policy,
                "budget_bytes": budget,
                "dense_bytes_planned": base.dense_bytes,
                "capacity_neurons": s.plan.capacity_neurons,
                "hot_neurons": sum(s.engine.hybrid.n_hot),
                "hot_fraction": s.engine.hybrid.hot_fraction,
                "hot_share_profiled": s.hot_share,
                "hot_share_predicted_heldout": hot_pred,
                "resident_bytes": s.report.total,
                "resident_max_device": max(s.report.per_device.values()),
                "bytes_in_use": max(stats_in_use) if stats_in_use else "",
                "fits": s.report.fits,
                "tok_s": statistics.median(speeds),
            }
        )
        print(
            f"budget {budget:,d}: hot {rows[-1]['hot_neurons']} neurons, resident {s.report.total:,d}, "
            f"hot share {s.hot_share:.3f} (held-out predicted {hot_pred:.3f}), {rows[-1]['tok_s']:.1f} tok/s"
        )
        del s
    return rows


def plot_sweep(csv_path: str, png_path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = [r for r in csv.DictReader(f) if r.get("bench") == "sweep"]
    if not rows:
        return
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2))
    groups: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        device = "H100" if "H100" in r["device_kind"] else r["device_kind"].split(" (")[0]
        groups.setdefault(f"{r['model']}, {device} x{r['n_accel']}", []).append(r)
    for label, rs in groups.items():
        extra = [(int(r["budget_bytes"]) - int(r["dense_bytes_planned"])) / 1e3 for r in rs]
        ax1.plot(extra, [int(r["resident_bytes"]) / int(r["budget_bytes"]) for r in rs], "o-", label=label)
        ax2.plot(extra, [float(r["hot_share_profiled"]) for r in rs], "o-", label=f"profiled, {label}")
        ax2.plot(
            extra, [float(r["hot_share_predicted_heldout"]) for r in rs], "x--", label=f"predicted, held-out, {label}"
        )
        ax3.plot(extra, [float(r["tok_s"]) for r in rs], "o-", label=label)
    ax1.axhline(1.0, color="k", ls=":", label="budget")
    xlabel = "budget above the planned dense part (kB)"
    ax1.set(xlabel=xlabel, ylabel="resident accelerator bytes / budget", title="resident bytes stay under the budget")
    ax1.set_ylim(0, 1.1)
    ax2.set(xlabel=xlabel, ylabel="share of activations on hot neurons", title="hot share grows with the budget")
    ax3.set(xlabel=xlabel, ylabel="decode tokens/s", title="decode speed (stories260K-sized model)")
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pijax.bench.hybrid", description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["ffn", "decode", "sweep", "plot"])
    ap.add_argument("--platform", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument("--n-accel", type=int, default=1)
    ap.add_argument("--n-embd", type=int, default=4096)
    ap.add_argument("--n-ff", type=int, default=11008)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--hot", type=float, default=0.5, help="fraction of each layer's neurons that is hot")
    ap.add_argument("--active", type=float, default=0.1, help="fraction of neurons predicted active per token")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--skip-dense", action="store_true")
    ap.add_argument("--model", default="tests/data/powerinfer_model_tiny/stories260K_relu.powerinfer.gguf")
    ap.add_argument("--policy", default="neuron_greedy")
    ap.add_argument("--index-path", default=None, help="where the sweep writes its gpuidx (default: next to the model)")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0])
    ap.add_argument("--n-ctx", type=int, default=256)
    ap.add_argument("--profile-tokens", type=int, default=16384)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--csv", default=None)
    ap.add_argument("--png", default=None)
    args = ap.parse_args(argv)
    if args.what == "plot":
        plot_sweep(args.csv, args.png)
        return 0
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    placement = _setup(args)
    print(f"# {placement.describe()}", flush=True)
    rows = {"ffn": bench_ffn, "decode": bench_decode, "sweep": bench_sweep}[args.what](placement, args)
    for r in rows:
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    _write_csv(args.csv, rows)
    if args.what == "sweep" and args.csv and args.png:
        plot_sweep(args.csv, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
