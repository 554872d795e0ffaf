"""Non-uniform per-layer sparsity: a greedy allocation that spends the error where it costs least (TEAL-style).

For each layer l and each level s on a grid (0, step, 2*step, ... < 1), `layer_errors` measures on calibration
windows the error that skipping a share s of the layer's entries (its threshold at quantile s of its calibration
scores) adds to that layer's FFN output, relative to the FFN output's size (TEAL measures each block's output):
    e[l, s] = sum ||ffn_s(h) - ffn(h)||^2 / sum ||ffn(h)||^2,
with h the dense model's own FFN inputs (each layer measured in isolation). Not relative to the residual stream
h + ffn(h): SmolLM2's middle layers carry a residual ~100x the FFN output (massive activations), which made
destroying their FFN look free and cost +167% perplexity at 40% (experiments/real_sparsity). Even so, on
SmolLM2 this layer-local greedy loses to the uniform allocation (oracle at 40%: +10.4% against +1.0%): equal
relative errors do not cost equal loss (for CATS at 40% it put 70-90% on layers 0, 2, 11, 28 and 29). An
allocation from end-to-end sensitivities (the loss with one layer sparsified at a time) is the next step.
`greedy_allocation` starts every layer at 0 and repeatedly raises by one grid step the layer whose error grows
least, until the mean over layers reaches the target (all layers of these models have the same width, so the
mean is the model-wide FFN sparsity). Everything is chosen on the calibration (training) windows only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from pijax.sparsity.criteria import check_criterion, masked_ffn
from pijax.sparsity.profile import check_windows
from pijax.sparsity.thresholds import check_sparsity, thresholds_from_scores


def level_grid(step: float = 0.05) -> np.ndarray:
    """float64 [K]: 0, step, 2*step, ... below 1."""
    return np.round(np.arange(0.0, 1.0 - 1e-9, step), 6)


def layer_errors(
    model: Any,
    windows: np.ndarray,
    criterion: str,
    samples: Sequence[np.ndarray],
    levels: np.ndarray,
    *,
    batch_size: int = 4,
    progress: bool = True,
) -> np.ndarray:
    """float64 [L, K]: relative block-output error of each layer at each level (see the module docstring);
    `samples` are the layer's calibration scores (`thresholds.calibration_scores`)."""
    check_criterion(criterion)
    llama = getattr(model, "module", model)
    windows = check_windows(windows)
    thr_lk = np.stack([thresholds_from_scores(samples, float(s)) for s in levels], axis=1)
    gd, st = nnx.split(llama)

    @jax.jit
    def step(st: Any, tokens_bt: jax.Array, thr_lk: jax.Array) -> tuple[jax.Array, jax.Array]:
        m = nnx.merge(gd, st)
        _, records = m.trace(tokens_bt)
        err, size = [], []
        for i, (block, r) in enumerate(zip(m.layers, records, strict=True)):
            h = r["ffn_in"]
            hn = block.ffn_norm(h)
            y = block.ffn(hn, h)
            size.append(jnp.square(y).sum())

            def level_error(t: jax.Array, ffn: Any = block.ffn, hn: jax.Array = hn, y: jax.Array = y) -> jax.Array:
                return jnp.square(masked_ffn(ffn, hn, criterion, t)[0] - y).sum()

            err.append(jax.lax.map(level_error, thr_lk[i]))
        return jnp.stack(err), jnp.stack(size)

    err = np.zeros(thr_lk.shape)
    size = np.zeros(thr_lk.shape[0])
    batch_size = min(batch_size, len(windows))
    for s in tqdm(range(0, len(windows), batch_size), desc=f"layer errors ({criterion})", disable=not progress):
        e, z = step(st, jnp.asarray(windows[s : s + batch_size]), jnp.asarray(thr_lk))
        err += np.asarray(e, np.float64)
        size += np.asarray(z, np.float64)
    return err / size[:, None]


def greedy_path(errors_lk: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """int [S, L]: the grid index of every layer after each greedy step, from all-zero to all-top-level."""
    n_layer, k = errors_lk.shape
    idx = np.zeros(n_layer, dtype=np.int64)
    path = [idx.copy()]
    while (idx < k - 1).any():
        nxt = np.minimum(idx + 1, k - 1)
        rows = np.arange(n_layer)
        gain = errors_lk[rows, nxt] - errors_lk[rows, idx]
        gain[idx >= k - 1] = np.inf
        idx[int(np.argmin(gain))] += 1
        path.append(idx.copy())
    return np.stack(path)


def greedy_allocation(errors_lk: np.ndarray, levels: np.ndarray, target: float) -> np.ndarray:
    """float64 [L]: per-layer sparsity from the greedy path, at the first step whose mean reaches `target`."""
    target = float(check_sparsity(target))
    path = levels[greedy_path(errors_lk, levels)]
    means = path.mean(axis=1)
    at = int(np.searchsorted(means, target - 1e-9))
    return path[min(at, len(path) - 1)]
