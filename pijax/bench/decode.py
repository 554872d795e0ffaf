"""Benchmark: pijax decode/prefill against llama.cpp on the same synthetic GGUF, and against the bandwidth bound.

`python -m pijax.bench.decode` (or `python -m pijax.run +experiment=bench_decode`). In one run, on the SYNTHETIC
power-law ReGLU model of `BenchConfig.preset` (built on first use by `pijax.bench.synth`):
- llama.cpp (llama-cpp-python, n_threads = `threads`) dense f32 and f16 on plain copies of the model, in child
  processes, once before and once after pijax's measurements (so a load change shows);
- pijax dense f32 (XLA's DenseFFN, and the kernel FFN), sparse f32 (predictors, ~10% predicted active), sparse in
  each low-precision format: prefill and decode tokens/s, medians of `repeats` after a warm-up;
- the bound: read bandwidth (re-measured before every repeat) over the bytes a decode step must read: attention,
  output head, predictors, the predicted-active FFN rows (3 per neuron), the KV cache; and the bytes the kernel
  really touches (for ReLU FFNs it skips up/down_t rows of selected neurons whose gate product is <= 0);
- a per-component profile of one decode step, the active-fraction sweep, the model-size points (a 7B-shaped layer
  stack) and the FFN-layer comparison (`pijax.bench.ffn_kernel`).
Everything is written to `out_dir` (results.json, decode.csv, sweep.csv, targets.md, PNGs). Timing never runs in
CI: tests call this with `BenchConfig.smoke()`.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from pijax.bench import llamacpp
from pijax.bench.contention import Contention, clean_mask, enough, is_clean
from pijax.bench.decode_config import BenchConfig
from pijax.bench.dense_decode import BandwidthProbe
from pijax.engine.convert import load_llama, use_kernels
from pijax.kernels import build
from pijax.kernels.fast_ffn import KernelFFN
from pijax.kernels.formats import nbytes, row_bytes
from pijax.model.generate import Engine, SamplingConfig
from pijax.model.llama import Llama

GREEDY = SamplingConfig()


# ---------------------------------------------------------------- files


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    pwri: Path  # the synthetic PowerInfer-style file (predictors, ffn_down_t)
    plain_f32: Path  # llama.cpp-loadable copies of the same weights
    plain_f16: Path


def model_files(preset: str, overrides: Sequence[tuple[str, Any]] = (), plain: bool = True) -> ModelFiles:
    from pijax.bench.synth import ensure_synth_model

    pwri = ensure_synth_model(preset, **dict(overrides))
    f32, f16 = (pwri.with_name(pwri.stem + f".plain-{s}.gguf") for s in ("f32", "f16"))
    if plain:
        llamacpp.plain_gguf(pwri, f32, "f32")
        llamacpp.plain_gguf(pwri, f16, "f16")
    return ModelFiles(pwri, f32, f16)


# ---------------------------------------------------------------- bytes per token


def weight_bytes(llama: Llama) -> dict[str, Any]:
    """Bytes of each weight group a decode step reads, and each layer's FFN bytes per neuron (up+gate+down_t)."""
    attn = norms = pred = ffn_all = 0
    per_neuron, gate_row = [], []
    for block in llama.layers:
        a = block.attn
        attn += sum(nbytes(getattr(a, n)[...]) for n in ("w_q_nd", "w_k_nd", "w_v_nd", "w_o_dn"))
        norms += nbytes(block.attn_norm.weight[...]) + nbytes(block.ffn_norm.weight[...])
        ffn = block.ffn
        mats = [ffn.w_up_fd[...], ffn.w_down_fd[...]] + ([] if ffn.w_gate_fd is None else [ffn.w_gate_fd[...]])
        ffn_all += sum(nbytes(m) for m in mats)
        per_neuron.append(sum(row_bytes(m) for m in mats))
        first = ffn.w_up_fd[...] if ffn.w_gate_fd is None else ffn.w_gate_fd[...]
        gate_row.append(row_bytes(first))
        if isinstance(ffn, KernelFFN) and ffn.sparse:
            pred += nbytes(ffn.fc1_rd[...]) + nbytes(ffn.fc2_fr[...])
    head_w = llama.token_embd_vd if llama.w_out_vd is None else llama.w_out_vd
    emb = llama.token_embd_vd[...]
    return {
        "attention": attn,
        "head": nbytes(head_w[...]) + nbytes(llama.output_norm.weight[...]),
        "predictors": pred,
        "norms": norms,
        "embedding_row": emb.shape[1] * np.dtype(emb.dtype).itemsize,
        "ffn_dense": ffn_all,
        "ffn_bytes_per_neuron": per_neuron,
        "ffn_first_row_bytes": gate_row,
    }


