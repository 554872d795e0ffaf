"""Real-model measurements (issue 11): SmolLM2-135M in pijax beside llama.cpp, on the same file and windows.

`python -m pijax.bench.real_models --out experiments/real_models` measures, in one run:
- load time and peak RSS of `pijax.load_model` at f32 and f16, each in a fresh process (its VmHWM);
- pijax decode tok/s at f32 and f16 and llama.cpp's on the Q4_1 file and on its all-F32 copy (medians of
  `--repeats`, min/max; llama.cpp in a child process via `pijax.bench.llamacpp.measure_in_child`);
- perplexity on the shipped TinyStories text and on Python standard-library source (`STDLIB_MODULES`), over the
  same token windows in pijax (Q4_1 dequantized to f32) and in llama.cpp (Q4_1 and the F32 copy, `logits_all`);
- pijax's logits against llama.cpp on the Q4_1 file: top-1 agreement and mean KL per position.
It writes `results.json` and `results.md` into `--out`. `--smoke` runs a tiny configuration (proves the script
works, figures meaningless). llama.cpp runs with an F32 KV cache and no flash attention, so that on the F32 copy
it computes what pijax computes; on the Q4_1 file it also quantizes activations to 8 bits inside its dot
products, which pijax does not (hence a measurement there, not an equality).

The llama.cpp helpers (`llamacpp_logits`, `llamacpp_greedy`, `llamacpp_tokenize`) also make the SmolLM2 test
references (`tests/data/make_smollm2_refs.py`). llama-cpp-python is the optional `.[bench]` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

GGML_TYPE_F32 = 0
STDLIB_MODULES = ("argparse", "textwrap", "json/decoder", "json/encoder", "difflib", "fractions")
TINYSTORIES = Path(__file__).resolve().parents[1] / "assets" / "tinystories_valid_head.txt"


# ---- llama.cpp (in this process; call from a child process for timings) ---------------------------------------


def _llama(path: str | os.PathLike[str], n_ctx: int, *, logits_all: bool, n_threads: int = 2, vocab_only: bool = False):
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        logits_all=logits_all,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        flash_attn=False,
        vocab_only=vocab_only,
        verbose=False,
    )


def llamacpp_tokenize(path: str | os.PathLike[str], texts: Sequence[str], *, special: bool = False) -> list[list[int]]:
    """llama.cpp's ids for each text; BOS as the file says (`add_bos_token`: llama.cpp's add_special)."""
    llm = _llama(path, 64, logits_all=False, vocab_only=True)
    return [llm.tokenize(t.encode("utf-8"), add_bos=True, special=special) for t in texts]


def llamacpp_logits(
    path: str | os.PathLike[str], seqs: Sequence[Sequence[int]], *, n_ctx: int = 512, n_threads: int = 2
) -> list[np.ndarray]:
    """Logits [T, V] float32 at every position of each sequence, each evaluated as one batch from an empty cache."""
    llm = _llama(path, max(n_ctx, max(len(s) for s in seqs)), logits_all=True, n_threads=n_threads)
    out = []
    for seq in seqs:
        llm.reset()
        llm.eval(list(seq))
        out.append(np.array(llm.scores[: len(seq)], dtype=np.float32, copy=True))
    return out


def llamacpp_greedy(
    path: str | os.PathLike[str], prompts: Sequence[Sequence[int]], n_new: int, *, n_threads: int = 2
) -> list[list[int]]:
    """n_new greedy (argmax) ids after each prompt: one prompt batch, then one token per eval; EOS does not stop."""
    llm = _llama(path, max(len(p) for p in prompts) + n_new + 8, logits_all=True, n_threads=n_threads)
    out = []
    for prompt in prompts:
        llm.reset()
        llm.eval(list(prompt))
        new: list[int] = []
        while len(new) < n_new:
            new.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            if len(new) < n_new:
                llm.eval([new[-1]])
        out.append(new)
    return out


def agreement(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    """Top-1 agreement, mean KL(ref || cand) in nats and max |difference| of two [T, V] logit arrays."""
    lr = ref - np.logaddexp.reduce(ref, axis=-1, keepdims=True)
    lc = cand - np.logaddexp.reduce(cand, axis=-1, keepdims=True)
    kl = (np.exp(lr) * (lr - lc)).sum(-1)
    return {
        "positions": int(ref.shape[0]),
        "top1": float(np.mean(ref.argmax(-1) == cand.argmax(-1))),
        "mean_kl": float(kl.mean()),
        "max_abs_diff": float(np.abs(ref - cand).max()),
    }


def nll_ppl(logits: Sequence[np.ndarray], windows: Sequence[Sequence[int]]) -> float:
    """exp(mean next-token NLL) over every position after the first of each window."""
    total, count = 0.0, 0
    for lg, w in zip(logits, windows, strict=True):
        lp = lg[:-1] - np.logaddexp.reduce(lg[:-1], axis=-1, keepdims=True)
        total -= float(lp[np.arange(len(w) - 1), np.asarray(w[1:])].sum())
        count += len(w) - 1
    return float(np.exp(total / count))


# ---- pijax ------------------------------------------------------------------------------------------------------

_LOAD_CHILD = """
import json, resource, sys, time

