"""llama.cpp (via the optional llama-cpp-python) as the reference engine for speed, on the very same weights.

- `plain_gguf(src, dst, storage)`: a llama.cpp-loadable GGUF from a pijax/PowerInfer file: `GGUF` magic, the
  down projection stored as llama.cpp expects it (`ffn_down`, [D, F] in numpy order, from `ffn_down_t`), the
  predictors dropped (llama.cpp refuses files with tensors it does not use), matrices in f32 or f16, norms f32.
  Every other metadata key is kept (llama.cpp ignores pijax's activation key and runs SiLU: the same cost).
- `measure(...)`: prefill and decode tokens/s of llama.cpp on such a file, medians over repeats. Run it in a
  child process (`python -m pijax.bench.llamacpp MODEL ...`, JSON on stdout) so that its threads and its mapped
  model never overlap pijax's measurements or memory.
When llama-cpp-python is missing, `llamacpp_available()` says so and benchmarks report pijax's figures alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pijax.bench.contention import Contention, enough
from pijax.errors import DataError
from pijax.io.checkpoint import ACTIVATION_KEY, model_config_from_gguf
from pijax.io.gguf import VT, Meta, read_gguf, write_gguf_stream

INSTALL_HINT = "llama-cpp-python is not installed: pip install -e '.[bench]' (builds from source, ~7 minutes)"


def llamacpp_available() -> tuple[bool, str]:
    """(importable, version or the reason it is not)."""
    try:
        import llama_cpp
    except ImportError as e:
        return False, f"{INSTALL_HINT} ({e})"
    return True, str(getattr(llama_cpp, "__version__", "?"))


def plain_gguf(src: str | os.PathLike[str], dst: str | os.PathLike[str], storage: str = "f32") -> Path:
    """Write (or reuse, when newer than `src`) the llama.cpp-loadable copy of `src` at `dst`; see module doc."""
    src, dst = Path(src), Path(dst)
    if storage not in ("f32", "f16"):
        raise DataError(f"storage must be f32 or f16, got {storage!r}", dst)
    if dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
        return dst
    f = read_gguf(src)
    wdt = np.dtype(np.float32 if storage == "f32" else np.float16)
    md: dict[str, Any] = {}
    for key, value in f.metadata.items():
        vt = f.metadata_types.get(key)
        md[key] = value if vt is None else Meta(value, vt)
    md["general.file_type"] = Meta(0 if storage == "f32" else 1, VT.UINT32)
    # Without the PWRI magic pijax would read the copy as SiLU: record the activation the source implies.
    md[ACTIVATION_KEY] = model_config_from_gguf(f).ffn_act
    specs, names = [], []
    for name, info in f.tensors.items():
        if name.endswith((".fc1.weight", ".fc2.weight")):
            continue
        shape = tuple(info.shape)
        out_name = name
        if name.endswith("ffn_down_t.weight"):
            out_name, shape = name.replace("ffn_down_t", "ffn_down"), shape[::-1]
        dt = np.dtype(np.float32) if len(shape) == 1 else wdt
        specs.append((out_name, shape, dt))
        names.append(name)

    def arrays() -> Any:
        for (_, _, dt), name in tqdm(list(zip(specs, names, strict=True)), desc=f"write {dst.name}", unit="t"):
            arr = f.array(name, np.float32)
            if name.endswith("ffn_down_t.weight"):
                arr = np.ascontiguousarray(arr.T)
            yield arr.astype(dt, copy=False)

    tmp = dst.with_name(dst.name + ".partial")
    write_gguf_stream(tmp, md, specs, arrays(), magic="GGUF")
    os.replace(tmp, dst)
    return dst


@dataclasses.dataclass
class LlamaCppResult:
    model: str
    n_threads: int
    n_prompt: int
    n_new: int
    prefill_tok_s: list[float]
    decode_tok_s: list[float]
    decode_tok_s_internal: list[float]  # llama.cpp's own eval timer (excludes the Python loop)
    foreign_cores: list[float | None]  # CPU other processes used during each repeat (pijax.bench.contention)
    load_s: float
    version: str
    system_info: str

    @property
    def decode_median(self) -> float:
        return statistics.median(self.decode_tok_s)

    @property
    def prefill_median(self) -> float:
        return statistics.median(self.prefill_tok_s)


def _argmax_last(llm: Any, vocab: int) -> int:
    """Greedy next token from the last evaluated position's logits (llama.cpp keeps only those)."""
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(vocab,))))


