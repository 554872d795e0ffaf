"""Synthetic scale models: random-weight ReGLU LLaMA GGUFs of any shape whose FFN neurons fire with a power law.

Real ReLU LLMs of 1-7B parameters are large downloads; hot/cold placement only matters at that scale. This module
writes a PowerInfer-style file (PWRI magic, `ffn_down_t`, `fc1`/`fc2` predictors) of a chosen shape, labelled
synthetic everywhere (`general.name`, `pijax.synthetic = true`, the generation parameters under
`pijax.synthetic.*`, and a `NAME.synth.json` report next to it).

How the power law is built (no mask is faked; the weights alone produce it):
- Target: in layer l the neuron of rank r (1-based) fires with probability p_r = clip(C r^-alpha, p_min, p_max),
  C chosen so that mean(p) = `mean_active`; a seeded per-layer permutation decides which neuron has which rank.
- The token embeddings share a mean direction (each row = c·u0 + e_t), so the normed FFN input x of every layer
  has a dominant mean direction u (measured, per layer) and token-dependent parts around it.
- Gate row i = w_i + a_i·u with w_i ⊥ u: a random direction mostly inside a rank-`gate_rank` subspace Q plus
  `gate_noise` of full-rank noise. Neuron i fires iff w_i·x + a_i (u·x) > 0, i.e. iff a_i > -w_i·x / (u·x), so
  a_i is set to the p_i-quantile of that ratio over the real hidden states x of calibration sequences.
- The model is built layer by layer: calibration sequences (BOS + uniform random tokens) run through the layers
  built so far (a numpy forward with llama.cpp's conventions), so layer l is fitted to the hidden states that
  layers < l really produce. Held-out sequences run alongside and measure the fit (nothing is fitted on them).
- Predictor: sign(gate_i · x) = sign((gate_i ⊙ γ) · h) for the residual h before the FFN norm γ, so the activation
  is a linear threshold in h. With B an orthonormal basis of span(u ⊙ γ, Q ⊙ γ) (k + 1 rows, k = R/2 - 1) and
  C = (gate ⊙ γ) B^T, the predictor fc2·relu(fc1·h) with fc1 = [B; -B], fc2 = [C, -C] equals C B h exactly
  (relu(z) - relu(-z) = z): it misses only what the full-rank gate noise contributes.
- Attention and FFN output matrices are random, rescaled so each sub-layer adds `sublayer_scale` times the
  embedding RMS to the residual stream.

Files are written tensor by tensor as they are generated (`write_gguf_stream`), so memory holds one layer plus
the calibration activations, never the model. Default location: `$PIJAX_CACHE/synth` or `~/.cache/pijax/synth`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from filelock import FileLock
from tqdm.auto import tqdm

from pijax.errors import ConfigError, DataError, GGUFFormatError, PijaxError
from pijax.io.checkpoint import ACTIVATION_KEY, THRESHOLD_KEY, tokenizer_metadata
from pijax.io.gguf import VT, Meta, read_gguf, write_gguf_stream
from pijax.io.tokenizer import TOKEN_UNUSED
from pijax.paths import STORIES260K

GENERATOR_VERSION = 2
# RMS of the token embeddings. Everything downstream scales with it; 0.25 keeps the residual stream (~0.25 to ~1)
# far above the RMSNorm eps and the small output matrices (wo, down_t) inside f16's normal range.
EMBED_RMS = 0.25
META_PREFIX = "pijax.synthetic"
_EMBED_SEED, _LAYER_SEED, _TARGET_SEED, _TOKEN_SEED = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class SynthSpec:
    """Shape and construction parameters of a synthetic model; its hash names the cached file."""

    preset: str
    n_vocab: int
    n_ctx: int
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    alpha: float = 0.9  # power-law exponent: 0.9 puts 80% of activations on ~43% of neurons, as PowerInfer reports
    mean_active: float = 0.10
    p_max: float = 0.99
    p_min: float = 1e-4
    predictor_rank: int = 64  # R, rows of fc1 (even: the predictor is a rank-R/2 linear map, see the module doc)
    gate_rank: int | None = None  # k, intrinsic rank of the gate rows' token-dependent part; None: R/2 - 1
    gate_noise: float = 0.2  # share of each gate direction that is full-rank noise (what the predictor misses)
    embed_mean: float = 1.0  # c/|e_t|: how strongly every token embedding shares the mean direction
    sublayer_scale: float = 0.5  # each attention/FFN output's RMS relative to the embedding RMS
    storage: Literal["f32", "f16"] = "f32"
    seed: int = 0
    calib_seqs: int = 32  # the 1.1B's deepest layer fits to Spearman 0.938 with 32, 0.925 with 16 (README)
    heldout_seqs: int = 8
    seq_len: int = 256
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head or self.n_head % self.n_head_kv or (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"synthetic shape: bad heads {self.n_head}/{self.n_head_kv} for n_embd {self.n_embd}")
        if self.predictor_rank < 4 or self.predictor_rank % 2:
            raise ConfigError(f"synthetic predictor_rank must be even and >= 4, got {self.predictor_rank}")
        if not 1 <= self.k < min(self.n_embd, self.predictor_rank // 2):
            raise ConfigError(f"synthetic gate_rank must be in [1, predictor_rank/2), got {self.k}")
        if not 0 < self.p_min < self.mean_active < self.p_max <= 1:
            raise ConfigError(f"synthetic frequencies need 0 < p_min < mean_active < p_max <= 1 ({self})")
        if not 0 <= self.gate_noise < 1:
            raise ConfigError(f"synthetic gate_noise must be in [0, 1), got {self.gate_noise}")
        if self.storage not in ("f32", "f16"):
            raise ConfigError(f"synthetic storage must be f32 or f16, got {self.storage!r}")
        if self.seq_len > self.n_ctx or self.calib_seqs * self.seq_len < 64:
            raise ConfigError("synthetic calibration needs seq_len <= n_ctx and at least 64 tokens")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def k(self) -> int:
        return self.gate_rank if self.gate_rank is not None else self.predictor_rank // 2 - 1

    @property
    def name(self) -> str:
        return f"synthetic-{self.preset}-relu"

    def key(self) -> str:
        blob = json.dumps([GENERATOR_VERSION, dataclasses.asdict(self)], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def replace(self, **changes: Any) -> SynthSpec:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown synthetic-model parameter(s) {unknown}")
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, SynthSpec] = {
    "tiny": SynthSpec("tiny", 512, 256, 64, 512, 4, 4, 2, predictor_rank=16, seq_len=128),
    "tinyllama-1.1b": SynthSpec("tinyllama-1.1b", 32000, 2048, 2048, 5632, 22, 32, 4, predictor_rank=256),
    "llama2-7b": SynthSpec("llama2-7b", 32000, 4096, 4096, 11008, 32, 32, 32, predictor_rank=512),
}


def preset_spec(preset: str, **overrides: Any) -> SynthSpec:
    if preset not in PRESETS:
        raise ConfigError(f"unknown synthetic preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset].replace(**overrides)


def _rng(spec: SynthSpec, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([spec.seed, stream, index]))


def power_law(n: int, alpha: float, mean: float, p_min: float, p_max: float) -> np.ndarray:
    """p_r = clip(C r^-alpha, p_min, p_max) for ranks r = 1..n, with C such that mean(p) = `mean` (descending)."""
    r = np.arange(1, n + 1, dtype=np.float64)
    lo, hi = -60.0, 60.0  # bisection on log C; mean(p) grows monotonically with C
    for _ in range(200):
        mid = (lo + hi) / 2
        if np.clip(np.exp(mid) * r**-alpha, p_min, p_max).mean() < mean:
            lo = mid
        else:
            hi = mid
    return np.clip(np.exp((lo + hi) / 2) * r**-alpha, p_min, p_max)


def target_frequencies(spec: SynthSpec, layer: int) -> np.ndarray:
    """The activation probability each neuron of `layer` was built to have ([n_ff], in neuron order)."""
    p = power_law(spec.n_ff, spec.alpha, spec.mean_active, spec.p_min, spec.p_max)
    perm = _rng(spec, _TARGET_SEED, layer).permutation(spec.n_ff)
    out = np.empty(spec.n_ff)
    out[perm] = p
    return out


def calibration_tokens(spec: SynthSpec, n_seqs: int, stream: int = 0) -> np.ndarray:
    """BOS followed by uniform random token ids, [n_seqs, seq_len] (stream 0: calibration, 1: held out)."""
    toks = _rng(spec, _TOKEN_SEED, stream).integers(0, spec.n_vocab, size=(n_seqs, spec.seq_len), dtype=np.int64)
    toks[:, 0] = 1
    return toks


def synthetic_vocab(n_vocab: int) -> dict[str, Any]:
    """stories260K's SentencePiece vocabulary, padded with unused tokens up to `n_vocab`, so text tokenizes."""
    md = tokenizer_metadata(read_gguf(STORIES260K))
    tokens = list(md["tokenizer.ggml.tokens"].value)
    if n_vocab < len(tokens):
        raise ConfigError(f"synthetic n_vocab must be at least {len(tokens)} (the shipped vocabulary)")
    pad = n_vocab - len(tokens)
    md["tokenizer.ggml.tokens"] = Meta(tokens + [f"<pijax_unused_{i}>" for i in range(len(tokens), n_vocab)], VT.ARRAY)
    scores = np.asarray(md["tokenizer.ggml.scores"].value, np.float32)
    md["tokenizer.ggml.scores"] = Meta(np.concatenate([scores, np.full(pad, -1e9, np.float32)]), VT.ARRAY)
    types = np.asarray(md["tokenizer.ggml.token_type"].value, np.int32)
    md["tokenizer.ggml.token_type"] = Meta(np.concatenate([types, np.full(pad, TOKEN_UNUSED, np.int32)]), VT.ARRAY)
    return md


