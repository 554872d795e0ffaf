"""Index-generation policies: a registry of pure functions from activation counts and a capacity to hot sets.

Policies: powerinfer, neuron_greedy, cost_model (pijax.index.cost_model), uniform, layers (whole layers from the
first, llama.cpp's -ngl), random, all, none.

Every policy takes `counts` `[n_layer, n_ff]` (activation counts or any non-negative score, higher = hotter) and
`capacity` (FFN neurons that fit on the accelerator) and returns one ascending int32 array of hot neuron ids
per layer. Orders are deterministic: neurons with equal counts rank by lower id first (PowerInfer's torch.sort
leaves ties unspecified; the case8 reference has none).

Groups (`powerinfer`, `neuron_greedy`, `cost_model`): each layer's neurons, sorted by descending count, are cut
into groups of `group_size`. When n_ff is not a multiple of the group size, the final group of a layer holds the
n_ff % group_size least active neurons and is charged a full group of capacity, exactly as if the layer were
padded with never-active neurons to a multiple of the group size (PowerInfer itself requires n_ff % 256 == 0).
So with stories260K (n_ff 172) and groups of 256, a layer is all hot or all cold and costs 256 neurons.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from pijax.errors import ConfigError, DataError

Policy = Callable[..., list[np.ndarray]]
POLICIES: dict[str, Policy] = {}


def register_policy(name: str) -> Callable[[Policy], Policy]:
    """Decorator adding a policy to the registry. Its keyword-only parameters are its tunable params."""

    def deco(fn: Policy) -> Policy:
        POLICIES[name] = fn
        return fn

    return deco


def policy_param_names(name: str) -> tuple[str, ...]:
    fn = get_policy(name)
    return tuple(p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY)


def get_policy(name: str) -> Policy:
    if name not in POLICIES:
        raise ConfigError(f"unknown index policy {name!r}; choose one of {sorted(POLICIES)}")
    return POLICIES[name]


def check_counts(counts: Any) -> np.ndarray:
    """Return `counts` as a 2-D float64 or int64 array, or raise DataError for an unusable one."""
    arr = np.asarray(counts)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DataError(f"activation counts must be a non-empty [n_layer, n_ff] array, got shape {arr.shape}")
    if arr.dtype.kind in "iub":
        arr = arr.astype(np.int64, copy=False)
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float64, copy=False)
        if not np.isfinite(arr).all():
            raise DataError("activation counts contain NaN or infinity")
    else:
        raise DataError(f"activation counts must be numeric, got dtype {arr.dtype}")
    if (arr < 0).any():
        raise DataError("activation counts must not be negative")
    return arr


def solve(policy: str, counts: Any, capacity_neurons: int, **params: Any) -> list[np.ndarray]:
    """Hot neuron ids per layer (ascending int32) for `policy` under `capacity_neurons`."""
    fn = get_policy(policy)
    arr = check_counts(counts)
    if int(capacity_neurons) < 0:
        raise ConfigError(f"capacity must not be negative, got {capacity_neurons}")
    allowed = policy_param_names(policy)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"policy {policy!r} takes no parameter(s) {unknown}; it takes {list(allowed)}")
    return fn(arr, int(capacity_neurons), **params)


def descending_order(counts: np.ndarray) -> np.ndarray:
    """Per layer, neuron ids by descending count; ties by ascending id."""
    return np.argsort(-counts, axis=1, kind="stable")


def group_sums(counts: np.ndarray, order: np.ndarray, group_size: int) -> np.ndarray:
    """`[n_layer, n_groups]` summed counts of each group (the final group zero-padded, see module doc)."""
    n_layer, n_ff = counts.shape
    n_groups = -(-n_ff // group_size)
    sorted_counts = np.take_along_axis(counts, order, axis=1)
    pad = n_groups * group_size - n_ff
    if pad:
        sorted_counts = np.concatenate([sorted_counts, np.zeros((n_layer, pad), counts.dtype)], axis=1)
    return sorted_counts.reshape(n_layer, n_groups, group_size).sum(axis=2)


def top_k_per_layer(order: np.ndarray, ks: np.ndarray) -> list[np.ndarray]:
    return [np.sort(order[layer, : int(k)]).astype(np.int32) for layer, k in enumerate(ks)]


def _check_group_size(group_size: int) -> int:
    if int(group_size) < 1:
        raise ConfigError(f"group_size must be >= 1, got {group_size}")
    return int(group_size)


def greedy_groups(counts: np.ndarray, capacity: int, group_size: int) -> list[np.ndarray]:
    """PowerInfer's objective: the best capacity // group_size groups over all layers.

    All groups cost the same, so the 0/1 knapsack over groups is solved exactly by taking the largest group
    sums. Ties rank by (layer, group index), which keeps each layer's choice a prefix of its sorted order.
    """
    g = _check_group_size(group_size)
    n_layer, n_ff = counts.shape
    order = descending_order(counts)
    sums = group_sums(counts, order, g)
    n_groups = sums.shape[1]
    k_groups = min(capacity // g, n_layer * n_groups)
    if k_groups == 0:
        return [np.zeros(0, np.int32) for _ in range(n_layer)]
    layer_idx = np.repeat(np.arange(n_layer), n_groups)
    group_idx = np.tile(np.arange(n_groups), n_layer)
    ranked = np.lexsort((group_idx, layer_idx, -sums.ravel()))
    chosen_layers = layer_idx[ranked[:k_groups]]
    per_layer_groups = np.bincount(chosen_layers, minlength=n_layer)
    ks = np.minimum(per_layer_groups * g, n_ff)
    return top_k_per_layer(order, ks)


@register_policy("powerinfer")
def powerinfer_policy(counts: np.ndarray, capacity: int, *, group_size: int = 256) -> list[np.ndarray]:
    """PowerInfer's ILP over groups of `group_size` neurons (see `greedy_groups`)."""
    return greedy_groups(counts, capacity, group_size)


