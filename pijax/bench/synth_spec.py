"""What a synthetic model is: its shape and construction parameters (`SynthSpec`, the presets), the target
power law of each layer, the calibration tokens, and how a spec is written to and read back from GGUF metadata.

The construction itself is pijax.bench.synth_fit; building, caching and the CLI are pijax.bench.synth.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Literal

import numpy as np

from pijax.errors import ConfigError
from pijax.io.checkpoint import ACTIVATION_KEY, THRESHOLD_KEY, tokenizer_metadata
from pijax.io.gguf import VT, Meta, read_gguf
from pijax.io.tokenizer import TOKEN_UNUSED
from pijax.paths import STORIES260K

GENERATOR_VERSION = 2
# RMS of the token embeddings. Everything downstream scales with it; 0.25 keeps the residual stream (~0.25 to ~1)
# far above the RMSNorm eps and the small output matrices (wo, down_t) inside f16's normal range.
EMBED_RMS = 0.25
META_PREFIX = "pijax.synthetic"
EMBED_SEED, LAYER_SEED, TARGET_SEED, TOKEN_SEED = 0, 1, 2, 3


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
    # ~160M parameters (8 TinyLlama-style layers at half width): the engine tests' mid-size model, built in ~1 min
    "small": SynthSpec("small", 32000, 2048, 1024, 2816, 8, 16, 4, predictor_rank=128),
    "tinyllama-1.1b": SynthSpec("tinyllama-1.1b", 32000, 2048, 2048, 5632, 22, 32, 4, predictor_rank=256),
    "llama2-7b": SynthSpec("llama2-7b", 32000, 4096, 4096, 11008, 32, 32, 32, predictor_rank=512),
}


def preset_spec(preset: str, **overrides: Any) -> SynthSpec:
    if preset not in PRESETS:
        raise ConfigError(f"unknown synthetic preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset].replace(**overrides)


def spec_rng(spec: SynthSpec, stream: int, index: int = 0) -> np.random.Generator:
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
    perm = spec_rng(spec, TARGET_SEED, layer).permutation(spec.n_ff)
    out = np.empty(spec.n_ff)
    out[perm] = p
    return out


def calibration_tokens(spec: SynthSpec, n_seqs: int, stream: int = 0) -> np.ndarray:
    """BOS followed by uniform random token ids, [n_seqs, seq_len] (stream 0: calibration, 1: held out)."""
    toks = spec_rng(spec, TOKEN_SEED, stream).integers(0, spec.n_vocab, size=(n_seqs, spec.seq_len), dtype=np.int64)
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


def spec_metadata(spec: SynthSpec) -> dict[str, Any]:
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


def tensor_specs(spec: SynthSpec) -> list[tuple[str, tuple[int, ...], np.dtype]]:
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
