"""The `cost_model` policy: choose hot sets that maximise the predicted tokens/s of a hardware profile.

Objective (per decoded token; all layers' FFNs, rows read once per predicted-active neuron):
    p_i    = count_i / n_tokens                          activation frequency of neuron i
    r_i    = recall x p_i / precision                    how often its row is computed (true + false positives)
    G_l    = bytes_per_neuron x sum_{i hot}  r_i / accel_bandwidth     accelerator time of layer l
    C_l    = bytes_per_neuron x sum_{i cold} r_i / host_bandwidth      host time of layer l
    S_l    = (sync_us_per_layer + transfer_bytes / pcie) x [layer l has a cold neuron]
    t      = dense_bytes / accel_bandwidth + sum_l ( max(G_l, C_l) + S_l )
    tokens/s = 1 / t,  maximised subject to sum_l |hot_l| <= capacity.
Both sides of a split layer run in parallel and meet once (max + sync). The dense term does not depend on the
choice. Within a layer the best set of a given size is its top neurons by count (r_i is proportional to the
count), so each layer chooses a number of groups (groups as in `pijax.index.policies`: descending counts, the
final partial group charged in full). The layers' choices are coupled only through the capacity, and a dynamic
programme over (layer, groups used) finds the exact optimum in O(n_layer x groups_per_layer x capacity_groups).
Leaving capacity unused is allowed: past the balance point G_l > C_l, extra hot rows only slow the layer.

That is the DATASHEET formula (bandwidths only), kept for the nominal GPU presets. A MEASURED profile
(`hardware.terms`, written by pijax.bench.calibrate) switches to the calibrated formula, which charges what the
hybrid engine really does per token on the machine measured (all terms from the profile; fmt = weight format):
    G_l    = bytes_per_neuron x share_l x hot_l  / gather_gbs[fmt](hot_l / |hot set_l|)         gathered hot rows
    C_l    = bytes_per_neuron x share_l x cold_l / host gather_gbs[fmt](cold_l / |cold set_l|)  gathered cold rows
    S_l    = handover_us + overlap x call_us + transfer_bytes / transfer_gbs       only for a split layer
             (cold_split_us instead of handover_us for a split layer with no hot rows: no hot kernel runs)
    t      = hybrid_token_us + dense_bytes / read_gbs[fmt] + sum_l ( hybrid_layer_us + (G_l (+) C_l) + S_l )
where (+) is + when the profile's accelerator and host are one memory bus (a CPU standing in for both) and max
otherwise; hot_l / cold_l are the rows the engine computes (a traced token's predicted-active rows, capped at the
engine's compiled capacities), share_l the part of a selected row's bytes the kernel reads (with
skip_inactive, a ReLU neuron whose gate is <= 0 costs its gate row only; 1 without that information).
hybrid_token_us and handover_us are measured through the engine (pijax.bench.calibrate_engine), so they cover
the calls and device_puts `ENGINE_CALLS` counts. The other engines, for the check against measured runs:
    dense:  t = token_us + n_layer x layer_us + (weights + KV cache read) / read_gbs[fmt]
    sparse: t = token_us + n_layer x sparse_layer_us + dense_bytes / read_gbs[fmt] + sum_l rows_l cost as G_l
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from pijax.errors import ConfigError
from pijax.index.hardware import HardwareProfile, MeasuredTerms
from pijax.index.policies import descending_order, group_sums, register_policy, top_k_per_layer


def _rows_per_token(counts: np.ndarray, recall: float, precision: float, n_tokens: int | None) -> np.ndarray:
    if not (0 < recall <= 1 and 0 < precision <= 1):
        raise ConfigError(f"recall and precision must be in (0, 1], got {recall}, {precision}")
    tokens = float(n_tokens) if n_tokens else float(max(counts.max(), 1))
    return counts.astype(np.float64) * (recall / precision / tokens)


@dataclasses.dataclass(frozen=True)
class EngineCalls:
    """The hybrid engine's decode step, counted (pijax.engine.hybrid_engine: `_step` -> `_embed_tokens`, `_pass`).

    Per token: the token id device_put to the host, the host's embedding call, its row put back on the
    accelerators, and the last stage's call (the layers after the last split, the head, sampling). Per split
    layer: the stage call that ends with it (attention, predictor, hot rows, the cold request), the request put on
    the host, the host's cold call, its output put back. With overlap, the hot rows are one more call per split
    layer. The calibration times each group through the engine itself (hybrid_token_us, handover_us), so these
    counts say what those terms cover; `pijax.bench.calibrate_engine.count_engine_calls` counts a running engine
    and tests/test_calibrate.py checks that they still match. Recount them whenever `_pass` changes."""

    calls_per_token: int = 2
    transfers_per_token: int = 2
    calls_per_split: int = 2
    transfers_per_split: int = 2
    overlap_calls_per_split: int = 1


ENGINE_CALLS = EngineCalls()


def gathered_seconds(
    terms: MeasuredTerms,
    rows: np.ndarray,
    size: np.ndarray,
    *,
    weight_format: str,
    bytes_per_neuron: int,
    share: np.ndarray | float = 1.0,
    host: bool = False,
) -> np.ndarray:
    """Seconds to read `rows` gathered rows out of a block of `size` (elementwise), at the measured gather
    bandwidth for their selected fraction; `share` of each row's bytes is read."""
    rows, size = np.asarray(rows, np.float64), np.asarray(size, np.float64)
    frac = np.divide(rows, size, out=np.ones_like(rows), where=size > 0)
    bw = np.vectorize(lambda f: terms.gather_bandwidth(weight_format, f, host=host), otypes=[np.float64])(frac)
    return bytes_per_neuron * np.asarray(share, np.float64) * rows / (bw * 1e9)