def measure(
    model: str | os.PathLike[str],
    *,
    n_threads: int = 2,
    n_prompt: int = 128,
    n_new: int = 128,
    repeats: int = 5,
    seed: int = 0,
) -> LlamaCppResult:
    """Greedy decode with llama.cpp: per repeat, a fresh KV cache, a prompt of n_prompt random ids (one batch),
    then n_new one-token evals, each fed the argmax of the previous logits. One warm-up repeat first, then
    repeats until `repeats` ran with little foreign CPU (at most 3 x repeats)."""
    import llama_cpp

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=str(model),
        n_threads=n_threads,
        n_threads_batch=n_threads,
        n_ctx=max(256, n_prompt + n_new + 8),
        n_batch=max(n_prompt, 64),
        n_ubatch=max(n_prompt, 64),
        logits_all=False,
        use_mmap=True,
        verbose=False,
    )
    load_s = time.perf_counter() - t0
    vocab = llm.n_vocab()
    prompt = np.random.default_rng(seed).integers(3, vocab, n_prompt).tolist()
    pre, dec, dec_int, foreign = [], [], [], []
    r = -1
    while True:
        r += 1
        if r > 0 and enough(foreign, repeats):
            break
        llm.reset()
        llama_cpp.llama_perf_context_reset(llm.ctx)
        with Contention() as c:
            t = time.perf_counter()
            llm.eval(prompt)
            t_pre = time.perf_counter() - t
            tok = _argmax_last(llm, vocab)
            t = time.perf_counter()
            for _ in range(n_new):
                llm.eval([tok])
                tok = _argmax_last(llm, vocab)
            t_dec = time.perf_counter() - t
        perf = llama_cpp.llama_perf_context(llm.ctx)
        if r == 0:
            continue  # warm-up: page in the weights
        foreign.append(c.foreign_cores)
        pre.append(n_prompt / t_pre)
        dec.append(n_new / t_dec)
        dec_int.append(1e3 * perf.n_eval / perf.t_eval_ms if perf.t_eval_ms > 0 else float("nan"))
    info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    return LlamaCppResult(
        str(model), n_threads, n_prompt, n_new, pre, dec, dec_int, foreign, load_s, llama_cpp.__version__, info
    )


def measure_in_child(model: str | os.PathLike[str], timeout: float = 3600, **kwargs: Any) -> LlamaCppResult | str:
    """`measure` in a fresh Python process; the result, or a one-line reason it could not run."""
    ok, why = llamacpp_available()
    if not ok:
        return why
    cmd = [sys.executable, "-m", "pijax.bench.llamacpp", str(model)]
    for k, v in kwargs.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return f"llama.cpp run failed (exit {res.returncode}): {' | '.join(tail)}"
    return LlamaCppResult(**json.loads(res.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="llama.cpp prefill/decode speed on one GGUF (prints JSON)")
    ap.add_argument("model")
    ap.add_argument("--n-threads", type=int, default=2)
    ap.add_argument("--n-prompt", type=int, default=128)
    ap.add_argument("--n-new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    ok, why = llamacpp_available()
    if not ok:
        print(why, file=sys.stderr)
        return 2
    res = measure(a.model, n_threads=a.n_threads, n_prompt=a.n_prompt, n_new=a.n_new, repeats=a.repeats, seed=a.seed)
    print(json.dumps(dataclasses.asdict(res)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
