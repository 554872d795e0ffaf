"""The FFN module: one class for every single-device FFN, its selector and its backend as fields.

`FFN` holds the neuron rows (`[F, D]` for up, gate and down_t, so that a selection gathers or reads rows), a
`Selector` (which rows: dense, relu, oracle, threshold or predictor, with its threshold, capacity and gather
limit), the layer's `Predictor` when the selector needs one, and a backend ("xla": the reference, and the GPU
path when jax runs on a GPU; "kernels": pijax's C++ CPU kernels, in any weight format). The computation is
`pijax.model.rows.block_ffn` over the whole layer, the same one the hybrid engine runs on its hot and cold rows;
its math (activation, top-k selection, down projection) is `pijax.kernels.reference`.

A `Block` calls it as `ffn(h_btd, ffn_in_btd) -> y_btd`: h is the normed FFN input and ffn_in the residual
stream before the FFN norm (what PowerInfer's predictors read). Changing how a model runs its FFNs is setting
these fields (`pijax.model.sparse_ffn.sparsify`, `pijax.model.convert.use_kernels`); the weights stay shared.
Dimension legend: see `pijax.model.layers`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pijax.config import FfnActivation, ModelConfig
from pijax.errors import ConfigError
from pijax.io.weights import LayerWeights
from pijax.kernels.formats import Weight, WeightFormat, dequantize, to_format
from pijax.kernels.ops import dense_kernel_ok, linear
from pijax.kernels.reference import ffn_activation, rows_activation
from pijax.model.layers import param
from pijax.model.predictor import Predictor
from pijax.model.rows import (
    DENSE_SELECTOR,
    Backend,
    Selector,
    block_ffn,
    check_backend,
    dense_position_logits,
    kernels_run,
)


def _as_param(w: Weight | nnx.Param) -> nnx.Param:
    # An existing Param is kept as is: a module built from another one shares its weights (no copy).
    return w if isinstance(w, nnx.Param) else nnx.Param(w)


class FFN(nnx.Module):
    """down_t^T act(gate x, up x) over the rows the selector keeps (see the module docstring)."""

    def __init__(
        self,
        cfg: ModelConfig,
        up: Weight | nnx.Param,
        gate: Weight | nnx.Param | None,
        down_t: Weight | nnx.Param | None,
        *,
        selector: Selector = DENSE_SELECTOR,
        backend: Backend = "xla",
        predictor: Predictor | None = None,
        down_df: Weight | None = None,
    ):
        if (down_t is None) == (down_df is None):
            raise ConfigError("an FFN takes its down matrix once: as down_t rows [F, D] or as down_df [D, F]")
        self.kind: FfnActivation = cfg.ffn_act
        self.n_ff = cfg.n_ff
        self.w_up_fd = _as_param(up)
        self.w_gate_fd = None if gate is None else _as_param(gate)
        # down_t rows [F, D] serve every selector. A dense block-format load instead keeps the file's down matrix
        # [D, F] (down_df), so that its products are llama.cpp's on the same bytes (no re-quantized transpose).
        self.w_down_fd = None if down_t is None else _as_param(down_t)
        self.w_down_df = None if down_df is None else nnx.Param(down_df)
        self.selector = DENSE_SELECTOR
        self.backend: Backend = "xla"
        self.predictor: Predictor | None = nnx.data(None)  # a data field: it may hold a Predictor later
        self.configure(selector, backend, predictor)

    @classmethod
    def from_weights(
        cls, cfg: ModelConfig, weights: LayerWeights | None, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32
    ) -> FFN:
        """A dense XLA FFN from a checkpoint layer's arrays, or randomly initialised when `weights` is None."""
        shape = (cfg.n_ff, cfg.n_embd)
        w = weights
        up = param(None if w is None else w.up, shape, rngs, dtype)
        has_gate = w is None or w.gate is not None
        gate = param(None if w is None else w.gate, shape, rngs, dtype) if has_gate else None
        return cls(cfg, up, gate, param(None if w is None else w.down_t, shape, rngs, dtype))

    def check(self, selector: Selector, backend: str, predictor: Predictor | None) -> None:
        """ConfigError, one line, when this FFN cannot run `selector` on `backend`."""
        check_backend(backend)
        if selector.capacity is not None and selector.capacity > self.n_ff:
            raise ConfigError(f"FFN capacity {selector.capacity} must be in [1, n_ff={self.n_ff}]")
        if selector.mode == "predictor" and predictor is None:
            raise ConfigError("selector 'predictor' needs a predictor")
        if self.w_down_fd is None and selector.mode != "dense":
            raise ConfigError(
                f"selector {selector.mode!r} needs down_t rows [F, D]; this FFN keeps the file's down matrix [D, F] "
                "(a dense block-format load): load the model with its predictors instead"
            )
        if backend == "kernels" and not kernels_run(selector, self.n_ff):
            raise ConfigError(
                f"selector {selector.mode!r} (capacity {selector.capacity}) needs the dense activations, which the "
                "kernels do not compute: use backend 'xla'"
            )

    def configure(
        self, selector: Selector | None = None, backend: Backend | None = None, predictor: Any = dataclasses.MISSING
    ) -> None:
        """Set the selector, backend and predictor (each left as it is when not given), checked together. A
        predictor stays attached under another selector (unused) until it is set to None."""
        selector = self.selector if selector is None else selector
        backend = self.backend if backend is None else backend
        predictor = self.predictor if predictor is dataclasses.MISSING else predictor
        self.check(selector, backend, predictor)
        self.selector, self.backend, self.predictor = selector, backend, nnx.data(predictor)

    def to_format(self, fmt: WeightFormat, predictor_fmt: WeightFormat | None = None) -> None:
        """Store the rows (and the predictor's) in `fmt` (pijax.kernels.formats), in place."""
        self.w_up_fd = nnx.Param(to_format(self.w_up_fd[...], fmt))
        if self.w_gate_fd is not None:
            self.w_gate_fd = nnx.Param(to_format(self.w_gate_fd[...], fmt))
        if self.w_down_fd is not None:
            self.w_down_fd = nnx.Param(to_format(self.w_down_fd[...], fmt))
        if self.w_down_df is not None:
            self.w_down_df = nnx.Param(to_format(self.w_down_df[...], fmt))
        if self.predictor is not None:
            pfmt = predictor_fmt or fmt
            self.predictor.fc1_rd = nnx.Param(to_format(self.predictor.fc1_rd[...], pfmt))
            self.predictor.fc2_fr = nnx.Param(to_format(self.predictor.fc2_fr[...], pfmt))

    def predictor_logits(self, ffn_in_btd: jax.Array) -> jax.Array:
        """The predictor's logits [B, T, F] (only with a predictor); on the kernels in the weights' format."""
        p = self.predictor
        if self.backend == "kernels":
            return linear(jax.nn.relu(linear(ffn_in_btd, p.fc1_rd[...])), p.fc2_fr[...])
        return p(ffn_in_btd)

    def activations(self, h_btd: jax.Array) -> jax.Array:
        """The true (dense) per-neuron outputs act(gate)*up [B, T, F], whatever the selector (profiling)."""
        b, t, d = h_btd.shape
        gate = None if self.w_gate_fd is None else dequantize(self.w_gate_fd[...])
        act = rows_activation(h_btd.reshape(b * t, d), dequantize(self.w_up_fd[...]), gate, self.kind)
        return act.reshape(b, t, -1)

    def selected(
        self, h_btd: jax.Array, ffn_in_btd: jax.Array, pos: jax.Array | int = 0
    ) -> tuple[jax.Array, jax.Array | None]:
        """(output [B, T, D], rows run per token [B, T] on the kernels, else None); `pos`: the position of the
        first of the T tokens (for the selector's dense_positions)."""
        b, t, d = h_btd.shape
        logits = None
        if self.selector.mode == "predictor":
            logits = dense_position_logits(self.predictor_logits(ffn_in_btd), pos, self.selector.dense_positions)
            logits = logits.reshape(b * t, self.n_ff)
        gate = None if self.w_gate_fd is None else self.w_gate_fd[...]
        up = self.w_up_fd[...]
        if self.w_down_df is not None:  # dense, in llama.cpp's order of products (see __init__)
            h_nd = h_btd.reshape(b * t, d)
            act = ffn_activation(None if gate is None else linear(h_nd, gate), linear(h_nd, up), self.kind)
            return linear(act, self.w_down_df[...]).astype(h_btd.dtype).reshape(b, t, d), None
        backend = self.backend
        if backend == "xla" and self.selector.mode == "dense" and t == 1 and dense_kernel_ok(b, up):
            # Dense decode on a CPU (a training batch is never one position): one kernel call reads each neuron's
            # gate and up rows in one pass and adds its down_t row; three XLA dots beside the kernels' other calls
            # would run on a second thread pool (NOTES, issue 7).
            backend = "kernels"
        y, n_sel = block_ffn(
            h_btd.reshape(b * t, d), logits, up, gate, self.w_down_fd[...], self.kind, self.selector, backend
        )
        return y.reshape(b, t, d), None if n_sel is None else n_sel.reshape(b, t)

    def __call__(self, h_btd: jax.Array, ffn_in_btd: jax.Array, pos: jax.Array | int = 0) -> jax.Array:
        return self.selected(h_btd, ffn_in_btd, pos)[0]
