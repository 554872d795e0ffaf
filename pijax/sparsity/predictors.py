"""Trained activation predictors: training with an adaptive rank, threshold folding, evaluation on text.

Pairs and metrics live in pijax.sparsity.predictor_data, the file and its identity checks in
pijax.sparsity.predictor_files.

Pipeline: `collect_pairs` runs the dense model over training windows (through `profile`'s `on_batch` hook) and
keeps, per layer, the FFN input x (residual stream before the FFN norm, [N, D]) and the active mask y ([N, F]:
act != 0 in relu mode, |act| > the layer threshold in threshold mode, the same definition `profile` counts).
`train_predictors` fits per layer `logits = fc2 relu(fc1 x)` (no biases, PowerInfer's form) with weighted BCE
(positives 1, negatives mean(y) + 0.005), AdamW, a held-out validation share and early stopping, trying ranks
from a ladder and keeping the smallest that meets the recall (and precision) target on validation.

Thresholds: a neuron is predicted active when its logit >= t. With `calibrate_threshold`, each layer gets its own
t_l (the largest threshold whose validation recall reaches the target). PowerInfer's file has one global
`powerinfer.sparse_threshold`, so the per-layer values are folded into the weights: fc2_l is scaled by
t_global / t_l (> 0), which leaves every decision unchanged, with t_global = -1 (or +1 when every t_l > 0). A layer
whose t_l has the other sign is moved to -1e-3 x max|fc2_l|, i.e. (almost) PowerInfer's default threshold 0,
which only adds recall. `fold_thresholds` documents the arithmetic; the file keeps the unfolded values in
`pijax.predictor.layer_thresholds` for reference.

Identity: the file records `pijax.predictor.model_fingerprint`, a hash of the model weights in pijax's canonical
layout (so the same model in llama.cpp or PowerInfer layout hashes alike); `load_predictors(path, model)` refuses
predictors trained for another model or with another layer count. Dimension legend: N samples, D model,
F neurons, R predictor rank.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from pijax.errors import DataError
from pijax.io.weights import PredictorWeights
from pijax.sparsity.predictor_config import PredictorTrainConfig
from pijax.sparsity.predictor_data import PairSet, PredictorMetrics, active_mask, jit_logits, recall_threshold

# ---------------------------------------------------------------- training


@dataclasses.dataclass
class RankFit:
    """One (layer, rank) training run: the best epoch's weights, threshold and validation metrics."""

    rank: int
    weights: PredictorWeights
    threshold: float
    val: PredictorMetrics
    epochs: int
    best_epoch: int
    history: list[dict[str, float]]

    @property
    def n_params(self) -> int:
        return int(self.weights.fc1.size + self.weights.fc2.size)


def _init_params(key: jax.Array, rank: int, n_embd: int, n_ff: int, x_rms: float) -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(key)
    # Scaled so that fc1 x has unit variance whatever the layer's residual scale (it grows with depth).
    fc1 = jax.random.normal(k1, (rank, n_embd)) / (math.sqrt(n_embd) * max(x_rms, 1e-6))
    fc2 = jax.random.normal(k2, (n_ff, rank)) * math.sqrt(2.0 / rank)
    return {"fc1": fc1, "fc2": fc2}


def _optimizer(lr: float, weight_decay: float) -> optax.GradientTransformation:
    return optax.adamw(lr, weight_decay=weight_decay)


