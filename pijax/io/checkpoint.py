"""LLaMA checkpoints in GGUF: metadata -> ModelConfig, tensors -> LlamaWeights, and back.

Reads plain llama.cpp GGUF files and PowerInfer's flavour (`PWRI` magic, `ffn_down_t`, `fc1`/`fc2` predictors,
`powerinfer.sparse_threshold`). Every required tensor is checked for presence and shape so that a bad file
fails here with one line, not later inside a jitted function.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from pijax.config import FfnActivation, ModelConfig
from pijax.errors import TensorError, UnsupportedModelError
from pijax.io.fingerprint import model_fingerprint
from pijax.io.gguf import GGUFFile, Meta, read_gguf, write_gguf
from pijax.io.weights import LayerWeights, LlamaWeights, PredictorWeights

SUPPORTED_ARCHS = ("llama",)
ACTIVATION_KEY = "pijax.ffn_activation"
THRESHOLD_KEY = "powerinfer.sparse_threshold"
ACTIVATIONS: tuple[FfnActivation, ...] = ("silu", "relu", "drelu")


class _LazyWeights:
    """The `weights` field of a Checkpoint: read from the file on first access when it was given as None."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj: Any, objtype: type | None = None) -> LlamaWeights:
        if obj is None:
            raise AttributeError("weights")  # no class-level value: the dataclass field has no default
        if getattr(obj, self.slot) is None:
            setattr(obj, self.slot, read_weights(obj.gguf, obj.config, obj.dtype))
        return getattr(obj, self.slot)

    def __set__(self, obj: Any, value: LlamaWeights | None) -> None:
        setattr(obj, self.slot, value)


@dataclasses.dataclass(repr=False)
class Checkpoint:
    """A validated model file: its config, its parsed GGUF and its weights as numpy arrays in `dtype`.

    `weights` may be given as None: it is then read on first use (from the memory-mapped file, tensor by
    tensor), so that a model loaded straight into a module (`pijax.api.load_model`) keeps no second copy of every
    matrix unless something asks for it.
    """

    config: ModelConfig
    weights: LlamaWeights = _LazyWeights()  # type: ignore[assignment]
    gguf: GGUFFile
    fingerprint: str
    dtype: np.typing.DTypeLike = np.float32

    def __repr__(self) -> str:
        return f"Checkpoint({self.gguf.path}, {self.config.name or 'unnamed'}, {self.fingerprint})"

    @property
    def metadata(self) -> dict[str, Any]:
        return self.gguf.metadata


def _meta(f: GGUFFile, key: str, default: Any = None) -> Any:
    if key in f.metadata:
        return f.metadata[key]
    if default is None:
        raise UnsupportedModelError(f"metadata key {key} is missing", f.path)
    return default


