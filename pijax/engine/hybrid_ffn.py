"""The hybrid FFN: hot rows on the accelerator mesh, cold rows on the host, both computed sparsely, then added.

Three modules, one per place the work happens:
- `HybridFFN` (accelerators, replicated): the layer's predictor, the selection of the cold rows to compute (so only
  row ids cross to the host; with the host on the CPU kernels, the cold rows' logits, and the kernel selects), and
  its `HotFFN`.
- `HotFFN` (accelerators, sharded): the hot rows packed in bucket order, split along the neuron axis over the
  mesh. Inside a `shard_map` each accelerator computes the down-projection sum over its own predicted-active rows;
  a `psum` adds the partials. Mode "masked": every local hot row is computed and the inactive ones are zeroed
  (dense work, no gather). Mode "gather": the `capacity` top-scoring predicted-active local rows are gathered and
  only those computed. Which is faster depends on the device kind (experiments/hybrid/README.md).
- `ColdFFN` (host): the cold rows; per token it gathers the selected rows (at most the cold capacity) and computes
  only those.
Each block of rows (a hot shard, the cold block) runs the one FFN computation of pijax.model.rows, the one the
single-device `pijax.model.ffn.FFN` runs: the same `Selector`, `select` and backends. A block gathers only while
tokens x capacity <= its `max_gather_rows` (default: half its rows); past that (prefill, or an uncapped block)
it computes the masked dense product with the same selection.

Mask sources: "predictor" (logit >= threshold, score = logit: PowerInfer's path), "oracle" (the true activity
act != 0 of ReLU-family models, each side computing its own rows' act; for exactness tests) and "dense" (every
row; the plain split of the dense FFN). Hot and cold sets are disjoint, so the two outputs add up to the FFN's.
Backends: with `cold_kernels` the host part runs on the CPU kernels (one call per layer, rows read in place);
with `hot_kernels` (accelerators that are CPU devices) each shard's hot rows do too; otherwise XLA (the
reference, and what GPUs run). Dimension legend: see
`pijax.model.layers`; here N = tokens (B*T), K = rows of a block (a hot shard or the cold block).
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from pijax.config import FfnActivation, ModelConfig
from pijax.errors import ConfigError
from pijax.layout.devices import Placement, to_mesh
from pijax.layout.pack import PackedLayer, pad_ids, pad_rows
from pijax.model.predictor import Predictor
from pijax.model.rows import Request, Selector, block_ffn, compute_request, gathers, kernels_run, select

MaskSource = Literal["predictor", "oracle", "dense"]
MASK_SOURCES: tuple[str, ...] = ("predictor", "oracle", "dense")
HotMode = Literal["masked", "gather"]

# A cold Request (pijax.model.rows.Request) is what the accelerator tells the host about a cold block: {"idx",
# "valid"} (gather) or {"keep"} (masked) for the predictor source, or {"logits"} for a host on the kernels; empty
# for oracle and dense, where the host decides from its own rows.
# The hybrid's oracle source is the uncapped-or-capped act != 0 selector, which pijax.model.rows calls "relu".
_SELECTOR_MODE = {"predictor": "predictor", "oracle": "relu", "dense": "dense"}


class RowIds(nnx.Variable):
    """Integer neuron ids (not trainable): the hot bucket, the cold id list."""


def block_selector(source: MaskSource, capacity: int, threshold: float, max_gather_rows: int | None) -> Selector:
    """The shared selector (pijax.model.rows) a hybrid block of rows runs (an empty block: capacity 1, unused)."""
    cap = max(1, int(capacity))
    return Selector(_SELECTOR_MODE[source], capacity=cap, threshold=threshold, max_gather_rows=max_gather_rows)


def request_fields(
    source: MaskSource, n_tokens: int, capacity: int, n_rows: int, max_gather_rows: int | None, kernels: bool = False
) -> tuple[tuple[str, int], ...]:
    """The columns a cold Request has for n_tokens tokens: both sides derive it from the same settings. For a
    host on the CPU kernels it is the cold rows' predictor logits (the kernel selects, as for one device)."""
    if source != "predictor" or n_rows == 0:
        return ()
    if kernels:
        return (("logits", n_rows),)
    if gathers(n_tokens, capacity, n_rows, max_gather_rows):
        c = min(capacity, n_rows)
        return (("idx", c), ("valid", c))
    return (("keep", n_rows),)


