"""Training-free skip criteria for gated FFNs, and the FFN and model forward with sub-threshold entries skipped.

A criterion scores what a layer may skip; an entry is skipped when its score is <= the layer's threshold t_l:
- "cats":   neuron f, score |act(gate_f)| (CATS: the gate alone decides, so up and down rows of skipped neurons
            are never read; only the gate matrix is read in full).
- "oracle": neuron f, score |act(gate_f) * up_f| (the exact per-neuron output size; needs gate and up of every
            neuron, so it saves only down rows; it bounds what a predictor of this target can reach).
- "teal":   input channel d of the normed FFN input, score |h_d| (TEAL's input sparsity: skipped channels are
            columns of gate and up that are never read).
Scores are >= 0, so t = 0 skips only exact zeros, which changes nothing: sparsity 0 is the dense model.

`masked_forward` is the dense model's forward with each layer's FFN replaced by `masked_ffn` (the same weights,
`ffn_activation` and `down_project` as `pijax.model.ffn.FFN`), and it also returns the share of entries skipped per
layer; thresholds are an argument, so one compiled function serves every sparsity level.
Dimension legend: see `pijax.model.layers`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pijax.errors import ConfigError
from pijax.kernels.reference import down_project, ffn_activation
from pijax.model.ffn import FFN
from pijax.model.rows import CRITERIA, Criterion


def check_criterion(criterion: str) -> Criterion:
    if criterion not in CRITERIA:
        raise ConfigError(f"sparsity criterion {criterion!r} is not one of {CRITERIA}")
    return criterion  # type: ignore[return-value]


def criterion_width(criterion: str, n_embd: int, n_ff: int) -> int:
    """How many entries per token a layer's threshold decides on: n_embd for teal, n_ff otherwise."""
    return n_embd if check_criterion(criterion) == "teal" else n_ff


def _gate_up(ffn: FFN, hn_btd: jax.Array) -> tuple[jax.Array | None, jax.Array]:
    up = jnp.einsum("btd,fd->btf", hn_btd, ffn.w_up_fd[...])
    gate = None if ffn.w_gate_fd is None else jnp.einsum("btd,fd->btf", hn_btd, ffn.w_gate_fd[...])
    return gate, up


def _neuron_scores(criterion: str, gate: jax.Array | None, up: jax.Array, act: jax.Array, kind: str) -> jax.Array:
    if criterion == "oracle" or gate is None:  # an ungated FFN: its activation is the whole neuron output
        return jnp.abs(act)
    return jnp.abs(ffn_activation(None, gate, kind))  # act(gate) alone: ffn_activation without a gate


def scores(ffn: FFN, hn_btd: jax.Array, criterion: str) -> jax.Array:
    """|score| per entry the criterion decides on: [B, T, D] for teal, [B, T, F] otherwise."""
    if criterion == "teal":
        return jnp.abs(hn_btd)
    gate, up = _gate_up(ffn, hn_btd)
    return _neuron_scores(criterion, gate, up, ffn_activation(gate, up, ffn.kind), ffn.kind)


def masked_ffn(ffn: FFN, hn_btd: jax.Array, criterion: str, threshold: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The FFN output with entries scoring <= threshold skipped, and the share skipped (a scalar)."""
    if criterion == "teal":
        keep = jnp.abs(hn_btd) > threshold
        act = ffn.activations(jnp.where(keep, hn_btd, 0.0))
    else:
        gate, up = _gate_up(ffn, hn_btd)
        act = ffn_activation(gate, up, ffn.kind)
        keep = _neuron_scores(criterion, gate, up, act, ffn.kind) > threshold
        act = jnp.where(keep, act, 0.0)
    return down_project(act, ffn.w_down_fd[...]), 1.0 - keep.mean()


def masked_forward(
    llama: Any, tokens_bt: jax.Array, criterion: str, thresholds_l: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Logits [B, T, V] of a dense `Llama` whose layer l skips entries scoring <= thresholds_l[l], and the share
    of entries skipped per layer [L]. Full-sequence, causal, no cache (as `Llama.trace`)."""
    b, t = tokens_bt.shape
    cos, sin = llama._angles(b, t, 0)
    x = llama.embed(tokens_bt)
    skipped = []
    for i, block in enumerate(llama.layers):
        h, _ = block.attend(x, cos, sin, None, 0)
        y, s = masked_ffn(block.ffn, block.ffn_norm(h), criterion, thresholds_l[i])
        skipped.append(s)
        x = h + y
    return llama.head(llama.output_norm(x)), jnp.stack(skipped)
