"""Benchmark: pijax decode/prefill against llama.cpp on the same synthetic GGUF, and against the bandwidth bound.

`python -m pijax.bench.decode --parts dense,sparse,hybrid --preset P --repeats N --out DIR` (or
`python -m pijax.run +experiment=bench_decode`). In one run, on the SYNTHETIC power-law ReGLU model of
`BenchConfig.preset` (built on first use by `pijax.bench.synth`; or a GGUF path):
- llama.cpp (llama-cpp-python, n_threads = `threads`) dense f32 and f16 on plain copies of the model, in child
  processes, once before and once after pijax's measurements (so a load change shows);
- pijax dense f32 (every product in XLA, and on the kernels), sparse f32 (predictors, ~10% predicted active), sparse in
  each low-precision format: prefill and decode tokens/s, medians of `repeats` after a warm-up;
- the bound: read bandwidth (re-measured before every repeat) over the bytes a decode step must read: attention,
  output head, predictors, the predicted-active FFN rows (3 per neuron), the KV cache; and the bytes the kernel
  really touches (for ReLU FFNs it skips up/down_t rows of selected neurons whose gate product is <= 0);
- the hybrid engine (hot rows on the accelerators, cold on the host, built by pijax.engine.pipeline) at each budget
  of `hybrid_budgets`, neurons placed by `hybrid_policy` (part `hybrid`) or whole layers (part `layers`):
  `pijax.bench.decode_hybrid`, rows `pijax_hybrid_f32_ffn:X%` / `pijax_layers_f32_ffn:X%`;
- a per-component profile of one decode step, the active-fraction sweep, the model-size points (a 7B-shaped layer
  stack) and the FFN-layer comparison (`pijax.bench.ffn_kernel`).
Everything is written to `out_dir` (results.json, decode.csv, sweep.csv, targets.md, PNGs). Timing never runs in
CI: tests call this with `BenchConfig.smoke()`.

`--targets S1,S2,S3,S4,S5,S6` measures issue 14's synthetic table: each target's pijax engine, format and
reference are fixed in `decode_config.SYNTH_TARGETS` and decide the parts run (llama.cpp also on Q8_0/Q4_0
copies; with `--powerinfer-bin`, PowerInfer's main on the f16 and Q4_0 PWRI copies); targets.md gives the ratio
of medians with the worst pairing beside it, and says why a row did not run.

`--model smollm2-135m --targets R1,R2,R3` measures the real-model targets instead (`pijax.bench.decode_real`:
64-token prompt, 128 new tokens, pijax and llama.cpp paired round by round, optionally `--powerinfer-bin`).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from pijax.bench import llamacpp
from pijax.bench.contention import clean_mask, is_clean
from pijax.bench.decode_bytes import kv_bytes, selection_stats, step_bytes, weight_bytes
from pijax.bench.decode_config import BenchConfig
from pijax.bench.decode_timing import measure_pijax, profile_step, raise_bound, spread, with_bound
from pijax.bench.dense_decode import BandwidthProbe
from pijax.errors import ConfigError, DataError, PijaxError
from pijax.kernels import build, ops
from pijax.model.convert import load_llama, use_kernels
from pijax.model.llama import Llama
from pijax.model.rows import Selector

# ---------------------------------------------------------------- files


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    pwri: Path  # the synthetic PowerInfer-style file (predictors, ffn_down_t)
    plain_f32: Path  # llama.cpp-loadable copies of the same weights
    plain_f16: Path

    def plain(self, fmt: str) -> Path:
        """The llama.cpp-loadable copy in `fmt`; Q8_0/Q4_0 copies are quantized from the f32 one on first use
        (`pijax.io.convert`), and pijax's block-format engines read their blocks as they are."""
        if fmt in ("f32", "f16"):
            return self.plain_f32 if fmt == "f32" else self.plain_f16
        path = self.plain_f32.with_name(self.plain_f32.name.replace(".plain-f32.", f".plain-{fmt}."))
        if not path.is_file() or path.stat().st_mtime < self.plain_f32.stat().st_mtime:
            from pijax.io.convert import convert_gguf

            convert_gguf(self.plain_f32, path, fmt, force=True)  # type: ignore[arg-type]
        return path

    def powerinfer(self, fmt: str) -> Path:
        """The PWRI file in `fmt` for PowerInfer's main (`pijax.io.convert` keeps the magic and the predictors)."""
        path = self.pwri.with_name(f"{self.pwri.stem}.{fmt}.gguf")
        if not path.is_file() or path.stat().st_mtime < self.pwri.stat().st_mtime:
            from pijax.io.convert import convert_gguf

            convert_gguf(self.pwri, path, fmt, force=True)  # type: ignore[arg-type]
        return path