def pack_request(hn_btd: jax.Array, req: Request, fields: tuple[tuple[str, int], ...]) -> jax.Array:
    """hn and the Request as one f32 [N, D + widths] array: one transfer to the host instead of three. Exact: the
    ids are < 2^24 and the flags 0/1."""
    n = hn_btd.shape[0] * hn_btd.shape[1]
    cols = [hn_btd.reshape(n, -1)] + [req[name].astype(hn_btd.dtype) for name, _ in fields]
    return jnp.concatenate(cols, axis=1)


def unpack_request(packed_nw: jax.Array, n_embd: int, fields: tuple[tuple[str, int], ...]) -> tuple[jax.Array, Request]:
    """Inverse of `pack_request`: (h [N, D], Request)."""
    req, start = {}, n_embd
    for name, width in fields:
        col = packed_nw[:, start : start + width]
        req[name] = col if name == "logits" else (col.astype(jnp.int32) if name == "idx" else col > 0.5)
        start += width
    return packed_nw[:, :n_embd], req


def use_kernels(kernels: bool, source: MaskSource, capacity: int, n_rows: int) -> bool:
    """Whether a block runs on the kernels: asked for, and a selector they run (not a capped oracle)."""
    return kernels and kernels_run(block_selector(source, capacity, 0.0, None), n_rows)


def _on(x: np.ndarray, sharding: Any, dtype: Any) -> jax.Array:
    # Straight from numpy to the target devices: no stop on the default device.
    return to_mesh(np.asarray(x, dtype=dtype), sharding)


class HotFFN(nnx.Module):
    """Hot rows [k_pad, D] sharded over the mesh; returns the summed down projection of the active ones."""

    def __init__(
        self,
        packed: PackedLayer,
        placement: Placement,
        *,
        kind: FfnActivation,
        source: MaskSource,
        threshold: float,
        mode: HotMode,
        capacity: int | None,
        max_gather_rows: int | None,
        dtype: Any = jnp.float32,
        kernels: bool = False,
    ):
        n = placement.n_accel
        rows = placement.rows
        self.w_up_kd = nnx.Param(_on(pad_rows(packed.up_kd, n), rows, dtype))
        self.w_gate_kd = None if packed.gate_kd is None else nnx.Param(_on(pad_rows(packed.gate_kd, n), rows, dtype))
        self.w_down_kd = nnx.Param(_on(pad_rows(packed.down_kd, n), rows, dtype))
        self.ids_k = RowIds(_on(pad_ids(packed.hot_ids, n), rows, np.int32))
        self.per_shard = int(self.ids_k[...].shape[0]) // n
        self.capacity = (
            self.per_shard if capacity is None or mode == "masked" else max(1, min(capacity, self.per_shard))
        )
        kernel_cap = self.per_shard if capacity is None else max(1, min(capacity, self.per_shard))
        self.kernels = use_kernels(kernels, source, kernel_cap, self.per_shard)
        if self.kernels:
            self.capacity = kernel_cap
        self.kind: FfnActivation = kind
        self.source: MaskSource = source
        self.threshold = float(threshold)
        self.mode: HotMode = mode
        self.max_gather_rows = max_gather_rows
        # "masked": capacity = every local row, so the shared block never gathers.
        self.selector = block_selector(source, self.capacity, self.threshold, max_gather_rows)
        self.backend = "kernels" if self.kernels else "xla"
        self.mesh = placement.mesh
        self.axis = placement.axis

    def __call__(self, hn_btd: jax.Array, logits_nf: jax.Array | None) -> jax.Array:
        b, t, d = hn_btd.shape
        n = b * t
        has_gate = self.w_gate_kd is not None
        kind, source, sel, backend, axis = self.kind, self.source, self.selector, self.backend, self.axis

        def local(h_nd, ids, up, down, *rest):
            gate = rest[0] if has_gate else None
            logits = None
            if source == "predictor":  # padding rows (id -1) score -inf: never selected
                logits = jnp.where((ids >= 0)[None, :], jnp.take(rest[-1], jnp.maximum(ids, 0), axis=1), -jnp.inf)
            y = block_ffn(h_nd, logits, up, gate, down, kind, sel, backend, use_kernel=True)[0]
            return jax.lax.psum(y, axis)

        args = [hn_btd.reshape(n, d), self.ids_k[...], self.w_up_kd[...], self.w_down_kd[...]]
        specs = [P(), P(axis), P(axis, None), P(axis, None)]
        if has_gate:
            args.append(self.w_gate_kd[...])
            specs.append(P(axis, None))
        if source == "predictor":
            args.append(logits_nf)
            specs.append(P())
        # check_vma off: the gathered path's scan starts from a fresh zero carry, which the replication checker
        # would call invariant while the body makes it device-varying; the psum makes the result replicated.
        y = jax.shard_map(local, mesh=self.mesh, in_specs=tuple(specs), out_specs=P(), check_vma=False)(*args)
        return y.reshape(b, t, d)


