"""Benchmark (target 5, model size): decode tok/s of a SYNTHETIC 7B-shaped layer stack, and the full 7B estimate.

A whole LLaMA-2-7B in f32 (27 GB) does not fit this machine, so the stack holds `n_layer` of its layers plus the
full-size embedding and output head. Per engine: the stack's decode tok/s (measured), and an estimate for all 32
layers, t_7B = t_head + 32 * (t_stack - t_head) / n_layer, with t_head the output norm + head + argmax timed
alone (`pijax.bench.decode_timing.profile_step`). llama.cpp (when installed) runs plain copies of the same stack.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from pijax.bench import llamacpp
from pijax.bench.decode_config import BenchConfig
from pijax.bench.dense_decode import BandwidthProbe

FULL_7B_LAYERS = 32
PARAMS_7B = 6.74e9


def _estimate(tok_s: float, head_ms: float, n_layer: int) -> float:
    t_stack = 1.0 / tok_s
    t_head = head_ms / 1e3
    return 1.0 / (t_head + FULL_7B_LAYERS * max(t_stack - t_head, 0.0) / n_layer)


def run(pwri: Path, cfg: BenchConfig, probe: BandwidthProbe | None, prompt: list[int]) -> dict[str, Any]:
    from pijax.bench.decode_timing import measure_pijax, profile_step
    from pijax.model.convert import load_llama

    points: list[dict[str, Any]] = []
    n_layer = cfg.size_layers
    engines = [("pijax dense f32", "f32", False), ("pijax sparse f32", "f32", True)]
    engines += [(f"pijax sparse {fmt}", fmt, True) for fmt in cfg.lowp_formats]
    for name, fmt, sparse in engines:
        # The dense point reads every row (no zero-skipping), as llama.cpp does.
        llama = load_llama(pwri, fmt, use_predictors=sparse, skip_inactive=sparse)
        r = measure_pijax(llama, prompt, cfg.sweep_new, cfg.repeats, probe, f"7B stack: {name}")
        prof = profile_step(llama, prompt, r["n_cache"])
        head_ms = prof["head ms"]
        tok_s = r["decode_tok_s"]["median"]
        points.append(
            {
                "engine": name,
                "model": f"7B-shape stack ({n_layer} layers)",
                "stack_tok_s": tok_s,
                "decode_tok_s": _estimate(tok_s, head_ms, n_layer),
                "params_B": PARAMS_7B / 1e9,
                "head_ms": head_ms,
                "estimated": True,
            }
        )
        print(
            f"  7B stack {name}: {tok_s:.2f} tok/s for {n_layer} layers, est. {points[-1]['decode_tok_s']:.2f} for 32"
        )
        del llama
        gc.collect()
    ok, _ = llamacpp.llamacpp_available()
    if ok and "llamacpp" in cfg.parts:
        head_ms = next(p["head_ms"] for p in points if p["engine"] == "pijax dense f32")
        for storage in ("f32", "f16"):
            plain = llamacpp.plain_gguf(pwri, pwri.with_name(pwri.stem + f".plain-{storage}.gguf"), storage)
            r = llamacpp.measure_in_child(
                plain, n_threads=cfg.threads, n_prompt=len(prompt), n_new=cfg.sweep_new, repeats=cfg.repeats
            )
            if isinstance(r, str):
                continue
            tok_s = r.decode_median
            # llama.cpp's head reads the same bytes as pijax's f32 head (f16: half): scale the estimate's head time.
            h = head_ms * (1.0 if storage == "f32" else 0.5)
            points.append(
                {
                    "engine": f"llama.cpp {storage} dense",
                    "model": f"7B-shape stack ({n_layer} layers)",
                    "stack_tok_s": tok_s,
                    "decode_tok_s": _estimate(tok_s, h, n_layer),
                    "params_B": PARAMS_7B / 1e9,
                    "estimated": True,
                }
            )
            print(f"  7B stack llama.cpp {storage}: {tok_s:.2f} tok/s, est. {points[-1]['decode_tok_s']:.2f} for 32")
    return {"n_layer": n_layer, "points": points}