@functools.partial(jax.jit, static_argnames=("lr", "weight_decay", "batch_size"))
def _epoch(p, opt_state, x, y, key, neg_weight, *, lr: float, weight_decay: float, batch_size: int):
    """One shuffled pass over (x, y) in a single compiled scan; cached across layers of the same rank."""
    opt = _optimizer(lr, weight_decay)

    def loss_fn(p, xb, yb):
        w = jnp.where(yb, 1.0, neg_weight)
        return (w * optax.sigmoid_binary_cross_entropy(jit_logits(p, xb), yb.astype(jnp.float32))).mean()

    n_batch = x.shape[0] // batch_size
    idx = jax.random.permutation(key, x.shape[0])[: n_batch * batch_size].reshape(n_batch, batch_size)

    def step(carry, ib):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p, x[ib], y[ib])
        upd, s = opt.update(g, s, p)
        return (optax.apply_updates(p, upd), s), loss

    (p, opt_state), losses = jax.lax.scan(step, (p, opt_state), idx)
    return p, opt_state, losses.mean()


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * val_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def fit_rank(
    x: np.ndarray,
    y: np.ndarray,
    rank: int,
    cfg: PredictorTrainConfig,
    *,
    seed: int = 0,
    split: tuple[np.ndarray, np.ndarray] | None = None,
    progress: bool = False,
    desc: str = "",
) -> RankFit:
    """Train one layer's predictor of a given rank; `split` = (train idx, val idx) into x / y."""
    tr, va = split if split is not None else _split(len(x), cfg.val_fraction, seed)
    if len(tr) < cfg.batch_size:
        raise DataError(f"{len(tr)} training pairs are fewer than one batch of {cfg.batch_size}")
    x_tr, y_tr = jnp.asarray(x[tr]), jnp.asarray(y[tr])
    x_va, y_va = jnp.asarray(x[va]), np.asarray(y[va])
    neg_weight = float(y_tr.mean()) + cfg.neg_weight_offset
    opt = _optimizer(cfg.lr, cfg.weight_decay)
    key = jax.random.key(seed)
    key, k_init = jax.random.split(key)
    params = _init_params(k_init, rank, x.shape[1], y.shape[1], float(np.sqrt(np.mean(x[tr[:4096]] ** 2))))
    opt_state = opt.init(params)
    best: tuple[float, dict, float, PredictorMetrics, int] | None = None
    history: list[dict[str, float]] = []
    stale = 0
    bar = tqdm(range(cfg.max_epochs), desc=desc or f"rank {rank}", unit="epoch", leave=False, disable=not progress)
    e = -1
    for e in bar:
        key, k_ep = jax.random.split(key)
        params, opt_state, loss = _epoch(
            params, opt_state, x_tr, y_tr, k_ep, neg_weight, lr=cfg.lr, weight_decay=cfg.weight_decay,
            batch_size=cfg.batch_size,
        )  # fmt: skip
        logits = np.asarray(jit_logits(params, x_va))
        t = recall_threshold(logits, y_va, cfg.recall_goal) if cfg.calibrate_threshold else cfg.threshold
        m = PredictorMetrics.of(logits >= t, y_va)
        if cfg.calibrate_threshold:
            score = m.precision
        else:  # recall first; once the target is met, precision breaks ties
            score = m.recall if m.recall < cfg.recall_goal else 1.0 + m.precision
        history.append({"epoch": e, "loss": float(loss), "threshold": t, "score": score, **m.row()})
        bar.set_postfix(loss=f"{float(loss):.4f}", recall=f"{m.recall:.3f}", precision=f"{m.precision:.3f}")
        if best is None or score > best[0] + cfg.min_delta:
            best, stale = (score, jax.tree.map(np.asarray, params), t, m, e), 0
        else:
            stale += 1
        if stale >= cfg.patience or (not cfg.calibrate_threshold and m.recall > 0.99 and m.precision > 0.99):
            break
    assert best is not None
    _, p, t, m, best_e = best
    return RankFit(rank, PredictorWeights(p["fc1"], p["fc2"]), float(t), m, e + 1, best_e, history)


def meets_target(m: PredictorMetrics, cfg: PredictorTrainConfig) -> bool:
    return m.recall >= cfg.recall_goal - 1e-9 and m.precision >= cfg.precision_goal


@dataclasses.dataclass
class LayerResult:
    layer: int
    chosen: RankFit
    tried: list[RankFit]
    met_target: bool


def train_layer(
    x: np.ndarray, y: np.ndarray, cfg: PredictorTrainConfig, *, layer: int = 0, progress: bool = True
) -> LayerResult:
    """Adaptive rank: the smallest rank of the ladder meeting the target on validation (else the best score)."""
    split = _split(len(x), cfg.val_fraction, cfg.seed + 1000 * layer)
    tried = []
    for rank in sorted(cfg.ranks):
        fit = fit_rank(
            x, y, rank, cfg, seed=cfg.seed + 1000 * layer + rank, split=split, progress=progress,
            desc=f"layer {layer} rank {rank}",
        )  # fmt: skip
        tried.append(fit)
        if meets_target(fit.val, cfg):
            return LayerResult(layer, fit, tried, True)

    def score(f: RankFit) -> tuple[float, float]:
        return (min(f.val.recall, cfg.recall_goal), f.val.precision)

    return LayerResult(layer, max(tried, key=score), tried, False)


@dataclasses.dataclass
class TrainedPredictors:
    """Per-layer predictors plus everything needed to use and trust them."""

    weights: list[PredictorWeights]  # as trained (unfolded)
    thresholds: list[float]  # per-layer decision thresholds for `weights`
    layers: list[LayerResult] = dataclasses.field(default_factory=list)
    capacities: list[int] | None = None
    model_fingerprint: str = ""
    corpus_sha256: str = ""
    n_tokens: int = 0
    config: PredictorTrainConfig | None = None

    @property
    def n_params(self) -> int:
        return int(sum(w.fc1.size + w.fc2.size for w in self.weights))

    def folded(self) -> tuple[list[PredictorWeights], float]:
        return fold_thresholds(self.weights, self.thresholds)


