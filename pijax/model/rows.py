"""The one FFN computation over a block of neuron rows: a selector says which rows, a backend computes them.

Every FFN runs through here: the single-device `pijax.model.ffn.FFN` (the block is the whole layer), and the
hybrid engine's hot shards and cold part (pijax.engine.hybrid_ffn; a block is a shard's or the host's rows).

Selector modes (`Selector.mode`), per token:
- "dense": every row.
- "relu" / "oracle": the true activity act(gate, up) != 0, score |act| (exact zero-skip for ReLU-family models;
  "oracle" names it as the reference in tests, "relu" as the user's exact mode).
- "threshold": score > `threshold` (SiLU models), the score given by `criterion` (pijax.sparsity.criteria):
  "oracle" |act|, "cats" |act(gate)|; "teal" zeroes the input channels |h_d| <= threshold and runs every row.
- "predictor": the layer predictor's logit >= `threshold`, score = the logit (PowerInfer's path: the only one
  that saves up/gate work). `dense_positions` N > 0 runs every row for the first N positions of a sequence
  (their logits are set to +inf before selection, on every backend): SmolLM2's position 0 is an attention sink
  whose residual is ~100x any other token's, and gating it cost most of the predictors' loss
  (experiments/predictors_smollm2).
Of the selected rows the `capacity` top-scoring are kept (None: all; static, so the step jits; the rule is
pijax.kernels.reference.select_rows, which the C++ kernel implements too).

Backends:
- "xla" (the reference; on a GPU it is the GPU path): a block gathers the selected rows while tokens x capacity
  <= its `max_gather_rows` (default: half its rows; measured in experiments/sparse_ffn): the union of the tokens'
  rows is read from up, gate and down_t, on CPU in chunks of CHUNK_BYTES whose products run while they are in
  cache. Past that (prefill, an uncapped block) it computes the masked dense product with the same selection.
- "kernels": pijax's C++ CPU kernels (pijax.kernels.ops.sparse_ffn; rows read in place, any weight format). They
  run "dense", "predictor" and uncapped "relu" (the kernel's dense path with inactive ReLU rows skipped, which is
  exact), and uncapped "threshold" with criterion "cats" (pijax.kernels.cats: the gate read in full, up and down_t
  only for the kept rows); `kernels_run` says whether a selector fits. Above MAX_KERNEL_TOKENS tokens (a prompt)
  "dense" runs the multi-token kernels (every row read once for all the tokens; PowerInfer too runs its prompts
  dense), and any other selection the kernels' pure-JAX reference.
Dimension legend: see `pijax.model.layers`; here N = tokens, K = rows of the block, U = gathered rows.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp

from pijax.config import FfnActivation
from pijax.errors import ConfigError
from pijax.kernels.cats import cats_ffn
from pijax.kernels.formats import QuantRows, Weight, dequantize
from pijax.kernels.ops import kernel_ok, sparse_ffn
from pijax.kernels.reference import down_project, ffn_activation, rows_activation, select_rows, selection_mask

Mode = Literal["dense", "relu", "oracle", "threshold", "predictor"]
MODES: tuple[str, ...] = ("dense", "relu", "oracle", "threshold", "predictor")
Criterion = Literal["cats", "oracle", "teal"]
CRITERIA: tuple[str, ...] = ("cats", "oracle", "teal")
Backend = Literal["xla", "kernels"]
BACKENDS: tuple[str, ...] = ("xla", "kernels")
# On CPU, bytes of one matrix's rows per gathered chunk: small enough that a chunk of up, gate and down_t rows
# stays in the core's L2 between its gather and its products (32 rows, 1.5 MB for all three at n_embd 4096 in
# f32; 1 MB chunks measured ~10% slower on a 2 MB-L2 Xeon), large enough that the loop's per-step cost is noise.
# Small layers take a single chunk. On accelerators a loop of small kernels only adds launches: one chunk there.
CHUNK_BYTES = 512 << 10

Request = dict[str, jax.Array]
"""A block's selection: {"idx", "valid"} (the gathered path) or {"keep"} (masked dense)."""


