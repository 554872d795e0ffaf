"""Predictor files: writing a model with trained predictors, and loading predictors with the checks that they
belong to the model (identity: `pijax.io.fingerprint.weights_fingerprint`; training: pijax.sparsity.predictors).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pijax.errors import DataError, TensorError
from pijax.io.checkpoint import load_checkpoint, save_checkpoint, tokenizer_metadata
from pijax.io.fingerprint import PREDICTOR_FINGERPRINT_KEY, check_predictor_fingerprint, weights_fingerprint
from pijax.io.gguf import read_gguf
from pijax.io.weights import PredictorWeights
from pijax.sparsity.predictors import TrainedPredictors

KEY_PREFIX = "pijax.predictor."
FINGERPRINT_KEY = PREDICTOR_FINGERPRINT_KEY


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
