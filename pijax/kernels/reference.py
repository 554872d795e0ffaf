"""The FFN math every path shares (the XLA reference): the activation, the top-k row selection, the selection
as a mask, and the down projection.

Every FFN (dense, sparse, kernel, hybrid hot and cold parts) and the kernels' pure-JAX reference call these, so
there is one activation function and one selection in XLA; the C++ kernel (cpu_kernels.cc) implements the same
selection (top `capacity` by score among score >= threshold, ascending ids), tested against `select_rows`.
This module sits in the "model ops" layer: it imports nothing from pijax.model. Dimension legend: see
`pijax.model.layers`; here N = tokens, K = capacity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pijax.config import FfnActivation

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


def rows_activation(h_nd: jax.Array, up_kd: jax.Array, gate_kd: jax.Array | None, kind: FfnActivation) -> jax.Array:
    """act(gate x, up x) over a block of rows: [N, K]."""
    up = jnp.einsum("nd,kd->nk", h_nd, up_kd)
    gate = None if gate_kd is None else jnp.einsum("nd,kd->nk", h_nd, gate_kd)
    return ffn_activation(gate, up, kind)


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


def select_rows(score_nf: jax.Array, active_nf: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array]:
    """The `capacity` top-scoring active neurons per token: (idx [N, K] int32 ascending, valid [N, K] bool)."""
    masked = jnp.where(active_nf, score_nf, -jnp.inf)
    vals, idx = jax.lax.top_k(masked, capacity)
    # Ascending row order: the gathers then walk memory forwards, and sums run in the dense product's order.
    idx, valid = jax.lax.sort((idx.astype(jnp.int32), vals > -jnp.inf), dimension=1, num_keys=1)
    return idx, valid


def selection_mask(idx_nk: jax.Array, valid_nk: jax.Array, n_ff: int) -> jax.Array:
    """The selection as a dense [N, F] bool mask."""
    n = idx_nk.shape[0]
    mask = jnp.zeros((n, n_ff), jnp.bool_)
    return mask.at[jnp.arange(n)[:, None], idx_nk].max(valid_nk)


def keep_mask(score_nf: jax.Array, active_nf: jax.Array, capacity: int) -> jax.Array:
    """[N, F] bool: the active rows, or with a binding capacity the `capacity` top-scoring of them."""
    n_ff = score_nf.shape[-1]
    if capacity >= n_ff:
        return active_nf
    return selection_mask(*select_rows(score_nf, active_nf, capacity), n_ff)