@register_policy("neuron_greedy")
def neuron_greedy_policy(counts: np.ndarray, capacity: int, *, group_size: int = 1) -> list[np.ndarray]:
    """The same objective with single neurons: the `capacity` most active neurons over all layers."""
    return greedy_groups(counts, capacity, group_size)


@register_policy("uniform")
def uniform_policy(counts: np.ndarray, capacity: int) -> list[np.ndarray]:
    """The same share of every layer: capacity // n_layer top neurons each (remainder unused)."""
    n_layer, n_ff = counts.shape
    k = min(capacity // n_layer, n_ff)
    return top_k_per_layer(descending_order(counts), np.full(n_layer, k))


@register_policy("layers")
def layers_policy(counts: np.ndarray, capacity: int) -> list[np.ndarray]:
    """Whole layers hot from the first one, as llama.cpp's `-ngl N` offloads: the first capacity // n_ff layers
    have every FFN neuron hot, the rest none (the remainder unused), whatever the counts.

    The layer-offload baseline beside the neuron policies at equal budgets. Unlike `-ngl`, the attention and KV
    cache of every layer stay on the accelerator (the budget's dense part), so only the FFN's placement differs."""
    n_layer, n_ff = counts.shape
    k = min(capacity // n_ff, n_layer)
    return [np.arange(n_ff if layer < k else 0, dtype=np.int32) for layer in range(n_layer)]


@register_policy("random")
def random_policy(counts: np.ndarray, capacity: int, *, seed: int = 0) -> list[np.ndarray]:
    """`capacity` neurons drawn uniformly without replacement over all layers, reproducible from `seed`."""
    n_layer, n_ff = counts.shape
    n = min(capacity, n_layer * n_ff)
    flat = np.sort(np.random.default_rng(seed).choice(n_layer * n_ff, size=n, replace=False))
    layers, ids = np.divmod(flat, n_ff)
    bounds = np.searchsorted(layers, np.arange(n_layer + 1))
    return [ids[bounds[i] : bounds[i + 1]].astype(np.int32) for i in range(n_layer)]


@register_policy("all")
def all_policy(counts: np.ndarray, capacity: int) -> list[np.ndarray]:
    """Every neuron hot, whatever the capacity (the all-on-accelerator baseline; callers warn on overflow)."""
    n_layer, n_ff = counts.shape
    return [np.arange(n_ff, dtype=np.int32) for _ in range(n_layer)]


@register_policy("none")
def none_policy(counts: np.ndarray, capacity: int) -> list[np.ndarray]:
    """Every neuron cold (the all-on-host baseline)."""
    return [np.zeros(0, np.int32) for _ in range(counts.shape[0])]


def masks_from_buckets(buckets: list[np.ndarray], n_ff: int) -> np.ndarray:
    """`[n_layer, n_ff]` bool: True where the neuron is hot."""
    masks = np.zeros((len(buckets), n_ff), dtype=bool)
    for layer, ids in enumerate(buckets):
        masks[layer, ids] = True
    return masks


def hot_share(buckets: list[np.ndarray], counts: np.ndarray) -> np.ndarray:
    """Per layer, the fraction of all activations that fall on hot neurons (NaN for a layer with none)."""
    counts = np.asarray(counts, dtype=np.float64)
    hot = np.array([counts[layer, ids].sum() for layer, ids in enumerate(buckets)])
    total = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, hot / np.where(total > 0, total, 1), np.nan)
