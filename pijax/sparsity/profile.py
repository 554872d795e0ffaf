"""Profiling: run a model over token windows and count, per layer and neuron, how often its output is active.

Active means act != 0 in relu mode (ReGLU, dReLU, ReLU models: exact zeros) and |act| > the layer's threshold in
threshold mode (SiLU models; thresholds from `pijax.sparsity.thresholds`). Counting happens inside the jitted
forward so only [L, F] sums leave the device per batch; a caller that needs the raw (ffn_in, act) records (the
predictor trainer) passes `on_batch` and gets them as numpy arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from pijax.errors import ConfigError, DataError
from pijax.sparsity.stats import MODES, ActivationStats, SparsityMode

OnBatch = Callable[[np.ndarray, list[dict[str, np.ndarray]]], None]


def _llama_and_fingerprint(model: Any) -> tuple[Any, str]:
    llama = getattr(model, "module", model)
    ckpt = getattr(model, "checkpoint", None)
    return llama, "" if ckpt is None else ckpt.fingerprint


def check_windows(windows: np.ndarray) -> np.ndarray:
    w = np.asarray(windows)
    if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise DataError(f"token windows must be a non-empty [N, T] array, got shape {w.shape}")
    if not np.issubdtype(w.dtype, np.integer):
        raise DataError(f"token windows must be integer ids, got {w.dtype}")
    return w.astype(np.int32)


def check_mode(mode: str, ffn_act: str, thresholds: Sequence[float] | np.ndarray | None, n_layer: int) -> None:
    if mode not in MODES:
        raise ConfigError(f"sparsity mode {mode!r} is not one of {MODES}")
    if mode == "relu" and ffn_act == "silu":
        raise ConfigError("relu mode counts exact zeros, which a SiLU model never produces; use mode=threshold")
    if mode == "threshold":
        if thresholds is None:
            raise ConfigError("threshold mode needs per-layer thresholds (see calibrate_thresholds)")
        if len(thresholds) != n_layer:
            raise DataError(f"thresholds are given for {len(thresholds)} layers, the model has {n_layer}")


def profile(
    model: Any,
    windows: np.ndarray,
    *,
    mode: SparsityMode = "relu",
    thresholds: Sequence[float] | np.ndarray | None = None,
    batch_size: int = 16,
    on_batch: OnBatch | None = None,
    progress: bool = True,
    corpus_sha256: str = "",
) -> ActivationStats:
    """Activation statistics of `model` (a Model or a bare Llama) over int windows [N, T]."""
    llama, model_fp = _llama_and_fingerprint(model)
    windows = check_windows(windows)
    n_layer, n_ff = llama.cfg.n_layer, llama.cfg.n_ff
    check_mode(mode, llama.cfg.ffn_act, thresholds, n_layer)
    thr = jnp.asarray(np.zeros(n_layer) if thresholds is None else np.asarray(thresholds), jnp.float32)
    gd, st = nnx.split(llama)
    want_records = on_batch is not None

    @jax.jit
    def step(st: Any, tokens_bt: jax.Array, n_valid: jax.Array) -> tuple[Any, ...]:
        _, records = nnx.merge(gd, st).trace(tokens_bt)
        row_ok = (jnp.arange(tokens_bt.shape[0]) < n_valid)[:, None, None]  # padding rows of the last batch
        counts, abs_sum, hist = [], [], []
        for i, r in enumerate(records):
            act = r["act"]
            active = (act != 0 if mode == "relu" else jnp.abs(act) > thr[i]) & row_ok
            counts.append(active.sum(axis=(0, 1), dtype=jnp.int32))
            abs_sum.append(jnp.where(row_ok, jnp.abs(act), 0.0).sum(axis=(0, 1)))
            per_token = active.sum(axis=-1, dtype=jnp.int32).reshape(-1)
            weight = jnp.broadcast_to(row_ok[:, :, 0], active.shape[:2]).reshape(-1).astype(jnp.int32)
            hist.append(jnp.bincount(per_token, weights=weight, length=n_ff + 1).astype(jnp.int32))
        out = (jnp.stack(counts), jnp.stack(abs_sum), jnp.stack(hist))
        return (*out, records) if want_records else out

    counts = np.zeros((n_layer, n_ff), np.int64)
    abs_sum = np.zeros((n_layer, n_ff), np.float64)
    hist = np.zeros((n_layer, n_ff + 1), np.int64)
    n_tokens = 0
    batch_size = min(batch_size, len(windows))
    starts = range(0, len(windows), batch_size)
    for s in tqdm(starts, desc=f"profile ({mode})", unit="batch", disable=not progress):
        tok = windows[s : s + batch_size]
        # The last batch is padded to full size so that it reuses the compiled step.
        padded = np.pad(tok, ((0, batch_size - len(tok)), (0, 0)))
        out = step(st, jnp.asarray(padded), jnp.int32(len(tok)))
        c, a, h = (np.asarray(x) for x in out[:3])
        counts += c
        abs_sum += a
        hist += h
        n_tokens += tok.size
        if on_batch is not None:
            on_batch(tok, [{k: np.asarray(v)[: len(tok)] for k, v in r.items()} for r in out[3]])
    return ActivationStats(
        counts=counts,
        abs_sum=abs_sum,
        n_tokens=n_tokens,
        mode=mode,
        thresholds=None if mode == "relu" else np.asarray(thresholds, np.float32),
        model_fingerprint=model_fp,
        corpus_sha256=corpus_sha256,
        active_hist=hist,
    )
