"""Tests of pijax.io.tokenizer: llama.cpp's ids on stories260K, round trips, BOS, and vocabulary errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pijax import paths
from pijax.errors import PijaxError, UnsupportedModelError
from pijax.io.gguf import read_gguf
from pijax.io.tokenizer import SPACE_MARK, Tokenizer

REFERENCE = json.loads((Path(__file__).parent / "data" / "stories260k_tokenize.json").read_text())
CASES = [pytest.param(c["text"], c["ids"], id=repr(c["text"])[:40]) for c in REFERENCE]


@pytest.fixture(scope="module")
def metadata() -> dict:
    return read_gguf(paths.STORIES260K).metadata


@pytest.fixture(scope="module")
def tok(metadata: dict) -> Tokenizer:
    return Tokenizer.from_metadata(metadata, paths.STORIES260K)


@pytest.mark.parametrize(("text", "ids"), CASES)
def test_ids_equal_llamacpp(tok: Tokenizer, text: str, ids: list[int]) -> None:
    assert tok.encode(text) == ids


@pytest.mark.parametrize(("text", "ids"), CASES)
def test_decode_inverts_encode(tok: Tokenizer, text: str, ids: list[int]) -> None:
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(ids) == text


def test_bos_is_prepended_and_dropped_by_decode(tok: Tokenizer) -> None:
    text = "Once upon a time"
    ids = tok.encode(text, bos=True)
    assert ids[0] == tok.bos_id == 1
    assert ids[1:] == tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode("", bos=True) == [tok.bos_id]
    assert tok.decode([tok.bos_id, *tok.encode(text), tok.eos_id]) == text


def test_vocab_facts(tok: Tokenizer) -> None:
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (512, 1, 2)
    assert tok.decode_piece(tok.encode("a")[0]) == " a"
    assert tok.piece_bytes(tok.eos_id) == b""


def test_byte_pieces_reassemble_to_utf8(tok: Tokenizer) -> None:
    ids = tok.encode("🙂")
    assert b"".join(tok.piece_bytes(i) for i in ids) == " 🙂".encode()


def test_word_cache_matches_whole_text_merge(tok: Tokenizer) -> None:
    text = paths.TINYSTORIES.read_text(encoding="utf-8")[:20_000]
    escaped = SPACE_MARK + text.replace(" ", SPACE_MARK)
    assert tok.encode(text) == tok._merge(escaped)
    assert tok.decode(tok.encode(text)) == text


def test_merge_order_is_highest_score_then_leftmost() -> None:
    # "abc": "ab" and "bc" are both tokens; the higher score decides, and a tie goes to the left pair.
    tokens = ["<unk>", "<s>", "</s>", "a", "b", "c", "ab", "bc", SPACE_MARK]
    types = np.array([2, 3, 3, 1, 1, 1, 1, 1, 1], dtype=np.int32)
    kw = {"bos_id": 1, "eos_id": 2, "add_space_prefix": False}
    left_wins = Tokenizer(tokens, np.array([0, 0, 0, -1, -1, -1, -2, -2, -1], np.float32), types, **kw)
    right_wins = Tokenizer(tokens, np.array([0, 0, 0, -1, -1, -1, -3, -2, -1], np.float32), types, **kw)
    assert left_wins.encode("abc") == [6, 5]
    assert right_wins.encode("abc") == [3, 7]
    # No "<0xNN>" tokens in this vocabulary: an unknown character falls back to <unk>.
    assert left_wins.encode("z") == [0]


def test_missing_tokens_names_file_and_key(metadata: dict) -> None:
    broken = {k: v for k, v in metadata.items() if k != "tokenizer.ggml.tokens"}
    with pytest.raises(PijaxError) as err:
        Tokenizer.from_metadata(broken, "model.gguf")
    assert isinstance(err.value, UnsupportedModelError)
    assert "model.gguf" in str(err.value) and "tokenizer.ggml.tokens" in str(err.value)


def test_other_tokenizer_models_are_refused(metadata: dict) -> None:
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        Tokenizer.from_metadata({**metadata, "tokenizer.ggml.model": "gpt2"}, "model.gguf")


def test_mismatched_scores_are_refused(metadata: dict) -> None:
    short = {**metadata, "tokenizer.ggml.scores": metadata["tokenizer.ggml.scores"][:-1]}
    with pytest.raises(UnsupportedModelError, match=r"tokenizer\.ggml\.scores"):
        Tokenizer.from_metadata(short, "model.gguf")


def test_out_of_range_id_is_a_pijax_error(tok: Tokenizer) -> None:
    with pytest.raises(PijaxError, match="512"):
        tok.decode([5, 512])
