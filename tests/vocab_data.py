"""Shared by the tokenizer and chat tests: the vocab-only GGUFs shipped gzipped in tests/data/vocab and
llama.cpp's reference ids for them (tests/data/bpe_llamacpp.json, made by tests/data/make_bpe_refs.py)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from pijax.io.gguf import read_gguf

DATA = Path(__file__).parent / "data"
REFS = json.loads((DATA / "bpe_llamacpp.json").read_text(encoding="utf-8"))["vocabularies"]


def vocab_metadata(name: str, folder: Path) -> dict:
    """Metadata of vocabulary `name`, unpacked into `folder` once, with the reference's metadata override."""
    ref = REFS[name]
    path = folder / Path(ref["vocab"]).stem
    if not path.exists():
        with gzip.open(DATA / ref["vocab"], "rb") as fi, open(path, "wb") as fo:
            shutil.copyfileobj(fi, fo)
    return {**read_gguf(path).metadata, **ref.get("override", {})}
