"""Frozen configuration dataclasses. Hydra fills them once (see `pijax.run`); no module takes a DictConfig.

Each pipeline stage owns one dataclass here so that the whole run's configuration is typed and hashable.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

from pijax.paths import STORIES260K

MAX_LAYERS = 4096
"""More layers than any LLaMA has; a larger count comes from damaged metadata."""

FfnActivation = Literal["silu", "relu", "drelu"]
"""silu: SwiGLU silu(gate)*up; relu: ReGLU relu(gate)*up; drelu: relu(gate)*relu(up)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a LLaMA-family model, read from GGUF metadata (see `pijax.io.gguf`)."""

    n_vocab: int
    n_ctx: int
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    rope_dim: int
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    ffn_act: FfnActivation = "silu"
    tied_output: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        """Sizes no model has (zero heads, a billion layers, a nan epsilon: a damaged file's metadata) are one
        UnsupportedModelError line here, not a ZeroDivisionError or MemoryError later. See also check_shape."""
        from pijax.errors import UnsupportedModelError
        from pijax.validate import InputError, check_choice, check_float, check_int

        try:
            for name in ("n_vocab", "n_ctx", "n_embd", "n_ff", "n_head", "n_head_kv", "rope_dim"):
                check_int(getattr(self, name), name, min=1)
            check_int(self.n_layer, "n_layer", min=1, max=MAX_LAYERS)
            check_float(self.rope_base, "rope_base", min=0.0, min_open=True)
            check_float(self.norm_eps, "norm_eps", min=0.0, max=1.0, min_open=True)
            check_choice(self.ffn_act, "ffn_act", ("silu", "relu", "drelu"))
        except InputError as e:
            raise UnsupportedModelError(f"model shape: {e.problem}") from None

    def check_shape(self, path: str | os.PathLike[str] | None = None) -> None:
        """That the heads divide the embedding and the rope fits a head (a model file's shape; derived configs,
        e.g. a dense stand-in of width 1, need not satisfy it). Raises UnsupportedModelError naming `path`."""
        from pijax.errors import UnsupportedModelError

        if self.n_embd % self.n_head or self.n_head % self.n_head_kv:
            raise UnsupportedModelError(
                f"model shape: n_embd {self.n_embd}, n_head {self.n_head} and n_head_kv {self.n_head_kv} do not "
                "divide (n_embd by n_head, n_head by n_head_kv)",
                path,
            )
        if self.rope_dim > self.head_dim or self.rope_dim % 2:
            raise UnsupportedModelError(
                f"model shape: rope_dim {self.rope_dim} must be even and at most the head dim {self.head_dim}", path
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_embd_kv(self) -> int:
        return self.head_dim * self.n_head_kv

    def replace(self, **changes: object) -> ModelConfig:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which GGUF to load: a path, a registered name (`pijax.io.registry`), or empty for the shipped stories260K."""

    path: str = ""
    ffn_act: FfnActivation | None = None

    def resolved_path(self) -> Path:
        """The file to load: the shipped model, a registered name (fetched once into the cache), or a path."""
        from pijax.validate import check_choice, check_model_source

        path = check_model_source(self.path, "model path")
        if self.ffn_act is not None:
            check_choice(self.ffn_act, "ffn_act", ("silu", "relu", "drelu"))
        if not path:
            return STORIES260K
        from pijax.io.registry import entry, is_registry_name, resolve_model

        if not Path(path).expanduser().exists():
            if is_registry_name(path):
                return resolve_model(path)
            if not path.lower().endswith(".gguf") and "/" not in path and os.sep not in path:
                entry(path)  # a name, not a path: ModelFetchError listing the known names
        return Path(path).expanduser()


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    prompt: str = "Once upon a time"
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class LoggerConfig:
    """kind: none | wandb. W&B runs offline by default, writing under the run's output folder."""

    kind: Literal["none", "wandb"] = "none"
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "pijax"
    entity: str | None = None
    tags: tuple[str, ...] = ()