def _metadata(spec: SynthSpec) -> dict[str, Any]:
    md: dict[str, Any] = {
        "general.architecture": "llama",
        "general.name": spec.name,
        "general.description": "SYNTHETIC random-weight model from pijax.bench.synth (power-law ReGLU), not trained",
        "llama.context_length": spec.n_ctx,
        "llama.embedding_length": spec.n_embd,
        "llama.block_count": spec.n_layer,
        "llama.feed_forward_length": spec.n_ff,
        "llama.rope.dimension_count": spec.head_dim,
        "llama.attention.head_count": spec.n_head,
        "llama.attention.head_count_kv": spec.n_head_kv,
        "llama.attention.layer_norm_rms_epsilon": spec.norm_eps,
        "llama.rope.freq_base": spec.rope_base,
        "general.file_type": 0 if spec.storage == "f32" else 1,
        ACTIVATION_KEY: "relu",
        THRESHOLD_KEY: 0.0,
        META_PREFIX: True,
        f"{META_PREFIX}.key": spec.key(),
        f"{META_PREFIX}.generator_version": GENERATOR_VERSION,
        f"{META_PREFIX}.law": "p_r = clip(C * r^-alpha, p_min, p_max), mean(p) = mean_active, per-layer permutation",
    }
    # Every SynthSpec field, exactly (floats as f64, None as -1), so `spec_from_metadata` round-trips.
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        md[f"{META_PREFIX}.{f.name}"] = Meta(value, VT.FLOAT64) if isinstance(value, float) else value
    md[f"{META_PREFIX}.gate_rank"] = -1 if spec.gate_rank is None else spec.gate_rank
    md[f"{META_PREFIX}.gate_rank_effective"] = spec.k
    return md | synthetic_vocab(spec.n_vocab)


