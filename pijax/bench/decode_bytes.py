"""Bytes a decode step reads (the bandwidth bound of pijax.bench.decode) and the predictor's selection statistics.

weight_bytes / kv_bytes / step_bytes: what one decode step of a `Llama` must read, and what the sparse kernel
really touches; selection_stats: a teacher-forced pass counting selected and live neurons per layer, and the
predictor thresholds that select a given fraction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pijax.kernels.formats import nbytes, row_bytes
from pijax.model.llama import Llama


def weight_bytes(llama: Llama) -> dict[str, Any]:
    """Bytes of each weight group a decode step reads, and each layer's FFN bytes per neuron (up+gate+down_t)."""
    attn = norms = pred = ffn_all = 0
    per_neuron, gate_row = [], []
    for block in llama.layers:
        a = block.attn
        attn += sum(nbytes(getattr(a, n)[...]) for n in ("w_q_nd", "w_k_nd", "w_v_nd", "w_o_dn"))
        norms += nbytes(block.attn_norm.weight[...]) + nbytes(block.ffn_norm.weight[...])
        ffn = block.ffn
        mats = [ffn.w_up_fd[...], ffn.w_down_fd[...]] + ([] if ffn.w_gate_fd is None else [ffn.w_gate_fd[...]])
        ffn_all += sum(nbytes(m) for m in mats)
        per_neuron.append(sum(row_bytes(m) for m in mats))
        first = ffn.w_up_fd[...] if ffn.w_gate_fd is None else ffn.w_gate_fd[...]
        gate_row.append(row_bytes(first))
        if ffn.selector.mode == "predictor":
            pred += nbytes(ffn.predictor.fc1_rd[...]) + nbytes(ffn.predictor.fc2_fr[...])
    head_w = llama.token_embd_vd if llama.w_out_vd is None else llama.w_out_vd
    emb = llama.token_embd_vd[...]
    return {
        "attention": attn,
        "head": nbytes(head_w[...]) + nbytes(llama.output_norm.weight[...]),
        "predictors": pred,
        "norms": norms,
        "embedding_row": emb.shape[1] * np.dtype(emb.dtype).itemsize,
        "ffn_dense": ffn_all,
        "ffn_bytes_per_neuron": per_neuron,
        "ffn_first_row_bytes": gate_row,
    }


def kv_bytes(llama: Llama, n_cache: int) -> int:
    """KV cache bytes one decode step reads (the engine attends over the whole padded cache, masked)."""
    cfg = llama.cfg
    return 2 * cfg.n_layer * n_cache * cfg.n_embd_kv * 4


def step_bytes(wb: dict[str, Any], kv: int, sel: Sequence[float] | None, live: Sequence[float] | None) -> dict:
    """(bytes the issue's bound counts, bytes the kernel touches) per decode step; sel/live per-layer means of
    selected neurons and of those with a nonzero output (None: dense)."""
    fixed = wb["attention"] + wb["head"] + wb["norms"] + wb["embedding_row"] + kv
    if sel is None:
        dense = fixed + wb["ffn_dense"]
        return {"bound_bytes": dense, "touched_bytes": dense}
    per, first = wb["ffn_bytes_per_neuron"], wb["ffn_first_row_bytes"]
    must = fixed + wb["predictors"] + sum(s * p for s, p in zip(sel, per, strict=True))
    touched = fixed + wb["predictors"]
    touched += sum(s * g + lv * (p - g) for s, lv, p, g in zip(sel, live, per, first, strict=True))
    return {"bound_bytes": int(must), "touched_bytes": int(touched)}


# ---------------------------------------------------------------- selection statistics


def selection_stats(llama: Llama, tokens: np.ndarray, fractions: Sequence[float] = ()) -> dict[str, Any]:
    """Teacher-forced pass over `tokens` [T]: per layer, mean neurons selected per token, of which with a
    nonzero output, and the per-layer predictor thresholds that select each of `fractions` of the neurons."""
    layers = list(llama.layers)
    if not all(b.ffn.backend == "kernels" and b.ffn.selector.mode == "predictor" for b in layers):
        return {}
    gd, st = nnx.split(llama)
    qs = jnp.asarray([1.0 - f for f in fractions], jnp.float32)

    @jax.jit
    def run(st: Any, tok_bt: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        model = nnx.merge(gd, st)
        b, t = tok_bt.shape
        cos, sin = model._angles(b, t, 0)
        x = model.embed(tok_bt)
        sel, live, thr = [], [], []
        for block in model.layers:
            h, _ = block.attend(x, cos, sin, None, 0)
            hn = block.ffn_norm(h)
            ffn = block.ffn
            logits = ffn.predictor_logits(h)
            chosen = logits >= ffn.selector.threshold
            act = ffn.activations(hn)
            sel.append(chosen.sum(-1).mean())
            live.append((chosen & (act != 0)).sum(-1).mean())
            thr.append(jnp.quantile(logits.reshape(-1), qs) if len(fractions) else jnp.zeros((0,)))
            x = h + ffn(hn, h)
        return jnp.stack(sel), jnp.stack(live), jnp.stack(thr)

    sel, live, thr = run(st, jnp.asarray(tokens[None, :], jnp.int32))
    n_ff = llama.cfg.n_ff
    sel, live = np.asarray(sel, np.float64), np.asarray(live, np.float64)
    return {
        "selected_per_layer": sel.tolist(),
        "live_per_layer": live.tolist(),
        "selected_fraction": float(sel.mean() / n_ff),
        "live_fraction": float(live.mean() / n_ff),
        "thresholds": {f"{f:g}": np.asarray(thr)[:, i].tolist() for i, f in enumerate(fractions)},
    }
