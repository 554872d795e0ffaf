"""The single-device sparse FFN: compute only the (predicted-)active neurons, at most a static capacity per layer.

Per token, a mask source scores every neuron and says which are active:
- "predictor": the layer's predictor on the FFN input (residual stream before the norm); active when
  logit >= pred_threshold, score = the logit (PowerInfer's path: the only one that saves up/gate work).
- "oracle": the true activity act(gate, up) != 0 (ReLU-family models); score = |act|. For exactness tests.
- "threshold": |act| > the layer's threshold (SiLU models, CATS/TEAL style); score = |act|.
Per token the `capacity` top-scoring active neurons are kept (capacity is static so the step jits; neurons past
it are dropped; unused capacity is padding with zero weight).

Two execution paths, chosen statically from the number of tokens N = B*T:
- gathered, when N * capacity <= max_gather_rows (decode, and a few tokens): the union U of the tokens'
  selected rows (for N = 1: the selection itself) is read from up, gate and down_t (packed contiguous [F, D]
  rows, gathers along axis 0), on CPU in chunks of CHUNK_BYTES per matrix whose products run while they are in cache;
  every token still uses only its own selection. Reads about U/F of the weights.
- masked dense, above that (prefill): the dense products with the selection as a mask; the same result, and
  cheaper once the union would cover much of the layer. The crossover is measured in experiments/sparse_ffn.
The oracle and threshold sources need the dense act to decide, so they only save the down projection.
Dimension legend: see `pijax.model.layers`; here N = tokens (B*T), K = capacity, U = gathered rows, C = chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pijax.config import FfnActivation, ModelConfig
from pijax.errors import ConfigError, DataError
from pijax.io.weights import PredictorWeights
from pijax.kernels.reference import down_project, ffn_activation, rows_activation, select_rows, selection_mask
from pijax.model.ffn import DenseFFN
from pijax.model.predictor import Predictor

MaskSource = Literal["oracle", "predictor", "threshold"]
MASK_SOURCES: tuple[str, ...] = ("oracle", "predictor", "threshold")
# What the threshold source scores (pijax.sparsity.criteria): |act(gate)*up| (oracle), |act(gate)| (cats), or
# the FFN input channels |h_d| (teal: channels <= t are zeroed before gate and up; no neuron is skipped).
ThresholdCriterion = Literal["oracle", "cats", "teal"]
THRESHOLD_CRITERIA: tuple[str, ...] = ("oracle", "cats", "teal")
# On CPU, bytes of one matrix's rows per gathered chunk: small enough that a chunk of up, gate and down_t rows
# stays in the core's L2 between its gather and its products (32 rows, 1.5 MB for all three at n_embd 4096 in
# f32; 1 MB chunks measured ~10% slower on a 2 MB-L2 Xeon), large enough that the loop's per-step cost is noise.
# Small layers take a single chunk. On accelerators a loop of small kernels only adds launches: one chunk there.
CHUNK_BYTES = 512 << 10


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

    With `act_nf` given (oracle/threshold sources) act is read from it and only down_t rows are gathered."""
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


