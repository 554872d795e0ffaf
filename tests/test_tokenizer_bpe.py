"""Tests of pijax.io.bpe: llama.cpp's ids for every supported pre-tokenizer on hard strings, decoding, BOS,
special tokens, and the one-line errors of the tokenizer factory."""

from __future__ import annotations

import pytest
from vocab_data import REFS, vocab_metadata

from pijax import paths
from pijax.errors import UnsupportedModelError
from pijax.io.bpe import BPETokenizer
from pijax.io.gguf import read_gguf
from pijax.io.tokenizer import Tokenizer
from pijax.io.vocab import load_tokenizer

NAMES = sorted(REFS)


@pytest.fixture(scope="module")
def metadata(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("vocab")
    return lambda name: vocab_metadata(name, folder)


@pytest.fixture(scope="module")
def bpe(metadata):
    cache: dict[str, BPETokenizer] = {}

    def get(name: str) -> BPETokenizer:
        if name not in cache:
            tok = load_tokenizer(metadata(name), f"{name}.gguf")
            assert isinstance(tok, BPETokenizer)
            cache[name] = tok
        return cache[name]

    return get


def _cases(name: str) -> list[dict]:
    return [c for c in REFS[name]["cases"] if "add_bos" not in c]


def test_references_cover_the_hard_strings() -> None:
    assert set(NAMES) == {"smollm", "llama-bpe", "qwen2", "gpt-2", "default"}
    for name in NAMES:
        texts = {c["text"] for c in _cases(name)}
        assert len(texts) >= 30
        assert {c["special"] for c in _cases(name)} == {False, True}


@pytest.mark.parametrize("name", NAMES)
def test_ids_equal_llamacpp(bpe, name: str) -> None:
    tok = bpe(name)
    assert tok.pre == name
    wrong = [
        (c["text"], c["special"], got, c["ids"])
        for c in _cases(name)
        if (got := tok.encode(c["text"], special=c["special"])) != c["ids"]
    ]
    assert not wrong, f"{len(wrong)} strings differ from llama.cpp, first: {wrong[0]}"


@pytest.mark.parametrize("name", NAMES)
def test_decode_equals_llamacpp_and_round_trips(bpe, name: str) -> None:
    tok = bpe(name)
    round_trips = 0
    for c in _cases(name):
        # llama.cpp's detokenize joins its pieces; so do we, byte for byte.
        assert b"".join(tok.piece_bytes(i) for i in c["ids"]) == bytes.fromhex(c["detok_hex"]), c["text"]
        if bytes.fromhex(c["detok_hex"]) == c["text"].encode():
            assert tok.decode(tok.encode(c["text"], special=c["special"])) == c["text"]
            round_trips += 1
    # Only special-token text parsed into control tokens (which decode to nothing) fails to round-trip.
    assert round_trips >= len(_cases(name)) - 8


@pytest.mark.parametrize("name", NAMES)
def test_bos_follows_add_bos_token(bpe, name: str) -> None:
    tok = bpe(name)
    (ref,) = [c for c in REFS[name]["cases"] if c.get("add_bos")]
    assert tok.encode(ref["text"], bos=True) == ref["ids"]
    assert tok.add_bos == (name == "llama-bpe")
    assert tok.encode(ref["text"]) == ref["ids"][int(tok.add_bos) :]


def test_special_token_text_is_parsed_only_when_asked(bpe) -> None:
    tok = bpe("smollm")
    im_start = tok.token_id("<|im_start|>")
    assert im_start == 1
    assert tok.encode("<|im_start|>", special=True) == [im_start]
    plain = tok.encode("<|im_start|>")
    assert im_start not in plain and tok.decode(plain) == "<|im_start|>"
    # Control tokens decode to nothing; their text is not part of the reply.
    assert tok.decode([im_start, *tok.encode("hi")]) == "hi"
    assert {0, 2} <= tok.eog_ids and tok.eos_id == 2


def test_user_defined_tokens_are_parsed_even_without_special(bpe) -> None:
    tok = bpe("qwen2")
    pad = tok.token_id("[PAD151650]")
    assert tok.encode("x[PAD151650]", special=False) == [*tok.encode("x"), pad]
    assert tok.decode([pad]) == "[PAD151650]"


def test_utf8_is_reassembled_across_token_boundaries(bpe) -> None:
    tok = bpe("gpt-2")
    text = "👩🏻‍💻 日本語"
    ids = tok.encode(text)
    pieces = [tok.piece_bytes(i) for i in ids]
    # Some tokens hold part of a character: alone they are not UTF-8, joined they are the text.
    assert any(_not_utf8(p) for p in pieces)
    assert b"".join(pieces).decode() == text == tok.decode(ids)
    assert "\ufffd" in "".join(tok.decode_piece(i) for i in ids)


def _not_utf8(b: bytes) -> bool:
    try:
        b.decode()
    except UnicodeDecodeError:
        return True
    return False


def test_digit_runs_split_per_pre_tokenizer(bpe) -> None:
    pieces = {name: [bpe(name).decode_piece(i) for i in bpe(name).encode("1234567")] for name in NAMES}
    assert pieces["smollm"] == list("1234567") == pieces["qwen2"]
    assert pieces["llama-bpe"] == ["123", "456", "7"]
    assert "".join(pieces["gpt-2"]) == "1234567" and len(pieces["gpt-2"]) < 7


def test_unsupported_pre_tokenizer_is_one_line(metadata) -> None:
    md = {**metadata("gpt-2"), "tokenizer.ggml.pre": "mystery-bpe"}
    with pytest.raises(UnsupportedModelError) as err:
        load_tokenizer(md, "model.gguf")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("model.gguf: ")
    assert "'mystery-bpe'" in msg and all(n in msg for n in ("smollm", "llama-bpe", "qwen2", "gpt-2", "default"))


def test_unsupported_tokenizer_model_is_one_line() -> None:
    with pytest.raises(UnsupportedModelError) as err:
        load_tokenizer({"tokenizer.ggml.model": "bert"}, "model.gguf")
    msg = str(err.value)
    assert "\n" not in msg and "'bert'" in msg and "'llama'" in msg and "'gpt2'" in msg


def test_factory_keeps_sentencepiece_for_llama_vocabularies() -> None:
    md = read_gguf(paths.STORIES260K).metadata
    tok = load_tokenizer(md, paths.STORIES260K)
    assert type(tok) is Tokenizer
    assert tok.encode("Once upon a time", bos=True) == Tokenizer.from_metadata(md).encode("Once upon a time", bos=True)
