"""Where a hybrid decode step's time goes: `step_split(engine, ids)` -> milliseconds per token per part.

Parts (each call waited for, so their sum exceeds a free-running step's time by the pipelining lost):
- "accelerators": the stages' calls (attention, norms, predictors, all-hot layers' FFNs, the output head and
  sampling; with `overlap` off, also the split layers' hot rows);
- "FFN hot": the split layers' hot rows, as their own call (only when the engine was built with overlap on:
  `HardwareConfig(overlap=True)`, so that attention and hot rows are timed apart);
- "FFN cold": the host's cold rows; "transfer": host <-> accelerator copies; "embedding": the host's lookup;
- "overhead": the free-running step time minus the parts (Python dispatch, what the waits hid), floored at 0.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pijax.model.generate import SamplingConfig, bucket

PARTS = ("accelerators", "FFN hot", "FFN cold", "transfer", "embedding")


def _decode(engine: Any, ids: Sequence[int], n_steps: int, n_cache: int) -> float:
    """Seconds per free-running decode step after a prefill of `ids`, driven as `Engine.generate` drives it (one
    cache size, so nothing recompiles between runs)."""
    greedy, key = SamplingConfig(), jax.random.key(0)
    arr = np.asarray(ids, np.int32)
    step = engine._warm(arr, n_cache, greedy, key)
    cur, _, cache = engine.prefill(arr, n_cache, greedy, key)
    pos = jnp.asarray(arr.size, jnp.int32)
    jax.block_until_ready(cur)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        nxt, _, cache, pos = step(engine.leaves, cache, cur, pos, key)
        np.asarray(cur)  # the token loop reads each token one step behind
        cur = nxt
    jax.block_until_ready(cur)
    return (time.perf_counter() - t0) / n_steps


def step_split(engine: Any, ids: Sequence[int], n_steps: int = 16) -> dict[str, float]:
    """Milliseconds per decoded token: every part of PARTS, "overhead" and "total" (free-running)."""
    n_cache = bucket(len(ids) + n_steps + 1)
    _decode(engine, ids, 2, n_cache)  # compile
    total = _decode(engine, ids, n_steps, n_cache)
    engine.timer = {}
    try:
        _decode(engine, ids, n_steps, n_cache)
        timed = dict(engine.timer)
    finally:
        engine.timer = None
    # the timed run also timed its prefill: keep only per-step figures by timing a prefill alone
    engine.timer = {}
    try:
        greedy = SamplingConfig()
        jax.block_until_ready(engine.prefill(list(ids), n_cache, greedy, jax.random.key(0))[0])
        prefill = dict(engine.timer)
    finally:
        engine.timer = None
    out = {p: 1e3 * max(timed.get(p, 0.0) - prefill.get(p, 0.0), 0.0) / n_steps for p in PARTS}
    out["total"] = 1e3 * total
    out["overhead"] = max(out["total"] - sum(out[p] for p in PARTS), 0.0)
    return out


def format_split(split: dict[str, float]) -> str:
    """One line: each part in ms and its share of the free-running step."""
    total = split["total"]
    parts = [f"{p} {split[p]:.2f} ms ({100 * split[p] / total:.0f}%)" for p in (*PARTS, "overhead")]
    return f"total {total:.2f} ms/token: " + ", ".join(parts)