def model_config_from_gguf(f: GGUFFile, ffn_act: FfnActivation | None = None) -> ModelConfig:
    arch = f.metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedModelError(
            f"architecture {arch!r} is not supported (pijax runs {', '.join(SUPPORTED_ARCHS)})", f.path
        )
    n_embd = int(_meta(f, f"{arch}.embedding_length"))
    n_head = int(_meta(f, f"{arch}.attention.head_count"))
    if ffn_act is None:
        # llama.cpp always runs a plain `llama` file as SiLU; ReLU needs our key or PowerInfer's file kind.
        is_powerinfer = f.magic == "PWRI" or "blk.0.fc1.weight" in f.tensors
        ffn_act = f.metadata.get(ACTIVATION_KEY, "relu" if is_powerinfer else "silu")
    if ffn_act not in ACTIVATIONS:
        raise UnsupportedModelError(f"FFN activation {ffn_act!r} is not one of {ACTIVATIONS}", f.path)
    vocab = f.metadata.get("tokenizer.ggml.tokens")
    n_vocab = len(vocab) if vocab is not None else f.tensors["token_embd.weight"].shape[0]
    return ModelConfig(
        n_vocab=n_vocab,
        n_ctx=int(_meta(f, f"{arch}.context_length")),
        n_embd=n_embd,
        n_ff=int(_meta(f, f"{arch}.feed_forward_length")),
        n_layer=int(_meta(f, f"{arch}.block_count")),
        n_head=n_head,
        n_head_kv=int(f.metadata.get(f"{arch}.attention.head_count_kv", n_head)),
        rope_dim=int(f.metadata.get(f"{arch}.rope.dimension_count", n_embd // max(n_head, 1))),
        rope_base=float(f.metadata.get(f"{arch}.rope.freq_base", 10000.0)),
        norm_eps=float(_meta(f, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        ffn_act=ffn_act,
        tied_output="output.weight" not in f.tensors,
        name=str(f.metadata.get("general.name", "")),
    )


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    d, f, kv = cfg.n_embd, cfg.n_ff, cfg.n_embd_kv
    shapes = {"token_embd.weight": (cfg.n_vocab, d), "output_norm.weight": (d,)}
    if not cfg.tied_output:
        shapes["output.weight"] = (cfg.n_vocab, d)
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        shapes |= {
            p + "attn_norm.weight": (d,),
            p + "attn_q.weight": (cfg.n_head * cfg.head_dim, d),
            p + "attn_k.weight": (kv, d),
            p + "attn_v.weight": (kv, d),
            p + "attn_output.weight": (d, cfg.n_head * cfg.head_dim),
            p + "ffn_norm.weight": (d,),
            p + "ffn_up.weight": (f, d),
            p + "ffn_gate.weight": (f, d),
        }
    return shapes


def _check_shape(f: GGUFFile, name: str, shape: tuple[int, ...]) -> None:
    if name not in f.tensors:
        raise TensorError(f"missing tensor {name}", f.path)
    got = f.tensors[name].shape
    if got != shape:
        raise TensorError(f"tensor {name} has shape {got}, expected {shape}", f.path)
    f.check_readable(name)


def _checked(f: GGUFFile, name: str, shape: tuple[int, ...], dtype: np.typing.DTypeLike) -> np.ndarray:
    _check_shape(f, name, shape)
    return f.array(name, dtype)


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    ffn_act: FfnActivation | None = None,
    dtype: np.typing.DTypeLike = np.float32,
    lazy: bool = False,
) -> Checkpoint:
    """Read and validate a LLaMA GGUF; `ffn_act` overrides the activation the file implies. `lazy`: check
    every tensor's presence and shape now, read the weights on first use of `.weights`."""
    f = read_gguf(path)
    cfg = model_config_from_gguf(f, ffn_act)
    if lazy:
        for name, shape in _required_shapes(f, cfg).items():
            _check_shape(f, name, shape)
        return Checkpoint(cfg, None, f, model_fingerprint(f), dtype=dtype)
    return Checkpoint(cfg, read_weights(f, cfg, dtype), f, model_fingerprint(f), dtype=dtype)


def _required_shapes(f: GGUFFile, cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    shapes = _expected_shapes(cfg)
    for i in range(cfg.n_layer):
        if "blk.0.ffn_down_t.weight" in f.tensors:
            shapes[f"blk.{i}.ffn_down_t.weight"] = (cfg.n_ff, cfg.n_embd)
        else:
            shapes[f"blk.{i}.ffn_down.weight"] = (cfg.n_embd, cfg.n_ff)
    return shapes


def read_weights(f: GGUFFile, cfg: ModelConfig, dtype: np.typing.DTypeLike = np.float32) -> LlamaWeights:
    """Every matrix of a parsed, configured file as numpy arrays in `dtype`, checked for presence and shape."""
    shapes = _expected_shapes(cfg)
    has_down_t = "blk.0.ffn_down_t.weight" in f.tensors

    def get(name: str) -> np.ndarray:
        return _checked(f, name, shapes[name], dtype)

    layers = []
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        if has_down_t:
            down_t = _checked(f, p + "ffn_down_t.weight", (cfg.n_ff, cfg.n_embd), dtype)
        else:
            down_t = _checked(f, p + "ffn_down.weight", (cfg.n_embd, cfg.n_ff), dtype).T.copy()
        layers.append(
            LayerWeights(
                attn_norm=get(p + "attn_norm.weight"),
                wq=get(p + "attn_q.weight"),
                wk=get(p + "attn_k.weight"),
                wv=get(p + "attn_v.weight"),
                wo=get(p + "attn_output.weight"),
                ffn_norm=get(p + "ffn_norm.weight"),
                up=get(p + "ffn_up.weight"),
                gate=get(p + "ffn_gate.weight"),
                down_t=down_t,
            )
        )
    embd = get("token_embd.weight")
    return LlamaWeights(
        token_embd=embd,
        output_norm=get("output_norm.weight"),
        output=embd if cfg.tied_output else get("output.weight"),
        layers=layers,
        predictors=_load_predictors(f, cfg, dtype),
        sparse_threshold=float(f.metadata.get(THRESHOLD_KEY, 0.0)),
    )


def _load_predictors(f: GGUFFile, cfg: ModelConfig, dtype: np.typing.DTypeLike) -> list[PredictorWeights] | None:
    if "blk.0.fc1.weight" not in f.tensors:
        return None
    preds = []
    for i in range(cfg.n_layer):
        n1, n2 = f"blk.{i}.fc1.weight", f"blk.{i}.fc2.weight"
        if n1 not in f.tensors or n2 not in f.tensors:
            raise TensorError(f"predictor tensors for layer {i} are missing ({n1}, {n2})", f.path)
        rank = f.tensors[n1].shape[0]
        preds.append(
            PredictorWeights(_checked(f, n1, (rank, cfg.n_embd), dtype), _checked(f, n2, (cfg.n_ff, rank), dtype))
        )
    return preds


def save_checkpoint(
    path: str | os.PathLike[str],
    cfg: ModelConfig,
    weights: LlamaWeights,
    tokenizer_metadata: dict[str, Any],
    *,
    extra_metadata: dict[str, Any] | None = None,
    powerinfer: bool = False,
) -> Path:
    """Write f32 GGUF. `powerinfer=True` writes PowerInfer's flavour (PWRI magic, ffn_down_t, fc1/fc2, threshold).

    `tokenizer_metadata` holds the `tokenizer.*` keys, copied verbatim (with their GGUF types) from the source file.
    """
    path = Path(path)
    md: dict[str, Any] = {"general.architecture": "llama", "general.name": cfg.name or path.stem}
    md |= {
        "llama.context_length": cfg.n_ctx,
        "llama.embedding_length": cfg.n_embd,
        "llama.block_count": cfg.n_layer,
        "llama.feed_forward_length": cfg.n_ff,
        "llama.rope.dimension_count": cfg.rope_dim,
        "llama.attention.head_count": cfg.n_head,
        "llama.attention.head_count_kv": cfg.n_head_kv,
        "llama.attention.layer_norm_rms_epsilon": cfg.norm_eps,
        "llama.rope.freq_base": cfg.rope_base,
        "general.file_type": 0,
        ACTIVATION_KEY: cfg.ffn_act,
    }
    if powerinfer or weights.predictors is not None:
        md[THRESHOLD_KEY] = float(weights.sparse_threshold)
    md |= tokenizer_metadata | (extra_metadata or {})
    f32 = np.float32
    tensors: list[tuple[str, np.ndarray]] = [("token_embd.weight", weights.token_embd.astype(f32))]
    if not cfg.tied_output:
        tensors.append(("output.weight", weights.output.astype(f32)))
    tensors.append(("output_norm.weight", weights.output_norm.astype(f32)))
    for i, lw in enumerate(weights.layers):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", lw.attn_norm),
            (p + "attn_q.weight", lw.wq),
            (p + "attn_k.weight", lw.wk),
            (p + "attn_v.weight", lw.wv),
            (p + "attn_output.weight", lw.wo),
            (p + "ffn_norm.weight", lw.ffn_norm),
            (p + "ffn_up.weight", lw.up),
            (p + "ffn_gate.weight", lw.gate),
            (p + "ffn_down_t.weight", lw.down_t) if powerinfer else (p + "ffn_down.weight", lw.down_t.T),
        ]
    for i, pw in enumerate(weights.predictors or []):
        tensors += [(f"blk.{i}.fc1.weight", pw.fc1), (f"blk.{i}.fc2.weight", pw.fc2)]
    tensors = [(n, np.ascontiguousarray(a, dtype=f32)) for n, a in tensors]
    write_gguf(path, md, tensors, magic="PWRI" if powerinfer else "GGUF")
    return path


def tokenizer_metadata(f: GGUFFile) -> dict[str, Any]:
    """The `tokenizer.*` keys of a file with their original GGUF types, for copying into a derived model."""
    return {k: Meta(v, f.metadata_types[k]) for k, v in f.metadata.items() if k.startswith("tokenizer.")}
