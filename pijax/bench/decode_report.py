"""Turn the decode benchmark's results.json into the targets table (targets.md), CSVs and plots.

A ratio is reported as the ratio of medians (a target is met on it), with min = the worst pairing (pijax's
slowest run over the reference's fastest) and max the other way round: the spread the two sets of runs allow,
not a confidence interval. Each target reads the engine, format and case the run's config fixed before it ran.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

GOALS = {
    "T1 decode": 1.0,
    "T1 prefill": 0.8,
    "T2 vs llama.cpp f32": 2.2,
    "T2 share of bound": 0.75,
    "T3 vs llama.cpp f16": 2.0,
    "T4 FFN layer": 6.0,
    "S3 vs PowerInfer f16": 1.2,
}
COMMAND = "python -m pijax.bench.decode"


def _ratio(num: dict[str, float], den: dict[str, float]) -> dict[str, float]:
    return {"ratio": num["median"] / den["median"], "min": num["min"] / den["max"], "max": num["max"] / den["min"]}


def _fixed(results: dict[str, Any]) -> dict[str, str]:
    """The engine, format and case each target reports, as the run's config fixed them (defaults: BenchConfig's)."""
    from pijax.bench.decode_config import BenchConfig

    cfg, base = results.get("config", {}), BenchConfig()
    return {k: cfg.get(k, getattr(base, k)) for k in ("t1_engine", "t3_format", "t4_case")}


def _selected(res: dict[str, Any]) -> str:
    sel = res.get("selection", {})
    frac = sel.get("timed_selected_fraction", sel.get("selected_fraction"))
    return "" if frac is None else f", {frac:.1%} selected in the timed steps"


def synth_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 14's S rows for the targets the run's config named (`decode_config.SYNTH_TARGETS`: each row's engine
    and reference fixed there). A row whose engine or reference did not run says why instead of a ratio."""
    from pijax.bench.decode_config import SYNTH_TARGETS

    rows: list[dict[str, Any]] = []
    for name in results.get("config", {}).get("targets", ()):
        for t in SYNTH_TARGETS[name]:
            num, den = results.get(t.pijax), results.get(t.reference)
            what = f"{t.what}: {t.pijax} / {t.reference}"
            row = {"target": f"{name} vs {t.reference}", "goal": t.goal, "what": what}
            if isinstance(num, dict) and isinstance(den, dict) and "decode_tok_s" in num and "decode_tok_s" in den:
                r = _ratio(num["decode_tok_s"], den["decode_tok_s"])
                rows.append(row | r | {"met": r["ratio"] >= t.goal, "what": what + _selected(num)})
            else:
                why = next((x for x in (num, den) if isinstance(x, str)), None)
                if why is None and t.reference.startswith("powerinfer") and not results["config"].get("powerinfer_bin"):
                    why = "no --powerinfer-bin given"
                missing = t.pijax if not isinstance(num, dict) else t.reference
                rows.append(row | {"not_run": why or f"{missing} was not measured"})
            if name == "S2" and isinstance(num, dict) and "share_of_bound_bound" in num:
                rows.append(_share_row("S2 share of bound", num, 0.75))
    return rows


