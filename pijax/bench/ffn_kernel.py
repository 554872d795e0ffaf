"""Benchmark (target 4): one LLaMA-7B-shaped FFN layer (4096 x 11008), sparse at ~10% predicted active vs dense,
each weight format against itself.

The layer is layer 0 of the SYNTHETIC 7B-shaped stack (`pijax.bench.synth`, preset llama2-7b): its predictor
selects ~10% of the neurons on real inputs, computed here for a sequence of random tokens through the layer's
attention (numpy, llama.cpp conventions). Every timed call takes the next token's input, and a 1.2 GB buffer is
read between calls so that the weights come from DRAM as they do in a decode step (this machine's L3 is large
enough to hold a whole f32 layer). The predictor threshold is set to select `active` (10%) of the neurons over
these inputs. Cases per format: dense (every neuron through the kernel; for f32 also the XLA dense FFN), sparse
(the predictor in the same format + selection + rows, as in decoding), rows (selection + rows, given the
predictor's logits: the FFN alone) and, for f32/f16, sparse with the predictor alone stored in int8 (its
selection's overlap with the f32 predictor's is reported). `python -m pijax.bench.ffn_kernel`.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pijax.errors import DataError
from pijax.io.gguf import read_gguf
from pijax.kernels import build
from pijax.kernels.formats import nbytes, to_format
from pijax.kernels.ops import linear, sparse_ffn

N_TOKENS = 32


def layer_inputs(path: str | os.PathLike[str], n_tokens: int = N_TOKENS, seed: int = 7) -> dict[str, np.ndarray]:
    """Layer 0's FFN input (residual stream before the FFN norm) and its normed version, for random tokens."""
    from pijax.bench.synth_fit import attention, rms_norm
    from pijax.bench.synth_spec import spec_from_metadata

    f = read_gguf(path)
    spec = spec_from_metadata(f.metadata)
    if spec is None:
        raise DataError("not a synthetic model", path)
    toks = np.random.default_rng(seed).integers(3, spec.n_vocab, n_tokens)
    toks[0] = 1
    h = f.array("token_embd.weight")[toks][None].astype(np.float32)
    a = attention(
        rms_norm(h, f.array("blk.0.attn_norm.weight"), spec.norm_eps),
        f.array("blk.0.attn_q.weight"),
        f.array("blk.0.attn_k.weight"),
        f.array("blk.0.attn_v.weight"),
        spec,
    )
    h = h + a @ f.array("blk.0.attn_output.weight").T
    return {"ffn_in": h[0], "x": rms_norm(h, f.array("blk.0.ffn_norm.weight"), spec.norm_eps)[0]}


def _stats(ts: list[float]) -> dict[str, float]:
    return {"median": float(np.median(ts)), "min": float(np.min(ts)), "max": float(np.max(ts))}


