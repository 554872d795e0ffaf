"""Fidelity measures shared by every stage: perplexity, and next-token agreement and KL between two models.

All take a `logits_fn(tokens_bt) -> logits_btv` so that dense, sparse, hybrid and training-time models are
measured by the same code on the same windows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

LogitsFn = Callable[[jax.Array], jax.Array]


def module_logits_fn(module: Any) -> LogitsFn:
    """A jitted full-sequence logits function over an NNX module's current weights.

    The weights are an argument of the compiled function, not constants baked into it (at 1B scale constants
    would copy gigabytes into the program)."""
    gd, st = nnx.split(module)
    fn = jax.jit(lambda st, t: nnx.merge(gd, st)(t))
    return lambda t: fn(st, t)


def _batches(windows: np.ndarray, batch_size: int, desc: str, progress: bool):
    starts = range(0, len(windows), batch_size)
    return tqdm(starts, desc=desc, unit="batch", leave=False, disable=not progress), batch_size


@jax.jit
def _nll_sum(logits_btv: jax.Array, tokens_bt: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits_btv[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, tokens_bt[:, 1:, None], axis=-1).sum()


def perplexity(logits_fn: LogitsFn, windows: np.ndarray, *, batch_size: int = 16, progress: bool = False) -> float:
    """exp(mean next-token NLL) over all positions after the first of each window."""
    starts, bs = _batches(windows, batch_size, "perplexity", progress)
    total, count = 0.0, 0
    for s in starts:
        tok = jnp.asarray(windows[s : s + bs])
        total += float(_nll_sum(logits_fn(tok), tok))
        count += tok.shape[0] * (tok.shape[1] - 1)
    return float(np.exp(total / count))


@dataclasses.dataclass(frozen=True)
class Agreement:
    top1: float  # share of positions where both models' argmax agree
    mean_kl: float  # mean KL(reference || candidate) in nats
    ppl_reference: float
    ppl_candidate: float

    @property
    def ppl_increase(self) -> float:
        return self.ppl_candidate / self.ppl_reference - 1.0


@jax.jit
def _compare(ref_btv: jax.Array, cand_btv: jax.Array, tokens_bt: jax.Array) -> tuple[jax.Array, ...]:
    lp_r = jax.nn.log_softmax(ref_btv, axis=-1)
    lp_c = jax.nn.log_softmax(cand_btv, axis=-1)
    agree = (ref_btv.argmax(-1) == cand_btv.argmax(-1)).sum()
    kl = (jnp.exp(lp_r) * (lp_r - lp_c)).sum(-1).sum()
    return agree, kl, _nll_sum(ref_btv, tokens_bt), _nll_sum(cand_btv, tokens_bt)


def compare(
    reference_fn: LogitsFn, candidate_fn: LogitsFn, windows: np.ndarray, *, batch_size: int = 16, progress: bool = False
) -> Agreement:
    """Top-1 agreement, mean KL and both perplexities of a candidate against a reference on the same windows."""
    starts, bs = _batches(windows, batch_size, "compare", progress)
    agree = kl = nll_r = nll_c = 0.0
    n_pos = n_next = 0
    for s in starts:
        tok = jnp.asarray(windows[s : s + bs])
        a, k, r, c = (float(x) for x in _compare(reference_fn(tok), candidate_fn(tok), tok))
        agree, kl, nll_r, nll_c = agree + a, kl + k, nll_r + r, nll_c + c
        n_pos += tok.shape[0] * tok.shape[1]
        n_next += tok.shape[0] * (tok.shape[1] - 1)
    return Agreement(agree / n_pos, kl / n_pos, float(np.exp(nll_r / n_next)), float(np.exp(nll_c / n_next)))
