"""The simulator's check: calibrate this machine, run the real decode at several budgets, compare with the model.

    python -m pijax.bench.sim_check --model stories260k [--smoke] [--out experiments/simulate]

In one process, so that the machine's load weighs on both alike: the calibration (pijax.bench.calibrate, its
terms from micro-benchmarks and tiny random models only, never from the model checked), then for the model:
- "dense": the dense Engine; predicted by `cost_model.dense_engine_seconds` (every weight and the KV cache read);
- "sparse": `Model.sparse("predictor")` (ReLU models: the kernel FFN, rows chosen by the predictors) or, for
  SiLU models, `Model.sparse(mode="threshold", sparsity=0.4)` (XLA, every row still read: dense formula);
- "hybrid:P%": `Model.hybrid("ffn:P%")` for P in --budgets (ReLU models only; SiLU has no hybrid engine), with
  the index policy --policy; predicted by `cost_model.predicted_token_seconds` per traced token, with the hot sets,
  the compiled capacities and the kernels the engine really has.
The rows each token computes come from a trace of the predictor on held-out text (`simulate.collect_trace`, the
same predictor the engines run). Measured: `throughput.time_generation`, greedy decode, median of --repeats after
one warm-up. Writes `<out>/check_<model>.csv` (a row per point: measured and predicted tok/s, the error, the
machine's load average) and `<out>/check_<model>.md` (the table), and the profile used, `<out>/calibration_<model>.yaml`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MODELS = ("stories260k", "small", "tinyllama-1.1b", "smollm2-135m")
BUDGETS = (0, 20, 50, 80, 100)
LIMIT = 0.25


@dataclasses.dataclass(frozen=True)
class CheckConfig:
    """What one check runs. new_tokens / repeats: each timed generation; prompt_tokens: its held-out prompt."""

    model: str
    smoke: bool = False
    budgets: tuple[int, ...] = BUDGETS
    policy: str = "powerinfer"
    prompt_tokens: int = 16
    new_tokens: int = 32
    repeats: int = 3
    profile_tokens: int = 4096
    trace_tokens: int = 256
    n_ctx: int = 256


def model_file(name: str) -> Path:
    """The GGUF of a check model: the shipped ReLU stories260K, a synthetic preset, or a registered model."""
    from pijax.bench.session import model_path
    from pijax.errors import ConfigError
    from pijax.io.registry import resolve_model

    if name == "stories260k":
        return model_path("", "")
    if name in ("small", "tinyllama-1.1b", "tiny"):
        return model_path("", name)
    if name == "smollm2-135m":
        return Path(resolve_model(name))
    raise ConfigError(f"check model {name!r} is not one of {MODELS}")


def read_bytes(module: Any, n_cache: int) -> dict[str, int]:
    """Bytes one decode step reads: "weights" (all but one embedding row), "ffn" (every FFN row), "kv" (the
    whole cache buffer: decode attention runs over all n_cache positions), and bytes_per_neuron."""
    cfg = module.cfg
    ffn = module.layers[0].ffn
    itemsize = np.dtype(module.dtype).itemsize
    rows = 2 if ffn.w_gate_fd is None else 3
    per_neuron = rows * cfg.n_embd * itemsize
    kv = 2 * cfg.n_layer * n_cache * cfg.n_head_kv * (cfg.n_embd // cfg.n_head) * itemsize
    return {
        "weights": module.weight_bytes_per_token(),
        "ffn": cfg.n_layer * cfg.n_ff * per_neuron,
        "kv": kv,
        "bytes_per_neuron": per_neuron,
        "gated": rows == 3,
    }


def hybrid_dense_bytes(model: Any, rb: dict[str, Any]) -> int:
    """Bytes a hybrid (or predictor-sparse) step reads besides its FFN rows: the weights but the FFN, the
    predictors (f32) and the KV cache."""
    preds = model.checkpoint.weights.predictors or []
    pred = sum(4 * (np.asarray(p.fc1).size + np.asarray(p.fc2).size) for p in preds)
    return int(rb["weights"] - rb["ffn"] + pred + rb["kv"])


def _time(engine: Any, prompt: list[int], cc: CheckConfig, name: str) -> tuple[float, tuple[float, ...]]:
    from pijax.bench.throughput import time_generation

    t = time_generation(engine, prompt, cc.new_tokens, warmup=1, repeats=cc.repeats, progress=False, desc=name)
    return t.decode_tok_s, t.decode_all


def _row(name: str, measured: float, all_runs: Sequence[float], seconds: float, **extra: Any) -> dict[str, Any]:
    predicted = 1.0 / seconds
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    row = {"point": name, **extra, "measured_tok_s": measured, "predicted_tok_s": predicted}
    row |= {"error": predicted / measured - 1.0 if measured > 0 else math.nan, "load_avg": load}
    row["decode_tok_s_all"] = " ".join(f"{v:.2f}" for v in all_runs)
    print(f"  {name:>12}: measured {measured:9.2f} tok/s, predicted {predicted:9.2f} ({100 * row['error']:+.0f}%)")
    return row


def run_check(cc: CheckConfig, out_dir: Path) -> list[dict[str, Any]]:
    """Calibrate, measure every point, predict it; returns the rows (module docstring). jax must not have
    started its backend yet when virtual CPU devices are needed (main() sees to it)."""
    import jax

    from pijax.api import load_model
    from pijax.bench.calibrate import calibrate, write_profile
    from pijax.bench.session import text_windows
    from pijax.bench.simulate import collect_trace, transfer_bytes
    from pijax.index.cost_model import dense_engine_seconds, sparse_engine_seconds
    from pijax.index.hardware import load_profile
    from pijax.layout.config import HardwareConfig
    from pijax.layout.devices import setup_devices
    from pijax.sparsity.profile import profile

    placement = setup_devices(HardwareConfig())
    print(f"calibrating ({'smoke' if cc.smoke else 'full'}) ...", flush=True)
    cost = calibrate(smoke=cc.smoke)
    hw = load_profile(write_profile(cost, out_dir, f"calibration_{cc.model}"))
    terms = hw.terms
    path = model_file(cc.model)
    with jax.default_device(placement.host):
        model = load_model(path)
    cfg = model.config
    relu = cfg.ffn_act != "silu"
    prompt = text_windows(model, "", "held_out", cc.prompt_tokens, cc.prompt_tokens)[0].tolist()
    n_cache = model.engine.cache_size(len(prompt), cc.new_tokens)
    rb = read_bytes(model.module, n_cache)
    common = {"model": cc.model, "calibration": cost["date"], "smoke": cc.smoke, "new_tokens": cc.new_tokens}
    rows: list[dict[str, Any]] = []
    print(f"{cc.model}: {path.name}, decode at KV cache {n_cache}", flush=True)

    with jax.default_device(placement.host):
        measured, runs = _time(model.engine, prompt, cc, "dense")
    secs = dense_engine_seconds(terms, cfg.n_layer, rb["weights"] + rb["kv"])
    rows.append(_row("dense", measured, runs, secs, **common, hot_fraction=math.nan))

    if not relu:
        with jax.default_device(placement.host):
            sparse = model.sparse(mode="threshold", sparsity=0.4, calibration_tokens=cc.profile_tokens)
            measured, runs = _time(sparse.engine, prompt, cc, "sparse")
        # threshold mode without a capacity masks the dense product: every row is still read
        secs = dense_engine_seconds(terms, cfg.n_layer, rb["weights"] + rb["kv"])
        rows.append(_row("sparse", measured, runs, secs, **common, hot_fraction=math.nan))
        return [r | {"model_file": path.name} for r in rows]

    def make_stats() -> Any:
        windows = text_windows(model, "", "train", 128, cc.profile_tokens)
        with jax.default_device(placement.host):
            return profile(model, windows, mode="relu", batch_size=4, progress=False)

    stats = make_stats()
    windows = text_windows(model, "", "held_out", min(128, cc.trace_tokens), cc.trace_tokens)
    with jax.default_device(placement.host):
        trace = collect_trace(model, windows, stats.counts, stats.n_tokens, source="predictor", progress=False)
    shares = trace.row_share(rb["gated"])
    dense_part = hybrid_dense_bytes(model, rb)

    with jax.default_device(placement.host):
        sparse = model.sparse("predictor")
        measured, runs = _time(sparse.engine, prompt, cc, "sparse")
    kernels = sparse.setup.backend == "kernels"
    secs = float(
        np.mean(
            [
                sparse_engine_seconds(
                    terms,
                    mask.sum(axis=1),
                    cfg.n_ff,
                    dense_bytes=dense_part,
                    bytes_per_neuron=rb["bytes_per_neuron"],
                    share=shares[n] if kernels else 1.0,
                )
                for n, mask in enumerate(trace.masks)
            ]
        )
    )
    rows.append(_row("sparse", measured, runs, secs, **common, hot_fraction=math.nan))
    del sparse  # a 1B model's sparse copy and its programs: the hybrid engines need the memory
    jax.clear_caches()

    for pct in cc.budgets:
        setup = model.hybrid(
            f"ffn:{pct}%",
            policy=cc.policy,
            placement=placement,
            stats=stats,
            n_ctx=cc.n_ctx,
            profile_tokens=cc.profile_tokens,  # the text the compiled capacities are calibrated on
            index_path=Path(tempfile.gettempdir()) / "pijax-sim-check" / f"{cc.model}-{pct}.gpuidx",
        ).setup
        engine = setup.engine
        measured, runs = _time(engine, prompt, cc, f"hybrid {pct}%")
        caps = setup.capacities
        n_accel = setup.placement.n_accel
        secs = simulate_hybrid(trace, setup, hw, rb, dense_part, transfer_bytes(cfg))
        rows.append(
            _row(
                f"hybrid:{pct}%",
                measured,
                runs,
                secs,
                **common,
                hot_fraction=float(engine.hybrid.hot_fraction),
                split_layers=sum(c is not None for c in engine.hybrid.colds),
                hot_cap=None if caps is None else sum(c * n_accel for c in caps.hot_per_shard),
                cold_cap=None if caps is None else sum(caps.cold),
            )
        )
        del setup, engine
        jax.clear_caches()
    return [r | {"model_file": path.name} for r in rows]


def simulate_hybrid(trace: Any, setup: Any, hw: Any, rb: dict[str, Any], dense_part: int, transfer: int) -> float:
    """The cost model's seconds per token for a built hybrid engine: its hot sets, its compiled capacities, its
    backends (the kernels skip inactive ReLU rows) and its overlap setting, over the traced tokens."""
    from pijax.bench.simulate import simulate_seconds

    hybrid = setup.engine.hybrid
    caps = setup.capacities
    n_accel = setup.placement.n_accel
    return simulate_seconds(
        trace,
        setup.index.buckets,
        hw,
        bytes_per_neuron=rb["bytes_per_neuron"],
        transfer_bytes=transfer,
        dense_bytes=dense_part,
        hot_capacity=None if caps is None else [c * n_accel for c in caps.hot_per_shard],
        cold_capacity=None if caps is None else caps.cold,
        skip_inactive="kernels" in hybrid.backends(),
        gated=rb["gated"],
        overlap=hybrid.overlap,
    )


def check_markdown(rows: Sequence[dict[str, Any]], limit: float = LIMIT) -> str:
    """The README's table: per point, measured and predicted tok/s and the error; a summary line per model."""
    lines = [
        "| model | point | measured tok/s | predicted tok/s | error | load avg |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['point']} | {float(r['measured_tok_s']):,.1f} | {float(r['predicted_tok_s']):,.1f} "
            f"| {100 * float(r['error']):+.0f}% | {float(r['load_avg']):.1f} |"
        )
    lines.append("")
    for model in dict.fromkeys(r["model"] for r in rows):
        errs = [float(r["error"]) for r in rows if r["model"] == model]
        ok = sum(abs(e) <= limit for e in errs)
        lines.append(
            f"- {model}: {ok}/{len(errs)} points within +-{100 * limit:.0f}%, max abs error "
            f"{100 * max(abs(e) for e in errs):.0f}%"
        )
    return "\n".join(lines)