@dataclasses.dataclass(frozen=True)
class Selector:
    """Which rows of a block run (see the module docstring). Frozen and hashable: a static field of a module."""

    mode: Mode = "dense"
    capacity: int | None = None
    threshold: float = 0.0
    max_gather_rows: int | None = None
    skip_inactive: bool = True  # kernels: skip a selected ReLU row whose gate product is <= 0 (exact)
    criterion: Criterion = "oracle"  # mode "threshold" only
    dense_positions: int = 0  # mode "predictor" only: positions < this run every row

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"FFN selector mode {self.mode!r} is not one of {MODES}")
        if self.criterion not in CRITERIA:
            raise ConfigError(f"sparsity criterion {self.criterion!r} is not one of {CRITERIA}")
        if self.criterion != "oracle" and self.mode != "threshold":
            raise ConfigError(f"criterion {self.criterion!r} applies to mode 'threshold', not {self.mode!r}")
        if self.criterion == "teal" and self.capacity is not None:
            raise ConfigError("criterion 'teal' skips input channels, not neurons: it takes no neuron capacity")
        if self.capacity is not None and self.capacity < 1:
            raise ConfigError(f"FFN capacity {self.capacity} must be >= 1")
        if self.dense_positions < 0:
            raise ConfigError(f"dense_positions {self.dense_positions} must be >= 0")
        if self.dense_positions and self.mode != "predictor":
            raise ConfigError(f"dense_positions applies to mode 'predictor', not {self.mode!r}")
        if self.dense_positions and self.capacity is not None:
            raise ConfigError("dense_positions runs every row of those positions: it takes no capacity")

    def cap(self, n_rows: int) -> int:
        """The capacity on a block of n_rows rows."""
        return n_rows if self.capacity is None else min(int(self.capacity), n_rows)


DENSE_SELECTOR = Selector()


def dense_position_logits(logits_btf: jax.Array, pos: jax.Array | int, dense_positions: int) -> jax.Array:
    """The logits with every row of the positions < dense_positions (absolute: pos + t) set to +inf."""
    if not dense_positions:
        return logits_btf
    at = jnp.arange(logits_btf.shape[1]) + pos
    return jnp.where((at < dense_positions)[None, :, None], jnp.inf, logits_btf)


def check_backend(backend: str) -> Backend:
    if backend not in BACKENDS:
        raise ConfigError(f"FFN backend {backend!r} is not one of {BACKENDS}")
    return backend  # type: ignore[return-value]


def kernels_run(sel: Selector, n_rows: int) -> bool:
    """Whether the C++ kernels compute this selection: they rank by predictor logit, or keep every row passing the
    CATS cut-off (uncapped), and never see act(gate, up) before selecting."""
    if sel.mode in ("dense", "predictor"):
        return True
    if sel.mode == "threshold":
        return sel.criterion == "cats" and sel.cap(n_rows) >= n_rows
    return sel.mode == "relu" and sel.cap(n_rows) >= n_rows


def gathers(n_tokens: int, capacity: int, n_rows: int, max_gather_rows: int | None) -> bool:
    """Whether a block of n_rows rows gathers its selected rows for n_tokens tokens (else masked dense)."""
    limit = n_rows // 2 if max_gather_rows is None else max_gather_rows
    return n_tokens * min(capacity, n_rows) <= limit