def kv_bytes(llama: Llama, n_cache: int) -> int:
    """KV cache bytes one decode step reads (the engine attends over the whole padded cache, masked)."""
    cfg = llama.cfg
    return 2 * cfg.n_layer * n_cache * cfg.n_embd_kv * 4


def step_bytes(wb: dict[str, Any], kv: int, sel: Sequence[float] | None, live: Sequence[float] | None) -> dict:
    """(bytes the issue's bound counts, bytes the kernel touches) per decode step; sel/live per-layer means of
    selected neurons and of those with a nonzero output (None: dense)."""
    fixed = wb["attention"] + wb["head"] + wb["norms"] + wb["embedding_row"] + kv
    if sel is None:
        dense = fixed + wb["ffn_dense"]
        return {"bound_bytes": dense, "touched_bytes": dense}
    per, first = wb["ffn_bytes_per_neuron"], wb["ffn_first_row_bytes"]
    must = fixed + wb["predictors"] + sum(s * p for s, p in zip(sel, per, strict=True))
    touched = fixed + wb["predictors"]
    touched += sum(s * g + lv * (p - g) for s, lv, p, g in zip(sel, live, per, first, strict=True))
    return {"bound_bytes": int(must), "touched_bytes": int(touched)}


# ---------------------------------------------------------------- selection statistics