class ColdFFN(nnx.Module):
    """Cold rows [n_cold, D] on the host; computes the rows a Request names (or, oracle/dense, decides itself)."""

    def __init__(
        self,
        packed: PackedLayer,
        host_sharding: Any,
        *,
        kind: FfnActivation,
        source: MaskSource,
        capacity: int | None,
        max_gather_rows: int | None,
        dtype: Any = jnp.float32,
        threshold: float = 0.0,
        kernels: bool = False,
    ):
        self.w_up_cd = nnx.Param(_on(packed.up_cd, host_sharding, dtype))
        self.w_gate_cd = None if packed.gate_cd is None else nnx.Param(_on(packed.gate_cd, host_sharding, dtype))
        self.w_down_cd = nnx.Param(_on(packed.down_cd, host_sharding, dtype))
        self.n_cold = packed.n_cold
        self.capacity = self.n_cold if capacity is None else max(1, min(int(capacity), self.n_cold))
        self.kind: FfnActivation = kind
        self.source: MaskSource = source
        self.max_gather_rows = max_gather_rows
        self.threshold = float(threshold)
        self.kernels = use_kernels(kernels, source, self.capacity, self.n_cold)
        self.selector = block_selector(source, self.capacity, self.threshold, max_gather_rows)
        self.backend = "kernels" if self.kernels else "xla"

    def fields(self, n_tokens: int) -> tuple[tuple[str, int], ...]:
        return request_fields(self.source, n_tokens, self.capacity, self.n_cold, self.max_gather_rows, self.kernels)

    def run_packed(self, packed_nw: jax.Array) -> jax.Array:
        """The cold contribution [N, D] from what `HybridFFN.pack_for_host` sent."""
        n_embd = self.w_up_cd[...].shape[1]
        h_nd, req = unpack_request(packed_nw, n_embd, self.fields(packed_nw.shape[0]))
        return self(h_nd[None], req)[0]

    def __call__(self, hn_btd: jax.Array, req: Request) -> jax.Array:
        b, t, d = hn_btd.shape
        n = b * t
        h = hn_btd.reshape(n, d)
        gate = None if self.w_gate_cd is None else self.w_gate_cd[...]
        up, down = self.w_up_cd[...], self.w_down_cd[...]
        if self.source == "predictor" and not self.kernels:  # the accelerators selected the rows
            y = compute_request(h, req, up, gate, down, self.kind)
        else:
            logits = req.get("logits")
            y = block_ffn(h, logits, up, gate, down, self.kind, self.selector, self.backend, use_kernel=True)[0]
        return y.reshape(b, t, d)


