"""The hybrid decode engine: `HybridEngine(hybrid)` runs a HybridLlama (pijax.engine.hybrid) split over an
accelerator mesh and the host. A decode step is a chain of jitted calls, cut only where the host must work:
- host: the embedding row of the new token;
- accelerators, one call per *stage*: the cold output of the previous split layer added in, every all-hot layer
  in full, then the next split (or all-cold) layer's attention, its predictor, its hot part, and the choice of
  cold rows; the last stage ends with the output head and sampling (so only a token id leaves the mesh);
- host, one call per split layer: the selected cold rows.
So a model with s split layers takes s + 1 accelerator calls and s + 1 host calls per token; an all-hot model
takes one of each. With `overlap`, a split layer's hot part becomes its own accelerator call, dispatched after
the host call, so the accelerators compute it while the host computes the cold part (one more call per split
layer; worth it only where the hot part costs more than a call, see experiments/hybrid/README.md).
Every call is dispatched asynchronously; nothing waits for a result until a token id is read, one step behind.

The engine reuses the dense `Engine`'s token loop, sampling and seeding, so for a seed the two give the same
tokens whenever their logits agree. Dimension legend: see `pijax.model.layers`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pijax.config import ModelConfig
from pijax.engine.hybrid import HybridLlama, Stage
from pijax.errors import DataError
from pijax.kernels import ops
from pijax.layout.devices import to_local, to_mesh
from pijax.layout.memory import ResidentReport
from pijax.model.generate import Engine, SamplingConfig, bucket, sample_logits
from pijax.model.layers import KVCache, init_cache, rope_angles
from pijax.model.llama import Block

try:  # jax.device_put's own last step, without its ~35 us of Python per call (measured on the 2-core dev CPU)
    from jax._src.lib import xla_client as _xc

    _BATCHED_COPY = _xc.batched_copy_array_to_devices_with_sharding
    _ALWAYS_COPY = _xc.ArrayCopySemantics.ALWAYS_COPY
except (ImportError, AttributeError):  # another jax: device_put does the same, slower
    _BATCHED_COPY = None


@dataclasses.dataclass(frozen=True, eq=False)
class _Static:
    """What a jitted call needs besides arrays: the module's structure and the model's RoPE settings. Hashable, so
    stages (and cold blocks) of the same structure and shapes share one compiled program.

    jit hashes its static arguments on every call, and hashing an nnx GraphDef costs ~0.2 ms (measured): several
    per decode step. So the hash is computed once, and equal instances are made one object (`_split`), which
    makes the equality check of a cache hit an identity check."""

    graphdef: Any
    treedef: Any
    rope_dim: int
    rope_base: float
    overlap: bool

    def _key(self) -> tuple[Any, ...]:
        return (self.graphdef, self.treedef, self.rope_dim, self.rope_base, self.overlap)

    @functools.cached_property
    def _hash(self) -> int:
        return hash(self._key())

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, _Static) and self._hash == other._hash and self._key() == other._key()
        )

    def merge(self, leaves: tuple[jax.Array, ...]) -> Any:
        return nnx.merge(self.graphdef, jax.tree.unflatten(self.treedef, list(leaves)))

    def angles(self, b: int, t: int, pos: jax.Array | int) -> tuple[jax.Array, jax.Array]:
        positions = jnp.broadcast_to(jnp.arange(t) + pos, (b, t))
        return rope_angles(positions, self.rope_dim, self.rope_base)


_CANONICAL: dict[_Static, _Static] = {}


def _split(module: nnx.Module, cfg: ModelConfig, overlap: bool) -> tuple[_Static, tuple[jax.Array, ...]]:
    gd, state = nnx.split(module)
    leaves, treedef = jax.tree.flatten(state)
    st = _Static(gd, treedef, cfg.rope_dim, cfg.rope_base, overlap)
    return _CANONICAL.setdefault(st, st), tuple(leaves)


def _run_blocks(blocks: Sequence[Block], x, cos, sin, cache, pos):
    new = None if cache is None else []
    for i, blk in enumerate(blocks):
        x, c = blk(x, cos, sin, None if cache is None else cache[i], pos)
        if new is not None:
            new.append(c)
    return x, new


# The pure functions of the calls (see the module docstring). `cache` is donated: updated in place.
@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(2,))
def _mid_call(st: _Static, leaves, cache, x, cold_in, pos):
    stage = st.merge(leaves)
    x = x + cold_in.reshape(x.shape)
    b, t, _ = x.shape
    cos, sin = st.angles(b, t, pos)
    blocks = list(stage.blocks)
    x, new = _run_blocks(blocks[:-1], x, cos, sin, None if cache is None else cache[:-1], pos)
    last = blocks[-1]
    h, c = last.attend(x, cos, sin, None if cache is None else cache[-1], pos)
    if new is not None:
        new.append(c)
    hn = last.ffn_norm(h)
    logits = last.ffn.logits(h)
    to_host = last.ffn.pack_for_host(hn, logits)
    if st.overlap:
        return h, hn, logits, to_host, new
    return h + last.ffn.hot_out(hn, logits), to_host, new


@functools.partial(jax.jit, static_argnums=(0,))
def _hot_call(st: _Static, leaves, h, hn, logits):
    return h + st.merge(leaves).hot_out(hn, logits)


@functools.partial(jax.jit, static_argnums=(0,))
def _cold_call(st: _Static, leaves, packed_nw):
    return st.merge(leaves).run_packed(packed_nw)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(4,))
def _final_call(
    st: _Static, variant: str, sampling: SamplingConfig | None, leaves, cache, x, cold_in, pos, n_valid, key
):
    stage = st.merge(leaves)
    x = x + cold_in.reshape(x.shape)
    b, t, _ = x.shape
    cos, sin = st.angles(b, t, pos)
    x, new = _run_blocks(list(stage.blocks), x, cos, sin, cache, pos)
    if variant == "forward":
        return stage.head(x)
    if variant == "prefill":
        logits = stage.head(jax.lax.dynamic_slice_in_dim(x, n_valid - 1, 1, axis=1))[:, 0]
        return sample_logits(logits, jax.random.fold_in(key, n_valid), sampling), logits, new
    logits = stage.head(x)[:, 0]
    return sample_logits(logits, jax.random.fold_in(key, pos + 1), sampling), logits, new, pos + 1


@jax.jit
def _embed_call(table_vd, tok_bt):
    if tok_bt.ndim == 1:  # a decode step's tokens [B]: made [B, 1] here, not by an op of its own
        tok_bt = tok_bt[:, None]
    return jnp.take(table_vd, tok_bt, axis=0)


class _Copier:
    """Copies the arrays of one hand-over (host -> accelerators or back) to `dst`; a split layer makes two per
    token. With one accelerator in one process both ends are single devices, and jax's batched copy is called
    directly; otherwise (a replicated target, several processes) jax.device_put."""

    def __init__(self, dst: Any, single: bool):
        self.dst = dst
        self.devices = dst._internal_device_list.addressable_device_list if single and _BATCHED_COPY else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.devices is not None:
            try:
                return _BATCHED_COPY([x], [self.devices], [self.dst], [_ALWAYS_COPY])[0]
            except (TypeError, ValueError, RuntimeError):  # a runtime that copies otherwise: device_put from now on
                self.devices = None
        return to_mesh(to_local(x), self.dst)


class HybridEngine(Engine):
    """Prefill, decode step and full forward of a HybridLlama; `generate` is the dense Engine's token loop.

    n_ctx: the longest sequence served (the KV cache the budget was planned for; at most the model's)."""

    def __init__(self, hybrid: HybridLlama, n_ctx: int | None = None):
        cfg = hybrid.cfg
        n_ctx = cfg.n_ctx if n_ctx is None else min(int(n_ctx), cfg.n_ctx)
        self.hybrid = hybrid
        self.cfg = cfg.replace(n_ctx=n_ctx)
        self.dtype = hybrid.blocks[0].attn.w_q_nd[...].dtype
        self.placement = hybrid.placement
        self.leaves = ()  # the base class passes these to the step; every weight lives in the stages here
        self._compiled: dict[Any, Any] = {}
        split = [i for i, c in enumerate(hybrid.colds) if c is not None]
        bounds, start = [], 0
        for i in split:
            bounds.append((start, i + 1))
            start = i + 1
        bounds.append((start, cfg.n_layer))
        self.bounds = bounds  # stage s runs layers [lo, hi); every stage but the last ends with a split layer
        ov = hybrid.overlap
        self.stages = [
            _split(Stage(hybrid.blocks[lo:hi], hybrid.head if s == len(bounds) - 1 else None), cfg, ov)
            for s, (lo, hi) in enumerate(bounds)
        ]
        self.colds = {i: _split(hybrid.colds[i], cfg, ov) for i in split}
        self.hots = {i: _split(hybrid.blocks[i].ffn, cfg, ov) for i in split if hybrid.n_hot[i] > 0}
        self._zeros: dict[tuple[int, int], jax.Array] = {}
        self.timer: dict[str, float] | None = None  # seconds per part, when profiling (pijax.engine.profile)
        self._caches: dict[tuple[int, int], Any] = {}
        self._key: tuple[Any, Any] = (None, None)  # (the caller's key, its replicated copy)
        single = hybrid.placement.n_accel == 1 and jax.process_count() == 1
        self._to_host_copy = _Copier(hybrid.placement.on_host, single)
        self._to_accel_copy = _Copier(hybrid.placement.replicated, single)

    def _zero_input(self, b: int, t: int) -> jax.Array:
        """The first stage's 'cold output of the previous layer': zeros, so that it compiles like the others."""
        if (b, t) not in self._zeros:
            z = np.zeros((b * t, self.cfg.n_embd), np.dtype(self.dtype))
            self._zeros[(b, t)] = to_mesh(z, self.placement.replicated)
        return self._zeros[(b, t)]

    # ---- one pass through the stages -------------------------------------------------------------------------
    def _pass(self, variant: str, x, cache, pos, n_valid=None, key=None, sampling=None):
        """Run every stage on x (replicated on the accelerators); returns the final call's outputs, with the
        per-stage caches joined into one list. With one accelerator every call is a one-device program, traced
        (on first use) with the kernels' f32 rule told so, as the single-device engine's step."""
        with ops.one_device(True if self.placement.n_accel == 1 else None):
            return self._pass_stages(variant, x, cache, pos, n_valid, key, sampling)

    def _pass_stages(self, variant: str, x, cache, pos, n_valid, key, sampling):
        cold, caches = self._zero_input(x.shape[0], x.shape[1]), []
        for s, (lo, hi) in enumerate(self.bounds):
            st, leaves = self.stages[s]
            cs = None if cache is None else cache[lo:hi]
            if s == len(self.bounds) - 1:
                out = self._run(
                    "accelerators", _final_call, st, variant, sampling, leaves, cs, x, cold, pos, n_valid, key
                )
                if variant == "forward":
                    return to_local(out)
                caches.extend(out[2])
                return (*to_local(out[:2]), caches, *out[3:])
            layer = hi - 1
            if st.overlap:
                h, hn, logits, to_host, cs = self._run("accelerators", _mid_call, st, leaves, cs, x, cold, pos)
                y = self._run("FFN cold", _cold_call, *self.colds[layer], self._to_host(to_host))
                x = self._run("FFN hot", _hot_call, *self.hots[layer], h, hn, logits) if layer in self.hots else h
            else:
                x, to_host, cs = self._run("accelerators", _mid_call, st, leaves, cs, x, cold, pos)
                y = self._run("FFN cold", _cold_call, *self.colds[layer], self._to_host(to_host))
            cold = self._run("transfer", self._to_accel_copy, y)
            if cs is not None:
                caches.extend(cs)
        raise AssertionError("unreachable")

    def _embed_tokens(self, tokens: Any) -> jax.Array:
        """The embedding rows [B, T, D] of tokens [B, T] (numpy) or of a decode step's tokens [B] (numpy, or the
        previous step's sampled tokens on the mesh)."""
        if isinstance(tokens, jax.Array):
            tok = self._run("transfer", self._to_host_copy, tokens)
        else:
            tok = jax.device_put(tokens, self.placement.on_host)
        x = self._run("embedding", _embed_call, self.hybrid.embed_vd, tok)
        return self._run("transfer", self._to_accel_copy, x)

    def _to_host(self, x: jax.Array) -> jax.Array:
        return self._run("transfer", self._to_host_copy, x)

    def _run(self, part: str, fn: Any, *args: Any) -> Any:
        """fn(*args); with a timer set (pijax.engine.profile), waited for and its time added to `part`."""
        if self.timer is None:
            return fn(*args)
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        self.timer[part] = self.timer.get(part, 0.0) + time.perf_counter() - t0
        return out

    def new_cache(self, batch: int, n_cache: int) -> KVCache:
        """An all-zero KV cache, replicated over the accelerators."""
        key = (batch, n_cache)
        if key not in self._caches:
            self._caches[key] = jax.jit(
                lambda: init_cache(self.cfg, batch, n_cache, self.dtype), out_shardings=self.placement.replicated
            )
        return self._caches[key]()

    # ---- the Engine interface ---------------------------------------------------------------------------------
    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Full-sequence causal forward (no cache) of one sequence: logits [T, V] float32."""
        arr = self.check_ids(ids)
        t = arr.size
        padded = np.zeros((1, min(bucket(t), self.cfg.n_ctx)), np.int32)
        padded[0, :t] = arr
        pos = to_mesh(np.zeros((), np.int32), self.placement.replicated)
        out = self._pass("forward", self._embed_tokens(padded), None, pos)
        return np.asarray(out[0, :t], dtype=np.float32)

    def prefill(
        self, ids: Sequence[int], n_cache: int, sampling: SamplingConfig, key: jax.Array
    ) -> tuple[jax.Array, jax.Array, KVCache]:
        arr = self.check_ids(ids)
        t = arr.size
        t_pad = min(bucket(t), n_cache)
        if t_pad < t:
            raise DataError(f"{t} prompt tokens do not fit a cache of {n_cache} positions")
        padded = np.zeros((1, t_pad), np.int32)
        padded[0, :t] = arr
        repl = self.placement.replicated
        pos, n_valid = to_mesh((np.zeros((), np.int32), np.asarray(t, np.int32)), repl)
        key = to_mesh(key, repl)
        return self._pass(
            "prefill", self._embed_tokens(padded), self.new_cache(1, n_cache), pos, n_valid, key, sampling
        )

    def _step(
        self, sampling: SamplingConfig, leaves: Any, cache: KVCache, token_b: jax.Array, pos: jax.Array, key: jax.Array
    ) -> tuple[jax.Array, jax.Array, KVCache, jax.Array]:
        del leaves
        repl = self.placement.replicated
        # The caller's first position and its key live on the default device; move them once, not every step.
        if pos.sharding != repl:
            pos = to_mesh(pos, repl)
        if key.sharding != repl:
            if self._key[0] is not key:
                self._key = (key, to_mesh(key, repl))
            key = self._key[1]
        return self._pass("decode", self._embed_tokens(token_b), cache, pos, None, key, sampling)

    def decode_step(
        self, cache: KVCache, token_b: jax.Array, pos: int, sampling: SamplingConfig, key: jax.Array
    ) -> tuple[jax.Array, jax.Array, KVCache]:
        """One token per sequence at position `pos`; `cache` is donated (do not reuse it)."""
        tokens = np.asarray(token_b)  # the caller's tokens may live anywhere; the copier takes only the mesh's
        tok, logits, cache, _ = self._step(sampling, (), cache, tokens, jnp.asarray(pos, jnp.int32), key)
        return tok, logits, cache

    def _warm(self, arr: np.ndarray, n_cache: int, sampling: SamplingConfig, key: jax.Array) -> Any:
        """Compile every call for these shapes by running one prefill and one decode step on a scratch cache."""
        cur, _, cache = self.prefill(arr, n_cache, sampling, key)
        jax.block_until_ready(self._step(sampling, (), cache, cur, jnp.asarray(arr.size, jnp.int32), key))
        return functools.partial(self._step, sampling)

    def resident_report(self, budget_bytes: int | None = None, n_cache: int | None = None) -> ResidentReport:
        """Accelerator bytes of the weights plus a KV cache of n_cache positions (default: n_ctx)."""
        cache = self.new_cache(1, n_cache or self.cfg.n_ctx)
        try:
            return self.hybrid.resident_report(budget_bytes, cache)
        finally:
            jax.tree.map(lambda a: a.delete(), cache)