def spec_from_metadata(metadata: dict[str, Any]) -> SynthSpec | None:
    """The SynthSpec a synthetic file was generated from, or None for a file that is not synthetic."""
    if not metadata.get(META_PREFIX, False):
        return None
    values = {f.name: metadata[f"{META_PREFIX}.{f.name}"] for f in dataclasses.fields(SynthSpec)}
    values = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in values.items()}
    if values["gate_rank"] == -1:
        values["gate_rank"] = None
    return SynthSpec(**values)


def _tensor_specs(spec: SynthSpec) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    d, f, e, r = spec.n_embd, spec.n_ff, spec.head_dim, spec.predictor_rank
    w = np.dtype(np.float32 if spec.storage == "f32" else np.float16)
    f32 = np.dtype(np.float32)  # 1-D norms stay f32, as llama.cpp's converters write them
    out = [("token_embd.weight", (spec.n_vocab, d), w), ("output_norm.weight", (d,), f32)]
    out.append(("output.weight", (spec.n_vocab, d), w))
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        out += [
            (p + "attn_norm.weight", (d,), f32),
            (p + "attn_q.weight", (spec.n_head * e, d), w),
            (p + "attn_k.weight", (spec.n_head_kv * e, d), w),
            (p + "attn_v.weight", (spec.n_head_kv * e, d), w),
            (p + "attn_output.weight", (d, spec.n_head * e), w),
            (p + "ffn_norm.weight", (d,), f32),
            (p + "ffn_up.weight", (f, d), w),
            (p + "ffn_gate.weight", (f, d), w),
            (p + "ffn_down_t.weight", (f, d), w),
            (p + "fc1.weight", (r, d), w),
            (p + "fc2.weight", (f, r), w),
        ]
    return out


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


