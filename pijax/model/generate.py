"""Prefill, the one-call decode step, seeded sampling, and the token loop around them.

`Engine(llama)` splits the module once into a graph definition and a flat tuple of weight arrays, and compiles
(ahead of time, per shape and sampling setting) pure functions over them:
- prefill: a padded prompt through the whole stack into a fresh KV cache, then the first sampled token;
- decode step: one token through all layers in ONE call, the cache donated so it is updated in place, the
  next token sampled inside the call so that only the token id crosses to the host.
The token loop dispatches step i+1 before reading token i, so the host check for EOS overlaps device work.

Sampling follows llama.cpp's order: top-k, then top-p on the untempered distribution, then temperature.
Greedy when temperature == 0. New token number n (its position in the sequence) is drawn with
fold_in(key(seed), n), so a seed gives the same tokens whatever the cache size or the timing.

Dimension legend: see `pijax.model.layers`. Weights captured at construction: build a new Engine after
changing the module (e.g. replacing a block's FFN).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pijax.errors import ConfigError, DataError
from pijax.kernels import ops
from pijax.model.layers import KVCache, init_cache
from pijax.model.llama import Llama

MIN_BUCKET = 16
# Smallest KV cache a generation gets: a few MB even for 1B-class models, and it keeps compiled shapes few.
MIN_CACHE = 128


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """temperature 0: greedy. top_k 0 and top_p 1.0: no filtering."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def argmax_last(x_bv: jax.Array) -> jax.Array:
    """jnp.argmax over the last axis (the first maximum, or the first NaN), as int32 [B].

    Two plain reductions (max, then the lowest index holding it): XLA:CPU vectorises those, while argmax's
    (value, index) reduction ran ~0.3 ms over a 49152-entry vocabulary, a tenth of a small model's step."""
    top = jnp.max(x_bv, axis=-1, keepdims=True)
    idx = jnp.arange(x_bv.shape[-1], dtype=jnp.int32)
    hit = (x_bv == top) | jnp.isnan(x_bv)
    return jnp.min(jnp.where(hit, idx, x_bv.shape[-1] - 1), axis=-1)


