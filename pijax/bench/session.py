"""What the benchmark tasks (sweep, simulate) share: which model to run, and per-process caches.

A Hydra multirun runs its jobs one after another in one process, so the work that does not depend on the job's
policy or budget (loading the model, profiling its activations, the dense reference logits and speed, the
predictor's recall, the activation trace) is done once per process and reused: `cached(key, make)`.

Model choice: `synthetic` names a `pijax.bench.synth` preset (built on first use, labelled "synthetic"); else
`model.path`; else the ReLU-fied stories260K shipped with pijax, with trained predictors when that file exists.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pijax.paths import RELU_STORIES260K, RELU_STORIES260K_PREDICTORS, default_relu_model

RELU, RELU_PREDICTORS = RELU_STORIES260K, RELU_STORIES260K_PREDICTORS  # the notebooks' names
REAL, SYNTHETIC = "real", "synthetic"

T = TypeVar("T")
_CACHE: dict[Hashable, Any] = {}


def cached(key: Hashable, make: Callable[[], T]) -> T:
    """`make()` once per process and key."""
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def clear_cache() -> None:
    _CACHE.clear()


def model_path(path: str, synthetic: str, *, progress: bool = True) -> Path:
    """The GGUF a benchmark runs: a synthetic preset (built or reused), an explicit path, or the default."""
    if synthetic:
        from pijax.bench.synth import ensure_synth_model

        return ensure_synth_model(synthetic, progress=progress)
    return Path(path).expanduser() if path else default_relu_model()


@dataclasses.dataclass
class BenchModel:
    model: Any  # pijax.api.Model
    path: Path
    label: str  # "real" or "synthetic"
    name: str  # short, for tables, file names and plot legends

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)

    @property
    def has_predictors(self) -> bool:
        """The file carries predictors, or the model is SiLU (its oracle predictors: pijax.engine.predictor_choice)."""
        return self.model.checkpoint.weights.predictors is not None or self.model.config.ffn_act == "silu"


def load_bench_model(path: Path, ffn_act: Any, host: Any) -> BenchModel:
    """Load (once per process) on the host device: the dense copy is only read from, or run as the reference."""
    import jax

    from pijax.api import load_model
    from pijax.bench.synth_spec import spec_from_metadata

    def make() -> BenchModel:
        with jax.default_device(host):
            model = load_model(path, ffn_act=ffn_act)
        # The Flax module holds the weights; the checkpoint's numpy copy of them would double a 1B model's
        # memory. Keep only what the benchmarks read from it: the predictors and their threshold. A SiLU model
        # keeps them: its oracle predictors are found by the weights' fingerprint (pijax.sparsity.predictor_store).
        if model.config.ffn_act != "silu":
            w = model.checkpoint.weights
            empty = np.zeros((0, 0), np.float32)
            lean = dataclasses.replace(w, token_embd=empty, output=empty, layers=[])
            model.checkpoint = dataclasses.replace(model.checkpoint, weights=lean)
        synthetic = spec_from_metadata(model.checkpoint.metadata) is not None
        name = str(model.checkpoint.metadata.get("general.name") or Path(path).stem)
        if synthetic and "synthetic" not in name:
            name = f"synthetic-{name}"
        return BenchModel(model, Path(path), SYNTHETIC if synthetic else REAL, name)

    return cached(("model", str(Path(path).resolve()), ffn_act, str(host)), make)


def text_windows(model: Any, corpus_path: str, split: str, seq_len: int, max_tokens: int) -> np.ndarray:
    """Token windows [N, seq_len] from the corpus' train split (first 90%) or held-out split (last 10%)."""
    from pijax.corpus import split_windows

    return split_windows(model.tokenizer, corpus_path or None, split, seq_len, max_tokens)