@dataclasses.dataclass
class SynthReport:
    spec: SynthSpec
    path: Path
    file_bytes: int
    build_seconds: float
    layers: list[LayerFit]

    def summary(self) -> dict[str, float]:
        cols = ("spearman", "mean_active", "alpha_fit", "pred_recall", "pred_precision", "pred_active", "cover80")
        return {c: float(np.mean([getattr(f, c) for f in self.layers])) for c in cols}

    def to_json(self) -> dict[str, Any]:
        return {
            "synthetic": True,
            "spec": dataclasses.asdict(self.spec),
            "key": self.spec.key(),
            "path": str(self.path),
            "file_bytes": self.file_bytes,
            "build_seconds": round(self.build_seconds, 2),
            "summary": self.summary(),
            "layers": [dataclasses.asdict(f) for f in self.layers],
        }


def report_path(model_path: str | os.PathLike[str]) -> Path:
    p = Path(model_path)
    return p.with_name(p.stem + ".synth.json")


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
    rng = _rng(spec, _LAYER_SEED, layer)
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


def _generate(spec: SynthSpec, fits: list[LayerFit], progress: bool) -> Iterator[np.ndarray]:
    wdt = np.float32 if spec.storage == "f32" else np.float16
    rng = _rng(spec, _EMBED_SEED)
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


def build_synth_model(spec: SynthSpec, path: str | os.PathLike[str], *, progress: bool = True) -> SynthReport:
    """Generate and write the model at `path` and its report `NAME.synth.json`; returns the measured fit."""
    report = _write_model(spec, Path(path), progress)
    report_path(path).write_text(json.dumps(report.to_json(), indent=1) + "\n")
    return report


def _write_model(spec: SynthSpec, path: Path, progress: bool) -> SynthReport:
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fits: list[LayerFit] = []
    write_gguf_stream(path, _metadata(spec), _tensor_specs(spec), _generate(spec, fits, progress), magic="PWRI")
    return SynthReport(spec, path, path.stat().st_size, time.perf_counter() - t0, fits)


def default_cache_dir() -> Path:
    root = os.environ.get("PIJAX_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "pijax") / "synth"


def _is_complete(path: Path, spec: SynthSpec) -> bool:
    try:
        f = read_gguf(path)
    except GGUFFormatError:
        return False
    return f.metadata.get(f"{META_PREFIX}.key") == spec.key() and report_path(path).is_file()


def ensure_synth_model(
    preset: str, *, cache_dir: str | os.PathLike[str] | None = None, progress: bool = True, **overrides: Any
) -> Path:
    """The synthetic model for `preset` with `overrides`, built on first use and reused (keyed by its parameters).

    Concurrent callers (multirun jobs) wait on a file lock instead of building twice; a half-written file is
    never visible under the final name.
    """
    spec = preset_spec(preset, **overrides)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.preset}-{spec.key()}.gguf"
    with FileLock(str(path) + ".lock"):
        if path.is_file() and _is_complete(path, spec):
            return path
        partial = path.with_name(path.name + ".partial")
        try:
            report = _write_model(spec, partial, progress)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        report.path = path
        report_path(path).write_text(json.dumps(report.to_json(), indent=1) + "\n")
        os.replace(partial, path)
    return path


