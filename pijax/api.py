"""The public API that scripts and notebooks use: `load_model(path)` -> Model with `.logits` and `.generate`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from pijax.config import FfnActivation, ModelConfig, ModelSpec
from pijax.io.chat import Message, chat_prompt
from pijax.io.checkpoint import Checkpoint, load_checkpoint
from pijax.io.vocab import AnyTokenizer, load_tokenizer
from pijax.kernels.formats import WeightFormat, check_format
from pijax.model.convert import load_llama
from pijax.model.generate import Engine, SamplingConfig
from pijax.model.llama import Llama
from pijax.model.load_blocks import is_block_load
from pijax.paths import STORIES260K
from pijax.validate import (
    GenerateArgs,
    check_bool,
    check_generate_args,
    check_messages,
    check_model_source,
    check_options,
    check_prompt,
)


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
        """Continue a prompt (text is encoded with BOS; an id list is used as is). Greedy when temperature == 0.
        Arguments are checked by pijax.validate.check_generate_args (e.g. seed in [0, 2**32 - 1])."""
        prompt = check_prompt(prompt)
        a = check_generate_args(max_new_tokens, temperature, top_k, top_p, seed)
        ids = self.tokenizer.encode(prompt, bos=True) if isinstance(prompt, str) else prompt
        eos = self.tokenizer.eos_id if check_bool(stop_at_eos, "stop_at_eos") else None
        out = self._run(ids, a, eos)
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
        if not isinstance(messages, str):
            messages = check_messages(messages)
        a = check_generate_args(max_new_tokens, temperature, top_k, top_p, seed)
        prompt = chat_prompt(self.tokenizer, self.checkpoint.metadata, messages, self.checkpoint.gguf.path)
        return prompt.reply(self.tokenizer, self._run(prompt.ids, a, prompt.turn_end).new_ids)

    def _run(self, ids: Sequence[int], a: GenerateArgs, eos_id: Any) -> Any:
        """The engine's token loop on checked arguments (shared by generate and chat)."""
        sampling = SamplingConfig(a.temperature, a.top_k, a.top_p)
        return self.engine.generate(ids, a.max_new_tokens, sampling, seed=a.seed, eos_id=eos_id)

    def sparse(self, mode: str = "predictor", **options: Any) -> Model:
        """A sparse copy with the same `.logits` / `.generate`: mode "predictor", "relu", "threshold" (with
        `sparsity=`) or "oracle"; options: see `pijax.engine.api.sparse_model`. This model is left unchanged."""
        from pijax.engine.api import sparse_model

        check_options(sparse_model, (self, mode), options, "Model.sparse")
        setup = sparse_model(self, mode, **options)
        out = Model(self.checkpoint, self.tokenizer, setup.module)
        out.setup = setup
        return out

    def hybrid(self, budget: int | str = "ffn:50%", policy: str = "powerinfer", **options: Any) -> HybridModel:
        """Hot rows on the accelerators, cold rows on the host, within `budget` (bytes, "2GiB" or "ffn:30%"):
        the same `.logits` / `.generate`, plus `resident_report()` and `index`; options: see
        `pijax.engine.api.hybrid_model`."""
        from pijax.engine.api import hybrid_model

        return HybridModel(self, hybrid_model(self, budget, policy=policy, **options))


class HybridModel(Model):
    """A Model run by the hybrid engine (pijax.engine.pipeline.HybridSetup in `setup`)."""

    def __init__(self, base: Model, setup: Any):
        super().__init__(base.checkpoint, base.tokenizer, base.module)
        self.setup = setup
        self._engine = setup.engine

    def refresh(self) -> None:
        """The hybrid engine holds its own copy of the weights: rebuild it with `Model.hybrid` instead."""

    @property
    def index(self) -> Any:
        """The gpuidx in use (pijax.index.GpuIndex)."""
        return self.setup.index

    def resident_report(self) -> Any:
        """Resident bytes per accelerator against the budget (pijax.layout.memory.ResidentReport)."""
        return self.setup.report


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
    "bf16", "int8" (pijax's int8 rows), computed in f32 on pijax's CPU kernels (`pijax.model.convert`), or
    llama.cpp's block formats "q8_0", "q4_0", "q4_1", or "native" (each matrix in the file's own block type),
    computed as llama.cpp does, with 8-bit inputs (`pijax.model.load_blocks`)."""
    path = ModelSpec(path=check_model_source(path), ffn_act=ffn_act).resolved_path()
    ckpt = load_checkpoint(path, ffn_act=ffn_act, lazy=True)
    ckpt.config.check_shape(path)
    tokenizer = load_tokenizer(ckpt.metadata, path)
    fmt = dtype if is_block_load(dtype) else check_format(dtype)
    module = load_llama(
        path, fmt, ffn_act=ckpt.config.ffn_act, use_predictors=False, xla_ffn=fmt == "f32", progress=False
    )
    return Model(ckpt, tokenizer, module)