def train_predictors(pairs: PairSet, cfg: PredictorTrainConfig, *, progress: bool = True) -> TrainedPredictors:
    """Train every layer's predictor (adaptive rank) on collected pairs."""
    layers = []
    for i in tqdm(range(pairs.n_layer), desc="predictors", unit="layer", disable=not progress):
        layers.append(train_layer(pairs.x[i], pairs.y[i], cfg, layer=i, progress=progress))
    return TrainedPredictors(
        weights=[r.chosen.weights for r in layers],
        thresholds=[r.chosen.threshold for r in layers],
        layers=layers,
        n_tokens=pairs.n_tokens,
        config=cfg,
    )


def fold_thresholds(
    weights: Sequence[PredictorWeights], thresholds: Sequence[float], *, eps: float = 1e-3
) -> tuple[list[PredictorWeights], float]:
    """Per-layer thresholds t_l folded into fc2 so that one global threshold gives the same decisions.

    logit >= t_l  <=>  (g / t_l) logit >= g  for g and t_l of the same sign (the scale is positive). g = +1 when
    every t_l > 0, else -1; a t_l >= 0 under g = -1 is replaced by -eps x the layer's fc2 scale (PowerInfer's
    threshold 0, a hair lower), which can only add predicted-active rows. Equal t_l: nothing to fold."""
    ts = [float(t) for t in thresholds]
    if len(set(ts)) == 1 and math.isfinite(ts[0]):  # already one global threshold
        return list(weights), ts[0]
    g = 1.0 if all(t > 0 for t in ts) else -1.0
    out = []
    for w, t in zip(weights, ts, strict=True):
        if t * g <= 0:
            t = -eps * float(np.abs(w.fc2).max())
        out.append(PredictorWeights(w.fc1.copy(), (w.fc2 * np.float32(g / t)).astype(np.float32)))
    return out, g


def predicted_counts(
    pairs: PairSet, predictors: Sequence[PredictorWeights], thresholds: float | Sequence[float], *, chunk: int = 8192
) -> np.ndarray:
    """Per-token number of predicted-active neurons on collected pairs, int32 [N, L] (for capacity calibration)."""
    n_layer = len(predictors)
    ts = [float(thresholds)] * n_layer if np.isscalar(thresholds) else [float(t) for t in thresholds]
    out = np.zeros((pairs.n_tokens, n_layer), np.int32)
    for i, w in enumerate(predictors):
        p = {"fc1": jnp.asarray(w.fc1), "fc2": jnp.asarray(w.fc2)}
        for s in range(0, pairs.n_tokens, chunk):
            out[s : s + chunk, i] = np.asarray((jit_logits(p, jnp.asarray(pairs.x[i, s : s + chunk])) >= ts[i]).sum(-1))
    return out


# ---------------------------------------------------------------- evaluation on text


def evaluate_predictors(
    model: Any,
    windows: np.ndarray,
    predictors: Sequence[PredictorWeights],
    thresholds: float | Sequence[float],
    *,
    mode: str = "relu",
    act_thresholds: Sequence[float] | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[list[PredictorMetrics], np.ndarray]:
    """Per-layer metrics of predictors against the dense model's true activity on `windows`, and the per-token
    predicted-active counts int [N, L] (for capacity calibration)."""
    from pijax.sparsity.profile import profile

    n_layer = len(predictors)
    ts = [float(thresholds)] * n_layer if np.isscalar(thresholds) else [float(t) for t in thresholds]
    params = [{"fc1": jnp.asarray(w.fc1), "fc2": jnp.asarray(w.fc2)} for w in predictors]
    metrics = [PredictorMetrics(0, 0, 0, 0)] * n_layer
    counts: list[np.ndarray] = []

    def on_batch(tokens_bt: np.ndarray, records: list[dict[str, np.ndarray]]) -> None:
        per_layer = []
        for i, r in enumerate(records):
            x = r["ffn_in"].reshape(-1, r["ffn_in"].shape[-1])
            act = r["act"].reshape(-1, r["act"].shape[-1])
            pred = np.asarray(jit_logits(params[i], jnp.asarray(x))) >= ts[i]
            active = active_mask(act, mode, None if act_thresholds is None else act_thresholds[i])
            metrics[i] = metrics[i] + PredictorMetrics.of(pred, active)
            per_layer.append(pred.sum(-1))
        counts.append(np.stack(per_layer, axis=1))

    profile(
        model, windows, mode=mode, thresholds=act_thresholds, batch_size=batch_size, on_batch=on_batch,
        progress=progress,
    )  # fmt: skip
    return metrics, np.concatenate(counts).astype(np.int32)
