"""Trained activation predictors: pair collection, training with an adaptive rank, metrics, and their GGUF file.

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
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from pijax.errors import ConfigError, DataError, TensorError
from pijax.io.checkpoint import load_checkpoint, save_checkpoint, tokenizer_metadata
from pijax.io.fingerprint import PREDICTOR_FINGERPRINT_KEY, check_predictor_fingerprint, weights_fingerprint
from pijax.io.gguf import read_gguf
from pijax.io.weights import PredictorWeights
from pijax.sparsity.predictor_config import PredictorTrainConfig

KEY_PREFIX = "pijax.predictor."
FINGERPRINT_KEY = PREDICTOR_FINGERPRINT_KEY


# ---------------------------------------------------------------- pairs


@dataclasses.dataclass
class PairSet:
    """Training pairs per layer: x [L, N, D] float32 (FFN input) and y [L, N, F] bool (neuron active)."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.ndim != 3 or self.y.ndim != 3 or self.x.shape[:2] != self.y.shape[:2]:
            raise DataError(f"pairs need x [L, N, D] and y [L, N, F], got {self.x.shape} and {self.y.shape}")

    @property
    def n_layer(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.x.shape[1])


def active_mask(act: np.ndarray, mode: str = "relu", threshold: float | None = None) -> np.ndarray:
    """The profiler's notion of an active neuron: act != 0 (relu mode) or |act| > threshold (threshold mode)."""
    if mode == "relu":
        return act != 0
    if threshold is None:
        raise ConfigError("threshold mode needs the layer's threshold")
    return np.abs(act) > threshold


class PairCollector:
    """`profile`'s on_batch hook: keeps (ffn_in, active) per layer, up to `max_tokens` tokens."""

    def __init__(
        self,
        n_layer: int,
        *,
        mode: str = "relu",
        thresholds: Sequence[float] | None = None,
        max_tokens: int | None = None,
    ):
        self.mode = mode
        self.thresholds = None if thresholds is None else [float(t) for t in thresholds]
        self.max_tokens = max_tokens
        self.n_layer = n_layer
        self._x: list[list[np.ndarray]] = [[] for _ in range(n_layer)]
        self._y: list[list[np.ndarray]] = [[] for _ in range(n_layer)]
        self.n_tokens = 0

    def __call__(self, tokens_bt: np.ndarray, records: list[dict[str, np.ndarray]]) -> None:
        take = tokens_bt.size
        if self.max_tokens is not None:
            take = min(take, self.max_tokens - self.n_tokens)
        if take <= 0:
            return
        for i, r in enumerate(records):
            x = r["ffn_in"].reshape(-1, r["ffn_in"].shape[-1])[:take]
            act = r["act"].reshape(-1, r["act"].shape[-1])[:take]
            thr = None if self.thresholds is None else self.thresholds[i]
            self._x[i].append(np.asarray(x, np.float32))
            self._y[i].append(active_mask(act, self.mode, thr))
        self.n_tokens += take

    def pairs(self) -> PairSet:
        if self.n_tokens == 0:
            raise DataError("no (input, active-mask) pairs were collected")
        return PairSet(np.stack([np.concatenate(v) for v in self._x]), np.stack([np.concatenate(v) for v in self._y]))


def collect_pairs(
    model: Any,
    windows: np.ndarray,
    *,
    mode: str = "relu",
    thresholds: Sequence[float] | None = None,
    max_tokens: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
    corpus_sha256: str = "",
) -> tuple[PairSet, Any]:
    """(pairs, ActivationStats) from the dense model over windows drawn at random (seeded) up to `max_tokens`."""
    from pijax.sparsity.profile import check_windows, profile

    windows = check_windows(windows)
    order = np.random.default_rng(seed).permutation(len(windows))
    if max_tokens is not None:
        order = order[: max(1, math.ceil(max_tokens / windows.shape[1]))]
    llama = getattr(model, "module", model)
    collector = PairCollector(llama.cfg.n_layer, mode=mode, thresholds=thresholds, max_tokens=max_tokens)
    stats = profile(
        model,
        windows[np.sort(order)],
        mode=mode,
        thresholds=thresholds,
        batch_size=batch_size,
        on_batch=collector,
        progress=progress,
        corpus_sha256=corpus_sha256,
    )
    return collector.pairs(), stats


