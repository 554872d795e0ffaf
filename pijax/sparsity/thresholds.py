"""Threshold mode for SiLU models (CATS/TEAL style): per-layer cut-offs for a target sparsity, per criterion.

A SiLU FFN has no exact zeros, so "inactive" is defined as score <= t_l, with the score given by the criterion
(`pijax.sparsity.criteria`: "oracle" |act(gate)*up| (the default), "cats" |act(gate)|, "teal" |FFN input|).
t_l is the `target` quantile of the scores over every (token, entry) of layer l on a calibration corpus, so that
on that corpus exactly `target` of the layer's entries fall below it. A target may be one number or one per layer
(a non-uniform allocation, `pijax.sparsity.allocation`). Target 0 gives t = 0, which skips only exact zeros.
Whether the cut-offs transfer is measured on held-out text (experiments/real_sparsity, tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from pijax.errors import ConfigError
from pijax.sparsity.criteria import check_criterion, criterion_width, scores
from pijax.sparsity.profile import check_windows

# Scores kept per layer for the quantile; past this, a uniform random subsample (the quantile's error is
# then ~1/sqrt(n), far below the 2-point tolerance asked of the measured sparsity).
MAX_SAMPLES_PER_LAYER = 4_000_000


def check_sparsity(target: float | Sequence[float] | np.ndarray, n_layer: int | None = None) -> np.ndarray:
    """float64 [] or [L]: a target sparsity, or one per layer, each in [0, 1)."""
    t = np.asarray(target, dtype=np.float64)
    if t.ndim > 1 or (t.ndim == 1 and n_layer is not None and t.shape != (n_layer,)):
        raise ConfigError(f"target sparsity must be one number or one per layer ({n_layer}), got shape {t.shape}")
    if not np.all((t >= 0.0) & (t < 1.0)):
        raise ConfigError(f"target sparsity must be in [0, 1), got {np.round(t, 4).tolist()}")
    return t


def calibration_scores(
    model: Any,
    windows: np.ndarray,
    criterion: str = "oracle",
    *,
    batch_size: int = 16,
    max_samples_per_layer: int = MAX_SAMPLES_PER_LAYER,
    seed: int = 0,
    progress: bool = True,
) -> list[np.ndarray]:
    """Per layer, the criterion's scores over `windows` (a uniform subsample past `max_samples_per_layer`)."""
    check_criterion(criterion)
    llama = getattr(model, "module", model)
    windows = check_windows(windows)
    cfg = llama.cfg
    width = criterion_width(criterion, cfg.n_embd, cfg.n_ff)
    keep_p = min(1.0, max_samples_per_layer / (windows.size * width))
    rng = np.random.default_rng(seed)
    gd, st = nnx.split(llama)

    @jax.jit
    def step(st: Any, tokens_bt: jax.Array) -> jax.Array:
        m = nnx.merge(gd, st)
        _, records = m.trace(tokens_bt)
        return jnp.stack(
            [
                scores(b.ffn, b.ffn_norm(r["ffn_in"]), criterion).reshape(-1)
                for b, r in zip(m.layers, records, strict=True)
            ]
        )

    samples: list[list[np.ndarray]] = [[] for _ in range(cfg.n_layer)]
    batch_size = min(batch_size, len(windows))
    starts = range(0, len(windows), batch_size)
    for s in tqdm(starts, desc=f"calibrate thresholds ({criterion})", unit="batch", disable=not progress):
        tok = windows[s : s + batch_size]
        # Pad the last batch to full size (same compiled step), then drop the padding's values.
        padded = np.pad(tok, ((0, batch_size - len(tok)), (0, 0)))
        mags = np.asarray(step(st, jnp.asarray(padded)))[:, : tok.size * width]
        if keep_p < 1.0:
            mags = mags[:, rng.random(mags.shape[1]) < keep_p]
        for i in range(cfg.n_layer):
            samples[i].append(mags[i])
    return [np.concatenate(s) for s in samples]


def thresholds_from_scores(samples: Sequence[np.ndarray], target: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """float32 [L]: per layer the `target` quantile of its scores (0 where the target is 0)."""
    t = np.broadcast_to(check_sparsity(target, len(samples)), (len(samples),))
    out = [np.quantile(s, q) if q > 0 else 0.0 for s, q in zip(samples, t, strict=True)]
    return np.asarray(out, dtype=np.float32)


def calibrate_thresholds(
    model: Any,
    windows: np.ndarray,
    target_sparsity: float | Sequence[float] | np.ndarray = 0.5,
    *,
    criterion: str = "oracle",
    batch_size: int = 16,
    max_samples_per_layer: int = MAX_SAMPLES_PER_LAYER,
    seed: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """float32 [L]: per-layer thresholds t_l with P(score_l <= t_l) = target on `windows` (target: one number in
    [0, 1) or one per layer); `criterion` is "oracle" |act(gate)*up|, "cats" |act(gate)| or "teal" |FFN input|."""
    llama = getattr(model, "module", model)
    check_sparsity(target_sparsity, llama.cfg.n_layer)
    samples = calibration_scores(
        llama,
        windows,
        criterion,
        batch_size=batch_size,
        max_samples_per_layer=max_samples_per_layer,
        seed=seed,
        progress=progress,
    )
    return thresholds_from_scores(samples, target_sparsity)
