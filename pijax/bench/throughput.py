"""Throughput measurement: timed generations (median after warm-up), batch logits of an engine.

Budgets ("ffn:30%", "2GiB") are read by pijax.index.budget.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pijax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Timing:
    """Medians over the timed repeats (after warm-up) and every repeat's figures."""

    prefill_tok_s: float
    decode_tok_s: float
    prefill_all: tuple[float, ...]
    decode_all: tuple[float, ...]
    prompt_tokens: int
    new_tokens: int


def time_generation(
    engine: Any,
    prompt_ids: Sequence[int],
    new_tokens: int,
    *,
    warmup: int = 1,
    repeats: int = 5,
    progress: bool = True,
    desc: str = "timing",
) -> Timing:
    """Greedy generations of exactly `new_tokens` tokens (no EOS stop), `warmup` untimed then `repeats` timed.

    The engine compiles before its own clock starts; warm-up runs absorb first-touch effects (allocations, page
    faults, caches). Prefill tok/s = prompt tokens / prefill time; decode tok/s = decode steps / decode time."""
    from pijax.model.generate import SamplingConfig

    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    ids = [int(i) for i in prompt_ids]
    pre, dec = [], []
    bar = tqdm(range(warmup + repeats), desc=desc, unit="run", leave=False, disable=not progress)
    for k in bar:
        out = engine.generate(ids, new_tokens, SamplingConfig(), seed=0, eos_id=None)
        if k < warmup:
            continue
        pre.append(len(ids) / out.prefill_s if out.prefill_s > 0 else 0.0)
        dec.append(out.decode_steps / out.decode_s if out.decode_s > 0 and out.decode_steps else 0.0)
        bar.set_postfix(decode=f"{dec[-1]:.1f} tok/s")
    return Timing(statistics.median(pre), statistics.median(dec), tuple(pre), tuple(dec), len(ids), new_tokens)


def stepped_logits_fn(engine: Any, n_cache: int) -> Any:
    """A `pijax.eval` logits function (tokens [B, T] -> logits [B, T, V]) that runs each window the way generation
    runs: a one-token prefill, then one cached decode step per further token (teacher-forced). So fidelity is that
    of the timed decode path, and the engine's compiled prefill and decode programs for `n_cache` are reused."""
    import jax
    import jax.numpy as jnp

    from pijax.model.generate import SamplingConfig

    greedy, key = SamplingConfig(), jax.random.key(0)

    def one(ids: list[int]) -> np.ndarray:
        _, lg, cache = engine.prefill(ids[:1], n_cache, greedy, key)
        out = [np.asarray(lg[0])]
        for pos in range(1, len(ids)):
            _, lg, cache = engine.decode_step(cache, jnp.asarray([ids[pos]], jnp.int32), pos, greedy, key)
            out.append(np.asarray(lg[0]))
        return np.stack(out)

    def fn(tokens_bt: Any) -> Any:
        rows = np.asarray(tokens_bt)
        if rows.shape[1] > n_cache:
            raise ConfigError(f"windows of {rows.shape[1]} tokens do not fit a cache of {n_cache} positions")
        return jnp.asarray(np.stack([one(row.tolist()) for row in rows]))

    return fn