def is_model_file(preset: str) -> bool:
    """True for a GGUF path or a registered model name (pijax.io.registry), False for a synthetic preset."""
    from pijax.io.registry import is_registry_name

    return preset.endswith(".gguf") or is_registry_name(preset)


def model_files(preset: str, overrides: Sequence[tuple[str, Any]] = (), plain: bool = True) -> ModelFiles:
    """A synthetic preset (built on first use), a registered model name, or the path of a GGUF file (their plain
    copies go to the cache)."""
    from pijax.bench.synth import default_cache_dir, ensure_synth_model
    from pijax.io.registry import is_registry_name, resolve_model

    if is_model_file(preset):
        pwri = resolve_model(preset) if is_registry_name(preset) else Path(preset).expanduser()
        if not pwri.is_file():
            raise DataError("no such model file", pwri)
        folder = default_cache_dir() / "plain"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{pwri.stem}-{hashlib.sha256(str(pwri.resolve()).encode()).hexdigest()[:8]}"
        f32, f16 = (folder / f"{stem}.plain-{s}.gguf" for s in ("f32", "f16"))
    else:
        pwri = ensure_synth_model(preset, **dict(overrides))
        f32, f16 = (pwri.with_name(pwri.stem + f".plain-{s}.gguf") for s in ("f32", "f16"))
    if plain:
        llamacpp.plain_gguf(pwri, f32, "f32")
        llamacpp.plain_gguf(pwri, f16, "f16")
    return ModelFiles(pwri, f32, f16)


# ---------------------------------------------------------------- the run


def _load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _llamacpp_round(files: ModelFiles, cfg: BenchConfig, results: dict[str, Any], tag: str) -> None:
    for storage in cfg.llamacpp_formats:
        path = files.plain(storage)
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
        entry["decode_tok_s"] = spread(entry["decode_runs"])
        entry["prefill_tok_s"] = spread(entry["prefill_runs"])
        print(f"  decode {r.decode_median:.2f} tok/s, prefill {r.prefill_median:.1f} tok/s")


def _report(res: dict[str, Any]) -> None:
    d, p = res["decode_tok_s"], res["prefill_tok_s"]
    line = (
        f"  {res['label']}: decode {d['median']:.2f} [{d['min']:.2f}, {d['max']:.2f}] tok/s, prefill {p['median']:.1f}"
    )
    if "share_of_bound_bound" in res:
        line += f", {100 * res['share_of_bound_bound']['median']:.0f}% of bound ({res['bound_tok_s']:.1f} tok/s)"
    print(line, flush=True)