class SparseFFN(nnx.Module):
    """Replaces `block.ffn`: `ffn(h_btd, ffn_in_btd)` computes at most `capacity` neurons per token."""

    def __init__(
        self,
        cfg: ModelConfig,
        dense: DenseFFN | SimpleNamespace,
        *,
        mode: MaskSource,
        capacity: int | None = None,
        predictor: Predictor | None = None,
        pred_threshold: float = 0.0,
        act_threshold: float | None = None,
        max_gather_rows: int | None = None,
        criterion: ThresholdCriterion = "oracle",
    ):
        if mode not in MASK_SOURCES:
            raise ConfigError(f"sparse FFN mask source {mode!r} is not one of {MASK_SOURCES}")
        if mode == "predictor" and predictor is None:
            raise ConfigError("mask source 'predictor' needs a predictor")
        if mode == "threshold" and act_threshold is None:
            raise ConfigError("mask source 'threshold' needs an activation threshold")
        if criterion not in THRESHOLD_CRITERIA:
            raise ConfigError(f"sparse FFN criterion {criterion!r} is not one of {THRESHOLD_CRITERIA}")
        if criterion == "teal" and capacity is not None and capacity < cfg.n_ff:
            raise ConfigError("criterion 'teal' skips input channels, not neurons: it takes no neuron capacity")
        capacity = cfg.n_ff if capacity is None else int(capacity)
        if not 1 <= capacity <= cfg.n_ff:
            raise ConfigError(f"sparse FFN capacity {capacity} must be in [1, n_ff={cfg.n_ff}]")
        self.cfg = cfg
        self.kind: FfnActivation = cfg.ffn_act
        self.n_ff = cfg.n_ff
        self.mode: MaskSource = mode
        self.capacity = capacity
        self.max_gather_rows = cfg.n_ff // 2 if max_gather_rows is None else int(max_gather_rows)
        self.pred_threshold = float(pred_threshold)
        self.act_threshold = None if act_threshold is None else float(act_threshold)
        self.criterion: ThresholdCriterion = criterion
        self.w_up_fd = dense.w_up_fd
        self.w_gate_fd = dense.w_gate_fd
        self.w_down_fd = dense.w_down_fd
        self.predictor = predictor

    def activations(self, h_btd: jax.Array) -> jax.Array:
        """The true (dense) per-neuron outputs [B, T, F], as `DenseFFN.activations` (profiling reads these)."""
        b, t, d = h_btd.shape
        gate = None if self.w_gate_fd is None else self.w_gate_fd[...]
        return rows_activation(h_btd.reshape(b * t, d), self.w_up_fd[...], gate, self.kind).reshape(b, t, -1)

    def mask_scores(self, h_btd: jax.Array, ffn_in_btd: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """(score [B,T,F], active [B,T,F], dense act [B,T,F] or None when the source did not need it)."""
        if self.mode == "predictor":
            logits = self.predictor(ffn_in_btd)
            return logits, logits >= self.pred_threshold, None
        if self.mode == "threshold" and self.criterion == "teal":  # input channels <= t are never read
            act = self.activations(jnp.where(jnp.abs(h_btd) > self.act_threshold, h_btd, 0.0))
            return jnp.abs(act), jnp.ones(act.shape, bool), act
        act = self.activations(h_btd)
        mag = jnp.abs(act)
        if self.mode == "threshold" and self.criterion == "cats" and self.w_gate_fd is not None:
            gate = jnp.einsum("btd,fd->btf", h_btd, self.w_gate_fd[...])
            mag = jnp.abs(ffn_activation(None, gate, self.kind))  # |act(gate)| alone (CATS)
        active = act != 0 if self.mode == "oracle" else mag > self.act_threshold
        return mag, active, act

    def gathers(self, n_tokens: int) -> bool:
        """Whether a call on `n_tokens` tokens takes the gathered path (else masked dense)."""
        return self.capacity < self.n_ff and n_tokens * self.capacity <= self.max_gather_rows

    def __call__(self, h_btd: jax.Array, ffn_in_btd: jax.Array) -> jax.Array:
        b, t, d = h_btd.shape
        n = b * t
        score, active, act = self.mask_scores(h_btd, ffn_in_btd)
        w_down = self.w_down_fd[...]
        if self.capacity >= self.n_ff:
            keep = active  # no cap: every active neuron is kept
        else:
            idx, valid = select_rows(score.reshape(n, -1), active.reshape(n, -1), self.capacity)
            if self.gathers(n):
                idx_u, keep_nu = union_rows(idx, valid, self.n_ff)
                y = gathered_ffn(
                    h_btd.reshape(n, d),
                    idx_u,
                    keep_nu,
                    self.w_up_fd[...],
                    None if self.w_gate_fd is None else self.w_gate_fd[...],
                    w_down,
                    self.kind,
                    act_nf=None if act is None else act.reshape(n, -1),
                )
                return y.reshape(b, t, d)
            keep = selection_mask(idx, valid, self.n_ff).reshape(b, t, -1)
        if act is None:
            act = self.activations(h_btd)
        return down_project(jnp.where(keep, act, 0.0), w_down)


def _n_layer(llama: Any) -> int:
    return len(llama.layers)


def _layer_list(values: Sequence[Any] | None, n_layer: int, what: str) -> list[Any] | None:
    if values is None:
        return None
    values = list(values)
    if len(values) != n_layer:
        raise DataError(f"{what} are given for {len(values)} layers, the model has {n_layer}")
    return values


def sparsify(
    model: Any,
    *,
    mode: MaskSource,
    capacities: Sequence[int] | None = None,
    predictors: Sequence[PredictorWeights | Predictor] | None = None,
    pred_threshold: float | Sequence[float] | None = None,
    act_thresholds: Sequence[float] | np.ndarray | None = None,
    max_gather_rows: int | None = None,
    criterion: ThresholdCriterion = "oracle",
) -> None:
    """Swap every `block.ffn` of a Model (or a bare Llama) for a SparseFFN, in place.

    `capacities` None means no cap (n_ff). In predictor mode `predictors` defaults to those of the model's
    checkpoint (a PowerInfer-style GGUF), and `pred_threshold` None to the checkpoint's
    `powerinfer.sparse_threshold` (0 without one). Per-layer arguments must have one entry per layer."""
    llama = getattr(model, "module", model)
    cfg: ModelConfig = llama.cfg
    n_layer = _n_layer(llama)
    ckpt = getattr(model, "checkpoint", None)
    if pred_threshold is None:
        pred_threshold = 0.0 if ckpt is None else float(ckpt.weights.sparse_threshold)
    if predictors is None and mode == "predictor":
        predictors = None if ckpt is None else ckpt.weights.predictors
        if predictors is None:
            raise ConfigError("mask source 'predictor' needs predictors (the model file has none)")
    caps = _layer_list(capacities, n_layer, "capacities") or [cfg.n_ff] * n_layer
    preds = _layer_list(predictors, n_layer, "predictors")
    thr = _layer_list(None if act_thresholds is None else list(np.asarray(act_thresholds)), n_layer, "thresholds")
    if mode == "threshold" and thr is None:
        raise ConfigError("mask source 'threshold' needs per-layer act_thresholds")
    pts = (
        [float(pred_threshold)] * n_layer
        if np.isscalar(pred_threshold)
        else _layer_list(list(pred_threshold), n_layer, "predictor thresholds")
    )
    new_ffns = []  # all built (and checked) before any block is touched
    for i, block in enumerate(llama.layers):
        dense = block.ffn
        if isinstance(dense, SparseFFN):
            dense = SimpleNamespace(w_up_fd=dense.w_up_fd, w_gate_fd=dense.w_gate_fd, w_down_fd=dense.w_down_fd)
        pred = None
        if preds is not None:
            p = preds[i]
            pred = p if isinstance(p, Predictor) else Predictor.from_weights(p)
            if pred.fc1_rd[...].shape[1] != cfg.n_embd or pred.fc2_fr[...].shape[0] != cfg.n_ff:
                raise DataError(
                    f"predictor {i} has fc1 {pred.fc1_rd[...].shape}, fc2 {pred.fc2_fr[...].shape}: "
                    f"not for a model with n_embd {cfg.n_embd}, n_ff {cfg.n_ff}"
                )
        new_ffn = SparseFFN(
            cfg,
            dense,
            mode=mode,
            capacity=caps[i],
            predictor=pred,
            pred_threshold=pts[i],
            act_threshold=None if thr is None else float(thr[i]),
            max_gather_rows=max_gather_rows,
            criterion=criterion,
        )
        new_ffns.append(new_ffn)
    for block, new_ffn in zip(llama.layers, new_ffns, strict=True):
        block.ffn = new_ffn
    if hasattr(model, "refresh"):
        model.refresh()


def densify(model: Any) -> None:
    """Undo `sparsify`: every SparseFFN becomes a DenseFFN over the same weights again."""
    llama = getattr(model, "module", model)
    for block in llama.layers:
        if isinstance(block.ffn, SparseFFN):
            sp = block.ffn
            # Build from tiny placeholders, then hand over the very same Params (no copy of the weights).
            cfg = sp.cfg.replace(n_ff=1, n_embd=1)
            stub = SimpleNamespace(
                up=np.zeros(1), gate=None if sp.w_gate_fd is None else np.zeros(1), down_t=np.zeros(1)
            )
            dense = DenseFFN(cfg, stub, rngs=nnx.Rngs(0))
            dense.w_up_fd, dense.w_gate_fd, dense.w_down_fd = sp.w_up_fd, sp.w_gate_fd, sp.w_down_fd
            block.ffn = dense
    if hasattr(model, "refresh"):
        model.refresh()


def calibrate_capacities(
    source: Any,
    *,
    quantile: float = 0.99,
    slack: float = 1.0,
    multiple: int = 1,
    n_ff: int | None = None,
) -> list[int]:
    """Static per-layer capacity: the `quantile` of the per-token active count, times `slack`, rounded up to a
    `multiple`, at most n_ff.

    `source` is ActivationStats (uses its per-token active-count histogram when present, else the mean active
    count) or per-token active counts int [N, L] (e.g. the predictor's positives, from `mask_counts`)."""
    if not 0.0 < quantile <= 1.0:
        raise ConfigError(f"capacity quantile must be in (0, 1], got {quantile}")
    if hasattr(source, "active_per_token"):  # ActivationStats (pijax.sparsity, a layer above: duck-typed)
        n_ff = source.n_ff if n_ff is None else n_ff
        if source.active_hist is not None:
            q = [_hist_quantile(h, quantile) for h in source.active_hist]
        else:
            q = list(source.active_per_token())
    else:
        counts = np.asarray(source)
        if counts.ndim != 2 or counts.shape[0] == 0:
            raise DataError(f"per-token active counts must be [N, L] with N > 0, got shape {counts.shape}")
        if n_ff is None:
            raise ConfigError("calibrate_capacities needs n_ff with raw per-token counts")
        q = list(np.quantile(counts, quantile, axis=0, method="higher"))
    caps = []
    for v in q:
        c = max(1, int(np.ceil(float(v) * slack)))
        c = -(-c // multiple) * multiple
        caps.append(min(c, n_ff))
    return caps


def _hist_quantile(hist: np.ndarray, quantile: float) -> int:
    cum = np.cumsum(hist)
    return int(np.searchsorted(cum, quantile * cum[-1]))


def mask_counts(
    model: Any,
    windows: np.ndarray,
    *,
    mode: MaskSource,
    predictors: Sequence[PredictorWeights | Predictor] | None = None,
    pred_threshold: float | Sequence[float] = 0.0,
    act_thresholds: Sequence[float] | np.ndarray | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """Per-token number of neurons the mask source marks active, int32 [N_tokens, L] (for calibrate_capacities).

    Runs the model densely (a sparse FFN's cap would change the later layers' inputs)."""
    llama = getattr(model, "module", model)
    n_layer = _n_layer(llama)
    if mode == "predictor":
        if predictors is None:
            ckpt = getattr(model, "checkpoint", None)
            predictors = None if ckpt is None else ckpt.weights.predictors
        preds = _layer_list(predictors, n_layer, "predictors")
        if preds is None:
            raise ConfigError("mask source 'predictor' needs predictors")
        pmods = [p if isinstance(p, Predictor) else Predictor.from_weights(p) for p in preds]
    pts = [float(pred_threshold)] * n_layer if np.isscalar(pred_threshold) else list(pred_threshold)
    thr = None if act_thresholds is None else np.asarray(act_thresholds, np.float32)
    if mode == "threshold" and (thr is None or thr.shape != (n_layer,)):
        raise DataError(f"threshold mode needs {n_layer} act_thresholds")
    gd, st = nnx.split(llama)
    pred_state = nnx.split(pmods) if mode == "predictor" else None

    @jax.jit
    def counts_fn(st, pstate, tokens_bt):
        _, records = nnx.merge(gd, st).trace(tokens_bt)
        out = []
        for i, r in enumerate(records):
            if mode == "predictor":
                pm = nnx.merge(*pstate)[i]
                active = pm(r["ffn_in"]) >= pts[i]
            elif mode == "oracle":
                active = r["act"] != 0
            else:
                active = jnp.abs(r["act"]) > thr[i]
            out.append(active.sum(-1).reshape(-1))
        return jnp.stack(out, axis=1)

    parts = []
    for s in range(0, len(windows), batch_size):
        parts.append(np.asarray(counts_fn(st, pred_state, jnp.asarray(windows[s : s + batch_size]))))
    return np.concatenate(parts).astype(np.int32)
