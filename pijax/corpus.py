"""Text corpora for profiling, training and evaluation: reading, validating, splitting and windowing.

A corpus is a UTF-8 text file of documents separated by lines `<|endoftext|>` (TinyStories' convention); a file
without separators is split on blank lines. The held-out split is the *last* fraction of documents, so "text the
predictors never saw" is a fixed, inspectable set rather than a random draw.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pijax.errors import DataError
from pijax.io.tokenizer import Tokenizer
from pijax.paths import TINYSTORIES

SEPARATOR = "<|endoftext|>"
# The second domain of experiments/real_sparsity: Python standard-library source, which every machine has. One
# module is one document, in this order, so the held-out tail (the last 10%) is the last module, difflib.
STDLIB_MODULES: tuple[str, ...] = (
    "textwrap",
    "string",
    "heapq",
    "bisect",
    "fractions",
    "shlex",
    "calendar",
    "csv",
    "json.decoder",
    "difflib",
)


@dataclasses.dataclass(frozen=True)
class Corpus:
    path: Path
    docs: tuple[str, ...]
    sha256: str

    def split(self, held_out: float = 0.1) -> tuple[Corpus, Corpus]:
        """(train, held-out): the held-out part is the last `held_out` fraction of documents."""
        if not 0.0 < held_out < 1.0:
            raise DataError(f"held-out fraction must be in (0, 1), got {held_out}", self.path)
        n_held = max(1, round(len(self.docs) * held_out))
        if n_held >= len(self.docs):
            raise DataError(f"only {len(self.docs)} document(s): too few to hold some out", self.path)
        head, tail = self.docs[:-n_held], self.docs[-n_held:]
        return dataclasses.replace(self, docs=head), dataclasses.replace(self, docs=tail)

    def windows(self, tokenizer: Tokenizer, seq_len: int, max_tokens: int | None = None) -> np.ndarray:
        """`token_windows` over this corpus's documents; a too-short corpus is reported against its file."""
        try:
            return token_windows(tokenizer, self.docs, seq_len, max_tokens=max_tokens)
        except DataError as e:
            raise DataError(e.problem, e.path or self.path) from None


def load_corpus(path: str | os.PathLike[str] | None = None) -> Corpus:
    """Read and validate a UTF-8 text corpus (default: the TinyStories text shipped with pijax)."""
    path = Path(path) if path else TINYSTORIES
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read corpus: {e.strerror}", path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"corpus is not UTF-8 text (invalid byte at offset {e.start})", path) from None
    if "\x00" in text:
        raise DataError("corpus is not text (it contains NUL bytes)", path)
    parts = text.split(SEPARATOR) if SEPARATOR in text else text.split("\n\n")
    docs = [d.strip() for d in parts if d.strip()]
    if not docs:
        raise DataError("corpus is empty (no text after removing whitespace and separators)", path)
    return Corpus(path, tuple(docs), hashlib.sha256(raw).hexdigest()[:16])


def stdlib_corpus(modules: Sequence[str] = STDLIB_MODULES) -> Corpus:
    """The source of these standard-library modules of the running Python, one module per document, in order.

    `path` is the standard library's folder; the hash covers the module names and their source text, so a
    different Python version shows up as a different corpus."""
    stdlib = Path(inspect.getsourcefile(os) or os.__file__).parent
    if not modules:
        raise DataError("no standard-library modules given", stdlib)
    docs, h = [], hashlib.sha256()
    for name in modules:
        try:
            src_file = inspect.getsourcefile(importlib.import_module(name))
        except ImportError:
            raise DataError(f"no module named {name!r} in this Python", stdlib) from None
        except TypeError:  # built into the interpreter
            src_file = None
        if src_file is None:
            raise DataError(f"module {name!r} has no Python source file", stdlib)
        text = Path(src_file).read_text(encoding="utf-8")
        h.update(f"{name}\0{text}\0".encode())
        docs.append(text.strip())
    return Corpus(stdlib, tuple(docs), h.hexdigest()[:16])


def token_windows(
    tokenizer: Tokenizer, docs: Sequence[str], seq_len: int, *, max_tokens: int | None = None
) -> np.ndarray:
    """Encode documents (each with BOS), concatenate, and cut into full windows: int32 [N, seq_len]."""
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer.encode(doc, bos=True))
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n = len(ids) // seq_len
    if n == 0:
        raise DataError(f"corpus has {len(ids)} tokens, fewer than one window of {seq_len}")
    return np.asarray(ids[: n * seq_len], dtype=np.int32).reshape(n, seq_len)


def split_windows(
    tokenizer: Tokenizer,
    corpus_path: str | os.PathLike[str] | None,
    split: str,
    seq_len: int,
    max_tokens: int,
    held_out: float = 0.1,
) -> np.ndarray:
    """Token windows [N, seq_len] from the corpus' "train" split (first 90%) or "held_out" split (last 10%)."""
    if split not in ("train", "held_out"):
        raise DataError(f"split must be 'train' or 'held_out', got {split!r}", corpus_path or TINYSTORIES)
    train, held = load_corpus(corpus_path or None).split(held_out)
    return token_windows(tokenizer, (train if split == "train" else held).docs, seq_len, max_tokens=max_tokens)
