"""The SentencePiece-style tokenizer built from a GGUF vocabulary, giving the same ids as llama.cpp's SPM one.

Encoding follows llama.cpp's `llm_tokenizer_spm`: spaces become U+2581 ("▁"), one "▁" is prepended to
non-empty text, the text is split into Unicode characters, and adjacent symbols are merged greedily, always
taking the pair whose concatenation is the highest-scoring vocabulary entry (leftmost on ties). Characters
that never became a vocabulary entry fall back to their UTF-8 bytes as `<0xNN>` tokens.

Speed: when no vocabulary entry holds "▁" past its first character (true of SentencePiece vocabularies, whose
pieces only start with the space mark), no merge can cross the point just before a "▁". The text is then cut
there into words, each merged on its own and cached, which gives exactly the ids of merging the whole text.
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pijax.errors import DataError, UnsupportedModelError
from pijax.validate import check_bool, check_ids, check_text

SPACE_MARK = "\u2581"
# llama.cpp prints an unknown token as this block character rather than its vocabulary text.
_UNKNOWN_PIECE = "\u2585"

TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

# Keys of a GGUF file's metadata the tokenizer reads.
KEY_MODEL = "tokenizer.ggml.model"
KEY_TOKENS = "tokenizer.ggml.tokens"
KEY_SCORES = "tokenizer.ggml.scores"
KEY_TYPES = "tokenizer.ggml.token_type"
KEY_BOS = "tokenizer.ggml.bos_token_id"
KEY_EOS = "tokenizer.ggml.eos_token_id"
KEY_UNK = "tokenizer.ggml.unknown_token_id"
KEY_SPACE_PREFIX = "tokenizer.ggml.add_space_prefix"

# The word cache is dropped when it grows past this many entries, to bound memory on open-ended input.
_CACHE_LIMIT = 200_000
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_WORD_START = re.compile(f"(?={SPACE_MARK})")


class PieceTable:
    """Id -> bytes for any vocabulary (SentencePiece or BPE): subclasses fill `vocab_size` and `_piece_bytes`."""

    vocab_size: int
    _piece_bytes: list[bytes]

    def decode_piece(self, id: int) -> str:
        """One token's text, for streaming; a lone byte token of a multi-byte character shows as U+FFFD."""
        return self.piece_bytes(id).decode("utf-8", errors="replace")

    def piece_bytes(self, id: int) -> bytes:
        """One token's UTF-8 bytes (empty for control tokens); join these to stream multi-byte characters."""
        i = int(id)
        if not 0 <= i < self.vocab_size:
            raise DataError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
        return self._piece_bytes[i]