def sample_logits(logits_bv: jax.Array, key: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """Token ids [B] (int32) drawn from logits [B, V]."""
    if sampling.greedy:
        return argmax_last(logits_bv)
    x = logits_bv.astype(jnp.float32)
    n_vocab = x.shape[-1]
    idx = None
    if 0 < sampling.top_k < n_vocab:
        x, idx = jax.lax.top_k(x, sampling.top_k)
    elif sampling.top_p < 1.0:
        idx = jnp.argsort(-x, axis=-1)
        x = jnp.take_along_axis(x, idx, axis=-1)
    if sampling.top_p < 1.0:
        # x is sorted descending here: keep the shortest prefix whose mass reaches top_p (at least one token).
        probs = jax.nn.softmax(x, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        x = jnp.where(mass_before < sampling.top_p, x, -jnp.inf)
    choice = jax.random.categorical(key, x / sampling.temperature, axis=-1)
    if idx is not None:
        choice = jnp.take_along_axis(idx, choice[:, None], axis=-1)[:, 0]
    return choice.astype(jnp.int32)


def bucket(n: int) -> int:
    """Padded length for n positions (a power of two, at least MIN_BUCKET) so that few shapes get compiled."""
    return max(MIN_BUCKET, 1 << (max(n, 1) - 1).bit_length())


@dataclasses.dataclass
class GenerationOutput:
    new_ids: list[int]  # includes the EOS token when generation stopped on it
    prefill_s: float
    decode_s: float
    decode_steps: int  # one-token steps after prefill (the first new token comes from prefill)
    stopped_at_eos: bool


class Engine:
    """Compiled prefill / decode / forward for one Llama's current weights."""

    def __init__(self, module: Llama):
        self.cfg = module.cfg
        self.dtype = module.dtype
        self.graphdef, state = nnx.split(module)
        self.leaves, self.treedef = jax.tree.flatten(state)
        self.leaves = tuple(self.leaves)
        self._compiled: dict[tuple[Any, ...], Any] = {}

    def _one_device(self) -> bool | None:
        """True when every weight lives on one and the same device (the kernels' f32 rule may then take the
        kernel however many devices jax sees; see `pijax.kernels.ops.one_device`); None (the default rule) when
        there are no weights here or some are placed elsewhere or sharded."""
        devices = {d for a in self.leaves if isinstance(a, jax.Array) for d in a.sharding.device_set}
        return True if len(devices) == 1 else None

    def _model(self, leaves: tuple[jax.Array, ...]) -> Llama:
        return nnx.merge(self.graphdef, jax.tree.unflatten(self.treedef, list(leaves)))

    # Pure functions of (weights, inputs); `sampling` is static.
    def _forward_fn(self, leaves: tuple[jax.Array, ...], tokens_bt: jax.Array) -> jax.Array:
        return self._model(leaves)(tokens_bt)

    def _trace_fn(
        self, leaves: tuple[jax.Array, ...], tokens_bt: jax.Array
    ) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
        return self._model(leaves).trace(tokens_bt)

    def _prefill_fn(
        self,
        sampling: SamplingConfig,
        n_cache: int,
        leaves: tuple[jax.Array, ...],
        tokens_bt: jax.Array,
        n_valid: jax.Array,
        key: jax.Array,
    ) -> tuple[jax.Array, jax.Array, KVCache]:
        model = self._model(leaves)
        cache = init_cache(self.cfg, tokens_bt.shape[0], n_cache, model.dtype)
        h, cache = model.hidden(tokens_bt, cache, 0)
        h_last = jax.lax.dynamic_slice_in_dim(h, n_valid - 1, 1, axis=1)
        logits = model.head(h_last)[:, 0]
        return sample_logits(logits, jax.random.fold_in(key, n_valid), sampling), logits, cache

    def _decode_fn(
        self,
        sampling: SamplingConfig,
        leaves: tuple[jax.Array, ...],
        cache: KVCache,
        token_b: jax.Array,
        pos: jax.Array,
        key: jax.Array,
    ) -> tuple[jax.Array, jax.Array, KVCache, jax.Array]:
        logits, cache = self._model(leaves)(token_b[:, None], cache, pos)
        logits = logits[:, 0]
        # The next position is returned so that the token loop never sends one from the host.
        return sample_logits(logits, jax.random.fold_in(key, pos + 1), sampling), logits, cache, pos + 1

    def _compile(self, name: str, fn: Callable[..., Any], static: tuple[Any, ...], args: tuple[Any, ...]) -> Any:
        sig = (name, static, *(a.shape for a in jax.tree.leaves(args[1:])))
        if sig not in self._compiled:
            jitted = jax.jit(functools.partial(fn, *static), donate_argnums=(1,) if name == "decode" else ())
            with ops.one_device(self._one_device()):
                self._compiled[sig] = jitted.lower(*args).compile()
        return self._compiled[sig]

    def check_ids(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """ids as int32, or a DataError: empty, outside the vocabulary, or (last axis) longer than the context."""
        try:
            arr = np.asarray(ids)
        except ValueError as err:  # ragged nesting
            raise DataError(f"token ids are not a regular array: {err}") from None
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"token ids must be integers, got {arr.dtype}")
        arr = arr.astype(np.int64)
        if arr.size == 0:
            raise DataError("the token sequence is empty")
        bad = arr[(arr < 0) | (arr >= self.cfg.n_vocab)]
        if bad.size:
            raise DataError(f"token id {int(bad[0])} is outside the vocabulary [0, {self.cfg.n_vocab})")
        if arr.shape[-1] > self.cfg.n_ctx:
            raise DataError(f"{arr.shape[-1]} tokens exceed the model's context of {self.cfg.n_ctx}")
        return arr.astype(np.int32)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Full-sequence causal forward of one sequence: logits [T, V] float32."""
        arr = self.check_ids(ids).reshape(-1)
        t = arr.size
        padded = np.zeros((1, min(bucket(t), self.cfg.n_ctx)), np.int32)
        padded[0, :t] = arr  # later positions cannot influence earlier ones under the causal mask
        args = (self.leaves, jnp.asarray(padded))
        out = self._compile("forward", self._forward_fn, (), args)(*args)
        return np.asarray(out[0, :t], dtype=np.float32)

    def trace(self, tokens_bt: np.ndarray) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
        """`Llama.trace` compiled with the weights as arguments (not baked-in constants); [B, T] int tokens.

        Compiled once per shape: feed batches of one fixed [B, T] for profiling."""
        tokens = self.check_ids(tokens_bt)
        if tokens.ndim != 2:
            raise DataError(f"trace takes a [batch, time] token array, got shape {tokens.shape}")
        args = (self.leaves, jnp.asarray(tokens))
        return self._compile("trace", self._trace_fn, (), args)(*args)

    def prefill(
        self, ids: Sequence[int], n_cache: int, sampling: SamplingConfig, key: jax.Array
    ) -> tuple[jax.Array, jax.Array, KVCache]:
        """Run the prompt into a fresh cache of n_cache positions: (first token [1], its logits [1, V], cache)."""
        arr = self.check_ids(ids).reshape(-1)
        t = arr.size
        t_pad = min(bucket(t), n_cache)
        if t_pad < t:
            raise DataError(f"{t} prompt tokens do not fit a cache of {n_cache} positions")
        padded = np.zeros((1, t_pad), np.int32)
        padded[0, :t] = arr
        args = (self.leaves, jnp.asarray(padded), jnp.asarray(t, jnp.int32), key)
        return self._compile("prefill", self._prefill_fn, (sampling, n_cache), args)(*args)

    def decode_step(
        self, cache: KVCache, token_b: jax.Array, pos: int, sampling: SamplingConfig, key: jax.Array
    ) -> tuple[jax.Array, jax.Array, KVCache]:
        """One token per sequence at position `pos` through all layers; `cache` is donated (do not reuse it)."""
        args = (self.leaves, cache, token_b, jnp.asarray(pos, jnp.int32), key)
        tok, logits, cache, _ = self._compile("decode", self._decode_fn, (sampling,), args)(*args)
        return tok, logits, cache

    def cache_size(self, n_prompt: int, max_new_tokens: int) -> int:
        return min(self.cfg.n_ctx, max(MIN_CACHE, bucket(n_prompt + max_new_tokens)))

    def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        sampling: SamplingConfig,
        seed: int = 0,
        eos_id: int | None = None,
    ) -> GenerationOutput:
        """Up to max_new_tokens new ids after prompt_ids (clipped to the context), stopping after eos_id."""
        arr = self.check_ids(prompt_ids).reshape(-1)
        if max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        max_new = min(max_new_tokens, self.cfg.n_ctx - arr.size)
        if max_new == 0:
            return GenerationOutput([], 0.0, 0.0, 0, False)
        n_cache = self.cache_size(arr.size, max_new)
        key = jax.random.key(seed)
        step = self._warm(arr, n_cache, sampling, key)

        t0 = time.perf_counter()
        cur, _, cache = self.prefill(arr, n_cache, sampling, key)
        out = [int(np.asarray(cur)[0])]
        t1 = time.perf_counter()
        pos = jnp.asarray(arr.size, jnp.int32)
        stopped = out[0] == eos_id
        steps = 0  # dispatched decode steps; one token is always in flight after the first
        while not stopped and 1 + steps < max_new:
            nxt, _, cache, pos = step(self.leaves, cache, cur, pos, key)
            steps += 1
            if steps > 1:  # read the previous step's token while this one runs
                out.append(int(np.asarray(cur)[0]))
                stopped = out[-1] == eos_id
            cur = nxt
        if not stopped and steps:
            out.append(int(np.asarray(cur)[0]))
            stopped = out[-1] == eos_id
        t2 = time.perf_counter()
        return GenerationOutput(out, t1 - t0, t2 - t1, len(out) - 1, stopped)

    def _warm(self, arr: np.ndarray, n_cache: int, sampling: SamplingConfig, key: jax.Array) -> Any:
        """Compile prefill and decode for these shapes before timing; returns the compiled decode step."""
        t_pad = min(bucket(arr.size), n_cache)
        cache = jax.eval_shape(lambda: init_cache(self.cfg, 1, n_cache, self.dtype))
        tokens = jax.ShapeDtypeStruct((1, t_pad), jnp.int32)
        i32 = jax.ShapeDtypeStruct((), jnp.int32)
        self._compile("prefill", self._prefill_fn, (sampling, n_cache), (self.leaves, tokens, i32, key))
        tok = jax.ShapeDtypeStruct((1,), jnp.int32)
        return self._compile("decode", self._decode_fn, (sampling,), (self.leaves, cache, tok, i32, key))