def score_active(
    mode: Mode,
    act_nk: jax.Array | None,
    logits_nk: jax.Array | None,
    threshold: float,
    gate_act_nk: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(score, active), both [N, K], of a non-dense selector; `gate_act_nk` |act(gate)| scores instead of |act|
    (criterion "cats")."""
    if mode == "predictor":
        return logits_nk, logits_nk >= threshold
    mag = jnp.abs(act_nk if gate_act_nk is None else gate_act_nk)
    return mag, (mag > threshold) if mode == "threshold" else (act_nk != 0)


def select(score_nk: jax.Array, active_nk: jax.Array, capacity: int, gather: bool) -> Request:
    """The rows a block computes: the `capacity` top-scoring active ones (all active ones when capacity >= K)."""
    k = score_nk.shape[1]
    if gather:
        idx, valid = select_rows(score_nk, active_nk, min(capacity, k))
        return {"idx": idx, "valid": valid}
    if capacity >= k:
        return {"keep": active_nk}
    return {"keep": selection_mask(*select_rows(score_nk, active_nk, capacity), k)}


def union_rows(idx_nk: jax.Array, valid_nk: jax.Array, n_ff: int) -> tuple[jax.Array, jax.Array]:
    """The rows any token selected, ascending, padded to a static size: (idx_u [U], keep_nu [N, U]) where
    keep_nu[n, u] says whether token n selected row idx_u[u]. For one token it is its selection as is."""
    if idx_nk.shape[0] == 1:
        return idx_nk[0], valid_nk
    sel_nf = selection_mask(idx_nk, valid_nk, n_ff)
    any_f = sel_nf.any(axis=0)
    u = min(n_ff, idx_nk.size)
    idx_u = jnp.nonzero(any_f, size=u, fill_value=0)[0].astype(jnp.int32)
    in_union = jnp.arange(u) < any_f.sum()
    return idx_u, jnp.take(sel_nf, idx_u, axis=1) & in_union


def take_rows(w_fd: jax.Array, idx: jax.Array) -> jax.Array:
    """Rows idx of an [F, D] matrix: [*idx.shape, D]. The indices come from top_k, so they are in bounds and the
    gather skips the bounds handling of jnp.take (measurably faster on CPU)."""
    return w_fd.at[idx].get(mode="promise_in_bounds")


def gathered_ffn(
    h_nd: jax.Array,
    idx_u: jax.Array,
    keep_nu: jax.Array,
    w_up_fd: jax.Array,
    w_gate_fd: jax.Array | None,
    w_down_fd: jax.Array,
    kind: FfnActivation,
    act_nf: jax.Array | None = None,
    chunk_bytes: int | None = None,
) -> jax.Array:
    """sum_u keep[n,u] * act_n(row idx_u[u]) * down_t[idx_u[u]], reading only rows idx_u: [N, D].

    With `act_nf` given (selectors that read act) act is read from it and only down_t rows are gathered."""
    u = idx_u.shape[0]
    if chunk_bytes is None:
        chunk_bytes = CHUNK_BYTES if jax.default_backend() == "cpu" else 1 << 62
    chunk_rows = max(1, chunk_bytes // (w_down_fd.shape[1] * w_down_fd.dtype.itemsize))
    n_chunks = max(1, math.ceil(u / chunk_rows))
    c = math.ceil(u / n_chunks)
    pad = n_chunks * c - u
    idx_u = jnp.pad(idx_u, (0, pad))  # padding reads row 0 with zero weight
    keep_nu = jnp.pad(keep_nu, ((0, 0), (0, pad)))
    idx_cr = idx_u.reshape(n_chunks, c)
    keep_cnr = keep_nu.reshape(keep_nu.shape[0], n_chunks, c).transpose(1, 0, 2)

    def chunk(y_nd: jax.Array, xs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        rows, keep_nr = xs
        if act_nf is None:
            gate = None if w_gate_fd is None else take_rows(w_gate_fd, rows)
            act = rows_activation(h_nd, take_rows(w_up_fd, rows), gate, kind)
        else:
            act = jnp.take(act_nf, rows, axis=1)
        act = jnp.where(keep_nr, act, 0.0)
        return y_nd + jnp.einsum("nr,rd->nd", act, take_rows(w_down_fd, rows)), None

    y0 = jnp.zeros((h_nd.shape[0], w_down_fd.shape[1]), h_nd.dtype)
    return jax.lax.scan(chunk, y0, (idx_cr, keep_cnr))[0]


def masked_down(act_nk: jax.Array, keep_nk: jax.Array | None, down_kd: jax.Array) -> jax.Array:
    """The down projection [N, D] of the kept entries of act (all of them with keep None)."""
    act = act_nk if keep_nk is None else jnp.where(keep_nk, act_nk, 0.0)
    return down_project(act[None], down_kd)[0]


def compute_request(
    h_nd: jax.Array,
    req: Request,
    up_kd: jax.Array,
    gate_kd: jax.Array | None,
    down_kd: jax.Array,
    kind: FfnActivation,
    act_nk: jax.Array | None = None,
) -> jax.Array:
    """A block's contribution [N, D] over the rows a Request names, on XLA (act re-used when given)."""
    if "idx" in req:
        idx_u, keep_nu = union_rows(req["idx"], req["valid"], up_kd.shape[0])
        return gathered_ffn(h_nd, idx_u, keep_nu, up_kd, gate_kd, down_kd, kind, act_nf=act_nk)
    if act_nk is None:
        act_nk = rows_activation(h_nd, up_kd, gate_kd, kind)
    return masked_down(act_nk, req["keep"], down_kd)


def _on_xla(w: Weight | None) -> jax.Array | None:
    # int8 rows have no XLA product: dequantized per call. Float storage (f32, or bf16 on an accelerator) as is.
    return dequantize(w) if isinstance(w, QuantRows) else w


def block_ffn(
    h_nd: jax.Array,
    logits_nk: jax.Array | None,
    up: Weight,
    gate: Weight | None,
    down: Weight,
    kind: FfnActivation,
    sel: Selector,
    backend: Backend,
    use_kernel: bool | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """A block's FFN output [N, D] under `sel` on `backend`, and (kernels only, else None) the rows each token
    ran [N]. `logits_nk`: the predictor's logits of the block's rows (mode "predictor"; -inf marks padding).
    `use_kernel` as pijax.kernels.ops.kernel_ok (True: the caller places the call on a CPU device)."""
    k = up.shape[0]
    cap = sel.cap(k)
    if backend == "kernels":
        if not kernels_run(sel, k):
            raise ConfigError(f"the kernels do not run selector {sel.mode!r} with capacity {cap} of {k} rows")
        if sel.mode == "threshold":
            if gate is None:
                raise ConfigError("criterion 'cats' thresholds act(gate): this FFN has no gate")
            kernel = kernel_ok(h_nd.shape[0], use_kernel)
            y, n_sel = cats_ffn(h_nd, up, gate, down, kind=kind, threshold=sel.threshold, kernel=kernel)
            return y.astype(h_nd.dtype), n_sel
        logits = logits_nk if sel.mode == "predictor" else None
        y, n_sel = sparse_ffn(
            h_nd,
            logits,
            up,
            gate,
            down,
            kind=kind,
            threshold=sel.threshold,
            capacity=cap,
            skip_inactive=sel.skip_inactive,
            use_kernel=use_kernel,
        )
        return y.astype(h_nd.dtype), n_sel
    up, gate, down = (_on_xla(w) for w in (up, gate, down))
    teal = sel.mode == "threshold" and sel.criterion == "teal"
    if teal:  # the input channels at or below the threshold are never read; every neuron runs
        h_nd = jnp.where(jnp.abs(h_nd) > sel.threshold, h_nd, 0.0)
    if sel.mode == "dense" or teal:
        return masked_down(rows_activation(h_nd, up, gate, kind), None, down), None
    act = None if sel.mode == "predictor" else rows_activation(h_nd, up, gate, kind)
    gate_act = None
    if sel.mode == "threshold" and sel.criterion == "cats" and gate is not None:
        gate_act = ffn_activation(None, jnp.einsum("nd,kd->nk", h_nd, gate), kind)  # act(gate) alone
    score, active = score_active(sel.mode, act, logits_nk, sel.threshold, gate_act)
    req = select(score, active, cap, gathers(h_nd.shape[0], cap, k, sel.max_gather_rows) and cap < k)
    return compute_request(h_nd, req, up, gate, down, kind, act), None