def run_bench(cfg: BenchConfig, out_dir: Path, hardware: Any = None) -> dict[str, Any]:
    """Run the parts of `cfg`; returns (and writes to out_dir/results.json) every figure. hardware: the
    HardwareConfig of the hybrid parts (default: auto, one accelerator)."""
    parts = set(cfg.parts)
    placement = None
    if parts & {"hybrid", "layers"}:  # first: virtual CPU devices must exist before jax's backend starts
        from pijax.layout.config import HardwareConfig
        from pijax.layout.devices import setup_devices

        placement = setup_devices(hardware or HardwareConfig())
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
        "synthetic": not is_model_file(cfg.preset),
    }
    want_plain = bool(parts & {"llamacpp", "dense", "dense_xla", "sparse", "lowp", "sweep", "profile"})
    files = model_files(cfg.preset, cfg.synth_overrides, plain=want_plain)
    results["files"] = {k: str(v) for k, v in dataclasses.asdict(files).items()}
    if "llamacpp" in parts:
        if ok:
            _llamacpp_round(files, cfg, results, "before")
        else:
            results["llamacpp_missing"] = why
            print(f"llama.cpp: {why}")
    probe = BandwidthProbe(cfg.probe_gb)
    from pijax.bench.synth_spec import preset_spec

    if is_model_file(cfg.preset):
        from pijax.io.checkpoint import load_checkpoint

        n_vocab = load_checkpoint(files.pwri).config.n_vocab
    else:
        n_vocab = preset_spec(cfg.preset, **dict(cfg.synth_overrides)).n_vocab
    prompt = np.random.default_rng(0).integers(3, n_vocab, cfg.n_prompt).tolist()

    if "dense" in parts:
        llama = load_llama(files.plain_f32, "f32", xla_ffn=True)
        results["params_B"] = sum(a.size for a in jax.tree.leaves(nnx.state(llama))) / 1e9
        wb = weight_bytes(llama)
        r = _all_xla(llama, prompt, cfg, probe)
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
            b.ffn.configure(dataclasses.replace(b.ffn.selector, skip_inactive=True))
        r = measure_pijax(llama, prompt, cfg.n_new, cfg.repeats, probe, "pijax exact zero-skip f32 (no predictor)")
        results["pijax_zeroskip_f32"] = r
        _report(r)
        del llama  # before the next load: two 1.1B f32 models at once do not fit in 24 GiB
        gc.collect()

    elif "dense_xla" in parts:  # the all-on-accelerator dense baseline only (no CPU kernels: runs on a GPU too)
        llama = load_llama(files.plain_f32, "f32", xla_ffn=True)
        wb = weight_bytes(llama)
        r = _all_xla(llama, prompt, cfg, probe)
        results["pijax_dense_f32_xla"] = with_bound(r, step_bytes(wb, kv_bytes(llama, r["n_cache"]), None, None))
        _report(r)
        del llama  # before the next load: two 1.1B f32 models at once do not fit in 24 GiB
        gc.collect()

    sparse_fmts = (["f32"] if parts & {"sparse", "sweep", "profile"} else []) + (
        list(cfg.lowp_formats) if "lowp" in parts else []
    )
    for fmt in sparse_fmts:
        # Block formats read the plain Q8_0/Q4_0 copy's own blocks (the bytes llama.cpp runs); f16/bf16/int8 rows
        # are converted from the f16 copy.
        src = files.plain(fmt) if fmt in ("f32", "q8_0", "q4_0") else files.plain_f16
        llama = load_llama(src, fmt, predictors_from=files.pwri)
        wb = weight_bytes(llama)
        key = f"pijax_sparse_{fmt}"
        r = measure_pijax(llama, prompt, cfg.n_new, cfg.repeats, probe, f"pijax sparse {fmt}")
        st = selection_stats(llama, np.asarray(prompt + r["new_ids"][:-1]), cfg.sweep_fractions)
        # The bound counts the rows the timed steps selected (the kernel's own counts); the teacher-forced pass
        # gives only what the kernel touches of them (live rows) and the sweep's thresholds.
        timed = r.get("timed_selected_per_layer", st["selected_per_layer"])
        live = [
            lv * t / max(s, 1e-9)
            for lv, t, s in zip(st["live_per_layer"], timed, st["selected_per_layer"], strict=True)
        ]
        sb = step_bytes(wb, kv_bytes(llama, r["n_cache"]), timed, live)
        st["timed_selected_fraction"] = float(np.mean(timed) / llama.cfg.n_ff)
        results[key] = with_bound(r, sb) | {"selection": st, "weight_bytes": wb}
        _report(results[key])
        if "profile" in parts:
            results[f"profile_sparse_{fmt}"] = profile_step(llama, prompt, r["n_cache"])
            print(f"  profile: {json.dumps({k: round(v, 2) for k, v in results[f'profile_sparse_{fmt}'].items()})}")
        if "sweep" in parts and fmt in cfg.sweep_formats:
            results[f"sweep_{fmt}"] = sweep(llama, prompt, cfg, probe, st, wb)
        del llama  # before the next load: two 1.1B f32 models at once do not fit in 24 GiB
        gc.collect()

    policies = [p for part, p in (("hybrid", cfg.hybrid_policy), ("layers", "layers")) if part in parts]
    if policies:
        from pijax.bench.decode_hybrid import measure_hybrid

        results |= measure_hybrid(files.pwri, cfg, prompt, probe, placement, policies)

    if "llamacpp" in parts and ok:
        _llamacpp_round(files, cfg, results, "after")
    if cfg.powerinfer_bin:
        for fmt in cfg.powerinfer_formats:
            results[f"powerinfer_{fmt}"] = _powerinfer(files, fmt, cfg)
    if "size" in parts or "ffn" in parts:
        from pijax.bench import ffn_kernel, size_scaling

        size_files = model_files(cfg.size_preset, (("n_layer", cfg.size_layers),), plain=False)
        if "size" in parts:
            results["size"] = size_scaling.run(size_files.pwri, cfg, probe, prompt)
            results["size"]["points"] += _small_points(results)
        if "ffn" in parts:
            results["ffn_layer"] = ffn_kernel.run(size_files.pwri, repeats=cfg.ffn_repeats, threads=cfg.threads)
    _llamacpp_floor(results)
    results["load_average"]["end"] = _load_avg()
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    from pijax.bench import decode_report

    decode_report.write_all(results, out_dir)
    return results


