"""Cheap fingerprints that tie a gpuidx to its model and its statistics.

The model fingerprint is `pijax.io.fingerprint.model_fingerprint` (header facts and sampled tensor bytes, shared
with the statistics files). The stats fingerprint hashes the counts array itself (it is small: n_layer x n_ff
numbers).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from pijax.io.fingerprint import MODEL_FP_PREFIX, model_fingerprint

__all__ = ["MODEL_FP_PREFIX", "STATS_FP_PREFIX", "model_fingerprint", "stats_fingerprint"]

STATS_FP_PREFIX = "counts1:"


def stats_fingerprint(counts: Any) -> str:
    """'counts1:<32 hex>' of the counts' dtype kind, shape and values (integers as int64, floats as float64)."""
    arr = np.asarray(counts)
    arr = np.ascontiguousarray(arr, dtype=np.float64 if arr.dtype.kind == "f" else np.int64)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))
    return STATS_FP_PREFIX + h.hexdigest()
