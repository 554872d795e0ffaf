"""task=simulate: SIMULATED decode tokens/s against VRAM on hardware profiles, from a trace measured here.

    python -m pijax.run +experiment=simulate [simulate.synthetic=tinyllama-1.1b]

Profiles the model on the corpus' train split (the counts that choose hot sets), records a per-token trace of
the rows the engine computes on held-out text (predicted-active rows when the file has predictors), then runs
pijax.bench.simulate over profiles x policies x budgets (formula: pijax.bench.simulate's docstring). Writes
`<results dir>/simulated_<model>.csv` and `.png`, and checks the cost model against this machine: the sweep's
rows hold, per measured run, the prediction of `sweep.simulate_profile` (the datasheet "cpu" preset or a measured
`measured_<host>` profile, pijax.bench.calibrate) for the same hot sets; their relative error is printed and
written to `<results dir>/cpu_check.csv` (per model and profile) and `check.md` (per point). Every figure here is
labelled "simulated".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from pijax.bench.session import cached, load_bench_model, model_path, text_windows
from pijax.bench.simulate import (
    SIMULATED,
    check_table_markdown,
    collect_trace,
    plot_simulated,
    point_errors,
    prediction_errors,
    resolve_source,
    simulate_curves,
)
from pijax.results import format_table, read_results_csv, write_results_csv
from pijax.run_config import RunConfig

SWEEP_RESULTS = Path("experiments") / "sweep_policies" / "results.csv"


def cpu_check(csv_path: Path) -> list[dict[str, Any]]:
    """Per model and profile (the sweep's `sweep.simulate_profile`: the datasheet "cpu" preset or a measured
    profile): the cost model's relative error (predicted / measured - 1) against measured decode tok/s in a sweep
    results.csv, over the newest row per point, with the traced rows and (capacity_*) the compiled capacities."""
    points = point_errors(read_results_csv(csv_path))
    out = []
    for model, profile in dict.fromkeys((p["model"], p["profile"]) for p in points):
        mine = [p for p in points if p["model"] == model and p["profile"] == profile]
        err = prediction_errors(mine, "measured_tok_s", "predicted_tok_s")
        cap = prediction_errors(mine, "measured_tok_s", "capacity_predicted_tok_s")
        cap = {f"capacity_{k}": v for k, v in cap.items() if k != "n"}
        within = sum(abs(p["error"]) <= 0.25 for p in mine)
        out.append({"model": model, "profile": profile, **err, "within_25pct": within, **cap})
    return out


def pivot(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """(hardware, policy) rows with one tok/s column per FFN share on the accelerator."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["hardware"], r["policy"])
        out.setdefault(key, {"hardware": key[0], "policy": key[1]})[f"ffn {100 * r['ffn_fraction']:.0f}%"] = r[
            "sim_decode_tok_s"
        ]
    return list(out.values())


def run(cfg: RunConfig, out_dir: Path) -> float:
    from pijax.sparsity.profile import profile
    from pijax.tracking import make_tracker

    sc = cfg.simulate.smoke() if cfg.smoke else cfg.simulate
    out_dir = Path(out_dir)
    folder = Path(sc.results_dir) if sc.results_dir else (out_dir if cfg.smoke else Path("experiments") / "simulate")
    host = jax.devices()[0]
    synth = (sc.smoke_synthetic if cfg.smoke else sc.synthetic) if sc.synthetic else ""
    bm = load_bench_model(model_path(cfg.model.path, synth), cfg.model.ffn_act, host)
    model = bm.model
    source = resolve_source(sc.source, model)

    def make_stats() -> Any:
        windows = text_windows(model, cfg.corpus, "train", 128, sc.profile_tokens)
        return profile(model, windows, mode="relu", batch_size=4)

    stats = cached(("stats", str(bm.path), cfg.corpus, sc.profile_tokens), make_stats)
    windows = text_windows(model, cfg.corpus, "held_out", sc.seq_len, sc.trace_tokens)
    trace = collect_trace(model, windows, stats.counts, stats.n_tokens, source=source, max_tokens=sc.trace_tokens)
    ranks = [p.rank for p in model.checkpoint.weights.predictors or []] if source == "predictor" else None
    rows = simulate_curves(
        trace,
        model.config,
        profiles=sc.profiles,
        policies=sc.policies,
        ffn_fractions=sc.ffn_fractions,
        weight_dtype=sc.weight_dtype,
        n_ctx=min(sc.n_ctx, model.config.n_ctx),
        predictor_ranks=ranks or None,
    )
    for r in rows:
        r |= {"model": bm.name, "model_label": bm.label}
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / f"simulated_{bm.slug}.csv"
    csv_path.unlink(missing_ok=True)  # deterministic figures: each run replaces its model's file
    write_results_csv(csv_path, rows)
    Path(str(csv_path) + ".lock").unlink(missing_ok=True)
    labels = [SIMULATED] + (["synthetic"] if bm.label == "synthetic" else [])
    png = plot_simulated(
        rows,
        folder / f"simulated_{bm.slug}.png",
        title=f"{bm.name} ({trace.kind} rows of {trace.n_tokens} held-out tokens, {sc.weight_dtype} weights)",
        labels=labels,
    )
    check_src = Path(sc.check_csv) if sc.check_csv else SWEEP_RESULTS
    check = cpu_check(check_src) if check_src.is_file() else []
    if check:
        check_path = folder / "cpu_check.csv"
        check_path.unlink(missing_ok=True)
        write_results_csv(check_path, check)
        Path(str(check_path) + ".lock").unlink(missing_ok=True)
        (folder / "check.md").write_text(check_table_markdown(check_src) + "\n", encoding="utf-8")
    logger = cfg.logger
    logger = dataclasses.replace(logger, tags=(*logger.tags, *labels))
    with make_tracker(logger, out_dir, f"simulate-{bm.name}", dataclasses.asdict(cfg)) as tracker:
        cols = list(rows[0])
        tracker.log_table("simulated", cols, [[r[c] for c in cols] for r in rows])
        for hw in dict.fromkeys(r["hardware"] for r in rows):
            mine = [r for r in rows if r["hardware"] == hw]
            tracker.log_line_plot(
                f"simulated_{hw}", mine, "vram_mib", "sim_decode_tok_s", "policy", f"{hw} [simulated] {bm.name}"
            )
        tracker.log_image("simulated", png)
        if check:
            tracker.log_table("cpu_check", list(check[0]), [list(c.values()) for c in check])
    tag = " [SYNTHETIC model]" if bm.label == "synthetic" else ""
    print(f"\n=== SIMULATED decode tokens/s by FFN share on the accelerator: {bm.name}{tag} ===")
    print(format_table(pivot(rows)))
    print(f"trace: {trace.kind} rows, {trace.n_tokens} tokens, {trace.rows_per_token:.0f} rows/token over all layers")
    if check:
        print(f"\n=== cost model against measured decode tok/s per profile ({check_src}; per point: check.md) ===")
        print(format_table(check))
    print(f"\nresults: {csv_path}\nplot:    {png}")
    return float(max(r["sim_decode_tok_s"] for r in rows))