def _powerinfer(files: ModelFiles, fmt: str, cfg: BenchConfig) -> dict[str, Any] | str:
    """A user-built PowerInfer main on the PWRI file in `fmt` (at the file's own threshold, as pijax's sparse
    engines), `repeats` runs after one warm-up; or why it could not run."""
    from pijax.bench import powerinfer

    print(f"PowerInfer {fmt} ...", flush=True)
    runs = []
    try:
        path = files.powerinfer(fmt)
        for i in range(cfg.repeats + 1):
            t = powerinfer.run_once(
                cfg.powerinfer_bin, path, threads=cfg.threads, n_new=cfg.n_new, extra=cfg.powerinfer_args
            )
            if i == 0:
                continue  # the warm-up: pages the file in
            runs.append(dataclasses.asdict(t) | {"decode_tok_s": t.decode_tok_s, "prefill_tok_s": t.prefill_tok_s})
    except PijaxError as e:
        print(f"PowerInfer: {e}", flush=True)
        return str(e)
    dec = [r["decode_tok_s"] for r in runs]
    print(f"  decode {spread(dec)['median']:.2f} tok/s", flush=True)
    return {
        "runs": runs,
        "file": str(path),
        "decode_tok_s": spread(dec),
        "prefill_tok_s": spread([r["prefill_tok_s"] for r in runs]),
    }


def _llamacpp_floor(results: dict[str, Any]) -> None:
    """llama.cpp's effective read rate (its f32 decode tok/s x the bytes of the same dense f32 step), recorded, and
    used as the floor of every repeat's bandwidth: the bound is the higher of the probe and llama.cpp's rate."""
    dense = results.get("pijax_dense_f32_kernel") or results.get("pijax_dense_f32_xla")
    l32 = results.get("llamacpp_f32")
    if not dense or not l32 or "bound_bytes" not in dense:
        return
    floor = l32["decode_tok_s"]["median"] * dense["bound_bytes"]
    results["llamacpp_f32_effective_GBps"] = floor / 1e9
    for key, res in results.items():
        if isinstance(res, dict) and "bandwidth_runs" in res and "bound_bytes" in res:
            raise_bound(res, floor)
        if key.startswith("sweep_"):
            for row in res:
                raise_bound(row, floor)


