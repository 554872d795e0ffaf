"""Predictors of the oracle criterion for SiLU models (SmolLM2-135M): data, resumable training, the
predictors-only file, and the per-layer decision thresholds for a target sparsity.

A SiLU FFN has no exact zeros; the oracle (`pijax.sparsity.criteria`) keeps neuron f when |SiLU(gate_f)·up_f| >
t_l. A predictor `fc2 relu(fc1 x)` (x = the residual stream before the FFN norm, as in PowerInfer) is trained with
the existing trainer (`pijax.sparsity.predictors.train_layer`: weighted BCE, AdamW, adaptive rank) on the label
"the oracle keeps it at `label_sparsity`", with t_l the label_sparsity quantile of the layer's scores on the
training pairs. At use, its logit is a ranking score: `calibrate_logit_thresholds` sets per layer the logit cut-off
that skips a fraction s of the neurons on calibration windows, whatever the label sparsity was.

Training data: random windows of the training splits (`Corpus.split(0.1)`, the split of experiments/real_sparsity)
of two domains, half the tokens each: TinyStories and the standard-library modules. Position 0 of each window is
dropped (SmolLM2's attention sink: its residual is ~100x any other token's and would dominate the input scale).
Everything is cached under a work folder, so a rerun resumes: the pairs (float16 memmaps, written batch by batch)
and each finished layer.

File: a small GGUF holding only `blk.N.fc1.weight` [R, D] / `blk.N.fc2.weight` [F, R] in float16, with the
model's `weights_fingerprint` (the check `load_predictors` does for full predictor files), the ranks, the label
thresholds and the training provenance. Dimension legend: N tokens, D model, F neurons, L layers, R rank.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from pijax.errors import ConfigError, DataError, TensorError
from pijax.io.fingerprint import PREDICTOR_FINGERPRINT_KEY, check_predictor_fingerprint, weights_fingerprint
from pijax.io.gguf import read_gguf, write_gguf
from pijax.io.weights import PredictorWeights
from pijax.kernels.reference import down_project
from pijax.model.rows import dense_position_logits
from pijax.sparsity.predictor_config import PredictorTrainConfig
from pijax.sparsity.predictor_data import jit_logits
from pijax.sparsity.thresholds import check_sparsity

KEY = "pijax.oracle_predictor."
ARCH = "pijax-predictors"


@dataclasses.dataclass(frozen=True)
class OraclePredictorConfig:
    """What a set of oracle predictors is trained on and how (`train` is the existing trainer's config)."""

    tokens: int = 24_576  # training pairs per layer, half from each domain (before dropping position 0)
    label_sparsity: float = 0.4
    seq_len: int = 128
    held_out: float = 0.1  # the split of experiments/real_sparsity: the last 10% of documents is never used
    batch_size: int = 8
    seed: int = 0
    layers: tuple[int, ...] | None = None  # None: every layer (tests train a few)
    pool_tokens: int | None = None  # windows are drawn from the first this many tokens of each split (None: all)
    train: PredictorTrainConfig = PredictorTrainConfig(
        ranks=(64, 120),
        target_recall=0.85,
        recall_margin=0.0,
        min_precision=0.7,
        precision_margin=0.0,
        max_epochs=12,
        patience=3,
        val_fraction=0.05,
        max_tokens=None,
    )

    def __post_init__(self) -> None:
        check_sparsity(self.label_sparsity)
        if self.tokens < 2 * self.seq_len:
            raise ConfigError(f"oracle predictors need at least 2 windows of {self.seq_len} tokens, got {self.tokens}")


# ---------------------------------------------------------------- data


def training_windows(model: Any, cfg: OraclePredictorConfig) -> np.ndarray:
    """int32 [N, T]: random windows (seeded) of both domains' training splits, half the tokens from each."""
    from pijax.corpus import load_corpus, stdlib_corpus

    per_domain = max(1, cfg.tokens // (2 * cfg.seq_len))
    rng = np.random.default_rng(cfg.seed)
    out = []
    for corpus in (load_corpus(None), stdlib_corpus()):
        train, _ = corpus.split(cfg.held_out)
        w = train.windows(model.tokenizer, cfg.seq_len, cfg.pool_tokens)
        if len(w) < per_domain:
            raise DataError(f"training split has {len(w)} windows of {cfg.seq_len}, {per_domain} wanted", corpus.path)
        out.append(w[np.sort(rng.permutation(len(w))[:per_domain])])
    return np.concatenate(out)


def _trace_step(llama: Any):
    gd, st = nnx.split(llama)

    @jax.jit
    def step(st: Any, tokens_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
        _, records = nnx.merge(gd, st).trace(tokens_bt)
        x = jnp.stack([r["ffn_in"][:, 1:] for r in records]).astype(jnp.float16)  # [L, B, T-1, D]
        s = jnp.stack([jnp.abs(r["act"][:, 1:]) for r in records]).astype(jnp.float16)  # [L, B, T-1, F]
        return x, s

    return step, st


def collect_oracle_pairs(model: Any, windows: np.ndarray, work: Path, *, batch_size: int = 8, progress: bool = True):
    """(x [L, N, D], scores [L, N, F]) float16 memmaps under `work`: FFN inputs and oracle scores |SiLU(g)·u|.
    Resumable: `pairs.json` records how many windows are done."""
    llama = getattr(model, "module", model)
    cfg = llama.cfg
    work.mkdir(parents=True, exist_ok=True)
    n_win, t = windows.shape
    n = n_win * (t - 1)
    shapes = {"x": (cfg.n_layer, n, cfg.n_embd), "s": (cfg.n_layer, n, cfg.n_ff)}
    state_path = work / "pairs.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    ident = {"windows_sha": _sha(windows), "shapes": {k: list(v) for k, v in shapes.items()}}
    if state.get("ident") != ident:
        state = {"ident": ident, "done": 0}
    mode = "r+" if state["done"] > 0 else "w+"
    arrs = {k: np.lib.format.open_memmap(work / f"pairs_{k}.npy", mode=mode, dtype=np.float16, shape=v)
            for k, v in shapes.items()}  # fmt: skip
    if state["done"] < n_win:
        step, st = _trace_step(llama)
        starts = range(state["done"], n_win, batch_size)
        for s in tqdm(starts, desc="oracle pairs", unit="batch", disable=not progress):
            tok = windows[s : s + batch_size]
            x, sc = step(st, jnp.asarray(tok))
            rows = slice(s * (t - 1), (s + len(tok)) * (t - 1))
            arrs["x"][:, rows] = np.asarray(x).reshape(cfg.n_layer, -1, cfg.n_embd)
            arrs["s"][:, rows] = np.asarray(sc).reshape(cfg.n_layer, -1, cfg.n_ff)
            for a in arrs.values():
                a.flush()
            state["done"] = s + len(tok)
            state_path.write_text(json.dumps(state))
    return arrs["x"], arrs["s"]


def _sha(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------- training


@dataclasses.dataclass
class OraclePredictors:
    """Per-layer predictors of the oracle criterion and where they came from."""

    weights: list[PredictorWeights]
    ranks: list[int]
    label_thresholds: list[float]  # the oracle's t_l at label_sparsity on the training pairs
    model_fingerprint: str
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return int(sum(w.fc1.size + w.fc2.size for w in self.weights))

    def f16_bytes(self) -> int:
        return 2 * self.n_params

    @property
    def decision_thresholds(self) -> list[float] | None:
        """Per-layer logit cut-offs chosen in training (recall `target_recall` of the label set on validation):
        the default when no sparsity is asked for; None when the file does not record them."""
        info = self.meta.get("layer_info", [])
        if len(info) != len(self.weights):
            return None
        return [float(i["val_threshold"]) for i in info]


def train_oracle_predictors(
    model: Any, cfg: OraclePredictorConfig, work: str | os.PathLike[str], *, progress: bool = True
) -> OraclePredictors:
    """Collect pairs and train every layer (adaptive rank); each finished layer is saved under `work`, so an
    interrupted run resumes where it stopped."""
    from pijax.sparsity.predictors import train_layer

    work = Path(work)
    llama = getattr(model, "module", model)
    n_layer = llama.cfg.n_layer
    layers = list(range(n_layer)) if cfg.layers is None else list(cfg.layers)
    windows = training_windows(model, cfg)
    x_all, s_all = collect_oracle_pairs(model, windows, work / "pairs", batch_size=cfg.batch_size, progress=progress)
    weights, ranks, label_thr, rows = [], [], [], []
    for layer in tqdm(layers, desc="train oracle predictors", unit="layer", disable=not progress):
        done = work / f"layer_{layer:02d}.npz"
        if not done.is_file():
            x = np.asarray(x_all[layer], np.float32)
            s = np.asarray(s_all[layer], np.float32)
            t = float(np.quantile(s, cfg.label_sparsity))
            # Trained on per-channel standardised inputs, folded back into fc1 (exact: fc1 is linear). SmolLM2's
            # massive-activation channels otherwise dominate fc1 x at init and some layers' units all die.
            scale = np.sqrt(np.mean(x**2, axis=0)) + 1e-6
            res = train_layer(x / scale, s > t, cfg.train, layer=layer, progress=progress)
            fit = res.chosen
            fit.weights = PredictorWeights((fit.weights.fc1 / scale).astype(np.float32), fit.weights.fc2)
            tried = [{"rank": f.rank, "epochs": f.epochs, **{f"val_{k}": v for k, v in f.val.row().items()}}
                     for f in res.tried]  # fmt: skip
            info = {"layer": layer, "rank": fit.rank, "label_threshold": t, "met_target": res.met_target,
                    "val_threshold": fit.threshold, **{f"val_{k}": v for k, v in fit.val.row().items()},
                    "tried": tried}  # fmt: skip
            np.savez(done.with_suffix(".tmp.npz"), fc1=fit.weights.fc1, fc2=fit.weights.fc2, info=json.dumps(info))
            os.replace(done.with_suffix(".tmp.npz"), done)
            del x, s
        z = np.load(done)
        info = json.loads(str(z["info"]))
        weights.append(PredictorWeights(np.asarray(z["fc1"], np.float32), np.asarray(z["fc2"], np.float32)))
        ranks.append(int(info["rank"]))
        label_thr.append(float(info["label_threshold"]))
        rows.append(info)
    meta = {
        "config": dataclasses.asdict(cfg),
        "train_tokens": int(x_all.shape[1]),
        "windows_sha": _sha(windows),
        "layers": layers,
        "layer_info": rows,
    }
    return OraclePredictors(weights, ranks, label_thr, weights_fingerprint(model.checkpoint.weights), meta)


# ---------------------------------------------------------------- file


def save_oracle_predictors(path: str | os.PathLike[str], preds: OraclePredictors) -> Path:
    """A predictors-only GGUF, float16 (the model itself is not copied)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    md = {
        "general.architecture": ARCH,
        PREDICTOR_FINGERPRINT_KEY: preds.model_fingerprint,
        KEY + "criterion": "oracle",
        KEY + "ranks": np.asarray(preds.ranks, np.int32),
        KEY + "label_thresholds": np.asarray(preds.label_thresholds, np.float32),
        KEY + "meta": json.dumps(preds.meta, sort_keys=True, default=str),
    }
    tensors = []
    for i, w in enumerate(preds.weights):
        tensors += [
            (f"blk.{i}.fc1.weight", w.fc1.astype(np.float16)),
            (f"blk.{i}.fc2.weight", w.fc2.astype(np.float16)),
        ]
    tmp = path.with_name(path.name + ".tmp")
    write_gguf(tmp, md, tensors)
    os.replace(tmp, path)
    return path


def load_oracle_predictors(path: str | os.PathLike[str], model: Any = None) -> OraclePredictors:
    """Read a predictors-only GGUF; with `model`, refuse predictors made for another model (fingerprint) or of
    another shape, in one line naming the file."""
    path = Path(path)
    f = read_gguf(path)
    if f.metadata.get("general.architecture") != ARCH:
        raise TensorError(
            f"not a pijax predictors file (architecture {f.metadata.get('general.architecture')!r})", path
        )
    weights = []
    i = 0
    while f"blk.{i}.fc1.weight" in f.tensors:
        fc1 = np.asarray(f.raw(f"blk.{i}.fc1.weight"), np.float32)
        fc2 = np.asarray(f.raw(f"blk.{i}.fc2.weight"), np.float32)
        weights.append(PredictorWeights(fc1, fc2))
        i += 1
    if not weights:
        raise TensorError("file has no predictors (no blk.0.fc1.weight)", path)
    stored = f.metadata.get(PREDICTOR_FINGERPRINT_KEY)
    if model is not None:
        cfg = model.config
        if len(weights) != cfg.n_layer:
            raise DataError(f"file has predictors for {len(weights)} layers, the model has {cfg.n_layer}", path)
        if weights[0].fc1.shape[1] != cfg.n_embd or weights[0].fc2.shape[0] != cfg.n_ff:
            raise DataError(
                f"predictors are shaped for n_embd {weights[0].fc1.shape[1]}, n_ff {weights[0].fc2.shape[0]}; the "
                f"model has n_embd {cfg.n_embd}, n_ff {cfg.n_ff}",
                path,
            )
        check_predictor_fingerprint(stored, weights_fingerprint(model.checkpoint.weights), path)
    return OraclePredictors(
        weights=weights,
        ranks=[int(r) for r in np.asarray(f.metadata.get(KEY + "ranks", [w.rank for w in weights]))],
        label_thresholds=[float(t) for t in np.asarray(f.metadata.get(KEY + "label_thresholds", []))],
        model_fingerprint=str(stored or ""),
        meta=json.loads(f.metadata.get(KEY + "meta", "{}")),
    )


# ---------------------------------------------------------------- decision thresholds


def _logits_btf(p: dict[str, jax.Array], x_btd: jax.Array) -> jax.Array:
    b, t, d = x_btd.shape
    return jit_logits(p, x_btd.reshape(b * t, d)).reshape(b, t, -1)


def predictor_logit_samples(
    model: Any,
    preds: Sequence[PredictorWeights],
    windows: np.ndarray,
    *,
    batch_size: int = 8,
    progress: bool = False,
    dense_positions: int = 0,
) -> list[np.ndarray]:
    """Per layer, the predictor logits of every (token, neuron) of `windows` (float32, flattened); +inf at the
    first `dense_positions` positions of each window (they run every row, so a quantile counts them kept)."""
    from pijax.sparsity.profile import check_windows

    llama = getattr(model, "module", model)
    windows = check_windows(windows)
    if len(preds) != llama.cfg.n_layer:
        raise DataError(f"{len(preds)} predictors for a model with {llama.cfg.n_layer} layers")
    params = [{"fc1": jnp.asarray(w.fc1), "fc2": jnp.asarray(w.fc2)} for w in preds]
    gd, st = nnx.split(llama)

    @jax.jit
    def step(st: Any, p: Any, tokens_bt: jax.Array) -> list[jax.Array]:
        _, records = nnx.merge(gd, st).trace(tokens_bt)
        return [
            dense_position_logits(_logits_btf(pl, r["ffn_in"]), 0, dense_positions)
            for pl, r in zip(p, records, strict=True)
        ]

    out: list[list[np.ndarray]] = [[] for _ in preds]
    batch_size = min(batch_size, len(windows))
    starts = range(0, len(windows), batch_size)
    for s in tqdm(starts, desc="calibrate predictor thresholds", unit="batch", disable=not progress):
        for i, lg in enumerate(step(st, params, jnp.asarray(windows[s : s + batch_size]))):
            out[i].append(np.asarray(lg, np.float32).reshape(-1))
    return [np.concatenate(o) for o in out]


def logit_thresholds(samples: Sequence[np.ndarray], sparsity: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """float32 [L]: per layer the cut-off that skips (logit < t) a fraction `sparsity` of the samples; -inf (keep
    everything) where the target is 0."""
    target = np.broadcast_to(check_sparsity(sparsity, len(samples)), (len(samples),))
    out = [np.quantile(s, q) if q > 0 else -np.inf for s, q in zip(samples, target, strict=True)]
    return np.asarray(out, np.float32)


def calibrate_logit_thresholds(
    model: Any,
    preds: Sequence[PredictorWeights],
    windows: np.ndarray,
    sparsity: float | Sequence[float] | np.ndarray,
    *,
    dense_positions: int = 0,
) -> np.ndarray:
    """float32 [L]: per-layer predictor thresholds (keep logit >= t_l) that skip `sparsity` of the FFN neurons
    (one number, or one per layer) on `windows`, with the predictors in use. The first `dense_positions`
    positions of each window run every row and count as kept (the others skip a little more to make up).

    Layer by layer through the gated model: layer l's cut-off is the quantile of its logits on the residual
    stream that the already gated layers 0..l-1 produce, which is what the sparse model sees. (Cut-offs taken on
    the dense model's residuals skip ~5 points more than asked at 40% on SmolLM2: gating shifts later inputs.)
    All windows run as one batch, one layer at a time."""
    n_layer = getattr(model, "module", model).cfg.n_layer
    target = np.broadcast_to(check_sparsity(sparsity, n_layer), (n_layer,))
    return gated_pass(
        model,
        preds,
        windows,
        lambda i, lg: np.quantile(lg, target[i]) if target[i] > 0 else -np.inf,
        dense_positions,
    )[0]


def predictor_keep_counts(
    model: Any, preds: Sequence[PredictorWeights], windows: np.ndarray, thresholds: float | Sequence[float]
) -> tuple[np.ndarray, int]:
    """(int64 [L, F] tokens on which the predictor keeps each neuron, tokens counted), through the gated model
    at the given per-layer cut-offs: the activation counts of a predictor-gated SiLU model, for its hot sets."""
    n_layer = getattr(model, "module", model).cfg.n_layer
    thr = np.broadcast_to(np.asarray(thresholds, np.float32), (n_layer,))
    _, counts = gated_pass(model, preds, windows, lambda i, lg: thr[i])
    return counts, int(np.asarray(windows).size)


def gated_pass(
    model: Any,
    preds: Sequence[PredictorWeights],
    windows: np.ndarray,
    cut_off: Callable[[int, np.ndarray], float],
    dense_positions: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Run `windows` through the predictor-gated model, layer by layer; `cut_off(layer, logits)` gives each
    layer's threshold from its logits [N, F] on the gated residual stream (the first `dense_positions` positions
    of each window keep every row: +inf logits). Returns (thresholds float32 [L],
    keep counts int64 [L, F])."""
    from pijax.sparsity.profile import check_windows

    llama = getattr(model, "module", model)
    windows = check_windows(windows)
    n_layer = llama.cfg.n_layer
    if len(preds) != n_layer:
        raise DataError(f"{len(preds)} predictors for a model with {n_layer} layers")
    b, t = windows.shape
    cos, sin = llama._angles(b, t, 0)
    gd, _ = nnx.split(llama.layers[0])

    @jax.jit
    def attend(st: Any, x_btd: jax.Array, p: Any) -> tuple[jax.Array, jax.Array]:
        h, _ = nnx.merge(gd, st).attend(x_btd, cos, sin, None, 0)
        return h, dense_position_logits(_logits_btf(p, h), 0, dense_positions).reshape(b * t, -1)

    @jax.jit
    def gated(st: Any, h_btd: jax.Array, logits: jax.Array, thr: jax.Array) -> tuple[jax.Array, jax.Array]:
        ffn = nnx.merge(gd, st)
        keep = logits >= thr
        act = ffn.ffn.activations(ffn.ffn_norm(h_btd))
        out = h_btd + down_project(jnp.where(keep.reshape(b, t, -1), act, 0.0), ffn.ffn.w_down_fd[...])
        return out, keep.sum(0)

    x = llama.embed(jnp.asarray(windows))
    out = np.zeros(n_layer, np.float32)
    counts = np.zeros((n_layer, llama.cfg.n_ff), np.int64)
    for i, block in enumerate(llama.layers):
        st = nnx.state(block)
        h, logits = attend(st, x, {"fc1": jnp.asarray(preds[i].fc1), "fc2": jnp.asarray(preds[i].fc2)})
        out[i] = cut_off(i, np.asarray(logits))
        x, kept = gated(st, h, logits, jnp.float32(out[i]))
        counts[i] = np.asarray(kept)
    return out, counts
