"""PowerInfer's `main` and pijax's sparse engine on the same PWRI file: the greedy tokens, side by side.

    python experiments/bench/powerinfer/agree.py MAIN PWRI.gguf [FMT] [N]

FMT: the format pijax holds the file's matrices in (default f16: the file's own precision). PowerInfer is run
greedy (`--temp 0 --repeat-penalty 1.0`) on a fixed prompt; its token ids are read from the `main.log` it writes
into its working directory (a temporary one). pijax runs the same ids through `load_llama(PWRI, FMT)` with the
file's predictors at the file's threshold (the engine of S3), greedy. Prints both id lists and where they first
differ: random synthetic weights have near-tied logits, so f16 rounding in different orders may split the two
after a while; sensible, non-degenerate ids (not one repeated id, not all 0) are what this checks.
Run under `flock /tmp/pijax_big.lock` for the 1.1B.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPT = "Once upon a time, there was a little girl"


def powerinfer_ids(main: str, model: str, n: int) -> tuple[list[int], list[int]]:
    """(prompt ids, generated ids) of one greedy PowerInfer run, from its main.log."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            main,
            "-m",
            model,
            "-t",
            "2",
            "-n",
            str(n),
            "-p",
            PROMPT,
            "--ignore-eos",
            "--temp",
            "0",
            "--repeat-penalty",
            "1.0",
            "--seed",
            "0",
        ]
        subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=True)
        log = (Path(tmp) / "main.log").read_text()
    evals = [[int(i) for i in re.findall(r":(\d+)(?=[,\s\]])", line)] for line in re.findall(r"eval: \[(.*)\]", log)]
    return evals[0], [e[0] for e in evals[1:]] + [int(re.findall(r"last: \[.*:(\d+) \]", log)[-1])]


def main() -> None:
    main_bin, model = sys.argv[1], sys.argv[2]
    fmt = sys.argv[3] if len(sys.argv) > 3 else "f16"
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 16
    prompt, pi = powerinfer_ids(main_bin, model, n)
    from pijax.bench.decode_timing import GREEDY, CountingEngine
    from pijax.model.convert import load_llama

    llama = load_llama(model, fmt)
    out = CountingEngine(llama).generate(prompt, n, GREEDY)
    px = list(out.new_ids)
    same = next((i for i, (a, b) in enumerate(zip(pi, px, strict=False)) if a != b), min(len(pi), len(px)))
    print(f"prompt ids ({len(prompt)}): {prompt}")
    print(f"PowerInfer: {pi}")
    print(f"pijax {fmt}: {px}")
    print(f"equal for the first {same} of {n}; PowerInfer distinct ids {len(set(pi))}, pijax {len(set(px))}")


if __name__ == "__main__":
    main()