def _all_xla(llama: Llama, prompt: list[int], cfg: BenchConfig, probe: BandwidthProbe) -> dict[str, Any]:
    """The dense f32 model with every product in XLA (no kernel route: what runs on an accelerator)."""
    old = ops.set_f32_kernel(False)
    try:
        return measure_pijax(llama, prompt, cfg.n_new, cfg.repeats, probe, "pijax dense f32 (all XLA)")
    finally:
        ops.set_f32_kernel(old)


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
    saved = [b.ffn.selector for b in llama.layers]
    for frac in cfg.sweep_fractions:
        for skip in (False, True):
            for i, (b, sel) in enumerate(zip(llama.layers, saved, strict=True)):
                if frac >= 1.0:
                    b.ffn.configure(Selector("dense", skip_inactive=skip))
                else:
                    thr = float(st["thresholds"][f"{frac:g}"][i])
                    b.ffn.configure(dataclasses.replace(sel, threshold=thr, skip_inactive=skip))
            label = f"sweep {frac:.0%} {'skip' if skip else 'full rows'}"
            r = measure_pijax(llama, prompt, cfg.sweep_new, cfg.repeats, probe, label)
            if frac >= 1.0:
                s2 = {"selected_fraction": 1.0}
                by = step_bytes(wb | {"predictors": 0}, kv_bytes(llama, r["n_cache"]), None, None)
            else:
                s2 = selection_stats(llama, np.asarray(prompt + r["new_ids"][:-1]))
                timed = r.get("timed_selected_per_layer", s2["selected_per_layer"])
                live = [
                    lv * t / max(s, 1e-9)
                    for lv, t, s in zip(s2["live_per_layer"], timed, s2["selected_per_layer"], strict=True)
                ]
                s2["selected_fraction"] = float(np.mean(timed) / llama.cfg.n_ff)
                by = step_bytes(wb, kv_bytes(llama, r["n_cache"]), timed, live)
            r = with_bound(r, by)
            rows.append({"fraction": frac, "skip_inactive": skip, "selected_fraction": s2["selected_fraction"]} | r)
            _report(r)
    for b, sel in zip(llama.layers, saved, strict=True):
        b.ffn.configure(dataclasses.replace(sel, skip_inactive=True))
    return rows


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default=None, help=f"default: {','.join(BenchConfig().parts)}")
    ap.add_argument("--repeats", type=int, default=BenchConfig().repeats)
    ap.add_argument("--n-new", type=int, default=BenchConfig().n_new)
    ap.add_argument("--n-prompt", type=int, default=None, help="default: 128 (synthetic), 64 (--model)")
    ap.add_argument("--preset", default=BenchConfig().preset)
    ap.add_argument("--budgets", default=",".join(BenchConfig().hybrid_budgets), help="hybrid budgets, ffn:X%%")
    ap.add_argument("--policy", default=BenchConfig().hybrid_policy, help="index policy of the hybrid rows")
    ap.add_argument("--hardware", default="auto", choices=("auto", "cpu", "gpu"), help="accelerators of the hybrid")
    ap.add_argument("--out", type=Path, default=Path("experiments/bench"))
    ap.add_argument("--model", default="", help="a real model (registry name or GGUF): its targets, paired run by run")
    ap.add_argument(
        "--targets",
        default="",
        help="with --model: names of pijax.bench.decode_real.REAL_TARGETS, or dense/sparse/all (default R1); "
        "without: which of S1-S6 (issue 14's synthetic table, decode_config.SYNTH_TARGETS), measuring exactly "
        "what they need",
    )
    ap.add_argument("--fidelity-windows", type=int, default=16, help="held-out windows behind each sparse target's ppl")
    ap.add_argument("--powerinfer-bin", default="", help="a user-built PowerInfer main, timed on the same files")
    ap.add_argument("--powerinfer-args", default="", help="extra arguments for PowerInfer's main (space-separated)")
    a = ap.parse_args(argv)
    from pijax.layout.config import HardwareConfig

    if a.model:
        from pijax.bench.decode_real import RealBenchConfig, expand_targets, run_real

        try:
            rc = RealBenchConfig(
                model=a.model,
                targets=expand_targets(a.targets or "R1"),
                fidelity_windows=a.fidelity_windows,
                n_prompt=a.n_prompt or RealBenchConfig().n_prompt,
                n_new=a.n_new,
                repeats=a.repeats,
                powerinfer_bin=a.powerinfer_bin,
                powerinfer_args=tuple(a.powerinfer_args.split()),
            )
            run_real(rc, a.out)
        except PijaxError as e:
            raise SystemExit(f"pijax: error: {e}") from None
        return
    try:
        if a.targets and a.parts:
            raise ConfigError("--targets decides the parts itself: give --targets or --parts, not both")
        cfg = BenchConfig(
            preset=a.preset,
            parts=tuple(a.parts.split(",")) if a.parts else BenchConfig().parts,
            targets=tuple(a.targets.split(",")) if a.targets else (),
            repeats=a.repeats,
            n_new=a.n_new,
            n_prompt=a.n_prompt or BenchConfig().n_prompt,
            hybrid_budgets=tuple(a.budgets.split(",")),
            hybrid_policy=a.policy,
            powerinfer_bin=a.powerinfer_bin,
            powerinfer_args=tuple(a.powerinfer_args.split()),
        ).for_targets()
        run_bench(cfg, a.out, HardwareConfig(platform=a.hardware))
    except PijaxError as e:
        raise SystemExit(f"pijax: error: {e}") from None


if __name__ == "__main__":
    main()
