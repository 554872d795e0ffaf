"""The dense gated FFN (its math, shared with every other FFN, is `pijax.kernels.reference`).

Weights are neuron rows (`[F, D]` for up, gate and down_t) so that a later sparse FFN can gather or pack rows.
Any FFN that a `Block` holds is called as `ffn(h_btd, ffn_in_btd) -> y_btd`: h is the normed FFN input and
ffn_in the residual stream before the FFN norm (what PowerInfer's predictors read). Dimension legend: see
`pijax.model.layers`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pijax.config import FfnActivation, ModelConfig
from pijax.io.weights import LayerWeights
from pijax.kernels.ops import dense_kernel_ok, sparse_ffn
from pijax.kernels.reference import down_project, rows_activation
from pijax.model.layers import param


class DenseFFN(nnx.Module):
    """down_t^T act(gate x, up x): every neuron computed."""

    def __init__(
        self,
        cfg: ModelConfig,
        weights: LayerWeights | None = None,
        *,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        shape = (cfg.n_ff, cfg.n_embd)
        w = weights
        self.kind: FfnActivation = cfg.ffn_act
        self.w_up_fd = param(None if w is None else w.up, shape, rngs, dtype)
        has_gate = w is None or w.gate is not None
        self.w_gate_fd = param(None if w is None else w.gate, shape, rngs, dtype) if has_gate else None
        self.w_down_fd = param(None if w is None else w.down_t, shape, rngs, dtype)

    def activations(self, h_btd: jax.Array) -> jax.Array:
        """Per-neuron outputs act(gate)*up, [B, T, F], for profiling."""
        b, t, d = h_btd.shape
        gate = None if self.w_gate_fd is None else self.w_gate_fd[...]
        return rows_activation(h_btd.reshape(b * t, d), self.w_up_fd[...], gate, self.kind).reshape(b, t, -1)

    def __call__(self, h_btd: jax.Array, ffn_in_btd: jax.Array) -> jax.Array:
        del ffn_in_btd  # only a predictor-gated FFN reads it
        b, t, d = h_btd.shape
        up = self.w_up_fd[...]
        if t == 1 and dense_kernel_ok(b, up):  # (a training batch is never one position: it needs gradients)
            # Decode: one kernel call reads each neuron's gate and up rows in one pass and adds its down_t row;
            # three XLA dots beside the kernels' other calls would run on a second thread pool (NOTES, issue 7).
            gate = None if self.w_gate_fd is None else self.w_gate_fd[...]
            y, _ = sparse_ffn(h_btd.reshape(b * t, d), None, up, gate, self.w_down_fd[...], kind=self.kind)
            return y.reshape(b, t, d).astype(h_btd.dtype)
        return down_project(self.activations(h_btd), self.w_down_fd[...])
