"""The cheap model fingerprint that ties statistics files and gpuidx files to the GGUF they were made from.

It never hashes a whole (possibly 100 GB) file: it covers the header facts (magic, version, file size, metadata,
every tensor's name, type, shape, offset and size) and 3 x 64 sampled bytes per tensor (start, middle, end), read
through the read-only memory map of `read_gguf`. The model file is never opened for writing. A layout-independent
identity of the weights themselves (for predictors) is `pijax.sparsity.predictor_files.weights_fingerprint`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

from pijax.io.gguf import GGUFFile, read_gguf

MODEL_FP_PREFIX = "gguf1:"
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
