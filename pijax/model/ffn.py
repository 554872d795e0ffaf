"""The dense gated FFN and the activation function shared with the sparse FFN.

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
from pijax.model.layers import param

# A single-token product against down_t [F, D] (a vector times a row-major matrix) runs ~25% below the read
# bandwidth in XLA:CPU; split into chunks of about this many rows, batched, then summed, it reaches it.
DOWN_CHUNK_ROWS = 128
_MIN_CHUNKED_F = 1024


def ffn_activation(gate: jax.Array | None, up: jax.Array, kind: FfnActivation) -> jax.Array:
    """Per-neuron FFN output before the down projection: silu(gate)*up, relu(gate)*up or relu(gate)*relu(up).

    Without a gate (a plain ReLU FFN) it is act(up)."""
    if gate is None:
        return jax.nn.silu(up) if kind == "silu" else jax.nn.relu(up)
    if kind == "silu":
        return jax.nn.silu(gate) * up
    if kind == "relu":
        return jax.nn.relu(gate) * up
    if kind == "drelu":
        return jax.nn.relu(gate) * jax.nn.relu(up)
    raise ValueError(f"unknown FFN activation {kind!r}")


def down_chunks(n_ff: int) -> int:
    """How many row chunks the single-token down projection uses (1: a plain product)."""
    if n_ff < _MIN_CHUNKED_F:
        return 1
    divisors = [c for c in range(1, n_ff + 1) if n_ff % c == 0 and n_ff // c >= 32]
    return min(divisors, key=lambda c: abs(n_ff // c - DOWN_CHUNK_ROWS))


def down_project(act_btf: jax.Array, w_down_fd: jax.Array) -> jax.Array:
    """sum_f act[b, t, f] * down_t[f, d], chunked for few tokens (see DOWN_CHUNK_ROWS)."""
    b, t, f = act_btf.shape
    c = down_chunks(f)
    if b * t > 4 or c == 1:
        return jnp.einsum("btf,fd->btd", act_btf, w_down_fd)
    # Here c is a chunk index and f a row within the chunk.
    parts = jnp.einsum(
        "btcf,cfd->btcd", act_btf.reshape(b, t, c, f // c), w_down_fd.reshape(c, f // c, w_down_fd.shape[1])
    )
    return parts.sum(axis=2)


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
        up = jnp.einsum("btd,fd->btf", h_btd, self.w_up_fd[...])
        gate = None if self.w_gate_fd is None else jnp.einsum("btd,fd->btf", h_btd, self.w_gate_fd[...])
        return ffn_activation(gate, up, self.kind)

    def __call__(self, h_btd: jax.Array, ffn_in_btd: jax.Array) -> jax.Array:
        del ffn_in_btd  # only a predictor-gated FFN reads it
        return down_project(self.activations(h_btd), self.w_down_fd[...])