def measured_ffn_seconds(
    terms: MeasuredTerms,
    hot_rows: np.ndarray,
    cold_rows: np.ndarray,
    hot_size: np.ndarray,
    cold_size: np.ndarray,
    *,
    weight_format: str,
    bytes_per_neuron: int,
    transfer_bytes: int,
    share: np.ndarray | float = 1.0,
    overlap: bool = False,
) -> np.ndarray:
    """Calibrated seconds of hybrid FFN layers (elementwise over arrays of equal shape):
    hybrid_layer_us + (G (+) C) + S (module docstring)."""
    kw = {"weight_format": weight_format, "bytes_per_neuron": bytes_per_neuron, "share": share}
    g = gathered_seconds(terms, hot_rows, hot_size, **kw)
    c = gathered_seconds(terms, cold_rows, cold_size, host=True, **kw)
    ffn = g + c if terms.shared_bus else np.maximum(g, c)
    has_hot = np.asarray(hot_size) > 0
    hand_over = np.where(has_hot, terms.handover_us + (terms.call_us if overlap else 0.0), terms.cold_split_us)
    hand_over = hand_over * 1e-6 + transfer_bytes / (terms.transfer_gbs * 1e9)
    split = np.asarray(cold_size) > 0
    return terms.hybrid_layer_us * 1e-6 + ffn + hand_over * split


def fixed_token_seconds(hardware: HardwareProfile, dense_bytes: int, weight_format: str = "f32") -> float:
    """The part of a token that does not depend on the hot sets: the dense read, plus (measured profiles) the
    hybrid engine's per-token calls, transfers and token loop."""
    terms = hardware.terms
    if terms is None:
        return dense_bytes / (hardware.accel_bandwidth_gbs * 1e9)
    return terms.hybrid_token_us * 1e-6 + dense_bytes / (terms.read_bandwidth(weight_format) * 1e9)


def dense_engine_seconds(terms: MeasuredTerms, n_layer: int, read_bytes: int, weight_format: str = "f32") -> float:
    """Calibrated seconds per token of the dense Engine: every weight and the KV cache read (module docstring)."""
    return (terms.token_us + n_layer * terms.layer_us) * 1e-6 + read_bytes / (terms.read_bandwidth(weight_format) * 1e9)


def sparse_engine_seconds(
    terms: MeasuredTerms,
    rows: np.ndarray,
    n_ff: int,
    *,
    dense_bytes: int,
    bytes_per_neuron: int,
    share: np.ndarray | float = 1.0,
    weight_format: str = "f32",
) -> float:
    """Calibrated seconds per token of the single-device sparse engine (predictor-gated kernel FFN): `rows` [L]
    selected rows per layer, each `share` of bytes_per_neuron read (module docstring)."""
    rows = np.asarray(rows, np.float64)
    gathered = gathered_seconds(
        terms,
        rows,
        np.full_like(rows, float(n_ff)),
        weight_format=weight_format,
        bytes_per_neuron=bytes_per_neuron,
        share=share,
    )
    fixed = (terms.token_us + len(rows) * terms.sparse_layer_us) * 1e-6
    return float(fixed + dense_bytes / (terms.read_bandwidth(weight_format) * 1e9) + gathered.sum())


def layer_costs(
    counts: np.ndarray,
    hardware: HardwareProfile,
    *,
    group_size: int,
    recall: float,
    precision: float,
    n_tokens: int | None,
    bytes_per_neuron: int,
    transfer_bytes: int,
    weight_format: str = "f32",
) -> np.ndarray:
    """`[n_layer, n_groups + 1]` seconds per token of each layer's FFN with its top j groups hot (j = 0..n_groups)."""
    rows = _rows_per_token(counts, recall, precision, n_tokens)
    order = descending_order(counts)
    sums = group_sums(rows, order, group_size)
    hot = np.concatenate([np.zeros((sums.shape[0], 1)), np.cumsum(sums, axis=1)], axis=1)
    cold = hot[:, -1:] - hot
    if hardware.terms is not None:
        n_ff = counts.shape[1]
        hot_size = np.minimum(np.arange(sums.shape[1] + 1) * group_size, n_ff)[None, :].repeat(len(hot), 0)
        return measured_ffn_seconds(
            hardware.terms,
            hot,
            cold,
            hot_size,
            n_ff - hot_size,
            weight_format=weight_format,
            bytes_per_neuron=bytes_per_neuron,
            transfer_bytes=transfer_bytes,
        )
    accel = bytes_per_neuron * hot / (hardware.accel_bandwidth_gbs * 1e9)
    host = bytes_per_neuron * cold / (hardware.host_bandwidth_gbs * 1e9)
    sync = hardware.sync_us_per_layer * 1e-6 + transfer_bytes / (hardware.pcie_gbs * 1e9)
    split = np.ones_like(hot)
    split[:, -1] = 0.0  # all groups hot: the layer never leaves the accelerator
    return np.maximum(accel, host) + sync * split