def terms_line(profile: Path) -> str:
    """One line of the calibration's terms, to print beside the table."""
    from pijax.index.hardware import SCALAR_TERMS, load_profile

    t = load_profile(profile).terms
    scalars = ", ".join(f"{k} {getattr(t, k):.1f}" for k in SCALAR_TERMS)
    reads = ", ".join(f"{f} {v:.1f}" for f, v in t.read_gbs.items())
    gather = ", ".join(f"{f:g}: {v:.1f}" for f, v in sorted(t.gather_gbs["f32"].items()))
    return f"Calibration ({t.date}, {profile.name}): {scalars}; read GB/s {reads}; f32 gather GB/s {{{gather}}}."


def main(argv: list[str] | None = None) -> int:
    from pijax.bench.calibrate import _start_devices
    from pijax.errors import PijaxError
    from pijax.results import write_results_csv

    ap = argparse.ArgumentParser(prog="python -m pijax.bench.sim_check", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, choices=MODELS)
    ap.add_argument("--smoke", action="store_true", help="smoke calibration and short runs (seconds; for tests)")
    ap.add_argument("--out", default=str(Path("experiments") / "simulate"))
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="hybrid FFN shares in %%, e.g. 0,50,100")
    ap.add_argument("--policy", default="powerinfer")
    ap.add_argument(
        "--new-tokens", type=int, default=None, help="decode tokens per timed run (default 32; 16 for 1.1B)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    new_tokens = args.new_tokens or (16 if args.model == "tinyllama-1.1b" else 32)
    cc = CheckConfig(
        model=args.model,
        smoke=args.smoke,
        budgets=tuple(int(b) for b in args.budgets.split(",") if b.strip()),
        policy=args.policy,
        new_tokens=4 if args.smoke else new_tokens,
        repeats=1 if args.smoke else args.repeats,
        profile_tokens=512 if args.smoke else CheckConfig.profile_tokens,
        trace_tokens=32 if args.smoke else CheckConfig.trace_tokens,
    )
    out = Path(args.out)
    try:
        _start_devices()
        t0 = time.perf_counter()
        rows = run_check(cc, out)
        csv = out / f"check_{cc.model}.csv"
        csv.unlink(missing_ok=True)
        write_results_csv(csv, rows)
        Path(str(csv) + ".lock").unlink(missing_ok=True)
        table = check_markdown(rows) + "\n\n" + terms_line(out / f"calibration_{cc.model}.yaml")
        (out / f"check_{cc.model}.md").write_text(table + "\n", encoding="utf-8")
    except PijaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\n{table}\n\nresults: {csv} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
