"""task=sweep: one throughput-vs-VRAM point of the hybrid hot/cold engine; a Hydra multirun makes the sweep.

    python -m pijax.run --multirun +experiment=sweep_policies          # the grid in the experiment file
    python -m pijax.run task=sweep index=uniform budget=ffn:30%         # one point

Per run: pick the model (sweep.synthetic preset, model.path, or the shipped ReLU stories260K), profile its
activations on the corpus' train split (once per process), build the budget-checked hybrid engine for the
run's index policy and budget (pijax.engine.pipeline), then measure
A SiLU model (SmolLM2) runs gated by its oracle predictors (pijax.engine.predictor_choice: cut-offs chosen in
training, or calibrated on the train split for `sweep.sparsity`); its activation counts are the rows those
predictors keep through the gated model, and its rows report the share of rows skipped on train and held-out text
instead of recall/precision (the cost model's trace needs exact zeros, so it has no sim_* columns).
- prefill and decode tokens/s: greedy generations from a held-out prompt, median of `repeats` after `warmup`;
- resident accelerator bytes (the layout's accounting of every array's shards) and hot neurons;
- hot share of activations (profiled activations that fall on hot neurons);
- predictor recall and precision on held-out text (predictor source only);
- fidelity against the dense model on held-out windows, each teacher-forced through the engine's decode path
  (a one-token prefill, then one cached step per token): top-1 agreement, mean KL, both perplexities;
- the cost model's prediction for the same hot sets on `sweep.simulate_profile` (SIMULATED; "cpu" checks it
  against this machine), from the traced predicted-active rows and from the rows the engine's static gather
  capacities compute;
- the dense engine's decode tokens/s (once per process), for a speed-up.
The row is appended to `<results dir>/results.csv`, the PNG of decode tokens/s against resident VRAM per policy
is redrawn from every row of that model, and both go to the tracker (config, metrics, a W&B Table of all rows, a
line plot, the PNG). A synthetic model is labelled "synthetic" in the row, the plot title and the W&B run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pijax.bench.config import SweepConfig
from pijax.bench.session import BenchModel, cached, load_bench_model, model_path, text_windows
from pijax.bench.simulate import capacity_trace, collect_trace, resolve_source, simulate_seconds
from pijax.bench.simulate import transfer_bytes as sim_transfer_bytes
from pijax.bench.throughput import stepped_logits_fn, time_generation
from pijax.errors import ConfigError
from pijax.index.budget import resolve_budget
from pijax.results import format_table, plot_lines, read_results_csv, write_results_csv
from pijax.run_config import RunConfig

SUMMARY_COLUMNS = (
    "policy",
    "budget",
    "resident_mib",
    "hot_fraction",
    "hot_share",
    "prefill_tok_s",
    "decode_tok_s",
    "speedup_vs_dense",
    "top1_agreement",
    "mean_kl",
)
KEY_COLUMNS = ("model", "source", "hardware", "policy", "budget")


def results_dir(sc: SweepConfig, smoke: bool, out_dir: Path) -> Path:
    """experiments/NAME, unless set; a smoke run writes into its own (multi)run folder instead."""
    if sc.results_dir:
        return Path(sc.results_dir)
    if not smoke:
        return Path("experiments") / sc.name
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return out_dir.parent
    except ValueError:  # not under Hydra (a library call)
        pass
    return out_dir


def _profile_stats(bm: BenchModel, corpus: str, sc: SweepConfig, host: Any, gate: Any) -> Any:
    from pijax.engine.pipeline import profile_hot_counts
    from pijax.sparsity.profile import profile

    def make() -> Any:
        windows = text_windows(bm.model, corpus, "train", 128, sc.profile_tokens)
        with jax.default_device(host):
            if gate is not None:  # a SiLU model: the rows its predictors keep
                return profile_hot_counts(bm.model, windows, *gate)
            return profile(bm.model, windows, mode="relu", batch_size=4, progress=True)  # 4: a 1B model's records

    return cached(("stats", str(bm.path), corpus, sc.profile_tokens, sc.sparsity), make)


def _silu_gate(bm: BenchModel, corpus: str, sc: SweepConfig, host: Any) -> tuple[list[Any], Any] | None:
    """(predictors, per-layer cut-offs) gating a SiLU model (pijax.engine.predictor_choice); None for others."""
    if bm.model.config.ffn_act != "silu":
        return None
    from pijax.engine.predictor_choice import choose_predictors

    def make() -> tuple[list[Any], Any]:
        def windows() -> np.ndarray:
            return text_windows(bm.model, corpus, "train", 128, sc.calibration_tokens)

        with jax.default_device(host):
            return choose_predictors(bm.model, sparsity=sc.sparsity, windows=windows, train=False, what="task=sweep")

    return cached(("gate", str(bm.path), corpus, sc.sparsity, sc.calibration_tokens), make)


def _skipped_share(bm: BenchModel, windows: np.ndarray, gate: Any, host: Any) -> float:
    """Share of FFN rows the predictors skip on `windows` (through the gated model)."""
    from pijax.sparsity.oracle_predictors import predictor_keep_counts

    def make() -> float:
        with jax.default_device(host):
            counts, n = predictor_keep_counts(bm.model.module, gate[0], windows, gate[1])
        return 1.0 - float(counts.sum()) / (n * counts.size)

    return cached(("skipped", str(bm.path), windows.shape, int(windows.sum()), str(gate[1])), make)


def _dense_logits_fn(bm: BenchModel, host: Any) -> Any:
    """The dense model's logits [B, T, V], run on the host device where it lives. Only this call enters the host
    context: jax keys compiled programs on the default device, so the hybrid engine must not run inside it."""
    from flax import nnx

    def make() -> Any:
        gd, st = nnx.split(bm.model.module)
        # the weights are an argument, not captured constants (a 1B model would be copied into the program)
        fwd = jax.jit(lambda st, t: nnx.merge(gd, st)(t))

        def fn(tokens_bt: Any) -> Any:
            with jax.default_device(host):
                return fwd(st, jax.device_put(np.asarray(tokens_bt), host))

        return fn

    return cached(("dense_fn", str(bm.path), str(host)), make)


def _predictor_metrics(bm: BenchModel, windows: np.ndarray, host: Any) -> tuple[float, float] | None:
    if bm.model.checkpoint.weights.predictors is None:  # a SiLU model's oracle predictors: see _skipped_share
        return None
    from pijax.sparsity.predictor_data import PredictorMetrics
    from pijax.sparsity.predictors import evaluate_predictors

    def make() -> tuple[float, float]:
        w = bm.model.checkpoint.weights
        with jax.default_device(host):
            per_layer, _ = evaluate_predictors(
                bm.model, windows, w.predictors, float(w.sparse_threshold), batch_size=4, progress=False
            )
        total = sum(per_layer, PredictorMetrics(0, 0, 0, 0))
        return total.recall, total.precision

    return cached(("pred", str(bm.path), windows.shape, int(windows.sum())), make)


def _dense_timing(bm: BenchModel, prompt: list[int], sc: SweepConfig, host: Any) -> float | None:
    """The dense engine's decode tok/s, on the host device that holds its weights (run elsewhere, every call
    would first copy the whole model to the default device)."""
    if not sc.dense_baseline:
        return None

    def make() -> float:
        with jax.default_device(host):
            t = time_generation(
                bm.model.engine, prompt, sc.new_tokens, warmup=sc.warmup, repeats=sc.repeats, desc="dense baseline"
            )
        return t.decode_tok_s

    return cached(("dense_tok_s", str(bm.path), tuple(prompt), sc.new_tokens, sc.repeats), make)


def _trace(bm: BenchModel, corpus: str, source: str, stats: Any, sc: SweepConfig, host: Any) -> Any:
    def make() -> Any:
        seq = min(128, sc.trace_tokens)
        windows = text_windows(bm.model, corpus, "held_out", seq, sc.trace_tokens)
        with jax.default_device(host):
            return collect_trace(bm.model, windows, stats.counts, stats.n_tokens, source=source, progress=False)

    return cached(("trace", str(bm.path), corpus, source, sc.trace_tokens), make)


def _simulated_tok_s(bm: BenchModel, setup: Any, trace: Any, sc: SweepConfig) -> tuple[float, float | None]:
    """The cost model's decode tokens/s for this run's hot sets on `sc.simulate_profile` (SIMULATED): with the
    traced predicted-active rows as the engine runs them (capped at its compiled capacities, on its kernels:
    pijax.bench.sim_check.simulate_hybrid), and with every token computing its full capacities (None without
    capacities)."""
    from pijax.bench.sim_check import hybrid_dense_bytes, read_bytes, simulate_hybrid
    from pijax.index import get_preset

    cfg = bm.model.config
    n_cache = setup.engine.cache_size(sc.prompt_tokens, sc.new_tokens)
    rb = read_bytes(bm.model.module, n_cache)
    dense = hybrid_dense_bytes(bm.model, rb)
    hw = get_preset(sc.simulate_profile)
    traced = 1.0 / simulate_hybrid(trace, setup, hw, rb, dense, sim_transfer_bytes(cfg))
    caps = setup.capacities
    if caps is None:
        return traced, None
    buckets = setup.index.buckets
    ct = capacity_trace(buckets, caps.hot_per_shard, caps.cold, cfg.n_ff, setup.placement.n_accel)
    kw = {"bytes_per_neuron": rb["bytes_per_neuron"], "transfer_bytes": sim_transfer_bytes(cfg), "dense_bytes": dense}
    return traced, 1.0 / simulate_seconds(ct, buckets, hw, **kw)


def _latest(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The newest row per (model, source, hardware, policy, budget): reruns replace, history stays in the CSV."""
    out: dict[tuple[str, ...], dict[str, str]] = {}
    for r in rows:
        out[tuple(r.get(k, "") for k in KEY_COLUMNS)] = r
    return list(out.values())


