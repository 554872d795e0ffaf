"""Which tokenizer a GGUF gets: `load_tokenizer` picks SentencePiece ("llama") or byte-level BPE ("gpt2")."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pijax.errors import UnsupportedModelError
from pijax.io.bpe import BPETokenizer
from pijax.io.tokenizer import KEY_MODEL, Tokenizer

AnyTokenizer = Tokenizer | BPETokenizer
TOKENIZER_MODELS = {"llama": "SentencePiece", "gpt2": "byte-level BPE"}


def load_tokenizer(metadata: Mapping[str, Any], path: str | os.PathLike[str] | None = None) -> AnyTokenizer:
    """The tokenizer of a GGUF metadata dict; an unsupported model or pre-tokenizer is one line naming it."""
    model = metadata.get(KEY_MODEL)
    if model == "llama":
        return Tokenizer.from_metadata(metadata, path)
    if model == "gpt2":
        return BPETokenizer.from_metadata(metadata, path)
    if model is None:
        raise UnsupportedModelError(f"metadata key {KEY_MODEL!r} is missing, so there is no tokenizer", path)
    supported = ", ".join(f"{k!r} ({v})" for k, v in TOKENIZER_MODELS.items())
    raise UnsupportedModelError(f"tokenizer model {model!r} is not supported; supported: {supported}", path)
