"""The byte-level BPE tokenizer of a GGUF "gpt2" vocabulary, giving the same ids as llama.cpp's `llm_tokenizer_bpe`.

The merging is done by the `tokenizers` library (Rust), built from the GGUF's `tokenizer.ggml.tokens` and
`tokenizer.ggml.merges`. What makes the ids llama.cpp's is around it:

- the pre-tokenizer: the regexes llama.cpp's llama-vocab.cpp uses for each `tokenizer.ggml.pre`, applied one
  after the other, every match and every gap between matches becoming its own piece (`Split`, "isolated"),
  then GPT-2's byte-to-unicode map;
- special tokens: llama.cpp cuts the text at special-token text before anything else, trying the tokens
  longest text first; control (and unknown) tokens only when `special=True`, user-defined tokens always;
- token attributes: like llama.cpp, tokens whose text marks an end of turn or fill-in-the-middle
  (`<|im_end|>`, `<|eot_id|>`, `<|fim_prefix|>`, ...) count as control tokens whatever the file says, and the
  end-of-generation set (`eog_ids`) is EOS plus those;
- BOS/EOS: `encode(..., bos=True)` adds what the model asks for, as llama.cpp's `add_special`: BOS when
  `tokenizer.ggml.add_bos_token` is true (default: true for the Llama 3 pre-tokenizer, false otherwise), EOS
  when `tokenizer.ggml.add_eos_token` is.

Decoding is llama.cpp's `token_to_piece` without special rendering: normal tokens map back to their bytes,
user-defined tokens are their text, control tokens are empty. Join `piece_bytes` before decoding UTF-8: one
character can span several tokens.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tokenizers
from tokenizers import models, pre_tokenizers

from pijax.errors import UnsupportedModelError
from pijax.io.tokenizer import (
    KEY_BOS,
    KEY_EOS,
    KEY_MODEL,
    KEY_TOKENS,
    KEY_TYPES,
    KEY_UNK,
    TOKEN_BYTE,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_UNKNOWN,
    TOKEN_UNUSED,
    TOKEN_USER_DEFINED,
    PieceTable,
)
from pijax.validate import check_bool, check_ids, check_text

KEY_PRE = "tokenizer.ggml.pre"
KEY_MERGES = "tokenizer.ggml.merges"
KEY_ADD_BOS = "tokenizer.ggml.add_bos_token"
KEY_ADD_EOS = "tokenizer.ggml.add_eos_token"
KEY_EOT = "tokenizer.ggml.eot_token_id"
KEY_EOM = "tokenizer.ggml.eom_token_id"

# GPT-2's regex without its final `|\s+` alternative, as llama.cpp has it.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


@dataclasses.dataclass(frozen=True)
class PreTokenizer:
    """How llama.cpp splits text before merging, for one family of `tokenizer.ggml.pre` names."""

    regexes: tuple[str, ...]
    # Llama 3: a whole piece that is a vocabulary entry is taken as is, without merging.
    ignore_merges: bool = False
    # llama.cpp's add_bos default when the GGUF has no tokenizer.ggml.add_bos_token.
    add_bos: bool = False


_FAMILIES = {
    "default": PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]")),
    "gpt-2": PreTokenizer((_GPT2,)),
    "smollm": PreTokenizer((r"\p{N}", _GPT2)),
    "llama3": PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True),
    "qwen2": PreTokenizer((_QWEN2,)),
}
# `tokenizer.ggml.pre` names llama.cpp maps onto these families with no other change to encoding.
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _FAMILIES["default"],
    "gpt-2": _FAMILIES["gpt-2"],
    "phi-2": _FAMILIES["gpt-2"],
    "smollm": _FAMILIES["smollm"],
    "starcoder": _FAMILIES["smollm"],
    "refact": _FAMILIES["smollm"],
    "llama-bpe": _FAMILIES["llama3"],
    "llama3": _FAMILIES["llama3"],
    "llama-v3": _FAMILIES["llama3"],
    "qwen2": _FAMILIES["qwen2"],
    "deepseek-r1-qwen": _FAMILIES["qwen2"],
}

# llama.cpp's token attributes (a token can carry several).
ATTR_UNKNOWN = 1 << 1
ATTR_UNUSED = 1 << 2
ATTR_NORMAL = 1 << 3
ATTR_CONTROL = 1 << 4
ATTR_USER_DEFINED = 1 << 5
ATTR_BYTE = 1 << 6
_ATTR_OF_TYPE = {
    TOKEN_NORMAL: ATTR_NORMAL,
    TOKEN_UNKNOWN: ATTR_UNKNOWN,
    TOKEN_CONTROL: ATTR_CONTROL,
    TOKEN_USER_DEFINED: ATTR_USER_DEFINED,
    TOKEN_UNUSED: ATTR_UNUSED,
    TOKEN_BYTE: ATTR_BYTE,
}
# Texts llama.cpp treats as end of turn / end of generation (EOG) or fill-in-the-middle markers: all become
# control tokens, and the EOG ones stop generation.
EOG_TEXTS = frozenset(
    {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>"}
    | {"<|end_of_text|>", "<end_of_utterance>", "<|return|>", "<|call|>"}
)
_FIM_TEXTS = frozenset(
    {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>"}
    | {"<SUF>", "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>", "<|fim_pad|>", "<fim-pad>", "<fim_pad>"}
    | {"<PAD>", "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>"}
)
_EOG_FIM_TEXTS = frozenset({"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "<|fim_repo|>", "<|repo_name|>"})
_EOG_FIM_TEXTS |= {"<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>"}
# llama.cpp's default special ids for a "gpt2" vocabulary whose file names none.
_DEFAULT_BOS_EOS = 11


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


class BPETokenizer(PieceTable):
    """Text <-> token ids for a llama.cpp "gpt2" (byte-level BPE) vocabulary."""

    def __init__(
        self,
        tokens: Sequence[str],
        token_types: Sequence[int] | np.ndarray,
        merges: Sequence[str],
        pre: str,
        *,
        bos_id: int | None,
        eos_id: int | None,
        unk_id: int | None = None,
        eot_id: int | None = None,
        eom_id: int | None = None,
        add_bos: bool | None = None,
        add_eos: bool = False,
    ) -> None:
        if pre not in PRE_TOKENIZERS:
            raise UnsupportedModelError(unsupported_pre_message(pre))
        self.pre = pre
        spec = PRE_TOKENIZERS[pre]
        # llama.cpp names an empty token so that every text maps to one id.
        self.tokens: list[str] = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        self.vocab_size = len(self.tokens)
        self.bos_id, self.eos_id, self.unk_id = bos_id, eos_id, unk_id
        self.add_bos = spec.add_bos if add_bos is None else bool(add_bos)
        self.add_eos = bool(add_eos)
        if (self.add_bos and bos_id is None) or (self.add_eos and eos_id is None):
            raise UnsupportedModelError("the vocabulary asks for BOS/EOS to be added but has no such token")
        self._attrs = [_ATTR_OF_TYPE.get(int(t), 0) for t in np.asarray(token_types).tolist()]
        self.eog_ids = self._mark_control_texts(eos_id, eot_id, eom_id)
        self._piece_bytes = [self._render(i) for i in range(self.vocab_size)]
        specials = [i for i, a in enumerate(self._attrs) if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)]
        specials.sort(key=lambda i: -len(self.tokens[i].encode()))
        self._specials = [(self.tokens[i], i) for i in specials]
        # Without `special`, llama.cpp still cuts at user-defined tokens, unless they are also control tokens.
        self._user_defined = [(t, i) for t, i in self._specials if not self._attrs[i] & (ATTR_CONTROL | ATTR_UNKNOWN)]
        self._bpe = _build_bpe(self._by_text, merges, spec)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], path: str | os.PathLike[str] | None = None) -> BPETokenizer:
        """Build the tokenizer from a GGUF metadata dict; `path` names the file in errors."""
        if metadata.get(KEY_MODEL) != "gpt2":
            raise UnsupportedModelError(f"{KEY_MODEL} is {metadata.get(KEY_MODEL)!r}, not 'gpt2'", path)
        # Like llama.cpp, a file without a pre-tokenizer name gets the default one.
        pre = str(metadata.get(KEY_PRE) or "default")
        if pre not in PRE_TOKENIZERS:
            raise UnsupportedModelError(unsupported_pre_message(pre), path)
        tokens = _string_list(metadata, KEY_TOKENS, path)
        merges = _string_list(metadata, KEY_MERGES, path)
        n = len(tokens)
        if n == 0:
            raise UnsupportedModelError(f"{KEY_TOKENS} is empty", path)
        types = metadata.get(KEY_TYPES)
        if types is None:
            types = np.full(n, TOKEN_NORMAL, np.int32)
        if np.ndim(types) != 1 or len(types) < n:
            raise UnsupportedModelError(f"{KEY_TYPES} has shape {np.shape(types)}, expected ({n},)", path)
        ids = {key: _token_id(metadata, key, n) for key in (KEY_BOS, KEY_EOS, KEY_UNK, KEY_EOT, KEY_EOM)}
        # llama.cpp keeps its default id (11) when the file names none or one outside the vocabulary.
        default = _DEFAULT_BOS_EOS if n > _DEFAULT_BOS_EOS else None
        try:
            return cls(
                tokens,
                np.asarray(types[:n]),
                merges,
                pre,
                bos_id=default if ids[KEY_BOS] is None else ids[KEY_BOS],
                eos_id=default if ids[KEY_EOS] is None else ids[KEY_EOS],
                unk_id=ids[KEY_UNK],
                eot_id=ids[KEY_EOT],
                eom_id=ids[KEY_EOM],
                add_bos=bool(metadata[KEY_ADD_BOS]) if KEY_ADD_BOS in metadata else None,
                add_eos=bool(metadata.get(KEY_ADD_EOS, False)),
            )
        except UnsupportedModelError as err:
            raise UnsupportedModelError(err.problem, path) from None

    def encode(self, text: str, bos: bool = False, special: bool = False) -> list[int]:
        """Ids of `text` as llama.cpp's `llama_tokenize` gives them.

        `bos`: add the model's special tokens, as llama.cpp's `add_special` (BOS only if the file's
        add_bos_token says so, EOS only if add_eos_token does). `special`: parse control-token text such as
        `<|im_start|>` into its id (user-defined tokens are always parsed, as in llama.cpp)."""
        text, bos, special = check_text(text), check_bool(bos, "bos"), check_bool(special, "special")
        ids: list[int] = [self.bos_id] if bos and self.add_bos else []  # type: ignore[list-item]
        for fragment in self._partition(text, special):
            if isinstance(fragment, int):
                ids.append(fragment)
            else:
                ids.extend(self._bpe.encode(fragment, add_special_tokens=False).ids)
        if bos and self.add_eos:
            ids.append(self.eos_id)  # type: ignore[arg-type]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`: control tokens dropped, bytes reassembled across tokens (invalid UTF-8 -> U+FFFD)."""
        return b"".join(self.piece_bytes(i) for i in check_ids(ids)).decode("utf-8", errors="replace")

    def token_id(self, text: str) -> int | None:
        """The id whose vocabulary text is exactly `text` (e.g. "<|im_end|>"), or None."""
        return self._by_text.get(text)

    def _partition(self, text: str, special: bool) -> list[str | int]:
        """llama.cpp's `tokenizer_st_partition`: cut at special-token text, longest token first."""
        fragments: list[str | int] = [text] if text else []
        for piece, tid in self._specials if special else self._user_defined:
            if not any(isinstance(f, str) and piece in f for f in fragments):
                continue
            cut: list[str | int] = []
            for f in fragments:
                if isinstance(f, int) or piece not in f:
                    cut.append(f)
                    continue
                for j, part in enumerate(f.split(piece)):
                    if j:
                        cut.append(tid)
                    if part:
                        cut.append(part)
            fragments = cut
        return fragments

    def _mark_control_texts(self, eos_id: int | None, eot_id: int | None, eom_id: int | None) -> frozenset[int]:
        """llama.cpp's fix-ups by token text: end-of-turn and FIM markers become control tokens; the EOG set."""
        # Like llama.cpp, a later duplicate text wins the lookup.
        by_text = self._by_text = {t: i for i, t in enumerate(self.tokens)}
        eog = {eos_id, eot_id, eom_id}
        for text in EOG_TEXTS | _FIM_TEXTS:
            i = by_text.get(text)
            if i is not None:
                self._attrs[i] |= ATTR_CONTROL
                if text in EOG_TEXTS or text in _EOG_FIM_TEXTS:
                    eog.add(i)
        return frozenset(i for i in eog if i is not None)

    def _render(self, i: int) -> bytes:
        attr = self._attrs[i]
        text = self.tokens[i]
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN):
            return b""
        if attr & ATTR_USER_DEFINED:
            return text.encode()
        if attr & ATTR_NORMAL:
            return _byte_decode(text)
        if attr & ATTR_BYTE and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            return bytes([int(text[3:5], 16)])
        return b""


