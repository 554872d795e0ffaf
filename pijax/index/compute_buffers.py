"""Compute buffers of a budget plan: the temporaries XLA really compiles for the engine's programs.

The dense model of the config is built from shapes alone (no weights), and its decode step (one token against an
n_ctx cache, the cache donated) and prefill (n_batch tokens into an n_ctx cache) are lowered and compiled for the
default backend; `Compiled.memory_analysis().temp_size_in_bytes` of each is what XLA allocates beyond the
arguments and outputs (the weights and the KV cache, which the plan counts on their own). The larger of the two,
times SAFETY_MARGIN, is reserved. On stories260K at n_ctx 2048 XLA:CPU compiles 0.59 MB of temporaries for the
decode step and 6.6 MB for a 32-token prefill (8.2 MB reserved), where the earlier closed formula reserved 36.7 MB
for a 512-token batch (whose prefill XLA really compiles with 67.5 MB: the prompt chunk, not the formula, decides).

The hybrid engine's accelerator part runs the same attention and a subset of the FFN rows, so the dense model's
temporaries bound it. Results are cached per (config, n_ctx, n_batch, dtype, backend): one compile per process.
"""

from __future__ import annotations

import functools
import math

from pijax.config import ModelConfig

SAFETY_MARGIN = 1.25
"""Reserved = measured XLA temporaries x this: room for allocator fragmentation and a backend's own scratch."""


@functools.lru_cache(maxsize=64)
def xla_temp_bytes(cfg: ModelConfig, n_ctx: int, n_batch: int, dtype: str = "float32") -> dict[str, int]:
    """{'decode': bytes, 'prefill': bytes}: XLA's temporaries of the dense decode step and an n_batch prefill."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from pijax.model.generate import Engine, SamplingConfig
    from pijax.model.layers import init_cache
    from pijax.model.llama import Llama

    cfg = cfg.replace(n_ctx=int(n_ctx))
    module = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0), dtype=jnp.dtype(dtype)))
    engine = Engine(module)
    leaves = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in engine.leaves)
    greedy = SamplingConfig()
    key = jax.eval_shape(lambda: jax.random.key(0))
    i32 = jax.ShapeDtypeStruct((), jnp.int32)
    cache = jax.eval_shape(lambda: init_cache(cfg, 1, cfg.n_ctx, jnp.dtype(dtype)))
    decode = jax.jit(functools.partial(engine._decode_fn, greedy), donate_argnums=(1,))
    dec = decode.lower(leaves, cache, jax.ShapeDtypeStruct((1,), jnp.int32), i32, key).compile()
    prefill = jax.jit(functools.partial(engine._prefill_fn, greedy, cfg.n_ctx))
    tokens = jax.ShapeDtypeStruct((1, min(int(n_batch), cfg.n_ctx)), jnp.int32)
    pre = prefill.lower(leaves, tokens, i32, key).compile()
    return {"decode": temp_bytes(dec) or 0, "prefill": temp_bytes(pre) or 0}


def temp_bytes(compiled: object) -> int | None:
    """Temporary bytes of a jax `Compiled`; None where the backend reports no memory analysis."""
    try:
        analysis = compiled.memory_analysis()  # type: ignore[attr-defined]
    except Exception:  # backends without it raise rather than return None
        return None
    return None if analysis is None else int(analysis.temp_size_in_bytes)


def reserved_compute_bytes(
    cfg: ModelConfig, n_ctx: int, n_batch: int, *, dtype: str = "float32", r_max: int = 0, itemsize: float = 4.0
) -> int:
    """What a plan reserves: max(decode, prefill) XLA temporaries x SAFETY_MARGIN, plus the predictors' hidden
    activations [n_batch, r_max] (the dense model has no predictor)."""
    measured = xla_temp_bytes(cfg, int(n_ctx), int(n_batch), str(dtype))
    tokens = min(n_batch, n_ctx)
    return math.ceil(max(measured.values()) * SAFETY_MARGIN + tokens * r_max * itemsize)