# ---------------------------------------------------------------- metrics


@dataclasses.dataclass(frozen=True)
class PredictorMetrics:
    """Micro-averaged over (token, neuron) pairs of one layer."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def recall(self) -> float:
        return self.tp / max(self.tp + self.fn, 1)

    @property
    def precision(self) -> float:
        return self.tp / max(self.tp + self.fp, 1)

    @property
    def predicted_sparsity(self) -> float:
        return 1.0 - (self.tp + self.fp) / max(self.total, 1)

    @property
    def true_sparsity(self) -> float:
        return 1.0 - (self.tp + self.fn) / max(self.total, 1)

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def __add__(self, other: PredictorMetrics) -> PredictorMetrics:
        return PredictorMetrics(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @classmethod
    def of(cls, predicted: np.ndarray, active: np.ndarray) -> PredictorMetrics:
        predicted, active = np.asarray(predicted, bool), np.asarray(active, bool)
        tp = int(np.count_nonzero(predicted & active))
        n_pred, n_act = int(np.count_nonzero(predicted)), int(np.count_nonzero(active))
        return cls(tp, n_pred - tp, n_act - tp, predicted.size - n_pred - n_act + tp)

    def row(self) -> dict[str, float]:
        return {
            "recall": self.recall,
            "precision": self.precision,
            "predicted_sparsity": self.predicted_sparsity,
            "true_sparsity": self.true_sparsity,
        }


def predictor_logits(weights: PredictorWeights, x_nd: np.ndarray | jax.Array) -> jax.Array:
    """fc2 relu(fc1 x): [N, F]."""
    return _logits({"fc1": jnp.asarray(weights.fc1), "fc2": jnp.asarray(weights.fc2)}, jnp.asarray(x_nd))


@jax.jit
def _logits(p: dict[str, jax.Array], x_nd: jax.Array) -> jax.Array:
    h = jax.nn.relu(jnp.einsum("nd,rd->nr", x_nd, p["fc1"]))
    return jnp.einsum("nr,fr->nf", h, p["fc2"])


def recall_threshold(logits: np.ndarray, active: np.ndarray, recall: float) -> float:
    """The largest t for which `logits >= t` keeps at least `recall` of the active entries."""
    pos = np.sort(np.asarray(logits)[np.asarray(active, bool)])
    if pos.size == 0:
        return float("inf")
    k = min(math.floor((1.0 - recall) * pos.size), pos.size - 1)
    return float(pos[k])


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
        return (w * optax.sigmoid_binary_cross_entropy(_logits(p, xb), yb.astype(jnp.float32))).mean()

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
        logits = np.asarray(_logits(params, x_va))
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
            out[s : s + chunk, i] = np.asarray((_logits(p, jnp.asarray(pairs.x[i, s : s + chunk])) >= ts[i]).sum(-1))
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
            pred = np.asarray(_logits(params[i], jnp.asarray(x))) >= ts[i]
            active = active_mask(act, mode, None if act_thresholds is None else act_thresholds[i])
            metrics[i] = metrics[i] + PredictorMetrics.of(pred, active)
            per_layer.append(pred.sum(-1))
        counts.append(np.stack(per_layer, axis=1))

    profile(
        model, windows, mode=mode, thresholds=act_thresholds, batch_size=batch_size, on_batch=on_batch,
        progress=progress,
    )  # fmt: skip
    return metrics, np.concatenate(counts).astype(np.int32)


# ---------------------------------------------------------------- identity and files


def save_predictor_model(
    path: str | os.PathLike[str], checkpoint: Any, trained: TrainedPredictors, *, extra: dict[str, Any] | None = None
) -> Path:
    """The model of `checkpoint` plus the trained predictors as a PowerInfer-style GGUF (PWRI, ffn_down_t, fc1/fc2,
    one global `powerinfer.sparse_threshold`), with pijax keys recording where the predictors came from."""
    path = Path(path)
    n_layer = checkpoint.config.n_layer
    if len(trained.weights) != n_layer:
        raise DataError(f"{len(trained.weights)} predictors for a model with {n_layer} layers", path)
    folded, g = trained.folded()
    weights = dataclasses.replace(checkpoint.weights, predictors=folded, sparse_threshold=g)
    md: dict[str, Any] = {
        FINGERPRINT_KEY: trained.model_fingerprint or weights_fingerprint(checkpoint.weights),
        KEY_PREFIX + "source_fingerprint": checkpoint.fingerprint,
        KEY_PREFIX + "corpus_sha256": trained.corpus_sha256,
        KEY_PREFIX + "n_tokens": int(trained.n_tokens),
        KEY_PREFIX + "layer_thresholds": np.asarray(trained.thresholds, np.float32),
        KEY_PREFIX + "ranks": np.asarray([w.rank for w in trained.weights], np.int32),
    }
    if trained.capacities is not None:
        md[KEY_PREFIX + "capacities"] = np.asarray(trained.capacities, np.int32)
    if trained.config is not None:
        md[KEY_PREFIX + "train_config"] = json.dumps(dataclasses.asdict(trained.config), sort_keys=True)
    md |= extra or {}
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(
        path, checkpoint.config, weights, tokenizer_metadata(checkpoint.gguf), extra_metadata=md, powerinfer=True
    )


@dataclasses.dataclass
class PredictorSet:
    """Predictors as stored in a file: what `sparsify(mode="predictor")` needs, and where they came from."""

    path: Path
    weights: list[PredictorWeights]
    threshold: float  # the global one (per-layer thresholds are folded into fc2)
    capacities: list[int] | None
    model_fingerprint: str | None

    def apply(self, model: Any, *, capacities: Sequence[int] | Literal["file"] | None = "file") -> None:
        """Swap the model's FFNs for predictor-gated sparse FFNs (capacities from the file by default)."""
        from pijax.model.sparse_ffn import sparsify

        caps = self.capacities if capacities == "file" else capacities
        sparsify(model, mode="predictor", capacities=caps, predictors=self.weights, pred_threshold=self.threshold)


