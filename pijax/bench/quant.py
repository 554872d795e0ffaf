"""pijax on llama.cpp's block formats against llama.cpp on the SAME GGUF file: parity and decode speed (SmolLM2).

`python -m pijax.bench.quant parity [--dtype native|q8_0|q4_1] [--file PATH]`: logits of pijax
(`load_model(file, dtype=...)`) and of llama.cpp on the same file, at every position of the five reference
prompts and their 48-token greedy continuations (tests/data/smollm2_llamacpp.npz), each sequence one batch from
an empty cache; prints top-1 agreement, mean KL and the max |logit difference|.

`python -m pijax.bench.quant speed [--repeats 5] [--n-prompt 64] [--n-new 128]`: greedy decode tok/s of pijax
dense on the Q4_1 file (`dtype="native"`: Q4_1 layers, the tied Q8_0 head) and on its Q8_0 copy, against
llama.cpp on each same file, 2 threads. The runs alternate (llama.cpp in a fresh child process, then pijax) so
that each pair sees the same machine; reported: medians, the median ratio, and the worst pairing (lowest ratio).
The Q8_0 copy is made once with `pijax.io.convert --to q8_0` beside the cached model.
Needs llama-cpp-python (`.[bench]`); not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

REFS = Path(__file__).resolve().parents[2] / "tests" / "data" / "smollm2_llamacpp.npz"
N_PROMPTS = 5


def q8_copy(q4: Path) -> Path:
    """The Q8_0 copy of the registry's Q4_1 file, made once beside it."""
    from pijax.io.convert import convert_gguf

    out = q4.with_name(q4.name.replace("Q4_1", "Q8_0"))
    if not out.exists():
        convert_gguf(q4, out, "q8_0")
    return out


def reference_sequences() -> list[list[int]]:
    z = np.load(REFS)
    return [np.concatenate([z[f"ids_{i}"], z[f"gen_{i}"]]).tolist() for i in range(N_PROMPTS)]


def parity(path: Path, dtype: str) -> dict[str, Any]:
    import pijax
    from pijax.bench.real_models import agreement, llamacpp_logits

    seqs = reference_sequences()
    ref = np.concatenate(llamacpp_logits(path, seqs))
    model = pijax.load_model(path, dtype=dtype)
    mine = np.concatenate([np.asarray(model.engine.logits(s)) for s in seqs])
    return {"file": str(path), "dtype": dtype, **agreement(ref, mine)}


def speed(path: Path, dtype: str, repeats: int, n_prompt: int, n_new: int) -> dict[str, Any]:
    import pijax
    from pijax.bench.llamacpp import measure_in_child

    model = pijax.load_model(path, dtype=dtype)
    prompt = np.random.default_rng(0).integers(3, model.config.n_vocab, n_prompt).tolist()
    model.generate(prompt, n_new, stop_at_eos=False)  # compile
    mine, theirs = [], []
    for _ in range(repeats):
        r = measure_in_child(path, n_prompt=n_prompt, n_new=n_new, repeats=1)
        if isinstance(r, str):
            raise SystemExit(r)
        theirs.append(r.decode_median)
        mine.append(model.generate(prompt, n_new, stop_at_eos=False).decode_tok_s)
    ratios = [a / b for a, b in zip(mine, theirs, strict=True)]
    return {
        "file": str(path),
        "dtype": dtype,
        "pijax_tok_s": mine,
        "llamacpp_tok_s": theirs,
        "pijax_median": statistics.median(mine),
        "llamacpp_median": statistics.median(theirs),
        "ratio_median": statistics.median(ratios),
        "ratio_worst": min(ratios),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("parity", "speed"))
    ap.add_argument(
        "--file", default="", help="a GGUF (default: the registry's SmolLM2 Q4_1, and for speed also its Q8_0 copy)"
    )
    ap.add_argument("--dtype", default="native")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n-prompt", type=int, default=64)
    ap.add_argument("--n-new", type=int, default=128)
    args = ap.parse_args(argv)
    from pijax.io.registry import resolve_model

    q4 = resolve_model("smollm2-135m")
    files = [Path(args.file)] if args.file else [q4, q8_copy(q4)]
    for f in files:
        if args.what == "parity":
            res = parity(f, args.dtype)
        else:
            res = speed(f, args.dtype, args.repeats, args.n_prompt, args.n_new)
        print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
