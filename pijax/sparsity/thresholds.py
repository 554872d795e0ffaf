"""Threshold mode for SiLU models (CATS/TEAL style): per-layer cut-offs on |act(gate) * up| for a target sparsity.

A SiLU FFN has no exact zeros, so "inactive" is defined as |act| <= t_l. t_l is the `target` quantile of |act|
over every (token, neuron) of layer l on a calibration corpus, so that on that corpus exactly `target` of the
layer's outputs fall below it. Whether the cut-offs transfer is measured on held-out text (experiments/profile).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from pijax.errors import ConfigError
from pijax.sparsity.profile import check_windows

# |act| values kept per layer for the quantile; past this, a uniform random subsample (the quantile's error is
# then ~1/sqrt(n), far below the 2-point tolerance asked of the measured sparsity).
MAX_SAMPLES_PER_LAYER = 4_000_000


def calibrate_thresholds(
    model: Any,
    windows: np.ndarray,
    target_sparsity: float = 0.5,
    *,
    batch_size: int = 16,
    max_samples_per_layer: int = MAX_SAMPLES_PER_LAYER,
    seed: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """float32 [L]: per-layer thresholds t_l with P(|act_l| <= t_l) = target_sparsity on `windows`."""
    if not 0.0 < target_sparsity < 1.0:
        raise ConfigError(f"target sparsity must be in (0, 1), got {target_sparsity}")
    llama = getattr(model, "module", model)
    windows = check_windows(windows)
    n_layer, n_ff = llama.cfg.n_layer, llama.cfg.n_ff
    keep_p = min(1.0, max_samples_per_layer / (windows.size * n_ff))
    rng = np.random.default_rng(seed)
    gd, st = nnx.split(llama)

    @jax.jit
    def step(st: Any, tokens_bt: jax.Array) -> jax.Array:
        _, records = nnx.merge(gd, st).trace(tokens_bt)
        return jnp.stack([jnp.abs(r["act"]).reshape(-1) for r in records])

    samples: list[list[np.ndarray]] = [[] for _ in range(n_layer)]
    batch_size = min(batch_size, len(windows))
    starts = range(0, len(windows), batch_size)
    for s in tqdm(starts, desc="calibrate thresholds", unit="batch", disable=not progress):
        tok = windows[s : s + batch_size]
        # Pad the last batch to full size (same compiled step), then drop the padding's values.
        padded = np.pad(tok, ((0, batch_size - len(tok)), (0, 0)))
        mags = np.asarray(step(st, jnp.asarray(padded)))[:, : tok.size * n_ff]
        if keep_p < 1.0:
            mags = mags[:, rng.random(mags.shape[1]) < keep_p]
        for i in range(n_layer):
            samples[i].append(mags[i])
    return np.array([np.quantile(np.concatenate(s), target_sparsity) for s in samples], dtype=np.float32)
