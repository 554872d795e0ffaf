"""The public API that scripts and notebooks use: `load_model(path)` -> Model with `.logits` and `.generate`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from pijax.config import FfnActivation, ModelConfig, ModelSpec
from pijax.io.chat import Message, chat_prompt
from pijax.io.checkpoint import Checkpoint, load_checkpoint
from pijax.io.vocab import AnyTokenizer, load_tokenizer
from pijax.kernels.convert import load_llama
from pijax.kernels.formats import WeightFormat, check_format
from pijax.model.generate import Engine, SamplingConfig
from pijax.model.llama import Llama
from pijax.paths import STORIES260K


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """`text` is the continuation only (its leading space kept); `new_ids` ends with EOS if generation stopped
    on it. Speeds exclude compilation; `decode_tok_s` counts the one-token steps after prefill."""

    text: str
    prompt_ids: list[int]
    new_ids: list[int]
    prefill_tok_s: float
    decode_tok_s: float
    prefill_s: float
    decode_s: float


class Model:
    """A loaded checkpoint, its tokenizer and its Flax module, with compiled inference on top."""

    def __init__(self, checkpoint: Checkpoint, tokenizer: AnyTokenizer, module: Llama):
        self.checkpoint = checkpoint
        self.tokenizer = tokenizer
        self.module = module
        self._engine: Engine | None = None

    @property
    def config(self) -> ModelConfig:
        return self.module.cfg

    @property
    def engine(self) -> Engine:
        """The compiled engine over the module's weights as they were at first use (see `refresh`)."""
        if self._engine is None:
            self._engine = Engine(self.module)
        return self._engine

    def refresh(self) -> None:
        """Drop compiled code after the module changed (new weights, a replaced FFN)."""
        self._engine = None

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Full-sequence causal forward of a 1-D id list: float32 [T, vocab]."""
        return self.engine.logits(ids)

    def generate(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop_at_eos: bool = True,
    ) -> GenerationResult:
        """Continue a prompt (text is encoded with BOS; an id list is used as is). Greedy when temperature == 0."""
        ids = self.tokenizer.encode(prompt, bos=True) if isinstance(prompt, str) else [int(i) for i in prompt]
        sampling = SamplingConfig(float(temperature), int(top_k), float(top_p))
        eos = self.tokenizer.eos_id if stop_at_eos else None
        out = self.engine.generate(ids, max_new_tokens, sampling, seed=seed, eos_id=eos)
        text = b"".join(self.tokenizer.piece_bytes(i) for i in out.new_ids).decode("utf-8", errors="replace")
        return GenerationResult(
            text=text,
            prompt_ids=list(ids),
            new_ids=out.new_ids,
            prefill_tok_s=len(ids) / out.prefill_s if out.prefill_s > 0 else 0.0,
            decode_tok_s=out.decode_steps / out.decode_s if out.decode_s > 0 and out.decode_steps else 0.0,
            prefill_s=out.prefill_s,
            decode_s=out.decode_s,
        )

    def chat(
        self,
        messages: str | Sequence[Message],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> str:
        """The assistant's reply to `messages` (dicts with "role" and "content", or one user message as a
        string), prompted with the model's chat template; it ends at EOS or an end-of-turn token."""
        prompt = chat_prompt(self.tokenizer, self.checkpoint.metadata, messages, self.checkpoint.gguf.path)
        res = self.generate(prompt.ids, max_new_tokens, temperature, top_k, top_p, seed)
        return prompt.reply(self.tokenizer, res.new_ids)


def load_model(
    path: str | os.PathLike[str] = STORIES260K,
    *,
    ffn_act: FfnActivation | None = None,
    dtype: WeightFormat = "f32",
) -> Model:
    """Load a LLaMA GGUF (llama.cpp's or PowerInfer's flavour), or a registered model by name ("smollm2-135m",
    fetched once into `$PIJAX_CACHE/models`); `ffn_act` overrides the FFN activation.

    Any tensor type pijax reads (see `pijax.io.gguf.DEQUANTIZABLE`) is dequantized as it is read, one tensor at
    a time. `dtype` is how the matrices are kept: "f32" (default; pijax's plain XLA model, for parity), or "f16",
    "bf16", "int8" (pijax's int8 rows), computed in f32 on pijax's CPU kernels (`pijax.kernels.convert`)."""
    path = ModelSpec(path=os.fspath(path)).resolved_path()
    ckpt = load_checkpoint(path, ffn_act=ffn_act, lazy=True)
    tokenizer = load_tokenizer(ckpt.metadata, path)
    fmt = check_format(dtype)
    module = load_llama(
        path, fmt, ffn_act=ckpt.config.ffn_act, use_predictors=False, xla_ffn=fmt == "f32", progress=False
    )
    return Model(ckpt, tokenizer, module)
