"""The simulator's check: calibrate this machine, run the real decode at several budgets, compare with the model.

    python -m pijax.bench.sim_check --model stories260k [--smoke] [--out experiments/simulate]

In one process: the calibration (pijax.bench.calibrate, its terms from micro-benchmarks and tiny random models
only, never from the model checked), then for the model:
- "dense": the dense Engine; predicted by `cost_model.dense_engine_seconds` (every weight and the KV cache read);
- "sparse": `Model.sparse("predictor")` (ReLU models: the kernel FFN, rows chosen by the predictors) or, for
  SiLU models, `Model.sparse(mode="threshold", sparsity=0.4)` (XLA, every row still read: dense formula);
- "hybrid:P%": `Model.hybrid("ffn:P%")` for P in --budgets (ReLU models only; SiLU has no hybrid engine), with
  the index policy --policy; predicted by `cost_model.predicted_token_seconds` per traced token, with the hot sets,
  the compiled capacities and the kernels the engine really has.
The rows each token computes come from a trace of the predictor on held-out text (`simulate.collect_trace`, the
same predictor the engines run). Measured: `throughput.time_generation`, greedy decode, one warm-up, then --repeats
rounds; each round times one generation AND every f32 probe of the calibration (the tiny engines' steppers, the
read and gather bandwidths: `calibrate.WindowProbes`), so the prediction of a point uses terms measured in the
same minutes, under the same load, as the point itself (on this shared 2-core machine the engine terms of two
calibrations a minute apart differed 2x). Medians over the rounds. The prediction from the calibration made at
the start is kept beside it (`predicted_start_tok_s`, `error_start`). Writes `<out>/check_<model>.csv` (a row per point: measured and predicted tok/s, the error, the
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
# The synthetic 1.1B (4.4 GB in f32, ~5 tok/s here): fewer, shorter points, so that its check fits a few minutes.
BIG = {"budgets": (0, 50, 100), "new_tokens": 8, "repeats": 3, "profile_tokens": 1024, "trace_tokens": 128}


@dataclasses.dataclass(frozen=True)
class CheckConfig:
    """What one check runs. new_tokens / repeats: each timed generation; prompt_tokens: its held-out prompt."""

    model: str
    smoke: bool = False
    budgets: tuple[int, ...] = BUDGETS
    policy: str = "powerinfer"
    prompt_tokens: int = 16
    new_tokens: int = 32
    repeats: int = 7
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


def _measure(
    engine: Any, prompt: list[int], cc: CheckConfig, window: Any, device: Any = None
) -> tuple[float, tuple[float, ...], dict[str, float]]:
    """Decode tok/s of `engine` (median over the rounds), every round's figure, and the window probes' medians
    timed in the same rounds (module docstring)."""
    import statistics

    import jax

    from pijax.bench.calibrate_engine import interleaved_runs
    from pijax.bench.throughput import time_generation

    def point() -> float:
        with jax.default_device(device):
            t = time_generation(engine, prompt, cc.new_tokens, warmup=0, repeats=1, progress=False)
        return 1.0 / t.decode_tok_s

    point()  # warm-up: compiles, first touch
    for run in window.probes().values():  # again after jax.clear_caches()
        run()
    runs = interleaved_runs({"point": point} | window.probes(), cc.repeats)
    tok_s = tuple(1.0 / s for s in runs.pop("point"))
    return statistics.median(tok_s), tok_s, {k: statistics.median(v) for k, v in runs.items()}


def _row(
    name: str, measured: float, all_runs: Sequence[float], seconds: float, start_seconds: float, **extra: Any
) -> dict[str, Any]:
    predicted, start = 1.0 / seconds, 1.0 / start_seconds
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    row = {"point": name, **extra, "measured_tok_s": measured, "predicted_tok_s": predicted}
    row |= {"error": predicted / measured - 1.0 if measured > 0 else math.nan, "load_avg": load}
    row |= {"predicted_start_tok_s": start, "error_start": start / measured - 1.0 if measured > 0 else math.nan}
    row["decode_tok_s_all"] = " ".join(f"{v:.2f}" for v in all_runs)
    print(
        f"  {name:>12}: measured {measured:9.2f} tok/s, predicted {predicted:9.2f} ({100 * row['error']:+.0f}%; "
        f"start-of-run terms {100 * row['error_start']:+.0f}%), load {load:.1f}",
        flush=True,
    )
    return row


WINDOW_TERMS = ("token_us", "layer_us", "sparse_layer_us", "hybrid_token_us", "hybrid_layer_us", "handover_us",
                "cold_split_us")  # fmt: skip


def _window(window: Any, times: dict[str, float], cost: dict[str, Any], name: str) -> tuple[Any, dict[str, Any]]:
    """The profile of one point's window (the start calibration with its f32 terms re-measured) and its terms,
    for the row."""
    from pijax.index.hardware import profile_from_config

    wcost = window.cost(times, cost)
    hw = profile_from_config({"name": f"window_{name}", "cost": wcost})
    terms = {f"w_{k}": wcost[k] for k in WINDOW_TERMS} | {"w_read_f32_gbs": wcost["read_gbs"]["f32"]}
    return hw, terms


def run_check(cc: CheckConfig, out_dir: Path) -> list[dict[str, Any]]:
    """Calibrate, measure every point, predict it; returns the rows (module docstring). jax must not have
    started its backend yet when virtual CPU devices are needed (main() sees to it)."""
    import jax

    from pijax.api import load_model
    from pijax.bench.calibrate import FULL, SMOKE, WindowProbes, calibrate, write_profile
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
    hw0 = load_profile(write_profile(cost, out_dir, f"calibration_{cc.model}"))
    window = WindowProbes(placement, SMOKE if cc.smoke else FULL)
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

    def dense_seconds(terms: Any) -> float:
        return dense_engine_seconds(terms, cfg.n_layer, rb["weights"] + rb["kv"])

    measured, runs, times = _measure(model.engine, prompt, cc, window, placement.host)
    hw, wterms = _window(window, times, cost, "dense")
    rows.append(_row("dense", measured, runs, dense_seconds(hw.terms), dense_seconds(hw0.terms), **common, **wterms))

    if not relu:
        with jax.default_device(placement.host):
            sparse = model.sparse(mode="threshold", sparsity=0.4, calibration_tokens=cc.profile_tokens)
        measured, runs, times = _measure(sparse.engine, prompt, cc, window, placement.host)
        hw, wterms = _window(window, times, cost, "sparse")
        # threshold mode without a capacity masks the dense product: every row is still read
        secs, start = dense_seconds(hw.terms), dense_seconds(hw0.terms)
        rows.append(_row("sparse", measured, runs, secs, start, **common, **wterms))
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
    measured, runs, times = _measure(sparse.engine, prompt, cc, window, placement.host)
    hw, wterms = _window(window, times, cost, "sparse")
    kernels = sparse.setup.backend == "kernels"

    def sparse_seconds(terms: Any) -> float:
        kw = {"dense_bytes": dense_part, "bytes_per_neuron": rb["bytes_per_neuron"]}
        return float(
            np.mean(
                [
                    sparse_engine_seconds(terms, mask.sum(axis=1), cfg.n_ff, share=shares[n] if kernels else 1.0, **kw)
                    for n, mask in enumerate(trace.masks)
                ]
            )
        )

    rows.append(_row("sparse", measured, runs, sparse_seconds(hw.terms), sparse_seconds(hw0.terms), **common, **wterms))
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
        measured, runs, times = _measure(engine, prompt, cc, window)
        hw, wterms = _window(window, times, cost, f"hybrid_{pct}")
        caps = setup.capacities
        n_accel = setup.placement.n_accel
        secs = simulate_hybrid(trace, setup, hw, rb, dense_part, transfer_bytes(cfg))
        start = simulate_hybrid(trace, setup, hw0, rb, dense_part, transfer_bytes(cfg))
        rows.append(
            _row(
                f"hybrid:{pct}%",
                measured,
                runs,
                secs,
                start,
                **common,
                **wterms,
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
    """The README's table: per point, measured and predicted tok/s and the error (terms timed in the point's own
    rounds), the error with the start-of-run calibration, the spread of the rounds (slowest / fastest: how noisy
    the machine was) and the load average; a summary line per model."""
    lines = [
        "| model | point | measured tok/s | predicted tok/s | error | error, start-of-run terms | rounds spread | load avg |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        runs = [float(v) for v in str(r.get("decode_tok_s_all", "")).split()]
        spread = f"{max(runs) / min(runs):.2f}x" if runs and min(runs) > 0 else "-"
        start = r.get("error_start")
        start_txt = "-" if start in (None, "") or math.isnan(float(start)) else f"{100 * float(start):+.0f}%"
        lines.append(
            f"| {r['model']} | {r['point']} | {float(r['measured_tok_s']):,.1f} | {float(r['predicted_tok_s']):,.1f} "
            f"| {100 * float(r['error']):+.0f}% | {start_txt} | {spread} | {float(r['load_avg']):.1f} |"
        )
    lines.append("")
    for model in dict.fromkeys(r["model"] for r in rows):
        errs = [float(r["error"]) for r in rows if r["model"] == model]
        ok = sum(abs(e) <= limit for e in errs)
        line = (
            f"- {model}: {ok}/{len(errs)} points within +-{100 * limit:.0f}%, max abs error "
            f"{100 * max(abs(e) for e in errs):.0f}%"
        )
        starts = [
            float(r["error_start"]) for r in rows if r["model"] == model and r.get("error_start") not in (None, "")
        ]
        if starts:
            line += f" (start-of-run terms: {sum(abs(e) <= limit for e in starts)}/{len(starts)}, max abs error "
            line += f"{100 * max(abs(e) for e in starts):.0f}%)"
        lines.append(line)
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
    ap.add_argument("--budgets", default="", help="hybrid FFN shares in %%, e.g. 0,50,100 (default 0,20,50,80,100)")
    ap.add_argument("--policy", default="powerinfer")
    ap.add_argument("--new-tokens", type=int, default=None, help="decode tokens per timed run (default 32)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per point (default 7)")
    args = ap.parse_args(argv)
    big = BIG if args.model == "tinyllama-1.1b" else {}
    budgets = args.budgets or ",".join(map(str, big.get("budgets", BUDGETS)))
    cc = CheckConfig(
        model=args.model,
        smoke=args.smoke,
        budgets=tuple(int(b) for b in budgets.split(",") if b.strip()),
        policy=args.policy,
        new_tokens=4 if args.smoke else args.new_tokens or big.get("new_tokens", CheckConfig.new_tokens),
        repeats=1 if args.smoke else args.repeats or big.get("repeats", CheckConfig.repeats),
        profile_tokens=512 if args.smoke else big.get("profile_tokens", CheckConfig.profile_tokens),
        trace_tokens=32 if args.smoke else big.get("trace_tokens", CheckConfig.trace_tokens),
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
