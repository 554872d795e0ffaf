"""Make tests/data/bpe_llamacpp.json and the vocab-only GGUFs in tests/data/vocab/: llama.cpp's BPE token ids.

Needs llama-cpp-python (`pip install -e .[bench]`) and, for the others, llama.cpp's own vocab-only test files
`models/ggml-vocab-{llama-bpe,qwen2,gpt-2}.gguf` (MIT; shipped in llama-cpp-python's sdist under
vendor/llama.cpp/models/, or in github.com/ggml-org/llama.cpp/tree/master/models):

    python tests/data/make_bpe_refs.py --llama-models DIR

For each vocabulary, every string of STRINGS is tokenized by llama.cpp with `special` off and on
(`Llama(path, vocab_only=True).tokenize(text.encode(), add_bos=False, special=...)`); `detok_hex` is
`Llama.detokenize(ids)` (llama.cpp's token_to_piece, joined). "default" is the gpt-2 vocabulary with
`tokenizer.ggml.pre` overridden to "default" (a kv override in llama.cpp, the same metadata change in the test).
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import json
import shutil
from pathlib import Path

import llama_cpp

from pijax.io.gguf import Meta, read_gguf, write_gguf
from pijax.io.registry import resolve_model

HERE = Path(__file__).parent
OUT = HERE / "bpe_llamacpp.json"
VOCAB_DIR = HERE / "vocab"

STRINGS = [
    "Hello world",
    " leading space",
    "trailing space ",
    "   three leading spaces",
    "two  spaces and   three    four",
    "tabs\there\t\tand\t\t\tthere \t mixed",
    "line one\r\nline two\r\n",
    "\n\n\nnewlines\n \n",
    "Mixed\r\r\n\n\r end",
    "whitespace before newline   \n  after",
    "你好，世界！日本語のテキスト、한국어 문장입니다.",
    "emoji 👋🏽 👍🏿 👩🏻‍💻 🏳️‍🌈 family 👨‍👩‍👧‍👦 🤖🚀 flags 🇫🇷🇯🇵",
    "digits 1 12 123 1234 12345 1234567890 3.14159 -42 1,000,000 007",
    "I'm you're he's we've they'll she'd can't WON'T It'S 'tis O'Neill",
    "def f(x):\n    return x**2 + 1  # square\n\tif x != 0: print(f'{x}')\n",
    "zero\u200bwidth\u200b space\u200b",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "a<|im_start|> spaced <|im_end|>b",
    "café naïve Ångström façade ĳ straße",
    "Ünïcödé ÀÉÎÕÜ e\u0301 a\u0308",
    "math ∑∫√∞ ≤≥ ½ ² ³ α β γ",
    "مرحبا بالعالم שלום नमस्ते दुनिया",
    "Привет, мир! สวัสดีครับ",
    "   ",
    "\t",
    "a",
    "https://example.com/path?q=1&x=y#frag",
    '{"key": [1, 2, 3], "nested": {"a": null}}',
    "punctuation!!! ??? ... --- *** ((())) $$ ^^ ~~ ||",
    "mixed123abc456 x1y2z3 v2.0.1",
    "nbsp\u00a0here and ideographic\u3000space",
    "ＦＵＬＬＷＩＤＴＨ ａｂｃ １２３",
    "’curly’ “quotes” «guillemets»",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "ends with newline\n",
    "<|begin_of_text|>Hi<|eot_id|>",
    "[PAD151650] user-defined",
    "'s 're 'll at start",
    "control \x01\x7f chars",
    "Tiếng Việt có nhiều điều hợp lý; yapılmaktadır",
    "\ue000 private use \U000f0000, unassigned \u0378\u0379, \ufffd replacement",
    "\u0301 lone mark e\u0301\u0301 x\u00ady \u2062 \ufeffBOM A\u180eB",
    "٠١٢٣ arabic digits, Ⅻ roman, ⅔, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "nel\u0085x ls\u2028y ps\u2029z vt\x0bff\x0cus\x1f",
    "\U0001f9d1\u200d\U0001f9b0 zwj sequence",
]


def vocab_only_copy(src: Path, dst: Path) -> None:
    """The GGUF's metadata without its tensors: all a tokenizer reads."""
    f = read_gguf(src)
    md = {k: Meta(v, f.metadata_types[k]) for k, v in f.metadata.items()}
    write_gguf(dst, md, [])


def cases(path: Path, kv_overrides: dict | None = None) -> list[dict]:
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False, kv_overrides=kv_overrides)
    out = []
    for text in STRINGS:
        for special in (False, True):
            ids = llm.tokenize(text.encode(), add_bos=False, special=special)
            out.append({"text": text, "special": special, "ids": ids, "detok_hex": llm.detokenize(ids).hex()})
    with_bos = llm.tokenize(b"Hello", add_bos=True, special=False)
    return [*out, {"text": "Hello", "special": False, "add_bos": True, "ids": with_bos}]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-models", type=Path, required=True, help="llama.cpp's models/ folder")
    args = ap.parse_args()
    VOCAB_DIR.mkdir(exist_ok=True)
    smollm = resolve_model("smollm2-135m")
    sources = {
        "smollm": smollm,
        "llama-bpe": args.llama_models / "ggml-vocab-llama-bpe.gguf",
        "qwen2": args.llama_models / "ggml-vocab-qwen2.gguf",
        "gpt-2": args.llama_models / "ggml-vocab-gpt-2.gguf",
    }
    refs: dict = {}
    for name, src in sources.items():
        shipped = VOCAB_DIR / f"{name}.vocab.gguf"
        if name == "smollm":
            vocab_only_copy(src, shipped)
        else:
            shutil.copyfile(src, shipped)
        got = cases(src)
        # The shipped (vocab-only) file must give llama.cpp the same ids as the source file.
        assert cases(shipped) == got, name
        refs[name] = {"vocab": f"vocab/{name}.vocab.gguf.gz", "source": src.name, "source_sha256": sha256(src)}
        refs[name]["cases"] = got
        with open(f"{shipped}.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as fo:
            fo.write(shipped.read_bytes())
        shipped.unlink()
    refs["default"] = {
        "vocab": "vocab/gpt-2.vocab.gguf.gz",
        "override": {"tokenizer.ggml.pre": "default"},
        "source": sources["gpt-2"].name,
        "source_sha256": sha256(sources["gpt-2"]),
        "cases": cases(sources["gpt-2"], {"tokenizer.ggml.pre": "default"}),
    }
    meta = {
        "tool": f"llama-cpp-python {llama_cpp.__version__} (llama.cpp vendored in its sdist)",
        "command": "python tests/data/make_bpe_refs.py --llama-models <llama.cpp>/models",
        "date": datetime.date.today().isoformat(),
    }
    OUT.write_text(json.dumps({"provenance": meta, "vocabularies": refs}, ensure_ascii=False, indent=0) + "\n")
    print(f"wrote {OUT} ({sum(len(r['cases']) for r in refs.values())} cases)")


if __name__ == "__main__":
    main()
