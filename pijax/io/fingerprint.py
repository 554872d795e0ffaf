"""The cheap model fingerprint that ties statistics files and gpuidx files to the GGUF they were made from.

It never hashes a whole (possibly 100 GB) file: it covers the header facts (magic, version, file size, metadata,
every tensor's name, type, shape, offset and size) and 3 x 64 sampled bytes per tensor (start, middle, end), read
through the read-only memory map of `read_gguf`. The model file is never opened for writing. A layout-independent
identity of the weights themselves (for predictors) is `weights_fingerprint` here: the same weights in a plain
or a PowerInfer-style file give the same one, computed from loaded `LlamaWeights` or straight from a GGUF file
(`pijax.io.checkpoint.weight_arrays`, one tensor at a time), so every loader checks predictors the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from pijax.errors import DataError
from pijax.io.gguf import GGUFFile, read_gguf
from pijax.io.weights import LlamaWeights

MODEL_FP_PREFIX = "gguf1:"
# Where a predictors file records the weights_fingerprint of the model its predictors were trained for.
PREDICTOR_FINGERPRINT_KEY = "pijax.predictor.model_fingerprint"
_SAMPLE = 64


def _meta_token(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return ["ndarray", str(value.dtype), len(value), hashlib.blake2b(value.tobytes(), digest_size=8).hexdigest()]
    if isinstance(value, list):
        return ["list", len(value), hashlib.blake2b(repr(value).encode(), digest_size=8).hexdigest()]
    return value


def model_fingerprint(model: GGUFFile | str | os.PathLike[str]) -> str:
    """'gguf1:<32 hex>' from the model's header facts and sampled tensor bytes (see module docstring)."""
    f = model if isinstance(model, GGUFFile) else read_gguf(model)
    h = hashlib.blake2b(digest_size=16)
    head = [f.magic, f.version, f.alignment, f.file_size]
    meta = [[k, _meta_token(f.metadata[k])] for k in sorted(f.metadata)]
    h.update(json.dumps([head, meta], default=repr).encode())
    for name, info in f.tensors.items():
        h.update(json.dumps([name, info.ggml_type, list(info.shape), info.offset, info.nbytes]).encode())
        data = f.raw(name).reshape(-1).view(np.uint8)
        mid = max(len(data) // 2 - _SAMPLE // 2, 0)
        for part in (data[:_SAMPLE], data[mid : mid + _SAMPLE], data[-_SAMPLE:]):
            h.update(part.tobytes())
        f.release(name)  # a sampled byte can map a large page-cache folio into RSS; drop it
    return MODEL_FP_PREFIX + h.hexdigest()


def fingerprint_arrays(arrays: Iterable[tuple[str, np.ndarray | None]], samples: int = 4096) -> str:
    """Shapes plus evenly strided samples of every named array, in order (predictors are never among them)."""
    h = hashlib.sha256()
    for name, a in arrays:
        if a is None:
            h.update(f"{name}:none|".encode())
            continue
        flat = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
        step = max(1, flat.size // samples)
        h.update(f"{name}:{a.shape}|".encode())
        h.update(flat[::step].tobytes())
    return "w1:" + h.hexdigest()[:32]


def llama_arrays(weights: LlamaWeights) -> Iterator[tuple[str, np.ndarray | None]]:
    """The arrays `weights_fingerprint` covers, named (down projection as down_t rows, predictors excluded)."""
    yield "token_embd", weights.token_embd
    yield "output_norm", weights.output_norm
    yield "output", weights.output
    for i, lw in enumerate(weights.layers):
        for f in dataclasses.fields(lw):
            yield f"{i}.{f.name}", getattr(lw, f.name)


def weights_fingerprint(weights: LlamaWeights, samples: int = 4096) -> str:
    """A model identity that ignores file layout (see the module docstring)."""
    return fingerprint_arrays(llama_arrays(weights), samples)


_LAYER_TENSORS = {
    "attn_norm": "attn_norm",
    "wq": "attn_q",
    "wk": "attn_k",
    "wv": "attn_v",
    "wo": "attn_output",
    "ffn_norm": "ffn_norm",
    "up": "ffn_up",
    "gate": "ffn_gate",
}


def gguf_arrays(f: GGUFFile, n_layer: int, tied_output: bool) -> Iterator[tuple[str, np.ndarray | None]]:
    """The arrays of `llama_arrays`, read from a LLaMA GGUF one tensor at a time (so a loader that never holds
    the numpy model, like pijax.model.convert.load_llama, computes the same `weights_fingerprint`)."""
    embd = f.array("token_embd.weight", np.float32)
    yield "token_embd", embd
    yield "output_norm", f.array("output_norm.weight", np.float32)
    yield "output", embd if tied_output else f.array("output.weight", np.float32)
    for i in range(n_layer):
        p = f"blk.{i}."
        for field, tensor in _LAYER_TENSORS.items():
            name = p + tensor + ".weight"
            yield f"{i}.{field}", f.array(name, np.float32) if name in f.tensors else None
        if p + "ffn_down_t.weight" in f.tensors:
            yield f"{i}.down_t", f.array(p + "ffn_down_t.weight", np.float32)
        else:
            yield f"{i}.down_t", f.array(p + "ffn_down.weight", np.float32).T


def check_predictor_fingerprint(stored: str | None, mine: str, path: str | os.PathLike[str]) -> None:
    """DataError when predictors record another model's weights fingerprint (None: unrecorded, accepted)."""
    if stored is not None and stored != mine:
        raise DataError(f"predictors were trained for another model (fingerprint {stored}, this model {mine})", path)