def _byte_decode(text: str) -> bytes:
    """A byte-level token's bytes; llama.cpp writes a character outside GPT-2's map as `[UNK_BYTE_0x..]`."""
    out = bytearray()
    for ch in text:
        b = _UNICODE_TO_BYTE.get(ch)
        if b is not None:
            out.append(b)
        else:
            out += f"[UNK_BYTE_0x{ch.encode().hex()}{text}]".encode()
    return bytes(out)


def _build_bpe(vocab: dict[str, int], merges: Sequence[str], spec: PreTokenizer) -> tokenizers.Tokenizer:
    pairs = []
    for m in merges:
        # llama.cpp splits at the first space after the first character.
        cut = m.find(" ", 1)
        if cut < 0:
            continue
        a, b = m[:cut], m[cut + 1 :]
        # The library refuses merges whose parts or result are not tokens; llama.cpp would turn such a result
        # into bytes, which no vocabulary seen so far needs.
        if a in vocab and b in vocab and a + b in vocab:
            pairs.append((a, b))
    bpe = tokenizers.Tokenizer(models.BPE(vocab, pairs, ignore_merges=spec.ignore_merges))
    steps = [pre_tokenizers.Split(tokenizers.Regex(r), behavior="isolated") for r in spec.regexes]
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    bpe.pre_tokenizer = pre_tokenizers.Sequence(steps)
    return bpe


def unsupported_pre_message(pre: str) -> str:
    return f"pre-tokenizer {pre!r} ({KEY_PRE}) is not supported; supported: {', '.join(sorted(PRE_TOKENIZERS))}"


def _string_list(metadata: Mapping[str, Any], key: str, path: str | os.PathLike[str] | None) -> list[str]:
    value = metadata.get(key)
    if value is None:
        raise UnsupportedModelError(f"metadata key {key!r} is missing, so there is no tokenizer", path)
    if isinstance(value, str | bytes) or not all(isinstance(t, str) for t in value):
        raise UnsupportedModelError(f"{key} must be a list of strings", path)
    return list(value)


def _token_id(metadata: Mapping[str, Any], key: str, n: int) -> int | None:
    """An id from the file, or None when absent or (as llama.cpp warns and ignores) outside the vocabulary."""
    value = metadata.get(key)
    if value is None or not 0 <= int(value) < n:
        return None
    return int(value)
