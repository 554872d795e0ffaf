"""Turning a model's FFNs sparse and back, in place, and the static capacities a sparse FFN needs.

`sparsify` sets every `block.ffn`'s selector (pijax.model.rows.Selector: which rows; "oracle", "relu",
"threshold" or "predictor", a per-layer capacity, the predictor or activation threshold) and, when asked, its
backend; `densify` sets the selector back to dense. The weights are never copied. `calibrate_capacities` and
`mask_counts` pick the capacities from profiled text. Dimension legend: see `pijax.model.layers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pijax.config import ModelConfig
from pijax.errors import ConfigError, DataError
from pijax.io.weights import PredictorWeights
from pijax.model.predictor import Predictor
from pijax.model.rows import DENSE_SELECTOR, Backend, Criterion, Selector

MaskSource = Literal["oracle", "relu", "predictor", "threshold"]
MASK_SOURCES: tuple[str, ...] = ("oracle", "relu", "predictor", "threshold")


def _n_layer(llama: Any) -> int:
    return len(llama.layers)


def _layer_list(values: Sequence[Any] | None, n_layer: int, what: str) -> list[Any] | None:
    if values is None:
        return None
    values = list(values)
    if len(values) != n_layer:
        raise DataError(f"{what} are given for {len(values)} layers, the model has {n_layer}")
    return values


def sparsify(
    model: Any,
    *,
    mode: MaskSource,
    capacities: Sequence[int] | None = None,
    predictors: Sequence[PredictorWeights | Predictor] | None = None,
    pred_threshold: float | Sequence[float] | None = None,
    act_thresholds: Sequence[float] | np.ndarray | None = None,
    max_gather_rows: int | None = None,
    backend: Backend | None = None,
    criterion: Criterion = "oracle",
    dense_positions: int = 0,
) -> None:
    """Make every FFN of a Model (or a bare Llama) select rows by `mode`, in place (see the module docstring).

    `capacities` None means no cap. In predictor mode `predictors` defaults to those of the model's checkpoint
    (a PowerInfer-style GGUF), and `pred_threshold` None to the checkpoint's `powerinfer.sparse_threshold` (0
    without one). Per-layer arguments must have one entry per layer. `backend` None keeps each FFN's.
    `dense_positions` (predictor mode): the first N positions of a sequence run every row. Everything is checked
    before any block changes."""
    if mode not in MASK_SOURCES:
        raise ConfigError(f"sparse FFN mask source {mode!r} is not one of {MASK_SOURCES}")
    llama = getattr(model, "module", model)
    cfg: ModelConfig = llama.cfg
    n_layer = _n_layer(llama)
    ckpt = getattr(model, "checkpoint", None)
    if pred_threshold is None:
        pred_threshold = 0.0 if ckpt is None else float(ckpt.weights.sparse_threshold)
    if predictors is None and mode == "predictor":
        predictors = None if ckpt is None else ckpt.weights.predictors
        if predictors is None:
            raise ConfigError("mask source 'predictor' needs predictors (the model file has none)")
    caps = _layer_list(capacities, n_layer, "capacities") or [None] * n_layer
    preds = _layer_list(predictors, n_layer, "predictors") if mode == "predictor" else None
    thr = _layer_list(None if act_thresholds is None else list(np.asarray(act_thresholds)), n_layer, "thresholds")
    if mode == "threshold" and thr is None:
        raise ConfigError("mask source 'threshold' needs per-layer act_thresholds")
    pts = (
        [float(pred_threshold)] * n_layer
        if np.isscalar(pred_threshold)
        else _layer_list(list(pred_threshold), n_layer, "predictor thresholds")
    )
    todo = []  # all built (and checked) before any block is touched
    for i, block in enumerate(llama.layers):
        pred = None
        if preds is not None:
            p = preds[i]
            pred = p if isinstance(p, Predictor) else Predictor.from_weights(p)
            if pred.fc1_rd[...].shape[1] != cfg.n_embd or pred.fc2_fr[...].shape[0] != cfg.n_ff:
                raise DataError(
                    f"predictor {i} has fc1 {pred.fc1_rd[...].shape}, fc2 {pred.fc2_fr[...].shape}: "
                    f"not for a model with n_embd {cfg.n_embd}, n_ff {cfg.n_ff}"
                )
        cap = caps[i]
        if cap is not None and not 1 <= int(cap) <= cfg.n_ff:
            raise ConfigError(f"sparse FFN capacity {cap} must be in [1, n_ff={cfg.n_ff}]")
        sel = Selector(
            mode,
            capacity=None if cap is None else int(cap),
            threshold=float(thr[i]) if mode == "threshold" else float(pts[i]),
            max_gather_rows=max_gather_rows,
            skip_inactive=block.ffn.selector.skip_inactive,
            criterion=criterion if mode == "threshold" else "oracle",
            dense_positions=dense_positions,
        )
        be = block.ffn.backend if backend is None else backend
        block.ffn.check(sel, be, pred)
        todo.append((block.ffn, sel, be, pred))
    for ffn, sel, be, pred in todo:
        ffn.configure(sel, be, pred)
    if hasattr(model, "refresh"):
        model.refresh()


def densify(model: Any) -> None:
    """Undo `sparsify`: every FFN computes every row again (its backend and weights unchanged)."""
    llama = getattr(model, "module", model)
    for block in llama.layers:
        block.ffn.configure(DENSE_SELECTOR, None, None)
    if hasattr(model, "refresh"):
        model.refresh()


def calibrate_capacities(
    source: Any,
    *,
    quantile: float = 0.99,
    slack: float = 1.0,
    multiple: int = 1,
    n_ff: int | None = None,
) -> list[int]:
    """Static per-layer capacity: the `quantile` of the per-token active count, times `slack`, rounded up to a
    `multiple`, at most n_ff.

    `source` is ActivationStats (uses its per-token active-count histogram when present, else the mean active
    count) or per-token active counts int [N, L] (e.g. the predictor's positives, from `mask_counts`)."""
    if not 0.0 < quantile <= 1.0:
        raise ConfigError(f"capacity quantile must be in (0, 1], got {quantile}")
    if hasattr(source, "active_per_token"):  # ActivationStats (pijax.sparsity, a layer above: duck-typed)
        n_ff = source.n_ff if n_ff is None else n_ff
        if source.active_hist is not None:
            q = [_hist_quantile(h, quantile) for h in source.active_hist]
        else:
            q = list(source.active_per_token())
    else:
        counts = np.asarray(source)
        if counts.ndim != 2 or counts.shape[0] == 0:
            raise DataError(f"per-token active counts must be [N, L] with N > 0, got shape {counts.shape}")
        if n_ff is None:
            raise ConfigError("calibrate_capacities needs n_ff with raw per-token counts")
        q = list(np.quantile(counts, quantile, axis=0, method="higher"))
    caps = []
    for v in q:
        c = max(1, int(np.ceil(float(v) * slack)))
        c = -(-c // multiple) * multiple
        caps.append(min(c, n_ff))
    return caps


def _hist_quantile(hist: np.ndarray, quantile: float) -> int:
    cum = np.cumsum(hist)
    return int(np.searchsorted(cum, quantile * cum[-1]))


def mask_counts(
    model: Any,
    windows: np.ndarray,
    *,
    mode: MaskSource,
    predictors: Sequence[PredictorWeights | Predictor] | None = None,
    pred_threshold: float | Sequence[float] = 0.0,
    act_thresholds: Sequence[float] | np.ndarray | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """Per-token number of neurons the mask source marks active, int32 [N_tokens, L] (for calibrate_capacities).

    Runs the model densely (a sparse FFN's cap would change the later layers' inputs)."""
    llama = getattr(model, "module", model)
    n_layer = _n_layer(llama)
    if mode == "predictor":
        if predictors is None:
            ckpt = getattr(model, "checkpoint", None)
            predictors = None if ckpt is None else ckpt.weights.predictors
        preds = _layer_list(predictors, n_layer, "predictors")
        if preds is None:
            raise ConfigError("mask source 'predictor' needs predictors")
        pmods = [p if isinstance(p, Predictor) else Predictor.from_weights(p) for p in preds]
    pts = [float(pred_threshold)] * n_layer if np.isscalar(pred_threshold) else list(pred_threshold)
    thr = None if act_thresholds is None else np.asarray(act_thresholds, np.float32)
    if mode == "threshold" and (thr is None or thr.shape != (n_layer,)):
        raise DataError(f"threshold mode needs {n_layer} act_thresholds")
    gd, st = nnx.split(llama)
    pred_state = nnx.split(pmods) if mode == "predictor" else None

    @jax.jit
    def counts_fn(st, pstate, tokens_bt):
        _, records = nnx.merge(gd, st).trace(tokens_bt)
        out = []
        for i, r in enumerate(records):
            if mode == "predictor":
                pm = nnx.merge(*pstate)[i]
                active = pm(r["ffn_in"]) >= pts[i]
            elif mode in ("oracle", "relu"):
                active = r["act"] != 0
            else:
                active = jnp.abs(r["act"]) > thr[i]
            out.append(active.sum(-1).reshape(-1))
        return jnp.stack(out, axis=1)

    parts = []
    for s in range(0, len(windows), batch_size):
        parts.append(np.asarray(counts_fn(st, pred_state, jnp.asarray(windows[s : s + batch_size]))))
    return np.concatenate(parts).astype(np.int32)
