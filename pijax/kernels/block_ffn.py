"""`BlockFFN`: a dense SwiGLU/ReLU FFN on llama.cpp block-format weights, laid out as llama.cpp computes it.

gate and up are rows [F, D] (kept as one [2F, D] matrix, so one kernel call quantizes x once and reads both) and
down is the file's `ffn_down` [D, F], its rows along F: the down product quantizes the activation vector to 8-bit
blocks too. That is llama.cpp's own sequence of products on the same bytes, so a quantized GGUF decodes here as it
does in llama.cpp (up to f32 summation order). A predictor-gated FFN needs down_t rows [F, D] instead
(`KernelFFN` on BlockRows); this module is the dense one. Dimension legend: see `pijax.model.layers`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pijax.config import FfnActivation, ModelConfig
from pijax.kernels.blocks import BlockRows, linear_reference
from pijax.kernels.formats import Weight
from pijax.kernels.ops import linear
from pijax.kernels.reference import ffn_activation


class BlockFFN(nnx.Module):
    """down act(gate x, up x), every neuron; weights BlockRows (down may be f32 when F is not a multiple of 32)."""

    def __init__(self, cfg: ModelConfig, gate: BlockRows | None, up: BlockRows, down_df: Weight):
        self.kind: FfnActivation = cfg.ffn_act
        self.n_ff = cfg.n_ff
        self.has_gate = gate is not None
        if gate is not None:
            if gate.kind != up.kind:
                raise ValueError(f"gate ({gate.kind}) and up ({up.kind}) must share one block format")
            up = BlockRows(jnp.concatenate([gate.blocks, up.blocks], axis=0), up.kind)
        self.w_gate_up = nnx.Param(up)
        self.w_down_df = nnx.Param(down_df)

    def _act(self, gu: jax.Array) -> jax.Array:
        if self.has_gate:
            return ffn_activation(gu[..., : self.n_ff], gu[..., self.n_ff :], self.kind)
        return ffn_activation(None, gu, self.kind)

    def activations(self, h_btd: jax.Array) -> jax.Array:
        """The per-neuron outputs [B, T, F] (the XLA reference's products, for profiling)."""
        return self._act(linear_reference(h_btd, self.w_gate_up[...]))

    def __call__(self, h_btd: jax.Array, ffn_in_btd: jax.Array) -> jax.Array:
        del ffn_in_btd  # no predictor
        act = self._act(linear(h_btd, self.w_gate_up[...]))
        return linear(act, self.w_down_df[...]).astype(h_btd.dtype)