class Tokenizer(PieceTable):
    """Text <-> token ids for a llama.cpp "llama" (SentencePiece) vocabulary."""

    def __init__(
        self,
        tokens: Sequence[str],
        scores: np.ndarray,
        token_types: np.ndarray,
        *,
        bos_id: int,
        eos_id: int,
        unk_id: int = 0,
        add_space_prefix: bool = True,
    ) -> None:
        _check_vocab(tokens, scores, token_types, bos_id, eos_id, unk_id, path=None)
        self.tokens: list[str] = list(tokens)
        self.vocab_size = len(self.tokens)
        self.bos_id = int(bos_id)
        self.eos_id = int(eos_id)
        self.unk_id = int(unk_id)
        self.add_space_prefix = bool(add_space_prefix)
        # Python floats of the float32 scores compare exactly as llama.cpp's floats do.
        self._scores: list[float] = np.asarray(scores, dtype=np.float32).astype(np.float64).tolist()
        self._types: list[int] = np.asarray(token_types).astype(np.int64).tolist()
        # Like llama.cpp, a later duplicate text wins the lookup.
        self._piece_to_id: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}
        self._byte_to_id: list[int] = [self._piece_to_id.get(f"<0x{b:02X}>", self.unk_id) for b in range(256)]
        self._piece_bytes: list[bytes] = [self._render(i) for i in range(self.vocab_size)]
        self._words_are_independent = not any(SPACE_MARK in t[1:] for t in self.tokens)
        self._word_cache: dict[str, list[int]] = {}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], path: str | os.PathLike[str] | None = None) -> Tokenizer:
        """Build the tokenizer from a GGUF metadata dict; `path` names the file in errors."""
        model = _require(metadata, KEY_MODEL, path)
        if model != "llama":
            raise UnsupportedModelError(
                f"tokenizer model {model!r} is not supported (only 'llama', SentencePiece)", path
            )
        tokens = _require(metadata, KEY_TOKENS, path)
        scores = _require(metadata, KEY_SCORES, path)
        types = _require(metadata, KEY_TYPES, path)
        # llama.cpp's defaults for a SentencePiece vocabulary when the ids are absent.
        bos_id = int(metadata.get(KEY_BOS, 1))
        eos_id = int(metadata.get(KEY_EOS, 2))
        unk_id = int(metadata.get(KEY_UNK, 0))
        add_space_prefix = bool(metadata.get(KEY_SPACE_PREFIX, True))
        if isinstance(tokens, str | bytes) or not all(isinstance(t, str) for t in tokens):
            raise UnsupportedModelError(f"{KEY_TOKENS} must be a list of strings", path)
        _check_vocab(tokens, scores, types, bos_id, eos_id, unk_id, path)
        try:
            return cls(
                tokens,
                np.asarray(scores, dtype=np.float32),
                np.asarray(types, dtype=np.int32),
                bos_id=bos_id,
                eos_id=eos_id,
                unk_id=unk_id,
                add_space_prefix=add_space_prefix,
            )
        except UnsupportedModelError as err:
            # The constructor has no file to name (e.g. a malformed byte token); add it here.
            raise UnsupportedModelError(err.problem, path) from None

    def encode(self, text: str, bos: bool = False) -> list[int]:
        """Ids of `text` as llama.cpp gives them (special-token text is not parsed); BOS first if `bos`."""
        text, bos = check_text(text), check_bool(bos, "bos")  # one line for None, bytes, numbers, lone surrogates
        ids = [self.bos_id] if bos else []
        if not text:
            return ids
        escaped = text.replace(" ", SPACE_MARK)
        if self.add_space_prefix:
            escaped = SPACE_MARK + escaped
        if not self._words_are_independent:
            ids.extend(self._merge(escaped))
            return ids
        cache = self._word_cache
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        for word in _WORD_START.split(escaped):
            if not word:
                continue
            word_ids = cache.get(word)
            if word_ids is None:
                word_ids = cache[word] = self._merge(word)
            ids.extend(word_ids)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`: control tokens dropped, bytes reassembled, the space `encode` prepended removed."""
        data = b"".join(self.piece_bytes(i) for i in check_ids(ids))
        text = data.decode("utf-8", errors="replace")
        if self.add_space_prefix and text.startswith(" "):
            text = text[1:]
        return text

    def _render(self, i: int) -> bytes:
        kind = self._types[i]
        text = self.tokens[i]
        if kind in (TOKEN_CONTROL, TOKEN_UNUSED):
            return b""
        if kind == TOKEN_UNKNOWN:
            return _UNKNOWN_PIECE.encode()
        if kind == TOKEN_BYTE:
            match = _BYTE_TOKEN.fullmatch(text)
            if match is None:
                raise UnsupportedModelError(f"byte token {i} has text {text!r}, expected '<0xNN>'")
            return bytes([int(match.group(1), 16)])
        if kind == TOKEN_USER_DEFINED:
            return text.encode()
        return text.replace(SPACE_MARK, " ").encode()

    def _merge(self, escaped: str) -> list[int]:
        """Ids of already-escaped text by score-ordered pair merging (a heap of candidate pairs)."""
        lookup = self._piece_to_id
        scores = self._scores
        sym = list(escaped)
        n = len(sym)
        size = [1] * n
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap: list[tuple[float, int, int]] = []
        for left in range(n - 1):
            tok = lookup.get(sym[left] + sym[left + 1])
            if tok is not None:
                heap.append((-scores[tok], left, 2))
        heapq.heapify(heap)
        push = heapq.heappush
        pop = heapq.heappop
        while heap:
            _, left, pair_size = pop(heap)
            right = nxt[left] if size[left] else -1
            # A pair is stale once either side was absorbed or grew by another merge since it was queued.
            if right < 0 or size[left] + size[right] != pair_size:
                continue
            sym[left] += sym[right]
            size[left] = pair_size
            size[right] = 0
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prv[after] = left
            before = prv[left]
            if before >= 0:
                tok = lookup.get(sym[before] + sym[left])
                if tok is not None:
                    push(heap, (-scores[tok], before, size[before] + pair_size))
            if after >= 0:
                tok = lookup.get(sym[left] + sym[after])
                if tok is not None:
                    push(heap, (-scores[tok], left, pair_size + size[after]))
        ids: list[int] = []
        i = 0
        while i >= 0:
            tok = lookup.get(sym[i])
            if tok is not None:
                ids.append(tok)
            else:
                # Only single characters can be missing: every merge produced a vocabulary entry.
                ids.extend(self._byte_to_id[b] for b in sym[i].encode("utf-8", errors="surrogatepass"))
            i = nxt[i]
        return ids


def _require(metadata: Mapping[str, Any], key: str, path: str | os.PathLike[str] | None) -> Any:
    if key not in metadata:
        raise UnsupportedModelError(f"metadata key {key!r} is missing, so there is no tokenizer", path)
    return metadata[key]


def _check_vocab(
    tokens: Sequence[str],
    scores: Any,
    types: Any,
    bos_id: int,
    eos_id: int,
    unk_id: int,
    path: str | os.PathLike[str] | None,
) -> None:
    n = len(tokens)
    if n == 0:
        raise UnsupportedModelError(f"{KEY_TOKENS} is empty", path)
    for key, values in ((KEY_SCORES, scores), (KEY_TYPES, types)):
        if np.ndim(values) != 1 or len(values) != n:
            raise UnsupportedModelError(f"{key} has shape {np.shape(values)}, expected ({n},)", path)
    for key, value in ((KEY_BOS, bos_id), (KEY_EOS, eos_id), (KEY_UNK, unk_id)):
        if not 0 <= int(value) < n:
            raise UnsupportedModelError(f"{key} = {value} is outside the vocabulary of {n} tokens", path)
