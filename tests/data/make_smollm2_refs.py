"""Make tests/data/smollm2_llamacpp.npz (+ .json): llama.cpp's logits and greedy continuations for SmolLM2-135M.

llama.cpp (llama-cpp-python, `.[bench]`) runs on an all-F32 copy of the registry's Q4_1 file, made with
`python -m pijax.io.convert Q4_1.gguf F32.gguf --to f32`, with an F32 KV cache and no flash attention: then it
computes what pijax computes from the Q4_1 file dequantized to f32. Stored per prompt (the tests need no
tokenizer and no llama.cpp):
- `ids_i`: the prompt's ids from llama.cpp's tokenizer (prompt 4 is ChatML, parsed with special tokens);
- `gen_i`: llama.cpp's 48-token greedy continuation (one token per eval, EOS does not stop it);
- `top_ids_i`, `top_logits_i` [T, 64]: at every position of prompt + continuation (teacher-forced, one batch),
  the 64 largest logits and their ids; `sub_logits_i` [T, 1024]: the logits of a fixed random subset of the
  vocabulary, `sub_ids` (seed 0), the same for every position. The full [T, 49152] logits would be ~80 MB.
Also measured (not stored as a reference): pijax on the Q4_1 file against llama.cpp on the Q4_1 file itself
(which quantizes activations to 8 bits in its dot products): top-1 agreement and mean KL per position, in the
.json next to the provenance.

Run from the repository root: `python tests/data/make_smollm2_refs.py` (about a minute).
"""

from __future__ import annotations

import json
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("smollm2_llamacpp.npz")
N_NEW = 48
TOP = 64
N_SUB = 1024
PROMPTS = [
    ("The capital of France is", False),
    ('def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n', False),
    ("Once upon a time, in a small village by the sea, there lived", False),
    ("Photosynthesis converts light energy into chemical energy. In 2023, researchers measured 3.14159 and", False),
    (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the tallest mountain in the world?<|im_end|>\n<|im_start|>assistant\n",
        True,
    ),
]


def main() -> int:
    import llama_cpp

    from pijax.bench.real_models import agreement, llamacpp_greedy, llamacpp_logits, llamacpp_tokenize
    from pijax.io.convert import convert_gguf
    from pijax.io.registry import resolve_model
    from pijax.model.convert import load_llama
    from pijax.model.generate import Engine

    q4 = resolve_model("smollm2-135m")
    with tempfile.TemporaryDirectory() as tmp:
        f32 = convert_gguf(q4, Path(tmp) / "smollm2-f32.gguf", "f32")
        ids = [llamacpp_tokenize(f32, [text], special=special)[0] for text, special in PROMPTS]
        gens = llamacpp_greedy(f32, ids, N_NEW)
        seqs = [p + g for p, g in zip(ids, gens, strict=True)]
        ref = llamacpp_logits(f32, seqs)
    vocab = ref[0].shape[1]
    sub_ids = np.sort(np.random.default_rng(0).choice(vocab, N_SUB, replace=False)).astype(np.int32)
    arrays: dict[str, np.ndarray] = {"sub_ids": sub_ids}
    for i, (p, g, lg) in enumerate(zip(ids, gens, ref, strict=True)):
        top = np.argsort(-lg, axis=1, kind="stable")[:, :TOP].astype(np.int32)
        arrays |= {
            f"ids_{i}": np.asarray(p, np.int32),
            f"gen_{i}": np.asarray(g, np.int32),
            f"top_ids_{i}": top,
            f"top_logits_{i}": np.take_along_axis(lg, top, axis=1).astype(np.float32),
            f"sub_logits_{i}": lg[:, sub_ids].astype(np.float32),
        }
    np.savez_compressed(OUT, **arrays)

    # The measurement against llama.cpp on the Q4_1 file itself.
    q4_logits = llamacpp_logits(q4, seqs)
    engine = Engine(load_llama(q4, "f32", xla_ffn=True, progress=False))
    mine = [engine.logits(s) for s in seqs]
    vs_q4 = agreement(np.concatenate(q4_logits), np.concatenate(mine))
    vs_f32 = agreement(np.concatenate(ref), np.concatenate(mine))
    gaps = [
        float(np.min(np.diff(np.sort(lg[len(p) - 1 :], axis=1)[:, -2:], axis=1)))
        for p, lg in zip(ids, ref, strict=True)
    ]
    info = {
        "made_by": f"llama-cpp-python {llama_cpp.__version__} (F32 KV cache, flash attention off, 2 threads)",
        "model": f"{q4.name} (registry smollm2-135m), converted to all-F32 by pijax.io.convert --to f32",
        "date": date.today().isoformat(),
        "command": "python tests/data/make_smollm2_refs.py",
        "prompts": [{"text": t, "special": s, "n_ids": len(i)} for (t, s), i in zip(PROMPTS, ids, strict=True)],
        "stored": f"per position top-{TOP} ids+logits and {N_SUB} fixed random vocab ids (seed 0); greedy {N_NEW}",
        "smallest_top2_gap_during_greedy": gaps,
        "pijax_q4_1_vs_llamacpp_f32_copy": vs_f32,
        "pijax_q4_1_vs_llamacpp_q4_1": vs_q4,
    }
    OUT.with_suffix(".json").write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(info, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