def peak_mb():
    # VmHWM belongs to this process's own address space; ru_maxrss would also count the parent's RSS at fork
    # time (Linux keeps the pre-exec high-water mark), so a child of a large process would look large.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

t0 = time.perf_counter()
import jax, pijax
from flax import nnx
t1 = time.perf_counter()
base = peak_mb()
m = pijax.load_model(sys.argv[1], dtype=sys.argv[2])
jax.block_until_ready(jax.tree.leaves(nnx.state(m.module)))
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "rss_before_mb": base, "peak_rss_mb": peak_mb()}))
"""


def load_in_child(path: str | os.PathLike[str], dtype: str) -> dict[str, Any]:
    """Load time and peak RSS of `pijax.load_model(path, dtype=dtype)` in a fresh process (MB = 2^20 bytes).

    The child sees one CPU device, as a user's process does: the test suite's 8 virtual devices (XLA_FLAGS)
    add ~160 MB to the peak (measured), which is not what a user loading the model sees."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    res = subprocess.run(
        [sys.executable, "-c", _LOAD_CHILD, str(path), dtype], capture_output=True, text=True, check=False, env=env
    )
    if res.returncode != 0:
        raise RuntimeError(f"load_model({path}, {dtype}) failed: {(res.stderr or res.stdout).strip()[-500:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def pijax_decode(model: Any, prompt: Sequence[int], n_new: int, repeats: int) -> list[float]:
    """Greedy decode tok/s of a loaded pijax Model over `repeats` runs (after one warm-up that compiles)."""
    model.generate(list(prompt), n_new, stop_at_eos=False)
    return [model.generate(list(prompt), n_new, stop_at_eos=False).decode_tok_s for _ in range(repeats)]


def summary(xs: Sequence[float]) -> dict[str, float]:
    return {"median": float(statistics.median(xs)), "min": float(min(xs)), "max": float(max(xs)), "n": len(xs)}


def stdlib_text(modules: Sequence[str] = STDLIB_MODULES) -> str:
    root = Path(sysconfig.get_paths()["stdlib"])
    return "\n".join((root / f"{m}.py").read_text(encoding="utf-8") for m in modules)


def windows_of(ids: Sequence[int], length: int, count: int) -> list[list[int]]:
    """Up to `count` consecutive, non-overlapping windows of `length` ids."""
    return [list(ids[i : i + length]) for i in range(0, len(ids) - length + 1, length)][:count]


def _pijax_logits(model: Any, windows: Sequence[Sequence[int]]) -> list[np.ndarray]:
    return [model.logits(w) for w in windows]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import pijax
    from pijax.bench.llamacpp import llamacpp_available, measure_in_child
    from pijax.io.convert import convert_gguf
    from pijax.io.registry import resolve_model

    ok, version = llamacpp_available()
    if not ok:
        raise SystemExit(version)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    q4 = resolve_model("smollm2-135m")
    f32 = Path(args.f32_copy) if args.f32_copy else q4.with_name(q4.stem + ".F32.gguf")
    if not f32.exists():
        convert_gguf(q4, f32, "f32")
    res: dict[str, Any] = {
        "model": str(q4),
        "f32_copy": str(f32),
        "llama_cpp": version,
        "config": vars(args),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_start": os.getloadavg(),
    }
    print("load time / peak RSS ...", file=sys.stderr)
    res["load"] = {dt: load_in_child(q4, dt) for dt in ("f32", "f16")}
    res["load"]["f32_from_f32_copy"] = load_in_child(f32, "f32")
    res["f32_size_mb"] = sum(int(np.prod(i.shape)) * 4 for i in pijax.io.gguf.read_gguf(q4).tensors.values()) / 2**20

    print("decode speed ...", file=sys.stderr)
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, 49152, args.n_prompt).tolist()
    speed: dict[str, Any] = {}
    for dt in ("f32", "f16"):
        m = pijax.load_model(q4, dtype=dt)
        speed[f"pijax {dt} (Q4_1 file)"] = summary(pijax_decode(m, prompt, args.n_new, args.repeats))
        del m
    for name, path in (("llama.cpp Q4_1", q4), ("llama.cpp F32 copy", f32)):
        r = measure_in_child(path, n_prompt=args.n_prompt, n_new=args.n_new, repeats=args.repeats)
        speed[name] = r if isinstance(r, str) else summary(r.decode_tok_s)
    res["decode_tok_s"] = speed

    print("perplexity ...", file=sys.stderr)
    m = pijax.load_model(q4)
    texts = {"tinystories": TINYSTORIES.read_text(encoding="utf-8"), "python_stdlib": stdlib_text()}
    ppl: dict[str, Any] = {}
    for name, text in texts.items():
        ids = m.tokenizer.encode(text, bos=False)
        wins = windows_of(ids, args.window, args.windows)
        mine = _pijax_logits(m, wins)
        lq4 = llamacpp_logits(q4, wins, n_ctx=args.window)
        lf32 = llamacpp_logits(f32, wins, n_ctx=args.window)
        ppl[name] = {
            "windows": len(wins),
            "window": args.window,
            "tokens": len(ids),
            "pijax (Q4_1 -> f32)": nll_ppl(mine, wins),
            "llama.cpp Q4_1": nll_ppl(lq4, wins),
            "llama.cpp F32 copy": nll_ppl(lf32, wins),
            "pijax vs llama.cpp Q4_1": agreement(np.concatenate(lq4), np.concatenate(mine)),
            "pijax vs llama.cpp F32 copy": agreement(np.concatenate(lf32), np.concatenate(mine)),
        }
    res["perplexity"] = ppl
    res["stdlib_modules"] = list(STDLIB_MODULES)
    res["loadavg_end"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "results.md").write_text(report(res))
    return res


