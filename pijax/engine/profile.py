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

from pijax.model.generate import SamplingConfig

PARTS = ("accelerators", "FFN hot", "FFN cold", "transfer", "embedding")


def _decode(engine: Any, ids: Sequence[int], n_steps: int) -> float:
    """Seconds per free-running decode step after a prefill of `ids`."""
    greedy, key = SamplingConfig(), jax.random.key(0)
    tok, _, cache = engine.prefill(list(ids), len(ids) + n_steps + 1, greedy, key)
    pos = len(ids)
    jax.block_until_ready(tok)
    t0 = time.perf_counter()
    for i in range(n_steps):
        tok, _, cache = engine.decode_step(cache, tok, pos + i, greedy, key)
    jax.block_until_ready(tok)
    return (time.perf_counter() - t0) / n_steps


def step_split(engine: Any, ids: Sequence[int], n_steps: int = 16) -> dict[str, float]:
    """Milliseconds per decoded token: every part of PARTS, "overhead" and "total" (free-running)."""
    _decode(engine, ids, 2)  # compile
    total = _decode(engine, ids, n_steps)
    engine.timer = {}
    try:
        _decode(engine, ids, n_steps)
        timed = dict(engine.timer)
    finally:
        engine.timer = None
    # the timed run also timed its prefill: keep only per-step figures by timing a prefill alone
    engine.timer = {}
    try:
        greedy = SamplingConfig()
        jax.block_until_ready(engine.prefill(list(ids), len(ids) + n_steps + 1, greedy, jax.random.key(0))[0])
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
