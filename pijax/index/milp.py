"""Reference solver: PowerInfer's group objective as an explicit MILP for `scipy.optimize.milp` (HiGHS).

Used by tests and benchmarks to check that the `powerinfer` and `neuron_greedy` policies reach the exact optimum.
Variables x[l, j] in {0, 1} choose group j of layer l (groups as in `pijax.index.policies`); maximise
sum x[l, j] x group_sum[l, j] subject to group_size x sum x <= capacity. scipy is imported only here.
"""

from __future__ import annotations

import numpy as np

from pijax.index.policies import check_counts, descending_order, group_sums


def milp_group_optimum(counts: np.ndarray, capacity: int, group_size: int = 256) -> tuple[float, list[np.ndarray]]:
    """(optimal objective, per-layer ascending hot ids of one optimal solution)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    arr = check_counts(counts)
    n_layer = arr.shape[0]
    order = descending_order(arr)
    sums = group_sums(arr, order, group_size).astype(np.float64)
    n_vars = sums.size
    res = milp(
        c=-sums.ravel(),
        constraints=[LinearConstraint(np.full((1, n_vars), float(group_size)), -np.inf, float(capacity))],
        integrality=np.ones(n_vars),
        bounds=Bounds(0, 1),
        options={"mip_rel_gap": 0.0},
    )
    if not res.success:
        raise RuntimeError(f"MILP failed: {res.message}")
    x = np.round(res.x).astype(bool).reshape(sums.shape)
    buckets = []
    for layer in range(n_layer):
        ids = [order[layer, j * group_size : (j + 1) * group_size] for j in np.flatnonzero(x[layer])]
        buckets.append(np.sort(np.concatenate(ids)).astype(np.int32) if ids else np.zeros(0, np.int32))
    return float(-res.fun), buckets


def objective(buckets: list[np.ndarray], counts: np.ndarray) -> float:
    """Summed counts of the hot neurons."""
    arr = np.asarray(counts, dtype=np.float64)
    return float(sum(arr[layer, ids].sum() for layer, ids in enumerate(buckets)))