def _typed(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        try:
            out[k] = float(v) if v not in ("", None) and k not in KEY_COLUMNS else v
        except ValueError:
            out[k] = v
    return out


def measure(cfg: RunConfig, out_dir: Path, sc: SweepConfig) -> dict[str, Any]:
    """The run's row (see the module docstring). Library entry point of task=sweep (no files, no tracker)."""
    from pijax.engine.pipeline import prepare_hybrid
    from pijax.eval import compare
    from pijax.index import plan_budget
    from pijax.layout.devices import setup_devices

    placement = setup_devices(cfg.hardware)
    path = model_path(cfg.model.path, (sc.smoke_synthetic if cfg.smoke else sc.synthetic) if sc.synthetic else "")
    bm = load_bench_model(path, cfg.model.ffn_act, placement.host)
    model, mcfg = bm.model, bm.model.config
    source = resolve_source(sc.source, model)
    if mcfg.ffn_act == "silu" and source != "predictor":
        raise ConfigError(
            f"a SiLU model needs predictors to gate its rows (sweep.source=auto or predictor): sweep.source={source} "
            "keeps every row",
            bm.path,
        )
    gate = _silu_gate(bm, cfg.corpus, sc, placement.host) if source == "predictor" else None
    file_preds = model.checkpoint.weights.predictors or []
    ranks = [p.rank for p in (gate[0] if gate else file_preds)] if source == "predictor" else None
    plan_kw: dict[str, Any] = {
        "weight_dtype": np.dtype(model.module.dtype).name,
        "n_ctx": sc.n_ctx,
        "predictor_ranks": ranks or None,
        "n_devices": placement.n_accel,
        "rounding": "powerinfer" if cfg.index.powerinfer_compat else "exact",
    }
    budget = resolve_budget(cfg.budget, mcfg, **plan_kw)
    plan_budget(mcfg, budget, allow_all_cold=cfg.index.allow_all_cold, **plan_kw)  # fails before the profiling
    stats = _profile_stats(bm, cfg.corpus, sc, placement.host, gate)
    index_cfg = cfg.index
    if not index_cfg.path:  # the run's own index file: never written next to a shipped model
        index_cfg = dataclasses.replace(index_cfg, path=str(out_dir / f"{bm.path.name}.generated.gpuidx"))
    out_dir.mkdir(parents=True, exist_ok=True)
    setup = prepare_hybrid(
        model,
        budget,
        index_cfg=index_cfg,
        hardware=cfg.hardware,
        placement=placement,
        source=source,
        predictors=None if gate is None else gate[0],
        pred_threshold=None if gate is None else gate[1],
        stats=stats,
        corpus_path=cfg.corpus or None,
        profile_tokens=sc.calibration_tokens,
        n_ctx=sc.n_ctx,
        capacity_quantile=sc.capacity_quantile if source == "predictor" else None,
    )
    print(setup.summary())
    prompt = text_windows(model, cfg.corpus, "held_out", sc.prompt_tokens, sc.prompt_tokens)[0].tolist()
    timing = time_generation(
        setup.engine, prompt, sc.new_tokens, warmup=sc.warmup, repeats=sc.repeats, desc="hybrid timing"
    )
    row: dict[str, Any] = {
        "model": bm.name,
        "label": bm.label,
        "source": source,
        "hardware": f"{placement.n_accel}x{placement.accelerators[0].device_kind}",
        "policy": cfg.index.policy,
        "budget": str(cfg.budget) if cfg.budget is not None else "ffn:100%",
        "budget_bytes": int(setup.plan.budget_bytes),
        "resident_bytes": int(setup.report.total),
        "resident_mib": setup.report.total / 2**20,
        "hot_neurons": int(sum(setup.engine.hybrid.n_hot)),
        "hot_fraction": float(setup.engine.hybrid.hot_fraction),
        "hot_share": float(setup.hot_share),
        "prefill_tok_s": timing.prefill_tok_s,
        "decode_tok_s": timing.decode_tok_s,
    }
    if gate is not None:
        row["sparsity_target"] = "training cut-offs" if sc.sparsity is None else sc.sparsity
        row["train_skipped"] = 1.0 - float(np.sum(stats.counts)) / (stats.n_tokens * np.size(stats.counts))
    if sc.eval_windows:
        windows = text_windows(model, cfg.corpus, "held_out", sc.eval_seq_len, sc.eval_windows * sc.eval_seq_len)
        pred = _predictor_metrics(bm, windows, placement.host) if source == "predictor" else None
        row["recall"], row["precision"] = pred if pred is not None else (None, None)
        if gate is not None:
            row["heldout_skipped"] = _skipped_share(bm, windows, gate, placement.host)
        n_cache = setup.engine.cache_size(len(prompt), sc.new_tokens)  # the timed runs' cache: no new compiles
        fid = compare(
            _dense_logits_fn(bm, placement.host), stepped_logits_fn(setup.engine, n_cache), windows, batch_size=4
        )
        row |= {
            "top1_agreement": fid.top1,
            "mean_kl": fid.mean_kl,
            "ppl_dense": fid.ppl_reference,
            "ppl_hybrid": fid.ppl_candidate,
            "ppl_change": fid.ppl_candidate / fid.ppl_reference - 1.0,
        }
    dense = _dense_timing(bm, prompt, sc, placement.host)
    row["dense_decode_tok_s"] = dense
    row["speedup_vs_dense"] = timing.decode_tok_s / dense if dense else None
    if sc.simulate_profile and sc.trace_tokens and gate is None:
        trace = _trace(bm, cfg.corpus, source, stats, sc, placement.host)
        sim, sim_caps = _simulated_tok_s(bm, setup, trace, sc)
        measured = timing.decode_tok_s
        row[f"sim_{sc.simulate_profile}_decode_tok_s"] = sim
        row["sim_error"] = sim / measured - 1.0 if measured > 0 else None
        row[f"sim_{sc.simulate_profile}_capacity_decode_tok_s"] = sim_caps
        row["sim_capacity_error"] = sim_caps / measured - 1.0 if sim_caps and measured > 0 else None
    row |= {
        "prompt_tokens": timing.prompt_tokens,
        "new_tokens": timing.new_tokens,
        "repeats": len(timing.decode_all),
        "decode_tok_s_all": " ".join(f"{v:.2f}" for v in timing.decode_all),
        "n_ctx": sc.n_ctx,
        "smoke": bool(cfg.smoke),
        "run_dir": str(out_dir),
        "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return row


def redraw(folder: Path, model: str) -> tuple[Path, list[dict[str, Any]]]:
    """Redraw `model`'s PNGs in `folder` (decode tok/s, returned, and hot share against resident memory) from the
    newest row per (policy, budget) of folder/results.csv."""
    rows = [_typed(r) for r in _latest(read_results_csv(folder / "results.csv")) if r.get("model") == model]
    rows.sort(key=lambda r: (str(r["policy"]), float(r["resident_mib"])))
    synthetic = any(r.get("label") == "synthetic" for r in rows)
    slug = BenchModel(None, Path(), "", model).slug
    common = {"xlabel": "resident accelerator memory (MiB)", "labels": ["synthetic"] if synthetic else []}
    png = plot_lines(
        rows,
        "resident_mib",
        "decode_tok_s",
        "policy",
        folder / f"tok_s_vs_vram_{slug}.png",
        title=f"{model} on {rows[0]['hardware']}",
        ylabel="decode tokens/s (median)",
        **common,
    )
    plot_lines(  # how much of the activations each budget's hot set catches: the power law, or its absence
        rows,
        "resident_mib",
        "hot_share",
        "policy",
        folder / f"hot_share_vs_vram_{slug}.png",
        title=f"{model}: share of profiled activations on hot rows",
        ylabel="hot share of activations",
        **common,
    )
    return png, rows


def write_outputs(row: dict[str, Any], folder: Path) -> tuple[Path, Path, list[dict[str, Any]]]:
    """Append the row to folder/results.csv and redraw this model's PNG; returns (csv, png, latest rows)."""
    csv_path = write_results_csv(folder / "results.csv", [row])
    png, rows = redraw(folder, str(row["model"]))
    return csv_path, png, rows


def _print_summary(row: dict[str, Any], rows: list[dict[str, Any]], csv_path: Path, png: Path) -> None:
    tag = " [SYNTHETIC model]" if row["label"] == "synthetic" else ""
    keys = [k for k in row if k not in ("decode_tok_s_all", "run_dir", "time")]
    print(f"\n=== this run{tag} ===")
    print(format_table([{"metric": k, "value": row[k]} for k in keys]))
    if row.get("sim_error") is not None:
        print("(sim_* columns are SIMULATED by pijax.index.cost_model, not measured)")
    print(f"\n=== {row['model']}: every (policy, budget) so far{tag} ===")
    print(format_table(rows, [c for c in SUMMARY_COLUMNS if any(c in r for r in rows)]))
    print(f"\nresults: {csv_path}\nplot:    {png}")


def run(cfg: RunConfig, out_dir: Path) -> float:
    from pijax.tracking import make_tracker

    sc = cfg.sweep.smoke() if cfg.smoke else cfg.sweep
    out_dir = Path(out_dir)
    folder = results_dir(sc, cfg.smoke, out_dir)
    row = measure(cfg, out_dir, sc)
    csv_path, png, rows = write_outputs(row, folder)
    name = f"{sc.name}-{row['model']}-{row['policy']}-{row['budget']}"
    config = dataclasses.asdict(cfg) | {"label": row["label"], "model_name": row["model"]}
    logger = cfg.logger
    if row["label"] == "synthetic":
        logger = dataclasses.replace(logger, tags=(*logger.tags, "synthetic"))
    with make_tracker(logger, out_dir, name, config) as tracker:
        tracker.log_metrics({k: v for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)})
        cols = list(dict.fromkeys(k for r in rows for k in r))
        tracker.log_table("sweep_results", cols, [[r.get(c) for c in cols] for r in rows])
        plot_rows = [{k: r[k] for k in ("resident_mib", "decode_tok_s", "policy")} for r in rows]
        title = f"decode tok/s vs resident VRAM ({row['model']}{', synthetic' if row['label'] == 'synthetic' else ''})"
        tracker.log_line_plot("tok_s_vs_vram", plot_rows, "resident_mib", "decode_tok_s", "policy", title)
        tracker.log_image("tok_s_vs_vram_png", png)
    _print_summary(row, rows, csv_path, png)
    # This job's engine programs are dead (the next job's hot sets give other shapes); a multirun that kept every
    # job's compiled programs ran a 1B model out of memory by its ninth job.
    jax.clear_caches()
    value = float(row["decode_tok_s"])
    return value if math.isfinite(value) else 0.0