def allocate_groups(costs: np.ndarray, capacity_groups: int) -> np.ndarray:
    """Groups per layer minimising sum_l costs[l, j_l] subject to sum_l j_l <= capacity_groups (exact DP)."""
    n_layer, n_opts = costs.shape
    cap = int(min(capacity_groups, n_layer * (n_opts - 1)))
    dp = np.full(cap + 1, np.inf)
    dp[0] = 0.0
    choice = np.zeros((n_layer, cap + 1), dtype=np.int32)
    for layer in range(n_layer):
        new = np.full(cap + 1, np.inf)
        pick = np.zeros(cap + 1, dtype=np.int32)
        for j in range(min(n_opts - 1, cap) + 1):
            cand = dp[: cap + 1 - j] + costs[layer, j]
            better = cand < new[j:]
            new[j:][better] = cand[better]
            pick[j:][better] = j
        dp, choice[layer] = new, pick
    used = int(np.argmin(dp))
    ks = np.zeros(n_layer, dtype=np.int64)
    for layer in range(n_layer - 1, -1, -1):
        ks[layer] = choice[layer, used]
        used -= int(ks[layer])
    return ks


@register_policy("cost_model")
def cost_model_policy(
    counts: np.ndarray,
    capacity: int,
    *,
    hardware: HardwareProfile | None = None,
    group_size: int = 256,
    recall: float = 0.9,
    precision: float = 0.6,
    n_tokens: int | None = None,
    bytes_per_neuron: int = 3 * 4096 * 2,
    transfer_bytes: int = 0,
    weight_format: str = "f32",
) -> list[np.ndarray]:
    """Hot sets maximising predicted tokens/s (objective in the module docstring). n_tokens defaults to max count."""
    if hardware is None:
        raise ConfigError("the cost_model policy needs a hardware profile (see pijax.index.hardware.PRESETS)")
    if int(group_size) < 1:
        raise ConfigError(f"group_size must be >= 1, got {group_size}")
    g = int(group_size)
    costs = layer_costs(
        counts,
        hardware,
        group_size=g,
        recall=recall,
        precision=precision,
        n_tokens=n_tokens,
        bytes_per_neuron=bytes_per_neuron,
        transfer_bytes=transfer_bytes,
        weight_format=weight_format,
    )
    groups = allocate_groups(costs, capacity // g)
    return top_k_per_layer(descending_order(counts), np.minimum(groups * g, counts.shape[1]))


def predicted_token_seconds(
    buckets: list[np.ndarray],
    counts: np.ndarray,
    hardware: HardwareProfile,
    *,
    recall: float = 0.9,
    precision: float = 0.6,
    n_tokens: int | None = None,
    bytes_per_neuron: int = 3 * 4096 * 2,
    transfer_bytes: int = 0,
    dense_bytes: int = 0,
    weight_format: str = "f32",
    hot_capacity: np.ndarray | None = None,
    cold_capacity: np.ndarray | None = None,
    share: np.ndarray | float = 1.0,
    overlap: bool = False,
    **_: Any,
) -> float:
    """The cost model's t (module docstring) for any hot sets; simulated, not measured. hot_capacity /
    cold_capacity: per layer, the most rows the engine computes per token on the accelerators (all shards) and on
    the host (its compiled capacities; None: no cap); share, overlap: see `measured_ffn_seconds`."""
    rows = _rows_per_token(np.asarray(counts), recall, precision, n_tokens)
    total = fixed_token_seconds(hardware, dense_bytes, weight_format)
    hot = np.array([rows[layer, ids].sum() for layer, ids in enumerate(buckets)])
    cold = rows.sum(axis=1) - hot
    if hot_capacity is not None:
        hot = np.minimum(hot, np.asarray(hot_capacity, np.float64))
    if cold_capacity is not None:
        cold = np.minimum(cold, np.asarray(cold_capacity, np.float64))
    size = np.array([len(ids) for ids in buckets])
    if hardware.terms is not None:
        layers = measured_ffn_seconds(
            hardware.terms,
            hot,
            cold,
            size,
            rows.shape[1] - size,
            weight_format=weight_format,
            bytes_per_neuron=bytes_per_neuron,
            transfer_bytes=transfer_bytes,
            share=share,
            overlap=overlap,
        )
        return float(total + layers.sum())
    sync = hardware.sync_us_per_layer * 1e-6 + transfer_bytes / (hardware.pcie_gbs * 1e9)
    accel = bytes_per_neuron * hot / (hardware.accel_bandwidth_gbs * 1e9)
    host = bytes_per_neuron * cold / (hardware.host_bandwidth_gbs * 1e9)
    return float(total + (np.maximum(accel, host) + sync * (size < rows.shape[1])).sum())