def report(res: dict[str, Any]) -> str:
    lines = [f"# SmolLM2-135M: pijax beside llama.cpp {res['llama_cpp']} ({res['date']})", ""]
    lines += ["| load | load s | peak RSS MB | RSS before MB | peak / f32 size |", "|---|---|---|---|---|"]
    for k, v in res["load"].items():
        lines.append(
            f"| {k} | {v['load_s']:.2f} | {v['peak_rss_mb']:.0f} | {v['rss_before_mb']:.0f} | "
            f"{v['peak_rss_mb'] / res['f32_size_mb']:.2f} |"
        )
    lines += ["", f"f32 size of the weights: {res['f32_size_mb']:.0f} MB", ""]
    lines += ["| decode | tok/s median | min | max | n |", "|---|---|---|---|---|"]
    for k, v in res["decode_tok_s"].items():
        lines.append(
            f"| {k} | {v} | | | |"
            if isinstance(v, str)
            else f"| {k} | {v['median']:.2f} | {v['min']:.2f} | {v['max']:.2f} | {v['n']} |"
        )
    lines += [
        "",
        "| text | windows x len | pijax | llama.cpp Q4_1 | llama.cpp F32 | top-1 / KL vs Q4_1 | max diff vs F32 |",
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for k, v in res["perplexity"].items():
        a, b = v["pijax vs llama.cpp Q4_1"], v["pijax vs llama.cpp F32 copy"]
        lines.append(
            f"| {k} | {v['windows']} x {v['window']} | {v['pijax (Q4_1 -> f32)']:.3f} | {v['llama.cpp Q4_1']:.3f} | "
            f"{v['llama.cpp F32 copy']:.3f} | {a['top1']:.4f} / {a['mean_kl']:.5f} | {b['max_abs_diff']:.2e} |"
        )
    lines += ["", f"Python stdlib modules: {', '.join(res['stdlib_modules'])}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="experiments/real_models")
    ap.add_argument("--f32-copy", default="", help="the all-F32 copy (default: beside the cached Q4_1 file)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n-prompt", type=int, default=64)
    ap.add_argument("--n-new", type=int, default=128)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--windows", type=int, default=16, help="windows per text")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: proves the script runs")
    a = ap.parse_args(argv)
    if a.smoke:
        a.repeats, a.n_prompt, a.n_new, a.window, a.windows = 2, 8, 8, 64, 2
    res = run(a)
    print(report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
