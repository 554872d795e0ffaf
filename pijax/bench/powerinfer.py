"""A user-built PowerInfer `main` (github.com/SJTU-IPADS/PowerInfer) as a timed reference, and its timing lines.

pijax does not build PowerInfer: a user passes `--powerinfer-bin PATH` to `pijax.bench.decode`, which runs that
binary on the same weights (greedy: `--temp 0 --repeat-penalty 1.0`, `--ignore-eos`, the benchmark's thread count
and token counts) and reads the tok/s it prints. It runs the file's predictors at the file's
`powerinfer.sparse_threshold` (the `LLAMA_SPARSE_PRED_THRESHOLD` environment variable overrides it), as pijax's
sparse engines do, and ReLU like pijax: the same function, unlike llama.cpp on these files. PowerInfer is a fork of llama.cpp (late 2023) and prints llama.cpp's `llama_print_timings` block
on stderr:

    llama_print_timings: prompt eval time =     354.63 ms /    64 tokens (    5.54 ms per token,   180.47 tokens per second)
    llama_print_timings:        eval time =    3996.71 ms /   127 runs   (   31.47 ms per token,    31.78 tokens per second)

(later llama.cpp builds say `llama_perf_context_print:` instead; both are read). The figures are recomputed from
the milliseconds and counts, not taken from the rounded tokens-per-second text.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pijax.errors import DataError

_LINE = re.compile(
    r"(?:llama_print_timings|llama_perf_context_print):\s*(?P<what>prompt eval|eval) time\s*=\s*"
    r"(?P<ms>[0-9.]+)\s*ms\s*/\s*(?P<n>[0-9]+)\s*(?:tokens|runs)"
)
# A plain English prompt: its token count differs by tokenizer, so the count PowerInfer reports is recorded.
DEFAULT_PROMPT = (
    "Once upon a time, in a small village at the edge of a great forest, there lived a curious girl who loved to "
    "read. Every morning she walked to the old library, where the librarian kept a shelf of books about faraway "
    "places, strange animals and the stars."
)


@dataclasses.dataclass(frozen=True)
class PowerInferTiming:
    prompt_tokens: int
    prompt_ms: float
    decode_runs: int
    decode_ms: float

    @property
    def prefill_tok_s(self) -> float:
        return 1e3 * self.prompt_tokens / self.prompt_ms if self.prompt_ms > 0 else float("nan")

    @property
    def decode_tok_s(self) -> float:
        return 1e3 * self.decode_runs / self.decode_ms if self.decode_ms > 0 else float("nan")


def parse_timings(text: str) -> PowerInferTiming:
    """The prompt-eval and eval lines of a llama.cpp-style timing block; DataError when either is missing."""
    found: dict[str, tuple[float, int]] = {}
    for m in _LINE.finditer(text):
        found[m["what"]] = (float(m["ms"]), int(m["n"]))  # the last block wins (a binary may print per turn)
    missing = [w for w in ("prompt eval", "eval") if w not in found]
    if missing:
        raise DataError(f"no '{missing[0]} time' line in PowerInfer's output (is this a llama.cpp-style main?)")
    (p_ms, p_n), (d_ms, d_n) = found["prompt eval"], found["eval"]
    return PowerInferTiming(p_n, p_ms, d_n, d_ms)


def command(
    binary: str | os.PathLike[str],
    model: str | os.PathLike[str],
    *,
    threads: int,
    n_new: int,
    prompt: str = DEFAULT_PROMPT,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of one greedy run of n_new tokens."""
    return [
        str(binary),
        "-m",
        str(model),
        "-t",
        str(threads),
        "-n",
        str(n_new),
        "-p",
        prompt,
        "--ignore-eos",
        "--temp",
        "0",
        "--repeat-penalty",  # main's default (1.1) is not greedy
        "1.0",
        "--seed",
        "0",
        *extra,
    ]


def run_once(
    binary: str | os.PathLike[str],
    model: str | os.PathLike[str],
    *,
    threads: int,
    n_new: int,
    extra: Sequence[str] = (),
    timeout: float = 1800,
) -> PowerInferTiming:
    """Run the binary once and parse its timings; DataError when it fails or prints none."""
    binary = Path(binary).expanduser()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise DataError("not an executable file (build PowerInfer's main first)", binary)
    cmd = command(binary.resolve(), Path(model).resolve(), threads=threads, n_new=n_new, extra=extra)
    with tempfile.TemporaryDirectory() as tmp:  # main writes main.log into its working directory
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=tmp)
    if res.returncode != 0:
        tail = " | ".join((res.stderr or res.stdout).strip().splitlines()[-2:])
        raise DataError(f"PowerInfer exited with {res.returncode}: {tail}", binary)
    return parse_timings(res.stderr + "\n" + res.stdout)