def _share_row(target: str, sp: dict[str, Any], goal: float) -> dict[str, Any]:
    s, t = sp["share_of_bound_bound"], sp.get("share_of_touched_bound", {})
    return {
        "target": target,
        "ratio": s["median"],
        "min": s["min"],
        "max": s["max"],
        "goal": goal,
        "met": s["median"] >= goal,
        "what": f"bytes: attention+head+predictors+3 rows per selected neuron (counted in the timed steps)+KV"
        f" = {sp['bound_bytes'] / 1e9:.3f} GB; of bytes touched ({sp['touched_bytes'] / 1e9:.3f} GB):"
        f" {t.get('median', float('nan')):.0%}",
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: name, ratio, min, max, goal, met, what was compared. Each target reads the one engine
    its config named before the run (`_fixed`); none is picked after it. A run with `targets` (S1-S6) reports
    those (`synth_targets`), else the T rows."""
    if results.get("config", {}).get("targets"):
        return synth_targets(results)
    rows: list[dict[str, Any]] = []
    fixed = _fixed(results)
    l32, l16 = results.get("llamacpp_f32"), results.get("llamacpp_f16")
    dense = results.get(fixed["t1_engine"])
    if dense and l32:
        what = fixed["t1_engine"]
        rows.append({"target": "T1 decode", **_ratio(dense["decode_tok_s"], l32["decode_tok_s"]), "what": what})
        rows.append({"target": "T1 prefill", **_ratio(dense["prefill_tok_s"], l32["prefill_tok_s"]), "what": what})
    sp = results.get("pijax_sparse_f32")
    if sp and l32:
        frac = sp.get("selection", {}).get("timed_selected_fraction", sp.get("selection", {}).get("selected_fraction"))
        rows.append(
            {
                "target": "T2 vs llama.cpp f32",
                **_ratio(sp["decode_tok_s"], l32["decode_tok_s"]),
                "what": f"{float('nan') if frac is None else frac:.1%} selected (timed steps)",
            }
        )
    if sp and "share_of_bound_bound" in sp:
        rows.append(_share_row("T2 share of bound", sp, GOALS["T2 share of bound"]))
    low = results.get(f"pijax_sparse_{fixed['t3_format']}")
    if low and l16:
        what = f"pijax_sparse_{fixed['t3_format']}"
        rows.append({"target": "T3 vs llama.cpp f16", **_ratio(low["decode_tok_s"], l16["decode_tok_s"]), "what": what})
    pi, f16 = results.get("powerinfer_f16"), results.get("pijax_sparse_f16")
    if isinstance(pi, dict) and f16:  # the same precision on both sides
        frac = f16.get("selection", {}).get("timed_selected_fraction", float("nan"))
        rows.append(
            {
                "target": "S3 vs PowerInfer f16",
                **_ratio(f16["decode_tok_s"], pi["decode_tok_s"]),
                "what": f"pijax_sparse_f16 ({frac:.1%} selected) vs a user-built PowerInfer main on the f16 PWRI copy",
            }
        )
    ffn = results.get("ffn_layer")
    if ffn:
        for r in ffn["speedups"]:
            if r["what"].split(" vs ")[0] == fixed["t4_case"]:
                rows.append({"target": "T4 FFN layer", **{k: r[k] for k in ("ratio", "min", "max")}, "what": r["what"]})
    for r in rows:
        r["goal"] = GOALS[r["target"]]
        r["met"] = r["ratio"] >= r["goal"]
    return rows


def targets_markdown(results: dict[str, Any]) -> str:
    lines = [
        "| target | ratio (median) | worst pairing | best pairing | goal | met | compared |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in targets(results):
        if "not_run" in r:
            lines.append(f"| {r['target']} | not run | | | >= {r['goal']} | NO | {r['what']}: {r['not_run']} |")
            continue
        lines.append(
            f"| {r['target']} | {r['ratio']:.2f} | {r['min']:.2f} | {r['max']:.2f} | >= {r['goal']} | "
            f"{'yes' if r['met'] else 'NO'} | {r['what']} |"
        )
    if "llamacpp_missing" in results:
        lines.append(f"\nllama.cpp reference missing: {results['llamacpp_missing']}")
    if "llamacpp_f32_effective_GBps" in results:
        sp = results.get("pijax_sparse_f32", {})
        probe = sp.get("bandwidth_runs_probe")
        lines.append(
            f"\nBandwidth of the bound: the higher of the probe (median "
            f"{'n/a' if not probe else f'{sorted(probe)[len(probe) // 2] / 1e9:.1f}'} GB/s) and llama.cpp f32's own "
            f"effective rate ({results['llamacpp_f32_effective_GBps']:.1f} GB/s = its tok/s x the dense step's bytes)."
        )
    if any(isinstance(v, dict) for k, v in results.items() if k.startswith("powerinfer_")):
        lines.append(
            "\nPowerInfer runs the PWRI copy's own predictors at the file's threshold, as pijax's sparse engines do, "
            "and the same ReLU function; it prints no selection count, so its active fraction is the same rule's, "
            "not a count."
        )
    if results.get("synthetic", True) and not results.get("llamacpp_missing"):
        lines.append(
            "\nllama.cpp runs these synthetic ReGLU weights as SiLU (it has no ReGLU): the same bytes and the same "
            "cost per token, a different function, so its outputs are not compared with pijax's."
        )
    return "\n".join(lines) + "\n"


def engines_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, r in results.items():
        if not isinstance(r, dict) or "decode_tok_s" not in r:
            continue
        d, p = r["decode_tok_s"], r["prefill_tok_s"]
        row = {
            "engine": key,
            "decode_tok_s": round(d["median"], 3),
            "decode_min": round(d["min"], 3),
            "decode_max": round(d["max"], 3),
            "prefill_tok_s": round(p["median"], 2),
            "runs": d["n"],
            "contended": bool(r.get("contended", False)),
        }
        if "bound_bytes" in r:
            row["bound_GB"] = round(r["bound_bytes"] / 1e9, 4)
            row["touched_GB"] = round(r["touched_bytes"] / 1e9, 4)
        if "share_of_bound_bound" in r:
            row["share_of_bound"] = round(r["share_of_bound_bound"]["median"], 3)
            row["share_of_touched_bound"] = round(r["share_of_touched_bound"]["median"], 3)
            row["bandwidth_GBps"] = round(r["bandwidth_GBps"]["median"], 2)
        for key in ("policy", "budget", "budget_bytes", "resident_bytes"):
            if key in r:
                row[key] = r[key]
        if "hot_fraction" in r:
            row["hot_fraction"] = round(r["hot_fraction"], 4)
        if "selection" in r:
            row["selected_fraction"] = round(r["selection"]["selected_fraction"], 4)
            row["live_fraction"] = round(r["selection"]["live_fraction"], 4)
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, cols, restval="")
        w.writeheader()
        w.writerows(rows)


def sweep_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, runs in results.items():
        if not key.startswith("sweep_"):
            continue
        for r in runs:
            rows.append(
                {
                    "format": key.removeprefix("sweep_"),
                    "fraction": r["fraction"],
                    "rows": "zero-skip" if r["skip_inactive"] else "full",
                    "selected_fraction": round(r["selected_fraction"], 4),
                    "decode_tok_s": round(r["decode_tok_s"]["median"], 3),
                    "decode_min": round(r["decode_tok_s"]["min"], 3),
                    "decode_max": round(r["decode_tok_s"]["max"], 3),
                    "bound_tok_s": round(r.get("bound_tok_s", float("nan")), 3),
                    "share_of_bound": round(r.get("share_of_bound_bound", {}).get("median", float("nan")), 3),
                }
            )
    return rows


def plot_sweep(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sweep_rows(results)
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for fmt in sorted({r["format"] for r in rows}):
        for mode, style in (("full", "-o"), ("zero-skip", "--s")):
            pts = sorted(
                (r["fraction"], r["decode_tok_s"], r["bound_tok_s"])
                for r in rows
                if r["format"] == fmt and r["rows"] == mode
            )
            if pts:
                ax.plot([100 * p[0] for p in pts], [p[1] for p in pts], style, label=f"pijax {fmt}, {mode} rows")
        bpts = sorted((r["fraction"], r["bound_tok_s"]) for r in rows if r["format"] == fmt and r["rows"] == "full")
        ax.plot([100 * p[0] for p in bpts], [p[1] for p in bpts], ":", color="gray", label=f"bound {fmt} (full rows)")
    for key, name in (("llamacpp_f32", "llama.cpp f32 dense"), ("llamacpp_f16", "llama.cpp f16 dense")):
        if key in results:
            ax.axhline(
                results[key]["decode_tok_s"]["median"],
                lw=1,
                ls="-.",
                label=name,
                color="k" if "f32" in key else "brown",
            )
    ax.set_xscale("log")
    ax.set_xticks([5, 10, 25, 50, 100], ["5", "10", "25", "50", "100"])
    ax.set_xlabel("predicted-active neurons (%)")
    ax.set_ylabel("decode tokens/s")
    ax.set_title("SYNTHETIC TinyLlama-1.1B-shape ReGLU, 2 threads")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_size(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = results.get("size")
    if not size:
        return
    pts = size["points"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode in sorted({p["engine"] for p in pts}):
        sel = sorted((p["params_B"], p["decode_tok_s"]) for p in pts if p["engine"] == mode)
        ax.plot([s[0] for s in sel], [s[1] for s in sel], "-o", label=mode)
    ax.set_xscale("log")
    ax.set_yscale("log")
    sizes = sorted({round(p["params_B"], 2) for p in pts})
    ax.set_xticks(sizes, [f"{s:g}B" for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("parameters (7B point: extrapolated from a layer stack)")
    ax.set_ylabel("decode tokens/s")
    ax.set_title("SYNTHETIC power-law ReGLU models, 2 threads")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_budgets(results: dict[str, Any], path: Path) -> None:
    """Decode tok/s against resident accelerator MB: the hybrid engine (neurons) and layer offload at each budget,
    with the dense (and sparse) engines as horizontal lines; error bars are min and max of the repeats."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in engines_table(results) if "budget" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, style in (("pijax_hybrid", "-o"), ("pijax_layers", "--s")):
        mine = sorted((r for r in rows if r["engine"].startswith(kind)), key=lambda r: r["resident_bytes"])
        if not mine:
            continue
        x = [r["resident_bytes"] / 2**20 for r in mine]
        y = [r["decode_tok_s"] for r in mine]
        err = [
            [v - r["decode_min"] for v, r in zip(y, mine, strict=True)],
            [r["decode_max"] - v for v, r in zip(y, mine, strict=True)],
        ]
        label = f"hybrid ({mine[0]['policy']})" if kind == "pijax_hybrid" else "layer offload (-ngl)"
        ax.errorbar(x, y, yerr=err, fmt=style, capsize=3, label=label)
        for xi, yi, r in zip(x, y, mine, strict=True):
            ax.annotate(
                r["budget"].removeprefix("ffn:"), (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    for key, name, style in (
        ("pijax_dense_f32_xla", "dense, all on the accelerator", ":"),
        ("pijax_sparse_f32", "sparse, one device", "-."),
    ):
        r = results.get(key)
        if r and "decode_tok_s" in r:
            ax.axhline(r["decode_tok_s"]["median"], linestyle=style, color="gray", label=name)
    ax.set_xlabel("resident accelerator memory (MiB)")
    ax.set_ylabel("decode tok/s (median, min-max)")
    ax.set_title(f"{Path(str(results['config']['preset'])).name}: throughput against accelerator memory")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_all(results: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "targets.md").write_text(targets_markdown(results))
    _write_csv(out_dir / "decode.csv", engines_table(results))
    _write_csv(out_dir / "sweep.csv", sweep_rows(results))
    plot_sweep(results, out_dir / "sweep.png")
    plot_size(results, out_dir / "size.png")
    plot_budgets(results, out_dir / "tok_s_vs_vram.png")
    print(targets_markdown(results))
