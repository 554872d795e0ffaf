"""Resumable ReLU-fication: the training state on disk (params, optax state, step, data RNG, history).

One file, `state.npz` in the run's checkpoint folder, written atomically (a temporary file, fsynced, then renamed
over the old one), so an interrupted write leaves the previous checkpoint intact. It holds the parameter and optimizer
leaves in tree order and a JSON header: the format tag, the run key (a hash of the teacher file, the corpus and the
training recipe, `RelufyConfig.training_recipe`), the step, the numpy bit-generator state that cuts the training
batches (the data position) and the evaluation history so far. A file that is not such a checkpoint, or belongs to
another run, is refused with one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pijax.errors import DataError
from pijax.io.registry import cache_root
from pijax.sparsity.relufy_config import RelufyConfig

FORMAT = "pijax-relufy-checkpoint-1"
STATE_FILE = "state.npz"


def run_key(source_sha256: str, corpus_sha256: str, cfg: RelufyConfig) -> str:
    """What identifies a run: the same key means the same training, so its checkpoint may be continued."""
    blob = json.dumps(
        {"source": source_sha256, "corpus": corpus_sha256, "recipe": cfg.training_recipe()}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_dir(cfg: RelufyConfig, key: str) -> Path:
    """`relufy.checkpoint_dir`, or `$PIJAX_CACHE/relufy/<key>` (so rerunning the experiment finds its state)."""
    return Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else cache_root() / "relufy" / key


@dataclasses.dataclass
class TrainState:
    step: int
    params: Any  # pytrees of arrays
    opt_state: Any
    rng_state: dict[str, Any]  # numpy bit_generator.state of the batch sampler
    history: list[dict[str, float]]
    acc: dict[str, float]  # training metrics summed since the last evaluation, and how many steps they sum
    n_acc: int
    wall_s: float  # training wall-clock of all sessions so far
    before: dict[str, Any]  # the held-out measurements made before training (teacher, ReLU untrained)


def save_state(folder: Path, key: str, state: TrainState) -> Path:
    """Write the state atomically into `folder/state.npz`; returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STATE_FILE
    header = {
        "format": FORMAT,
        "key": key,
        "step": state.step,
        "rng_state": state.rng_state,
        "history": state.history,
        "acc": state.acc,
        "n_acc": state.n_acc,
        "wall_s": state.wall_s,
        "before": state.before,
    }
    arrays: dict[str, np.ndarray] = {"header": np.frombuffer(json.dumps(header).encode(), np.uint8)}
    for prefix, tree in (("p", state.params), ("o", state.opt_state)):
        for i, leaf in enumerate(jax.tree.leaves(tree)):
            arrays[f"{prefix}{i}"] = np.asarray(leaf)
    tmp = folder / (STATE_FILE + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _unflatten(path: Path, arrays: Any, prefix: str, template: Any) -> Any:
    leaves, treedef = jax.tree.flatten(template)
    out = []
    for i, ref in enumerate(leaves):
        name = f"{prefix}{i}"
        if name not in arrays.files:
            raise DataError(f"relufy checkpoint lacks tensor {name}: not a checkpoint of this model", path)
        a = arrays[name]
        if a.shape != np.shape(ref) or a.dtype != np.asarray(ref).dtype:
            raise DataError(
                f"relufy checkpoint tensor {name} is {a.dtype}{list(a.shape)}, the model needs "
                f"{np.asarray(ref).dtype}{list(np.shape(ref))}",
                path,
            )
        out.append(a)
    if f"{prefix}{len(leaves)}" in arrays.files:
        raise DataError("relufy checkpoint has more tensors than this model: not a checkpoint of this model", path)
    return jax.tree.unflatten(treedef, out)


def load_state(folder: Path, key: str, params_template: Any, opt_template: Any) -> TrainState | None:
    """The checkpoint in `folder` (None when there is none); a corrupt or foreign one is a one-line DataError."""
    path = folder / STATE_FILE
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            header = json.loads(arrays["header"].tobytes().decode())
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise DataError("not a pijax ReLU-fication checkpoint (no format tag)", path)
            if header.get("key") != key:
                raise DataError(
                    f"checkpoint of another run (key {header.get('key')}, this run {key}: the model, corpus or "
                    "recipe differ); use another relufy.checkpoint_dir or relufy.resume=false to start over",
                    path,
                )
            params = _unflatten(path, arrays, "p", params_template)
            opt_state = _unflatten(path, arrays, "o", opt_template)
    except DataError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise DataError(
            f"unreadable relufy checkpoint ({type(e).__name__}: {e}); delete it to start over", path
        ) from None
    return TrainState(
        step=int(header["step"]),
        params=params,
        opt_state=opt_state,
        rng_state=header["rng_state"],
        history=header["history"],
        acc=header["acc"],
        n_acc=int(header["n_acc"]),
        wall_s=float(header["wall_s"]),
        before=header["before"],
    )