def run(
    path: str | os.PathLike[str],
    *,
    repeats: int = 30,
    threads: int = 2,
    formats: tuple[str, ...] = ("f32", "f16", "int8"),
    active: float = 0.10,
) -> dict[str, Any]:
    build.set_threads(threads)
    f = read_gguf(path)
    inp = layer_inputs(path)
    xs = [jnp.asarray(inp["x"][i : i + 1]) for i in range(N_TOKENS)]
    hs = [jnp.asarray(inp["ffn_in"][i : i + 1]) for i in range(N_TOKENS)]
    evict = np.ones(150_000_000)  # 1.2 GB, read between timed calls
    lgs: list[jax.Array] = []
    cases: dict[str, Any] = {}
    sel_counts: list[int] = []
    w32 = {n: jnp.asarray(f.array(f"blk.0.{n}.weight")) for n in ("ffn_up", "ffn_gate", "ffn_down_t", "fc1", "fc2")}
    # The threshold that selects `active` of the neurons over these inputs (the file's own, 0, selects ~12%).
    logits32 = np.maximum(inp["ffn_in"] @ np.asarray(w32["fc1"]).T, 0) @ np.asarray(w32["fc2"]).T
    thr = float(np.quantile(logits32, 1.0 - active))
    lgs += [jnp.asarray(logits32[i : i + 1], jnp.float32) for i in range(N_TOKENS)]
    for fmt in formats:
        w = {n: to_format(a, fmt) for n, a in w32.items()}
        build.use_hugepages(w)

        def sparse(x: jax.Array, h: jax.Array, w: dict = w, skip: bool = True) -> tuple[jax.Array, jax.Array]:
            logits = linear(jax.nn.relu(linear(h, w["fc1"])), w["fc2"])
            return sparse_ffn(
                x, logits, w["ffn_up"], w["ffn_gate"], w["ffn_down_t"], kind="relu", threshold=thr, skip_inactive=skip
            )

        def dense(x: jax.Array, w: dict = w) -> jax.Array:
            return sparse_ffn(x, None, w["ffn_up"], w["ffn_gate"], w["ffn_down_t"], kind="relu", skip_inactive=False)[0]

        def rows(x: jax.Array, logits: jax.Array, w: dict = w) -> tuple[jax.Array, jax.Array]:
            return sparse_ffn(x, logits, w["ffn_up"], w["ffn_gate"], w["ffn_down_t"], kind="relu", threshold=thr)

        fns = {
            f"dense {fmt}": (jax.jit(dense), "x"),
            f"sparse {fmt}": (jax.jit(sparse), "xh"),
            f"rows {fmt}": (jax.jit(rows), "xl"),
        }
        if fmt != "int8":
            # The predictor is a separate small model: stored in int8 (per-row scales) it reads a quarter of the
            # bytes while the FFN rows stay in `fmt`.
            w8 = w | {n: to_format(w32[n], "int8") for n in ("fc1", "fc2")}
            fns[f"sparse {fmt} (int8 predictor)"] = (jax.jit(lambda x, h, w=w8: sparse(x, h, w)), "xh")
        if fmt == "f32":
            from pijax.kernels.reference import down_project, ffn_activation

            def xla_dense(x: jax.Array, w: dict = w) -> jax.Array:
                up = jnp.einsum("nd,fd->nf", x, w["ffn_up"])
                gate = jnp.einsum("nd,fd->nf", x, w["ffn_gate"])
                return down_project(ffn_activation(gate, up, "relu")[None], w["ffn_down_t"])[0]

            fns["dense f32 (XLA FFN)"] = (jax.jit(xla_dense), "x")
        for name, (fn, kind) in fns.items():
            args = {
                "x": lambda i: (xs[i],),
                "xh": lambda i: (xs[i], hs[i]),
                "xl": lambda i: (xs[i], lgs[i]),
            }[kind]
            jax.block_until_ready(fn(*args(0)))
            ts = []
            for r in range(repeats):
                evict.sum()
                t0 = time.perf_counter()
                out = jax.block_until_ready(fn(*args(r % N_TOKENS)))
                ts.append(time.perf_counter() - t0)
                if name == f"rows {fmt}" and fmt == formats[0]:
                    sel_counts.append(int(out[1][0]))
            cases[name] = _stats(ts) | {
                "format": fmt,
                "ffn_bytes": sum(nbytes(w[n]) for n in ("ffn_up", "ffn_gate", "ffn_down_t")),
            }
        del w, fns
        gc.collect()
    n_ff = w32["ffn_up"].shape[0]
    q8 = {n: to_format(w32[n], "int8") for n in ("fc1", "fc2")}
    logits8 = np.asarray(linear(jax.nn.relu(linear(jnp.asarray(inp["ffn_in"]), q8["fc1"])), q8["fc2"]))
    sel32, sel8 = logits32 >= thr, logits8 >= thr
    overlap = float(np.mean((sel32 & sel8).sum(1) / np.maximum((sel32 | sel8).sum(1), 1)))
    speedups = []
    for fmt in formats:
        dense_names = [f"dense {fmt}"] + (["dense f32 (XLA FFN)"] if fmt == "f32" else [])
        best_dense = min(dense_names, key=lambda n: cases[n]["median"])
        for sparse_name in [n for n in cases if n.split(" ")[:2] in (["sparse", fmt], ["rows", fmt])]:
            d, s = cases[best_dense], cases[sparse_name]
            speedups.append(
                {
                    "what": f"{sparse_name} vs {best_dense}",
                    "includes_predictor": sparse_name.startswith("sparse"),
                    "ratio": d["median"] / s["median"],
                    "min": d["min"] / s["max"],
                    "max": d["max"] / s["min"],
                }
            )
    return {
        "path": str(path),
        "selected_fraction": float(np.mean(sel_counts)) / n_ff if sel_counts else float("nan"),
        "cases_ms": {
            k: {kk: (1e3 * vv if kk in ("median", "min", "max") else vv) for kk, vv in v.items()}
            for k, v in cases.items()
        },
        "speedups": speedups,
        "int8_predictor_jaccard": overlap,
        "repeats": repeats,
        "threads": threads,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4, help="layers of the synthetic 7B-shaped stack (built once)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    from pijax.bench.synth import ensure_synth_model

    res = run(ensure_synth_model("llama2-7b", n_layer=a.layers), repeats=a.repeats, threads=a.threads)
    print(f"selected fraction {res['selected_fraction']:.3f}; int8 predictor selects the same neurons as the f32 one: ")
    print(f"Jaccard {res['int8_predictor_jaccard']:.3f}")
    for k, v in res["cases_ms"].items():
        print(f"{k:28s} {v['median']:8.3f} ms  [{v['min']:.3f}, {v['max']:.3f}]")
    for s in res["speedups"]:
        print(f"{s['what']:40s} {s['ratio']:.2f}x  [{s['min']:.2f}, {s['max']:.2f}]")
    if a.json:
        import json

        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
