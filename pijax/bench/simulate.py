"""Simulated hardware: tokens/s against VRAM for hardware profiles, from a measured per-token activation trace.

SIMULATED, not measured: the figures come from `pijax.index.cost_model`'s formula applied to a trace recorded
on this machine, with the bandwidths of a `pijax.index.hardware` preset (RTX 4090, A100-80GB, H100, a laptop GPU,
or "cpu" for this 2-core machine). There is one cost model in pijax; this module only feeds it per-token data.

Formula (the cost model's, evaluated once per traced token n and averaged):
    rows_{n,l}   = the FFN rows the engine computes for token n in layer l: the predictor's predicted-active set
                   (or, without predictors, the true active set), read from the trace
    G_{n,l}      = bytes_per_neuron x |rows_{n,l} ∩ hot_l|  / accel_bandwidth
    C_{n,l}      = bytes_per_neuron x |rows_{n,l} \\ hot_l| / host_bandwidth
    S_l          = (sync_us_per_layer + transfer_bytes / pcie) x [layer l has a cold neuron]
    t_n          = dense_read_bytes / accel_bandwidth + sum_l ( max(G_{n,l}, C_{n,l}) + S_l )
    tokens/s     = 1 / mean_n t_n
bytes_per_neuron = 3 x n_embd x weight itemsize (up, gate, down_t rows); transfer_bytes = 2 x n_embd x 4 (the
normed input to the host and the cold output back); dense_read_bytes = attention, predictor, norm and output
weights plus the KV cache read at the mean decode position. VRAM = pijax.index.plan_budget's dense part plus
(bytes_per_neuron + 4) per hot neuron. `cost_model.predicted_token_seconds` computes t_n for one token's mask.

With a DATASHEET preset it leaves out (so where it is optimistic): kernel-launch and dispatch overhead per call,
compute limits, caches, the gather's extra copy, and on a CPU "accelerator" the fact that both sides share one
memory bus. A MEASURED profile (pijax.bench.calibrate, `measured_<host>`) adds those terms: the engines' per-token,
per-layer and per-split-layer costs measured through the engines, gather bandwidth by selected fraction and weight
format, the compiled row capacities, the rows a skipping kernel really reads, and G + C on a shared bus (formula
in pijax.index.cost_model). The check against measured runs: pijax.bench.sim_check, experiments/simulate/README.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pijax.config import ModelConfig
from pijax.errors import ConfigError, DataError
from pijax.index.budget import BUCKET_BYTES_PER_NEURON, BudgetPlan, dtype_bytes, ffn_budget_bytes, plan_budget
from pijax.index.cost_model import predicted_token_seconds
from pijax.index.hardware import HardwareProfile, get_preset
from pijax.index.policies import solve

SIMULATED = "simulated"


@dataclasses.dataclass
class Trace:
    """Per-token masks of the FFN rows an engine computes, with the true activation counts that choose hot sets.

    masks: bool [N, L, F]; kind: "predicted" (the predictor's decisions: the rows a predictor-gated engine
    computes) or "true" (act != 0). counts: int [L, F] true activation counts (from profiling, for the index).
    hits: int [N, L], of each token's computed rows how many are truly active (act != 0; None: unknown): a
    ReLU kernel skips the up and down rows of the others (`pijax.kernels.ops.sparse_ffn`, skip_inactive)."""

    masks: np.ndarray
    kind: str
    counts: np.ndarray
    n_counted_tokens: int
    model: str = ""
    hits: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, bool)
        if self.masks.ndim != 3 or self.masks.shape[0] == 0:
            raise DataError(f"a trace needs masks [N, L, F] with N >= 1, got shape {self.masks.shape}")
        if np.shape(self.counts) != self.masks.shape[1:]:
            raise DataError(f"trace counts {np.shape(self.counts)} do not match masks {self.masks.shape[1:]}")
        if self.hits is not None and np.shape(self.hits) != self.masks.shape[:2]:
            raise DataError(f"trace hits {np.shape(self.hits)} do not match masks {self.masks.shape[:2]}")

    def row_share(self, gated: bool) -> np.ndarray:
        """float [N, L]: the share of a computed row's bytes a skipping kernel reads per token and layer (gate row
        always, up and down rows only for truly active neurons; without a gate, up always and down when active);
        ones without hits."""
        sel = self.masks.sum(axis=2)
        if self.hits is None:
            return np.ones(sel.shape)
        p = np.divide(self.hits, sel, out=np.ones(sel.shape), where=sel > 0)
        return (1 + 2 * p) / 3 if gated else (1 + p) / 2

    @property
    def n_tokens(self) -> int:
        return int(self.masks.shape[0])

    @property
    def rows_per_token(self) -> float:
        """Mean FFN rows computed per token, over all layers."""
        return float(self.masks.sum() / self.n_tokens)

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez_compressed(
                f,
                masks=np.packbits(self.masks, axis=-1),
                n_ff=self.masks.shape[-1],
                kind=self.kind,
                counts=self.counts,
                n_counted_tokens=self.n_counted_tokens,
                model=self.model,
                hits=np.full(self.masks.shape[:2], -1) if self.hits is None else self.hits,
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trace:
        try:
            with np.load(path, allow_pickle=False) as z:
                n_ff = int(z["n_ff"])
                masks = np.unpackbits(z["masks"], axis=-1, count=n_ff).astype(bool)
                hits = z["hits"] if "hits" in z.files else None
                hits = None if hits is None or (hits < 0).any() else hits
                return cls(masks, str(z["kind"]), z["counts"], int(z["n_counted_tokens"]), str(z["model"]), hits)
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"unreadable trace file ({type(e).__name__})", path) from None


def resolve_source(source: str, model: Any) -> str:
    """'auto' -> 'predictor' when the model file carries predictors or the model is SiLU (which only its oracle
    predictors can gate: pijax.engine.predictor_choice), else 'oracle'."""
    if source != "auto":
        return source
    gated = model.checkpoint.weights.predictors is not None or model.config.ffn_act == "silu"
    return "predictor" if gated else "oracle"


def collect_trace(
    model: Any,
    windows: np.ndarray,
    counts: np.ndarray,
    n_counted_tokens: int,
    *,
    source: str = "auto",
    max_tokens: int | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> Trace:
    """Run the dense model over `windows` and keep each token's computed-row mask per layer.

    source "predictor": the checkpoint's predictors at its threshold decide (what the hybrid engine computes);
    "oracle": act != 0; "dense": every row. counts / n_counted_tokens: the true statistics the index is built from."""
    import jax.numpy as jnp

    from pijax.sparsity.predictor_data import predictor_logits
    from pijax.sparsity.profile import check_windows, profile

    source = resolve_source(source, model)
    windows = check_windows(windows)
    if max_tokens is not None:
        windows = windows[: max(1, math.ceil(max_tokens / windows.shape[1]))]
    weights = model.checkpoint.weights
    preds, thr = weights.predictors, float(weights.sparse_threshold)
    if source == "predictor" and preds is None:
        raise ConfigError("trace source 'predictor' needs a model file with predictors", model.checkpoint.gguf.path)
    parts: list[np.ndarray] = []
    hit_parts: list[np.ndarray] = []

    def on_batch(tokens_bt: np.ndarray, records: list[dict[str, np.ndarray]]) -> None:
        layers, hits = [], []
        for i, r in enumerate(records):
            act = r["act"].reshape(-1, r["act"].shape[-1])
            if source == "predictor":
                x = jnp.asarray(r["ffn_in"].reshape(-1, r["ffn_in"].shape[-1]))
                layers.append(np.asarray(predictor_logits(preds[i], x) >= thr))
            elif source == "oracle":
                layers.append(act != 0)
            else:
                layers.append(np.ones(act.shape, bool))
            hits.append((layers[-1] & (act != 0)).sum(axis=1))
        parts.append(np.stack(layers, axis=1))
        hit_parts.append(np.stack(hits, axis=1))

    mode = "relu" if model.config.ffn_act != "silu" else None
    if mode is None:
        raise ConfigError("a trace needs a ReLU-family model (exact zeros), as the hybrid engine does")
    profile(model, windows, mode=mode, batch_size=min(batch_size, len(windows)), on_batch=on_batch, progress=progress)
    masks, hits = np.concatenate(parts), np.concatenate(hit_parts)
    if max_tokens is not None:
        masks, hits = masks[:max_tokens], hits[:max_tokens]
    kind = "predicted" if source == "predictor" else ("true" if source == "oracle" else "dense")
    name = Path(model.checkpoint.gguf.path).name
    return Trace(masks, kind, np.asarray(counts), int(n_counted_tokens), name, hits)


def dense_read_bytes(plan: BudgetPlan, model_cfg: ModelConfig, *, position: float, kv_dtype: str = "f32") -> int:
    """Bytes every decoded token reads from the always-resident part: weights (attention, predictors, norms,
    output head) and the KV cache up to `position`. KV cache and compute buffers are otherwise just space."""
    kv = 2 * model_cfg.n_layer * position * model_cfg.n_embd_kv * dtype_bytes(kv_dtype)
    return int(plan.attention_bytes + plan.predictor_bytes + plan.ffn_norm_bytes + plan.output_bytes + kv)


def transfer_bytes(model_cfg: ModelConfig) -> int:
    """Per split layer and token: the normed input to the host and the cold output back (f32), as the index
    cache charges the cost_model policy."""
    return 2 * model_cfg.n_embd * 4


def simulate_seconds(
    trace: Trace,
    buckets: Sequence[np.ndarray],
    hardware: HardwareProfile,
    *,
    bytes_per_neuron: int,
    transfer_bytes: int,
    dense_bytes: int,
    weight_format: str = "f32",
    hot_capacity: Sequence[int] | None = None,
    cold_capacity: Sequence[int] | None = None,
    skip_inactive: bool = False,
    gated: bool = True,
    overlap: bool = False,
) -> float:
    """Mean over the trace's tokens of the cost model's seconds per token for these hot sets (module docstring;
    a measured profile uses the calibrated formula of pijax.index.cost_model). hot_capacity / cold_capacity: the
    engine's compiled row caps per layer (hot: all shards together); skip_inactive: the rows run on a kernel that
    skips inactive ReLU rows (bytes per row from the trace's hits, measured profiles only)."""
    if len(buckets) != trace.masks.shape[1]:
        raise DataError(f"{len(buckets)} hot sets for a trace of {trace.masks.shape[1]} layers")
    shares = trace.row_share(gated) if skip_inactive and hardware.terms is not None else None
    total = 0.0
    for n, mask in enumerate(trace.masks):
        total += predicted_token_seconds(
            list(buckets),
            mask.astype(np.float32),
            hardware,
            recall=1.0,
            precision=1.0,
            n_tokens=1,
            bytes_per_neuron=bytes_per_neuron,
            transfer_bytes=transfer_bytes,
            dense_bytes=dense_bytes,
            weight_format=weight_format,
            hot_capacity=None if hot_capacity is None else np.asarray(hot_capacity),
            cold_capacity=None if cold_capacity is None else np.asarray(cold_capacity),
            share=1.0 if shares is None else shares[n],
            overlap=overlap,
        )
    return total / trace.n_tokens


def capacity_trace(
    buckets: Sequence[np.ndarray], hot_per_shard: Sequence[int], cold: Sequence[int], n_ff: int, n_shards: int
) -> Trace:
    """A one-token trace of the rows a capacity-bounded engine really computes every token: `hot_per_shard` x
    n_shards hot rows and `cold` cold rows per layer (pijax.layout.capacity), whatever the predictor says. Fed to
    the same formula, it separates the cost of the static gather sizes from the cost model's other assumptions."""
    masks = np.zeros((1, len(buckets), n_ff), bool)
    for layer, ids in enumerate(buckets):
        hot = np.zeros(n_ff, bool)
        hot[ids] = True
        masks[0, layer, np.flatnonzero(hot)[: int(hot_per_shard[layer]) * n_shards]] = True
        masks[0, layer, np.flatnonzero(~hot)[: int(cold[layer])]] = True
    return Trace(masks, "capacity", masks[0].astype(np.int64), 1)


def hot_row_share(trace: Trace, buckets: Sequence[np.ndarray]) -> float:
    """Share of the trace's computed rows that fall on hot neurons."""
    hot = sum(int(trace.masks[:, layer, ids].sum()) for layer, ids in enumerate(buckets))
    total = int(trace.masks.sum())
    return hot / total if total else 0.0


def policy_buckets(
    policy: str,
    counts: np.ndarray,
    capacity: int,
    plan: BudgetPlan,
    model_cfg: ModelConfig,
    hardware: HardwareProfile | None,
) -> list[np.ndarray]:
    """Hot sets for `policy` under `capacity`, with the parameters pijax.index's cache would give it."""
    params: dict[str, Any] = {}
    if policy == "cost_model":
        params = {
            "hardware": hardware,
            "bytes_per_neuron": plan.bytes_per_neuron,
            "transfer_bytes": transfer_bytes(model_cfg),
        }
    return solve(policy, counts, capacity, **params)


def budget_for_fraction(model_cfg: ModelConfig, fraction: float, **plan_kwargs: Any) -> tuple[int, BudgetPlan]:
    """The budget that holds the dense part plus `fraction` of all FFN neurons, and its plan."""
    budget = ffn_budget_bytes(fraction, model_cfg, **plan_kwargs)
    return budget, plan_budget(model_cfg, budget, **plan_kwargs)


def simulate_curves(
    trace: Trace,
    model_cfg: ModelConfig,
    *,
    profiles: Sequence[str],
    policies: Sequence[str],
    ffn_fractions: Sequence[float],
    weight_dtype: str = "f16",
    n_ctx: int | None = None,
    predictor_ranks: Sequence[int] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """SIMULATED tokens/s against VRAM: one row per (profile, policy, budget) that fits the profile's memory."""
    from tqdm.auto import tqdm

    hws = [get_preset(p) for p in profiles]
    kw: dict[str, Any] = {
        "weight_dtype": weight_dtype,
        "kv_dtype": weight_dtype,  # PowerInfer keeps its KV cache in f16 too
        "n_ctx": n_ctx,
        "predictor_ranks": predictor_ranks,
    }
    position = 0.5 * (n_ctx or model_cfg.n_ctx)
    rows: list[dict[str, Any]] = []
    grid = [(f, pol) for f in sorted(set(ffn_fractions)) for pol in policies]
    for fraction, policy in tqdm(grid, desc="simulate", unit="point", disable=not progress):
        budget, plan = budget_for_fraction(model_cfg, fraction, **kw)
        dense_bytes = dense_read_bytes(plan, model_cfg, position=position, kv_dtype=weight_dtype)
        shared = (
            None
            if policy == "cost_model"
            else policy_buckets(policy, trace.counts, plan.capacity_neurons, plan, model_cfg, None)
        )
        for hw in hws:
            buckets = shared or policy_buckets(policy, trace.counts, plan.capacity_neurons, plan, model_cfg, hw)
            n_hot = int(sum(len(b) for b in buckets))
            vram = plan.dense_bytes + n_hot * (plan.bytes_per_neuron + BUCKET_BYTES_PER_NEURON)
            if vram > hw.accel_memory_bytes > 0:
                continue
            secs = simulate_seconds(
                trace,
                buckets,
                hw,
                bytes_per_neuron=plan.bytes_per_neuron,
                transfer_bytes=transfer_bytes(model_cfg),
                dense_bytes=dense_bytes,
                weight_format=weight_dtype,
            )
            rows.append(
                {
                    "label": SIMULATED,
                    "hardware": hw.name,
                    "policy": policy,
                    "ffn_fraction": float(fraction),
                    "budget_bytes": int(budget),
                    "vram_bytes": int(vram),
                    "vram_mib": vram / 2**20,
                    "hot_neurons": n_hot,
                    "hot_row_share": hot_row_share(trace, buckets),
                    "sim_decode_tok_s": 1.0 / secs,
                    "trace_kind": trace.kind,
                    "trace_tokens": trace.n_tokens,
                    "weight_dtype": weight_dtype,
                }
            )
    return rows


def prediction_errors(rows: Sequence[dict[str, Any]], measured: str, predicted: str) -> dict[str, float]:
    """Relative error of a prediction column against a measured one over rows holding both:
    mean |pred/meas - 1|, median signed pred/meas - 1, and max |.|; plus the row count."""
    pairs = []
    for r in rows:
        try:
            m, p = float(r[measured]), float(r[predicted])
        except (KeyError, TypeError, ValueError):
            continue
        if m > 0 and math.isfinite(p):
            pairs.append(p / m - 1.0)
    if not pairs:
        return {"n": 0}
    err = np.asarray(pairs)
    return {
        "n": len(pairs),
        "mean_abs_error": float(np.abs(err).mean()),
        "median_error": float(np.median(err)),
        "max_abs_error": float(np.abs(err).max()),
    }


def plot_simulated(
    rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], *, title: str = "", labels: Sequence[str] = ()
) -> Path:
    """One panel per hardware profile: simulated tokens/s against VRAM (MiB), one line per policy."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise DataError("nothing to plot: no simulated rows", path)
    hws = list(dict.fromkeys(r["hardware"] for r in rows))
    cols = min(len(hws), 2)
    n_rows = math.ceil(len(hws) / cols)
    fig = Figure(figsize=(6 * cols, 3.8 * n_rows), dpi=110)
    FigureCanvasAgg(fig)
    for k, hw in enumerate(hws):
        ax = fig.add_subplot(n_rows, cols, k + 1)
        mine = [r for r in rows if r["hardware"] == hw]
        for policy in dict.fromkeys(r["policy"] for r in mine):
            pts = sorted((float(r["vram_mib"]), float(r["sim_decode_tok_s"])) for r in mine if r["policy"] == policy)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=policy)
        speeds = [float(r["sim_decode_tok_s"]) for r in mine]
        if max(speeds) > 20 * min(speeds):  # all-hot layers skip every hand-over: orders of magnitude apart
            ax.set_yscale("log")
        ax.set_title(hw)
        ax.set_xlabel("resident VRAM (MiB)")
        ax.set_ylabel("decode tokens/s")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    tags = ", ".join([SIMULATED, *[t for t in labels if t != SIMULATED]])
    fig.suptitle(f"{title or 'decode tokens/s vs VRAM'} [{tags}]")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def point_errors(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per sweep point (the newest row per model, source, hardware, policy, budget and profile; smoke rows only
    when there is nothing else): measured decode tok/s, each sim_<profile>_* prediction and its error."""
    real = [r for r in rows if str(r.get("smoke", "False")).lower() in ("false", "0", "")]
    latest: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in real or list(rows):
        for col in r:
            m = re.fullmatch(r"sim_(.+?)_decode_tok_s", col)
            if not m or m.group(1).endswith("_capacity") or r.get(col) in (None, ""):
                continue
            profile = m.group(1)
            key = (*(str(r.get(k, "")) for k in ("model", "source", "hardware", "policy", "budget")), profile)
            latest[key] = {"row": r, "profile": profile}
    out = []
    for (model, _, _, policy, budget, profile), item in latest.items():
        r = item["row"]
        measured = float(r["decode_tok_s"])
        pred = float(r[f"sim_{profile}_decode_tok_s"])
        cap = r.get(f"sim_{profile}_capacity_decode_tok_s")
        cap_pred = float(cap) if cap not in (None, "") else math.nan
        out.append(
            {
                "model": model,
                "policy": policy,
                "budget": budget,
                "profile": profile,
                "measured_tok_s": measured,
                "predicted_tok_s": pred,
                "error": pred / measured - 1.0,
                "capacity_predicted_tok_s": cap_pred,
                "capacity_error": cap_pred / measured - 1.0,
            }
        )
    return out


def check_table_markdown(csv_path: str | os.PathLike[str], limit: float = 0.25) -> str:
    """The README's table: predicted against measured decode tok/s per sweep point, with the error, and a
    summary line per model and profile (points within +-limit)."""
    from pijax.results import read_results_csv

    if not Path(csv_path).is_file():
        raise DataError("no sweep results to check", csv_path)
    points = point_errors(read_results_csv(csv_path))
    if not points:
        raise DataError("no row carries a sim_<profile>_decode_tok_s column", csv_path)
    lines = [
        "| model | profile | policy | budget | measured tok/s | predicted (traced rows) | error "
        "| predicted (compiled capacities) | error |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        cap = p["capacity_predicted_tok_s"]
        cap_txt = "-" if math.isnan(cap) else f"{cap:,.1f} | {100 * p['capacity_error']:+.0f}%"
        lines.append(
            f"| {p['model']} | {p['profile']} | {p['policy']} | {p['budget']} | {p['measured_tok_s']:,.1f} "
            f"| {p['predicted_tok_s']:,.1f} | {100 * p['error']:+.0f}% | {cap_txt}{' | -' if math.isnan(cap) else ''} |"
        )
    lines.append("")
    for model, profile in dict.fromkeys((p["model"], p["profile"]) for p in points):
        mine = [p for p in points if p["model"] == model and p["profile"] == profile]
        for col in ("error", "capacity_error"):
            errs = [p[col] for p in mine if math.isfinite(p[col])]
            if errs:
                ok = sum(abs(e) <= limit for e in errs)
                lines.append(
                    f"- {model} on `{profile}` ({col.replace('_', ' ')}): {ok}/{len(errs)} points within "
                    f"+-{100 * limit:.0f}%, median {100 * float(np.median(errs)):+.0f}%, "
                    f"max abs {100 * max(abs(e) for e in errs):.0f}%"
                )
    return "\n".join(lines)
