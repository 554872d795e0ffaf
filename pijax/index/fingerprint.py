"""Cheap fingerprints that tie a gpuidx to its model and its statistics.

The model fingerprint never hashes a whole (possibly 100 GB) file: it covers the header facts (magic, version,
file size, metadata, every tensor's name, type, shape, offset and size) and 3 x 64 sampled bytes per tensor
(start, middle, end), read through the read-only memory map of `read_gguf`. The model file is never opened for
writing. The stats fingerprint hashes the counts array itself (it is small: n_layer x n_ff numbers).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

from pijax.io.gguf import GGUFFile, read_gguf

MODEL_FP_PREFIX = "gguf1:"
STATS_FP_PREFIX = "counts1:"
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
    return MODEL_FP_PREFIX + h.hexdigest()


def stats_fingerprint(counts: Any) -> str:
    """'counts1:<32 hex>' of the counts' dtype kind, shape and values (integers as int64, floats as float64)."""
    arr = np.asarray(counts)
    arr = np.ascontiguousarray(arr, dtype=np.float64 if arr.dtype.kind == "f" else np.int64)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))
    return STATS_FP_PREFIX + h.hexdigest()
