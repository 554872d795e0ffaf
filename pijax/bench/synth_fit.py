"""Fitting a synthetic model layer by layer (see pijax.bench.synth for the construction): a numpy forward with
llama.cpp's conventions, the gate offsets set from quantiles of real hidden states, the exact low-rank predictor,
and the fit statistics of each layer. `_generate` yields the tensors in file order, one layer in memory at a time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
from tqdm.auto import tqdm

from pijax.bench.synth_spec import (
    EMBED_RMS,
    EMBED_SEED,
    LAYER_SEED,
    SynthSpec,
    calibration_tokens,
    spec_rng,
    target_frequencies,
)
from pijax.errors import ConfigError

# ---- the calibration forward: numpy, f32, llama.cpp conventions (rope on adjacent pairs, kv head = h // group)


def rms_norm(h: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return (h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + eps) * w).astype(np.float32)


def rope(x: np.ndarray, base: float) -> np.ndarray:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of x [B, T, H, E] by position * base^(-2i/E) (llama.cpp mode 0)."""
    _, t, _, e = x.shape
    ang = np.arange(t)[:, None] * base ** (-np.arange(0, e, 2) / e)[None, :]
    cos, sin = np.cos(ang)[None, :, None, :], np.sin(ang)[None, :, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def attention(xn: np.ndarray, wq: np.ndarray, wk: np.ndarray, wv: np.ndarray, spec: SynthSpec) -> np.ndarray:
    """Causal GQA self-attention of normed inputs xn [B, T, D], before the output projection: [B, T, H*E]."""
    b, t, _ = xn.shape
    h, kv, e = spec.n_head, spec.n_head_kv, spec.head_dim
    q = rope((xn @ wq.T).reshape(b, t, h, e), spec.rope_base)
    k = rope((xn @ wk.T).reshape(b, t, kv, e), spec.rope_base)
    v = (xn @ wv.T).reshape(b, t, kv, e)
    q = q.reshape(b, t, kv, h // kv, e)
    s = np.einsum("btkge,bske->bkgts", q, k) / np.float32(math.sqrt(e))
    s = np.where(np.tril(np.ones((t, t), bool)), s, np.float32(-np.inf))
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    return np.einsum("bkgts,bske->btkge", s, v).reshape(b, t, h * e).astype(np.float32)


# ---- generation


@dataclasses.dataclass
class LayerFit:
    """How one layer's activations match its target law, and how its predictor does, on some token sample."""

    layer: int
    n_tokens: int
    spearman: float  # measured vs target per-neuron frequency
    mean_active: float  # measured mean active fraction (target: spec.mean_active)
    alpha_fit: float  # -slope of log(measured p) against log(rank), over ranks inside (p_min, p_max)
    pred_recall: float  # predictor at threshold 0 (the file's threshold), against the true activations
    pred_precision: float
    pred_active: float  # share of neurons the predictor marks active
    cover80: float  # smallest share of neurons that accounts for 80% of the measured activations


def layer_fit(
    spec: SynthSpec, layer: int, counts: np.ndarray, n_tokens: int, true_pos: float, n_predicted: float
) -> LayerFit:
    """Fit statistics from per-neuron activation counts over `n_tokens` and the predictor's hit counts."""
    from scipy.stats import spearmanr

    measured = counts / n_tokens
    target = target_frequencies(spec, layer)
    n_true = float(counts.sum())
    return LayerFit(
        layer=layer,
        n_tokens=int(n_tokens),
        spearman=float(spearmanr(measured, target).statistic),
        mean_active=float(measured.mean()),
        alpha_fit=_alpha_fit(measured, target, spec),
        pred_recall=true_pos / max(n_true, 1.0),
        pred_precision=true_pos / max(n_predicted, 1.0),
        pred_active=n_predicted / (n_tokens * spec.n_ff),
        cover80=float(np.searchsorted(np.cumsum(np.sort(counts)[::-1]), 0.8 * n_true) + 1) / spec.n_ff,
    )


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _quantile_per_row(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """For each row i of t [F, N], a value a_i with mean(t[i] < a_i) ≈ p_i; Gaussian tails outside the sample."""
    n = t.shape[1]
    ts = np.sort(t, axis=1)
    pos = np.clip(p * n - 0.5, 0, n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    rows = np.arange(t.shape[0])
    a = ts[rows, lo] * (1 - frac) + ts[rows, hi] * frac
    tail = (p * n < 2) | ((1 - p) * n < 2)
    if tail.any():
        from scipy.stats import norm

        mu, sd = t[tail].mean(1), t[tail].std(1)
        a[tail] = mu + sd * norm.ppf(p[tail])
    return a


def _alpha_fit(measured: np.ndarray, target: np.ndarray, spec: SynthSpec) -> float:
    """Fit measured frequency against the target's rank in the unclipped part of the law."""
    order = np.argsort(-target, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(1, len(order) + 1)
    ok = (target > spec.p_min * 1.001) & (target < spec.p_max * 0.999) & (measured > 0)
    if ok.sum() < 3:
        return float("nan")
    slope = np.polyfit(np.log(rank[ok]), np.log(measured[ok]), 1)[0]
    return float(-slope)


def _layer(
    spec: SynthSpec, layer: int, h: np.ndarray, calib: np.ndarray, rms0: float
) -> tuple[list[np.ndarray], LayerFit]:
    """Build layer `layer` against the residual stream h [B, T, D]; update h in place; return its tensors."""
    rng = spec_rng(spec, LAYER_SEED, layer)
    d, f, e, k = spec.n_embd, spec.n_ff, spec.head_dim, spec.k
    b, t, _ = h.shape
    scale = np.float32(spec.sublayer_scale * rms0)

    attn_norm = np.ones(d, np.float32)
    wq = _normal(rng, (spec.n_head * e, d), 1 / math.sqrt(d))
    wk = _normal(rng, (spec.n_head_kv * e, d), 1 / math.sqrt(d))
    wv = _normal(rng, (spec.n_head_kv * e, d), 1 / math.sqrt(d))
    wo = _normal(rng, (d, spec.n_head * e), 1 / math.sqrt(spec.n_head * e))
    attn_out = attention(rms_norm(h, attn_norm, spec.norm_eps), wq, wk, wv, spec) @ wo.T
    s_o = scale / np.sqrt(np.mean(attn_out**2))
    wo *= s_o
    h += attn_out * s_o
    del attn_out

    gamma = np.exp(_normal(rng, (d,), 0.1))  # ffn_norm: positive, mildly uneven, so "through the norm" matters
    hf = h.reshape(b * t, d)
    x = rms_norm(hf, gamma, spec.norm_eps)
    is_cal = np.repeat(calib, t)
    xc = x[is_cal]
    u = xc.mean(0)
    u /= np.linalg.norm(u)
    q = _normal(rng, (d, k), 1.0)
    q, _ = np.linalg.qr(q - np.outer(u, u @ q))  # [D, k], orthonormal columns, all ⊥ u
    w_low = _unit_rows(_normal(rng, (f, k), 1.0) @ q.T)
    noise = _normal(rng, (f, d), 1.0)
    noise -= np.outer(noise @ u, u)
    w = math.sqrt(1 - spec.gate_noise**2) * w_low + spec.gate_noise * _unit_rows(noise)
    w = _unit_rows(w - np.outer(w @ u, u)).astype(np.float32)
    del w_low, noise

    m = xc @ u
    if (m <= 0).any():
        raise ConfigError(
            f"synthetic layer {layer}: the hidden states lost their mean direction; raise embed_mean or lower "
            f"sublayer_scale (min u·x = {m.min():.3g})"
        )
    target = target_frequencies(spec, layer)
    thresholds = -(w @ xc.T) / m[None, :]  # neuron i fires on token n iff a_i > thresholds[i, n]
    a = _quantile_per_row(thresholds, target).astype(np.float32)
    del thresholds, xc
    gate = w + np.outer(a, u)
    pre = x @ gate.T
    s_g = np.float32(1 / pre.std())
    gate *= s_g
    pre *= s_g
    fired = pre > 0

    up = _normal(rng, (f, d), 1 / math.sqrt(d))
    act = np.maximum(pre, 0) * (x @ up.T)
    del pre
    down_t = _normal(rng, (f, d), 1.0)
    ffn_out = act @ down_t
    del act
    s_d = scale / np.sqrt(np.mean(ffn_out**2))
    down_t *= s_d

    basis, _ = np.linalg.qr(np.concatenate([(u * gamma)[:, None], q * gamma[:, None]], axis=1))
    basis = basis.T.astype(np.float32)  # [k+1, D], orthonormal rows
    coef = (gate * gamma) @ basis.T  # [F, k+1]
    r_half = spec.predictor_rank // 2
    fc1 = np.zeros((spec.predictor_rank, d), np.float32)
    fc2 = np.zeros((f, spec.predictor_rank), np.float32)
    fc1[: k + 1], fc1[r_half : r_half + k + 1] = basis, -basis
    fc2[:, : k + 1], fc2[:, r_half : r_half + k + 1] = coef, -coef
    held = ~is_cal
    predicted = (np.maximum(hf[held] @ fc1.T, 0) @ fc2.T) >= 0.0
    truth = fired[held]
    fit = layer_fit(spec, layer, truth.sum(0), int(held.sum()), float((predicted & truth).sum()), predicted.sum())
    hf += ffn_out * s_d
    return [attn_norm, wq, wk, wv, wo, gamma, up, gate, down_t, fc1, fc2], fit


def generate_tensors(spec: SynthSpec, fits: list[LayerFit], progress: bool) -> Iterator[np.ndarray]:
    wdt = np.float32 if spec.storage == "f32" else np.float16
    rng = spec_rng(spec, EMBED_SEED)
    d = spec.n_embd
    u0 = _unit_rows(_normal(rng, (1, d), 1.0))[0]
    # token_embd = c·u0 + e_t with |e_t| ≈ 1: the shared direction every hidden state keeps (see module doc)
    embd = _normal(rng, (spec.n_vocab, d), 1 / math.sqrt(d)) + np.float32(spec.embed_mean) * u0
    embd *= np.float32(EMBED_RMS * math.sqrt(d) / math.sqrt(1 + spec.embed_mean**2))
    rms0 = float(np.sqrt(np.mean(embd**2)))
    tokens = np.concatenate(
        [calibration_tokens(spec, spec.calib_seqs, 0), calibration_tokens(spec, spec.heldout_seqs, 1)]
    )
    calib = np.arange(len(tokens)) < spec.calib_seqs
    h = embd[tokens]
    yield embd.astype(wdt, copy=False)
    del embd
    yield np.ones(d, np.float32)
    yield _normal(rng, (spec.n_vocab, d), 2 / math.sqrt(d)).astype(wdt, copy=False)
    bar = tqdm(range(spec.n_layer), desc=f"synth {spec.preset}", unit="layer", disable=not progress)
    for layer in bar:
        tensors, fit = _layer(spec, layer, h, calib, rms0)
        fits.append(fit)
        bar.set_postfix(
            spearman=f"{fit.spearman:.3f}", active=f"{fit.mean_active:.3f}", recall=f"{fit.pred_recall:.2f}"
        )
        for arr in tensors:
            yield arr if arr.ndim == 1 else arr.astype(wdt, copy=False)