def selection_stats(llama: Llama, tokens: np.ndarray, fractions: Sequence[float] = ()) -> dict[str, Any]:
    """Teacher-forced pass over `tokens` [T]: per layer, mean neurons selected per token, of which with a
    nonzero output, and the per-layer predictor thresholds that select each of `fractions` of the neurons."""
    layers = list(llama.layers)
    if not all(isinstance(b.ffn, KernelFFN) and b.ffn.sparse for b in layers):
        return {}
    gd, st = nnx.split(llama)
    qs = jnp.asarray([1.0 - f for f in fractions], jnp.float32)

    @jax.jit
    def run(st: Any, tok_bt: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        model = nnx.merge(gd, st)
        b, t = tok_bt.shape
        cos, sin = model._angles(b, t, 0)
        x = model.embed(tok_bt)
        sel, live, thr = [], [], []
        for block in model.layers:
            h, _ = block.attend(x, cos, sin, None, 0)
            hn = block.ffn_norm(h)
            ffn = block.ffn
            logits = ffn.predictor_logits(h)
            chosen = logits >= ffn.threshold
            act = ffn.activations(hn)
            sel.append(chosen.sum(-1).mean())
            live.append((chosen & (act != 0)).sum(-1).mean())
            thr.append(jnp.quantile(logits.reshape(-1), qs) if len(fractions) else jnp.zeros((0,)))
            x = h + ffn(hn, h)
        return jnp.stack(sel), jnp.stack(live), jnp.stack(thr)

    sel, live, thr = run(st, jnp.asarray(tokens[None, :], jnp.int32))
    n_ff = llama.cfg.n_ff
    sel, live = np.asarray(sel, np.float64), np.asarray(live, np.float64)
    return {
        "selected_per_layer": sel.tolist(),
        "live_per_layer": live.tolist(),
        "selected_fraction": float(sel.mean() / n_ff),
        "live_fraction": float(live.mean() / n_ff),
        "thresholds": {f"{f:g}": np.asarray(thr)[:, i].tolist() for i, f in enumerate(fractions)},
    }


# ---------------------------------------------------------------- timing


def _stats(xs: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def measure_pijax(
    llama: Llama, prompt: Sequence[int], n_new: int, repeats: int, probe: BandwidthProbe | None, label: str
) -> dict[str, Any]:
    """Prefill and decode tok/s of the Engine over `llama`: one warm-up, then timed generations until `repeats`
    of them ran with little foreign CPU (see `pijax.bench.contention`; at most 3 x repeats tries, after which
    every try counts and the result says `contended`). The read bandwidth is measured right before each."""
    engine = Engine(llama)
    out = engine.generate(prompt, n_new, GREEDY)  # compile, page everything in
    pre, dec, bw, foreign, ids = [], [], [], [], out.new_ids
    bar = tqdm(total=repeats, desc=label, leave=False)
    while not enough(foreign, repeats):
        if probe is not None:
            bw.append(probe.measure(3))
        with Contention() as c:
            out = engine.generate(prompt, n_new, GREEDY)
        foreign.append(c.foreign_cores)
        pre.append(len(prompt) / out.prefill_s)
        dec.append(out.decode_steps / out.decode_s)
        bar.update(1)
    bar.close()
    del engine
    gc.collect()
    keep = clean_mask(foreign, repeats)
    kept = [i for i, k in enumerate(keep) if k]
    res: dict[str, Any] = {"label": label, "contended": not all(is_clean(foreign[i]) for i in kept)}
    res["decode_runs"] = [dec[i] for i in kept]
    res["prefill_runs"] = [pre[i] for i in kept]
    res["decode_tok_s"], res["prefill_tok_s"] = _stats(res["decode_runs"]), _stats(res["prefill_runs"])
    res["all_decode_runs"], res["foreign_cores"], res["new_ids"] = dec, foreign, [int(i) for i in ids]
    if bw:
        res["bandwidth_runs"] = [bw[i] for i in kept]
        res["bandwidth_GBps"] = _stats([b / 1e9 for b in res["bandwidth_runs"]])
    res["n_cache"] = Engine(llama).cache_size(len(prompt), n_new)
    return res


def with_bound(res: dict[str, Any], bytes_: dict[str, int]) -> dict[str, Any]:
    """Add the share of the bandwidth bound each repeat reached (tok/s x bytes / bandwidth of that repeat)."""
    res |= bytes_
    if "bandwidth_runs" in res:
        for key in ("bound_bytes", "touched_bytes"):
            shares = [t * bytes_[key] / b for t, b in zip(res["decode_runs"], res["bandwidth_runs"], strict=True)]
            res[f"share_of_{key.removesuffix('_bytes')}_bound"] = _stats(shares)
        res["bound_tok_s"] = res["bandwidth_GBps"]["median"] * 1e9 / bytes_["bound_bytes"]
    return res


def time_fn(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> dict[str, float]:
    for _ in range(warmup):
        jax.block_until_ready(fn())
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return _stats(ts)


def profile_step(llama: Llama, prompt: Sequence[int], n_cache: int, repeats: int = 10) -> dict[str, float]:
    """Median ms per decode step spent in each part, and the whole step.

    The parts are timed as separate jitted calls in one pass over all layers (so every layer's weights come
    from memory, as in a step), for the token after `prompt` with the prompt's KV cache: attention (norm,
    q/k/v/o, cache write, scores), the predictor, the FFN rows (norm + kernel), the output norm + head + argmax. "step minus parts" is what a whole jitted step spends outside them (or saves by
    overlapping them): small ops, dispatch and synchronisation."""
    from pijax.kernels.ops import sparse_ffn
    from pijax.model.layers import rope_angles

    cfg = llama.cfg
    gd = nnx.split(llama.layers[0])[0]
    states = [nnx.split(b)[1] for b in llama.layers]
    engine = Engine(llama)
    key = jax.random.key(0)
    tok, _, caches = engine.prefill(prompt, n_cache, GREEDY, key)
    pos = len(prompt)
    cos, sin = rope_angles(jnp.full((1, 1), pos), cfg.rope_dim, cfg.rope_base)
    sparse = isinstance(llama.layers[0].ffn, KernelFFN) and llama.layers[0].ffn.sparse

    def rows_fn(s: Any, h: jax.Array, logits: jax.Array) -> jax.Array:
        b = nnx.merge(gd, s)
        f = b.ffn
        w_gate = None if f.w_gate_fd is None else f.w_gate_fd[...]
        hn = b.ffn_norm(h)[0]
        y, _ = sparse_ffn(
            hn,
            logits[0],
            f.w_up_fd[...],
            w_gate,
            f.w_down_fd[...],
            kind=f.kind,
            threshold=f.threshold,
            capacity=f.capacity,
            skip_inactive=f.skip_inactive,
        )
        return y[None]

    attn = jax.jit(lambda s, x, c: nnx.merge(gd, s).attend(x, cos, sin, c, pos)[0])
    pred = jax.jit(lambda s, h: nnx.merge(gd, s).ffn.predictor_logits(h))
    rows = jax.jit(rows_fn)
    ffn = jax.jit(lambda s, h: nnx.merge(gd, s).ffn(nnx.merge(gd, s).ffn_norm(h), h))
    gdl, stl = nnx.split(llama)
    head = jax.jit(lambda s, h: jnp.argmax(nnx.merge(gdl, s).head(nnx.merge(gdl, s).output_norm(h)), -1))
    x0 = llama.embed(tok[:, None])
    names = ["attention", "predictor", "ffn rows", "head"] if sparse else ["attention", "ffn", "head"]
    runs: dict[str, list[float]] = {n: [] for n in names}

    def timed(acc: dict[str, float], name: str, fn: Callable[..., Any], *args: Any) -> Any:
        t = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        acc[name] = acc.get(name, 0.0) + time.perf_counter() - t
        return out

    for r in range(repeats + 2):
        acc: dict[str, float] = {}
        x = x0
        for st, cache in zip(states, caches, strict=True):
            h = timed(acc, "attention", attn, st, x, cache)
            if sparse:
                lg = timed(acc, "predictor", pred, st, h)
                y = timed(acc, "ffn rows", rows, st, h, lg)
            else:
                y = timed(acc, "ffn", ffn, st, h)
            x = h + y
        timed(acc, "head", head, stl, x)
        if r >= 2:  # two warm-up passes (compilation, page-in)
            for n in names:
                runs[n].append(acc[n])
    out = {f"{n} ms": 1e3 * statistics.median(v) for n, v in runs.items()}
    step = engine._warm(np.asarray(prompt, np.int32), n_cache, GREEDY, key)
    state = {"cache": jax.tree.map(jnp.copy, caches), "tok": tok}
    p = jnp.asarray(pos, jnp.int32)

    def one() -> Any:  # the same position every time: the step's cost does not depend on the token
        out, _, state["cache"], _ = step(engine.leaves, state["cache"], state["tok"], p, key)
        return out

    out["whole decode step ms"] = 1e3 * time_fn(one, repeats)["median"]
    out["step minus parts ms"] = out["whole decode step ms"] - sum(out[f"{n} ms"] for n in names)
    return out


# ---------------------------------------------------------------- the run


def _load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _drop(*objs: Any) -> None:
    del objs
    gc.collect()


def _llamacpp_round(files: ModelFiles, cfg: BenchConfig, results: dict[str, Any], tag: str) -> None:
    for storage, path in (("f32", files.plain_f32), ("f16", files.plain_f16)):
        print(f"llama.cpp {storage} dense ({tag}) ...", flush=True)
        r = llamacpp.measure_in_child(
            path, n_threads=cfg.threads, n_prompt=cfg.n_prompt, n_new=cfg.n_new, repeats=cfg.repeats
        )
        key = f"llamacpp_{storage}"
        if isinstance(r, str):
            results.setdefault("llamacpp_missing", r)
            print(f"  {r}")
            continue
        entry = results.setdefault(key, {"decode_runs": [], "prefill_runs": [], "rounds": []})
        keep = clean_mask(r.foreign_cores, cfg.repeats)
        entry["decode_runs"] += [v for v, k in zip(r.decode_tok_s, keep, strict=True) if k]
        entry["prefill_runs"] += [v for v, k in zip(r.prefill_tok_s, keep, strict=True) if k]
        kept_foreign = [f for f, k in zip(r.foreign_cores, keep, strict=True) if k]
        entry["contended"] = entry.get("contended", False) or not all(is_clean(f) for f in kept_foreign)
        entry["rounds"].append({"tag": tag, "load": _load_avg()} | dataclasses.asdict(r))
        entry["decode_tok_s"] = _stats(entry["decode_runs"])
        entry["prefill_tok_s"] = _stats(entry["prefill_runs"])
        print(f"  decode {r.decode_median:.2f} tok/s, prefill {r.prefill_median:.1f} tok/s")


def _report(res: dict[str, Any]) -> None:
    d, p = res["decode_tok_s"], res["prefill_tok_s"]
    line = (
        f"  {res['label']}: decode {d['median']:.2f} [{d['min']:.2f}, {d['max']:.2f}] tok/s, prefill {p['median']:.1f}"
    )
    if "share_of_bound_bound" in res:
        line += f", {100 * res['share_of_bound_bound']['median']:.0f}% of bound ({res['bound_tok_s']:.1f} tok/s)"
    print(line, flush=True)


def run_bench(cfg: BenchConfig, out_dir: Path) -> dict[str, Any]:
    """Run the parts of `cfg`; returns (and writes to out_dir/results.json) every figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    build.set_threads(cfg.threads)
    ok, why = llamacpp.llamacpp_available()
    results: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "jax": jax.__version__,
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "kernels": build.status(),
            "llama_cpp": why,
        },
        "load_average": {"start": _load_avg()},
        "synthetic": True,
    }
    parts = set(cfg.parts)
    want_plain = bool(parts & {"llamacpp", "dense", "sparse", "lowp", "sweep", "profile"})
    files = model_files(cfg.preset, cfg.synth_overrides, plain=want_plain)
    results["files"] = {k: str(v) for k, v in dataclasses.asdict(files).items()}
    if "llamacpp" in parts:
        if ok:
            _llamacpp_round(files, cfg, results, "before")
        else:
            results["llamacpp_missing"] = why
            print(f"llama.cpp: {why}")
    probe = BandwidthProbe(cfg.probe_gb)
    from pijax.bench.synth import preset_spec

    n_vocab = preset_spec(cfg.preset, **dict(cfg.synth_overrides)).n_vocab
    prompt = np.random.default_rng(0).integers(3, n_vocab, cfg.n_prompt).tolist()

    if "dense" in parts:
        llama = load_llama(files.plain_f32, "f32", xla_ffn=True)
        results["params_B"] = sum(a.size for a in jax.tree.leaves(nnx.state(llama))) / 1e9
        wb = weight_bytes(llama)
        r = measure_pijax(llama, prompt, cfg.n_new, cfg.repeats, probe, "pijax dense f32 (XLA FFN)")
        results["pijax_dense_f32_xla"] = with_bound(r, step_bytes(wb, kv_bytes(llama, r["n_cache"]), None, None))
        _report(r)
        use_kernels(llama, "f32", skip_inactive=False)
        r = measure_pijax(llama, prompt, cfg.n_new, cfg.repeats, probe, "pijax dense f32 (kernel FFN)")
        results["pijax_dense_f32_kernel"] = with_bound(r, step_bytes(wb, kv_bytes(llama, r["n_cache"]), None, None))
        _report(r)
        if "profile" in parts:
            results["profile_dense_f32_kernel"] = profile_step(llama, prompt, r["n_cache"])
            print(f"  profile: {json.dumps({k: round(v, 2) for k, v in results['profile_dense_f32_kernel'].items()})}")
        # Exact, no predictor: every neuron's gate product is computed, and up/down_t rows are read only where
        # relu(gate) > 0. Not a dense baseline (it reads ~40% of the FFN bytes on a 10%-active ReLU model).
        for b in llama.layers:
            b.ffn.skip_inactive = True
        r = measure_pijax(llama, prompt, cfg.n_new, cfg.repeats, probe, "pijax exact zero-skip f32 (no predictor)")
        results["pijax_zeroskip_f32"] = r
        _report(r)
        _drop(llama)

    sparse_fmts = (["f32"] if parts & {"sparse", "sweep", "profile"} else []) + (
        list(cfg.lowp_formats) if "lowp" in parts else []
    )
    for fmt in sparse_fmts:
        src = files.plain_f32 if fmt == "f32" else files.plain_f16
        llama = load_llama(src, fmt, predictors_from=files.pwri)
        wb = weight_bytes(llama)
        key = f"pijax_sparse_{fmt}"
        r = measure_pijax(llama, prompt, cfg.n_new, cfg.repeats, probe, f"pijax sparse {fmt}")
        st = selection_stats(llama, np.asarray(prompt + r["new_ids"][:-1]), cfg.sweep_fractions)
        sb = step_bytes(wb, kv_bytes(llama, r["n_cache"]), st["selected_per_layer"], st["live_per_layer"])
        results[key] = with_bound(r, sb) | {"selection": st, "weight_bytes": wb}
        _report(results[key])
        if "profile" in parts:
            results[f"profile_sparse_{fmt}"] = profile_step(llama, prompt, r["n_cache"])
            print(f"  profile: {json.dumps({k: round(v, 2) for k, v in results[f'profile_sparse_{fmt}'].items()})}")
        if "sweep" in parts and fmt in cfg.sweep_formats:
            results[f"sweep_{fmt}"] = sweep(llama, prompt, cfg, probe, st, wb)
        _drop(llama)

    if "llamacpp" in parts and ok:
        _llamacpp_round(files, cfg, results, "after")
    if "size" in parts or "ffn" in parts:
        from pijax.bench import ffn_kernel, size_scaling

        size_files = model_files(cfg.size_preset, (("n_layer", cfg.size_layers),), plain=False)
        if "size" in parts:
            results["size"] = size_scaling.run(size_files.pwri, cfg, probe, prompt)
            results["size"]["points"] += _small_points(results)
        if "ffn" in parts:
            results["ffn_layer"] = ffn_kernel.run(size_files.pwri, repeats=cfg.ffn_repeats, threads=cfg.threads)
    results["load_average"]["end"] = _load_avg()
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    from pijax.bench import decode_report

    decode_report.write_all(results, out_dir)
    return results


def _small_points(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The main model's engines as points of the model-size plot."""
    names = {
        "pijax_dense_f32_kernel": "pijax dense f32",
        "pijax_sparse_f32": "pijax sparse f32",
        "llamacpp_f32": "llama.cpp f32 dense",
        "llamacpp_f16": "llama.cpp f16 dense",
    }
    names |= {k: f"pijax sparse {k.removeprefix('pijax_sparse_')}" for k in results if k.startswith("pijax_sparse_")}
    params = results.get("params_B", 1.1)
    out = []
    for key, name in names.items():
        if key in results and "decode_tok_s" in results[key]:
            tok_s = results[key]["decode_tok_s"]["median"]
            out.append(
                {"engine": name, "model": results["config"]["preset"], "decode_tok_s": tok_s, "params_B": params}
            )
    return out


def sweep(
    llama: Llama, prompt: list[int], cfg: BenchConfig, probe: BandwidthProbe, st: dict[str, Any], wb: dict
) -> list[dict[str, Any]]:
    """Decode tok/s at each predicted-active fraction (per-layer thresholds from `st`), reading the selected
    rows in full (as a model with that many firing neurons would) and with the kernel's zero-skipping; 100% is
    the dense kernel FFN (no predictor)."""
    rows = []
    saved = [(b.ffn, b.ffn.threshold) for b in llama.layers]
    for frac in cfg.sweep_fractions:
        for skip in (False, True):
            for i, (b, (ffn, _)) in enumerate(zip(llama.layers, saved, strict=True)):
                if frac >= 1.0:
                    b.ffn = KernelFFN(
                        llama.cfg,
                        ffn.w_up_fd[...],
                        None if ffn.w_gate_fd is None else ffn.w_gate_fd[...],
                        ffn.w_down_fd[...],
                        skip_inactive=skip,
                    )
                else:
                    ffn.threshold = float(st["thresholds"][f"{frac:g}"][i])
                    ffn.skip_inactive = skip
                    b.ffn = ffn
            label = f"sweep {frac:.0%} {'skip' if skip else 'full rows'}"
            r = measure_pijax(llama, prompt, cfg.sweep_new, cfg.repeats, probe, label)
            if frac >= 1.0:
                s2 = {"selected_fraction": 1.0}
                by = step_bytes(wb | {"predictors": 0}, kv_bytes(llama, r["n_cache"]), None, None)
            else:
                s2 = selection_stats(llama, np.asarray(prompt + r["new_ids"][:-1]))
                by = step_bytes(wb, kv_bytes(llama, r["n_cache"]), s2["selected_per_layer"], s2["live_per_layer"])
            r = with_bound(r, by)
            rows.append({"fraction": frac, "skip_inactive": skip, "selected_fraction": s2["selected_fraction"]} | r)
            _report(r)
    for b, (ffn, thr) in zip(llama.layers, saved, strict=True):
        ffn.threshold, ffn.skip_inactive = thr, True
        b.ffn = ffn
    return rows


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default=",".join(BenchConfig().parts))
    ap.add_argument("--repeats", type=int, default=BenchConfig().repeats)
    ap.add_argument("--n-new", type=int, default=BenchConfig().n_new)
    ap.add_argument("--n-prompt", type=int, default=BenchConfig().n_prompt)
    ap.add_argument("--preset", default=BenchConfig().preset)
    ap.add_argument("--out", type=Path, default=Path("experiments/bench"))
    a = ap.parse_args(argv)
    cfg = BenchConfig(
        preset=a.preset, parts=tuple(a.parts.split(",")), repeats=a.repeats, n_new=a.n_new, n_prompt=a.n_prompt
    )
    run_bench(cfg, a.out)


if __name__ == "__main__":
    main()