def _predictor_layers(f: Any) -> int:
    n = 0
    while f"blk.{n}.fc1.weight" in f.tensors:
        n += 1
    return n


def load_predictors(path: str | os.PathLike[str], model: Any = None) -> PredictorSet:
    """Read the predictors of a PowerInfer-style GGUF; with `model` (a Model) check they were made for it.

    Raises a PijaxError naming the file when it has no predictors, their layer count or shapes do not fit the
    model, or the recorded model fingerprint is another model's."""
    path = Path(path)
    f = read_gguf(path)
    n_pred = _predictor_layers(f)
    if n_pred == 0:
        raise TensorError("file has no predictors (no blk.0.fc1.weight)", path)
    if model is not None:
        cfg = model.config
        if n_pred != cfg.n_layer:
            raise DataError(f"file has predictors for {n_pred} layers, the model has {cfg.n_layer}", path)
        fc1, fc2 = f.tensors["blk.0.fc1.weight"].shape, f.tensors["blk.0.fc2.weight"].shape
        if fc1[1] != cfg.n_embd or fc2[0] != cfg.n_ff:
            raise DataError(
                f"predictors are shaped for n_embd {fc1[1]}, n_ff {fc2[0]}; the model has n_embd {cfg.n_embd}, "
                f"n_ff {cfg.n_ff}",
                path,
            )
        stored = f.metadata.get(FINGERPRINT_KEY)
        if stored is not None:
            check_predictor_fingerprint(stored, weights_fingerprint(model.checkpoint.weights), path)
    ckpt = load_checkpoint(path)
    if ckpt.weights.predictors is None or len(ckpt.weights.predictors) != n_pred:
        raise TensorError("predictor tensors are incomplete", path)
    if n_pred != ckpt.config.n_layer:
        raise DataError(f"file has predictors for {n_pred} layers, its model has {ckpt.config.n_layer}", path)
    caps = f.metadata.get(KEY_PREFIX + "capacities")
    return PredictorSet(
        path=path,
        weights=ckpt.weights.predictors,
        threshold=float(ckpt.weights.sparse_threshold),
        capacities=None if caps is None else [int(c) for c in np.asarray(caps)],
        model_fingerprint=f.metadata.get(FINGERPRINT_KEY),
    )