class HybridFFN(nnx.Module):
    """The accelerator side of one layer's FFN: predictor, hot rows, and the cold selection sent to the host.

    `__call__(h, ffn_in)` is the whole FFN only for a layer without cold rows (it can then stand in for
    `block.ffn`); a split or all-cold layer is driven by the hybrid engine: `logits`, `hot_out`, `cold_request`
    here, then `ColdFFN` on the host."""

    def __init__(
        self,
        cfg: ModelConfig,
        packed: PackedLayer,
        placement: Placement,
        *,
        source: MaskSource,
        predictor: Predictor | None = None,
        pred_threshold: float = 0.0,
        hot_mode: HotMode = "gather",
        hot_capacity: int | None = None,
        cold_capacity: int | None = None,
        max_gather_rows: int | None = None,
        dtype: Any = jnp.float32,
        hot_kernels: bool = False,
        cold_kernels: bool = False,
    ):
        if source not in MASK_SOURCES:
            raise ConfigError(f"hybrid FFN mask source {source!r} is not one of {MASK_SOURCES}")
        if source == "predictor" and predictor is None:
            raise ConfigError("mask source 'predictor' needs a predictor")
        if hot_mode not in ("masked", "gather"):
            raise ConfigError(f"hot_mode must be masked or gather, got {hot_mode!r}")
        self.kind: FfnActivation = cfg.ffn_act
        self.source: MaskSource = source
        self.n_hot, self.n_cold = packed.n_hot, packed.n_cold
        self.threshold = float(pred_threshold)
        self.max_gather_rows = max_gather_rows
        self.cold_capacity = self.n_cold if cold_capacity is None else max(1, min(int(cold_capacity), self.n_cold))
        self.cold_kernels = use_kernels(cold_kernels, source, self.cold_capacity, self.n_cold)
        self.predictor = predictor if source == "predictor" else None
        self.hot = (
            HotFFN(
                packed,
                placement,
                kind=cfg.ffn_act,
                source=source,
                threshold=pred_threshold,
                mode=hot_mode,
                capacity=hot_capacity,
                max_gather_rows=max_gather_rows,
                dtype=dtype,
                kernels=hot_kernels,
            )
            if packed.n_hot
            else None
        )
        want_ids = packed.n_cold and source == "predictor"
        self.cold_ids = RowIds(_on(packed.cold_ids, placement.replicated, np.int32)) if want_ids else None

    def logits(self, ffn_in_btd: jax.Array) -> jax.Array | None:
        """Predictor logits [N, F] (None for the oracle and dense sources)."""
        if self.predictor is None:
            return None
        b, t, _ = ffn_in_btd.shape
        return self.predictor(ffn_in_btd).reshape(b * t, -1)

    def hot_out(self, hn_btd: jax.Array, logits_nf: jax.Array | None) -> jax.Array:
        """The hot rows' contribution [B, T, D] (zeros for an all-cold layer)."""
        if self.hot is None:
            return jnp.zeros_like(hn_btd)
        return self.hot(hn_btd, logits_nf)

    def cold_request(self, logits_nf: jax.Array | None, n_tokens: int) -> Request:
        """Which cold rows the host computes, decided here where the predictor's logits are."""
        if self.n_cold == 0 or self.source != "predictor":
            return {}
        score = jnp.take(logits_nf, self.cold_ids[...], axis=1)
        if self.cold_kernels:
            return {"logits": score}
        gather = gathers(n_tokens, self.cold_capacity, self.n_cold, self.max_gather_rows)
        return select(score, score >= self.threshold, self.cold_capacity, gather)

    def pack_for_host(self, hn_btd: jax.Array, logits_nf: jax.Array | None) -> jax.Array:
        """Everything the host needs for this layer's cold part, as one array (see `pack_request`)."""
        n = hn_btd.shape[0] * hn_btd.shape[1]
        fields = request_fields(
            self.source, n, self.cold_capacity, self.n_cold, self.max_gather_rows, self.cold_kernels
        )
        return pack_request(hn_btd, self.cold_request(logits_nf, n), fields)

    def __call__(self, hn_btd: jax.Array, ffn_in_btd: jax.Array, pos: jax.Array | int = 0) -> jax.Array:
        """`pos` is accepted for the Block's call; the hybrid selectors have no dense positions."""
        if self.n_cold:
            raise ConfigError("this layer has cold rows: its FFN runs split across devices in the hybrid engine")
        return self.hot_out(hn_btd, self.logits(ffn_in_btd))