def load_report(model_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The build report written next to a synthetic model (spec, build time, size, per-layer fit)."""
    return json.loads(report_path(model_path).read_text())


def measure_fit(
    model_path: str | os.PathLike[str],
    *,
    n_seqs: int = 32,
    seq_len: int | None = None,
    seed: int = 1234,
    text: str | None = None,
    batch: int = 4,
    progress: bool = True,
) -> list[LayerFit]:
    """Run a synthetic model through pijax's dense engine (`Llama.trace`) and measure each layer's fit.

    Tokens are BOS + uniform random ids (seeded apart from the build's calibration), or consecutive chunks of
    `text` when given. Predictor hits are counted at threshold 0 on the engine's FFN input.
    """
    import jax.numpy as jnp

    from pijax.api import load_model

    model = load_model(model_path)
    spec = spec_from_metadata(model.checkpoint.metadata)
    if spec is None:
        raise DataError("not a synthetic model (no pijax.synthetic key)", model_path)
    t = seq_len or spec.seq_len
    if text is not None:
        ids = np.asarray(model.tokenizer.encode(text), np.int64)
        n_seqs = min(n_seqs, len(ids) // (t - 1))
        if n_seqs == 0:
            raise DataError(f"text has {len(ids)} tokens, fewer than one sequence of {t}", model_path)
        tokens = np.concatenate([np.ones((n_seqs, 1), np.int64), ids[: n_seqs * (t - 1)].reshape(n_seqs, t - 1)], 1)
    else:
        tokens = np.random.default_rng(seed).integers(0, spec.n_vocab, size=(n_seqs, t))
        tokens[:, 0] = 1
    preds = model.checkpoint.weights.predictors or []
    counts = np.zeros((spec.n_layer, spec.n_ff))
    true_pos, n_pred = np.zeros(spec.n_layer), np.zeros(spec.n_layer)
    for start in tqdm(range(0, n_seqs, batch), desc="measure", unit="batch", disable=not progress):
        _, records = model.module.trace(jnp.asarray(tokens[start : start + batch]))
        for layer, rec in enumerate(records):
            fired = np.asarray(rec["act"]).reshape(-1, spec.n_ff) != 0
            h = np.asarray(rec["ffn_in"]).reshape(-1, spec.n_embd)
            predicted = (np.maximum(h @ preds[layer].fc1.T, 0) @ preds[layer].fc2.T) >= 0.0
            counts[layer] += fired.sum(0)
            true_pos[layer] += (predicted & fired).sum()
            n_pred[layer] += predicted.sum()
        del records
    n_tok = tokens.size
    return [layer_fit(spec, i, counts[i], n_tok, true_pos[i], n_pred[i]) for i in range(spec.n_layer)]


def _fit_table(rows: list[dict[str, Any]]) -> str:
    from pijax.results import format_table

    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("layer", "n_tokens")}
    return format_table([*rows, {"layer": "mean", "n_tokens": rows[0]["n_tokens"], **mean}])


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    import ast

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m pijax.bench.synth build PRESET [--set k=v ...]` or `... measure PATH [--seqs N] [--text FILE]`."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m pijax.bench.synth", description="SYNTHETIC power-law models")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or reuse) a synthetic model and print its path and fit")
    b.add_argument("preset", choices=sorted(PRESETS))
    b.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="SynthSpec overrides, e.g. alpha=1.2")
    b.add_argument("--cache-dir", default=None)
    m = sub.add_parser("measure", help="measure a synthetic model's fit with pijax's dense engine")
    m.add_argument("path")
    m.add_argument("--seqs", type=int, default=32)
    m.add_argument("--seq-len", type=int, default=None)
    m.add_argument("--text", default=None, help="a text file to run instead of random tokens")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "build":
            path = ensure_synth_model(args.preset, cache_dir=args.cache_dir, **_parse_overrides(args.set))
            rep = load_report(path)
            print(
                f"{path}\nSYNTHETIC model: {rep['file_bytes'] / 2**30:.2f} GiB, built in {rep['build_seconds']:.0f} s"
            )
            print(_fit_table(rep["layers"]))
        else:
            text = None if args.text is None else Path(args.text).read_text()
            fits = measure_fit(args.path, n_seqs=args.seqs, seq_len=args.seq_len, text=text)
            rows = [dataclasses.asdict(f) for f in fits]
            print(f"SYNTHETIC model {args.path}: fit on {'text' if text else 'random tokens'}\n{_fit_table(rows)}")
    except PijaxError as e:
        print(f"pijax: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
