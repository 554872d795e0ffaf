"""`KernelFFN`: the FFN of a block on pijax's CPU kernels, dense or predictor-gated, in any weight format.

It replaces `block.ffn` (called as `ffn(h_btd, ffn_in_btd)`). Per token the predictor `fc2 relu(fc1 x)` reads the
residual stream before the FFN norm, neurons with logit >= threshold are selected (at most `capacity`, the
top-scoring: `SparseFFN`'s semantics), and only their rows are read, in place, by one kernel call
(`pijax.kernels.ops.sparse_ffn`); no row is copied. Without a predictor every neuron is computed (a dense FFN).
For many tokens (prefill) and without the kernel library the pure-JAX reference computes the same thing.
Dimension legend: see `pijax.model.layers`.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from pijax.config import FfnActivation, ModelConfig
from pijax.errors import ConfigError
from pijax.kernels.formats import Weight, WeightFormat, dequantize, to_format
from pijax.kernels.ops import linear, sparse_ffn
from pijax.kernels.reference import rows_activation


class KernelFFN(nnx.Module):
    """down_t^T act(gate x, up x) over the selected neurons (all of them without a predictor)."""

    def __init__(
        self,
        cfg: ModelConfig,
        up: Weight,
        gate: Weight | None,
        down_t: Weight,
        *,
        fc1: Weight | None = None,
        fc2: Weight | None = None,
        threshold: float = 0.0,
        capacity: int | None = None,
        skip_inactive: bool = True,
    ):
        if (fc1 is None) != (fc2 is None):
            raise ConfigError("a predictor needs both fc1 and fc2")
        capacity = cfg.n_ff if capacity is None else int(capacity)
        if not 1 <= capacity <= cfg.n_ff:
            raise ConfigError(f"FFN capacity {capacity} must be in [1, n_ff={cfg.n_ff}]")
        self.kind: FfnActivation = cfg.ffn_act
        self.n_ff = cfg.n_ff
        self.threshold = float(threshold)
        self.capacity = capacity
        self.skip_inactive = bool(skip_inactive)
        self.w_up_fd = nnx.Param(up)
        self.w_gate_fd = None if gate is None else nnx.Param(gate)
        self.w_down_fd = nnx.Param(down_t)
        self.fc1_rd = None if fc1 is None else nnx.Param(fc1)
        self.fc2_fr = None if fc2 is None else nnx.Param(fc2)

    @property
    def sparse(self) -> bool:
        return self.fc1_rd is not None

    @classmethod
    def from_ffn(
        cls,
        cfg: ModelConfig,
        ffn: Any,
        fmt: WeightFormat,
        *,
        predictor_fmt: WeightFormat | None = None,
        skip_inactive: bool = True,
    ) -> KernelFFN:
        """From a DenseFFN, a predictor-mode SparseFFN or a KernelFFN, its weights converted to `fmt` (the
        predictor's to `predictor_fmt`, default `fmt`)."""
        pfmt = predictor_fmt or fmt
        gate = None if ffn.w_gate_fd is None else to_format(ffn.w_gate_fd[...], fmt)
        kw: dict[str, Any] = {"skip_inactive": skip_inactive}
        if isinstance(ffn, KernelFFN):
            if ffn.sparse:
                kw |= {"fc1": to_format(ffn.fc1_rd[...], pfmt), "fc2": to_format(ffn.fc2_fr[...], pfmt)}
            kw |= {"threshold": ffn.threshold, "capacity": ffn.capacity}
        elif getattr(ffn, "mode", None) is not None:
            if ffn.mode != "predictor":
                raise ConfigError(f"KernelFFN runs predictor-gated FFNs, not mask source {ffn.mode!r}")
            pred = ffn.predictor
            kw |= {
                "fc1": to_format(pred.fc1_rd[...], pfmt),
                "fc2": to_format(pred.fc2_fr[...], pfmt),
                "threshold": ffn.pred_threshold,
                "capacity": ffn.capacity,
            }
        return cls(cfg, to_format(ffn.w_up_fd[...], fmt), gate, to_format(ffn.w_down_fd[...], fmt), **kw)

    def predictor_logits(self, ffn_in_btd: jax.Array) -> jax.Array:
        """[B, T, F] (only with a predictor)."""
        return linear(jax.nn.relu(linear(ffn_in_btd, self.fc1_rd[...])), self.fc2_fr[...])

    def activations(self, h_btd: jax.Array) -> jax.Array:
        """The true (dense) per-neuron outputs [B, T, F], as `DenseFFN.activations` (for profiling)."""
        b, t, d = h_btd.shape
        gate = None if self.w_gate_fd is None else dequantize(self.w_gate_fd[...])
        return rows_activation(h_btd.reshape(b * t, d), dequantize(self.w_up_fd[...]), gate, self.kind).reshape(
            b, t, -1
        )

    def selected(self, h_btd: jax.Array, ffn_in_btd: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(output [B, T, D], neurons selected per token [B, T])."""
        b, t, d = h_btd.shape
        logits = None if not self.sparse else self.predictor_logits(ffn_in_btd).reshape(b * t, self.n_ff)
        y, n_sel = sparse_ffn(
            h_btd.reshape(b * t, d),
            logits,
            self.w_up_fd[...],
            None if self.w_gate_fd is None else self.w_gate_fd[...],
            self.w_down_fd[...],
            kind=self.kind,
            threshold=self.threshold,
            capacity=self.capacity,
            skip_inactive=self.skip_inactive,
        )
        return y.reshape(b, t, d).astype(h_btd.dtype), n_sel.reshape(b, t)

    def __call__(self, h_btd: jax.Array, ffn_in_btd: jax.Array) -> jax.Array:
        return self.selected(h_btd, ffn_in_btd)[0]
