"""Synthetic scale models: random-weight ReGLU LLaMA GGUFs of any shape whose FFN neurons fire with a power law.

Real ReLU LLMs of 1-7B parameters are large downloads; hot/cold placement only matters at that scale. This module
writes a PowerInfer-style file (PWRI magic, `ffn_down_t`, `fc1`/`fc2` predictors) of a chosen shape, labelled
synthetic everywhere (`general.name`, `pijax.synthetic = true`, the generation parameters under
`pijax.synthetic.*`, and a `NAME.synth.json` report next to it).

How the power law is built (no mask is faked; the weights alone produce it):
- Target: in layer l the neuron of rank r (1-based) fires with probability p_r = clip(C r^-alpha, p_min, p_max),
  C chosen so that mean(p) = `mean_active`; a seeded per-layer permutation decides which neuron has which rank.
- The token embeddings share a mean direction (each row = c·u0 + e_t), so the normed FFN input x of every layer
  has a dominant mean direction u (measured, per layer) and token-dependent parts around it.
- Gate row i = w_i + a_i·u with w_i ⊥ u: a random direction mostly inside a rank-`gate_rank` subspace Q plus
  `gate_noise` of full-rank noise. Neuron i fires iff w_i·x + a_i (u·x) > 0, i.e. iff a_i > -w_i·x / (u·x), so
  a_i is set to the p_i-quantile of that ratio over the real hidden states x of calibration sequences.
- The model is built layer by layer: calibration sequences (BOS + uniform random tokens) run through the layers
  built so far (a numpy forward with llama.cpp's conventions), so layer l is fitted to the hidden states that
  layers < l really produce. Held-out sequences run alongside and measure the fit (nothing is fitted on them).
- Predictor: sign(gate_i · x) = sign((gate_i ⊙ γ) · h) for the residual h before the FFN norm γ, so the activation
  is a linear threshold in h. With B an orthonormal basis of span(u ⊙ γ, Q ⊙ γ) (k + 1 rows, k = R/2 - 1) and
  C = (gate ⊙ γ) B^T, the predictor fc2·relu(fc1·h) with fc1 = [B; -B], fc2 = [C, -C] equals C B h exactly
  (relu(z) - relu(-z) = z): it misses only what the full-rank gate noise contributes.
- Attention and FFN output matrices are random, rescaled so each sub-layer adds `sublayer_scale` times the
  embedding RMS to the residual stream.

Files are written tensor by tensor as they are generated (`write_gguf_stream`), so memory holds one layer plus
the calibration activations, never the model. Default location: `$PIJAX_CACHE/synth` or `~/.cache/pijax/synth`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from tqdm.auto import tqdm

from pijax.bench.synth_fit import LayerFit, generate_tensors, layer_fit
from pijax.bench.synth_spec import (
    META_PREFIX,
    PRESETS,
    SynthSpec,
    preset_spec,
    spec_from_metadata,
    spec_metadata,
    tensor_specs,
)
from pijax.errors import ConfigError, DataError, GGUFFormatError, PijaxError
from pijax.io.gguf import read_gguf, write_gguf_stream


@dataclasses.dataclass
class SynthReport:
    spec: SynthSpec
    path: Path
    file_bytes: int
    build_seconds: float
    layers: list[LayerFit]

    def summary(self) -> dict[str, float]:
        cols = ("spearman", "mean_active", "alpha_fit", "pred_recall", "pred_precision", "pred_active", "cover80")
        return {c: float(np.mean([getattr(f, c) for f in self.layers])) for c in cols}

    def to_json(self) -> dict[str, Any]:
        return {
            "synthetic": True,
            "spec": dataclasses.asdict(self.spec),
            "key": self.spec.key(),
            "path": str(self.path),
            "file_bytes": self.file_bytes,
            "build_seconds": round(self.build_seconds, 2),
            "summary": self.summary(),
            "layers": [dataclasses.asdict(f) for f in self.layers],
        }


def report_path(model_path: str | os.PathLike[str]) -> Path:
    p = Path(model_path)
    return p.with_name(p.stem + ".synth.json")


def build_synth_model(spec: SynthSpec, path: str | os.PathLike[str], *, progress: bool = True) -> SynthReport:
    """Generate and write the model at `path` and its report `NAME.synth.json`; returns the measured fit."""
    report = _write_model(spec, Path(path), progress)
    report_path(path).write_text(json.dumps(report.to_json(), indent=1) + "\n")
    return report


def _write_model(spec: SynthSpec, path: Path, progress: bool) -> SynthReport:
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fits: list[LayerFit] = []
    write_gguf_stream(
        path, spec_metadata(spec), tensor_specs(spec), generate_tensors(spec, fits, progress), magic="PWRI"
    )
    return SynthReport(spec, path, path.stat().st_size, time.perf_counter() - t0, fits)


def default_cache_dir() -> Path:
    root = os.environ.get("PIJAX_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "pijax") / "synth"


def _is_complete(path: Path, spec: SynthSpec) -> bool:
    try:
        f = read_gguf(path)
    except GGUFFormatError:
        return False
    return f.metadata.get(f"{META_PREFIX}.key") == spec.key() and report_path(path).is_file()


def ensure_synth_model(
    preset: str, *, cache_dir: str | os.PathLike[str] | None = None, progress: bool = True, **overrides: Any
) -> Path:
    """The synthetic model for `preset` with `overrides`, built on first use and reused (keyed by its parameters).

    Concurrent callers (multirun jobs) wait on a file lock instead of building twice; a half-written file is
    never visible under the final name.
    """
    spec = preset_spec(preset, **overrides)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.preset}-{spec.key()}.gguf"
    with FileLock(str(path) + ".lock"):
        if path.is_file() and _is_complete(path, spec):
            return path
        partial = path.with_name(path.name + ".partial")
        try:
            report = _write_model(spec, partial, progress)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        report.path = path
        report_path(path).write_text(json.dumps(report.to_json(), indent=1) + "\n")
        os.replace(partial, path)
    return path


def load_report(model_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The build report written next to a synthetic model (spec, build time, size, per-layer fit)."""
    return json.loads(report_path(model_path).read_text())


def measure_fit(
    model_path: str | os.PathLike[str],
    *,
    n_seqs: int = 32,
    seq_len: int | None = None,
    seed: int = 1234,
    text: str | None = None,
    batch: int = 4,
    progress: bool = True,
) -> list[LayerFit]:
    """Run a synthetic model through pijax's dense engine (`Llama.trace`) and measure each layer's fit.

    Tokens are BOS + uniform random ids (seeded apart from the build's calibration), or consecutive chunks of
    `text` when given. Predictor hits are counted at threshold 0 on the engine's FFN input.
    """
    import jax.numpy as jnp

    from pijax.api import load_model

    model = load_model(model_path)
    spec = spec_from_metadata(model.checkpoint.metadata)
    if spec is None:
        raise DataError("not a synthetic model (no pijax.synthetic key)", model_path)
    t = seq_len or spec.seq_len
    if text is not None:
        ids = np.asarray(model.tokenizer.encode(text), np.int64)
        n_seqs = min(n_seqs, len(ids) // (t - 1))
        if n_seqs == 0:
            raise DataError(f"text has {len(ids)} tokens, fewer than one sequence of {t}", model_path)
        tokens = np.concatenate([np.ones((n_seqs, 1), np.int64), ids[: n_seqs * (t - 1)].reshape(n_seqs, t - 1)], 1)
    else:
        tokens = np.random.default_rng(seed).integers(0, spec.n_vocab, size=(n_seqs, t))
        tokens[:, 0] = 1
    preds = model.checkpoint.weights.predictors or []
    counts = np.zeros((spec.n_layer, spec.n_ff))
    true_pos, n_pred = np.zeros(spec.n_layer), np.zeros(spec.n_layer)
    for start in tqdm(range(0, n_seqs, batch), desc="measure", unit="batch", disable=not progress):
        _, records = model.module.trace(jnp.asarray(tokens[start : start + batch]))
        for layer, rec in enumerate(records):
            fired = np.asarray(rec["act"]).reshape(-1, spec.n_ff) != 0
            h = np.asarray(rec["ffn_in"]).reshape(-1, spec.n_embd)
            predicted = (np.maximum(h @ preds[layer].fc1.T, 0) @ preds[layer].fc2.T) >= 0.0
            counts[layer] += fired.sum(0)
            true_pos[layer] += (predicted & fired).sum()
            n_pred[layer] += predicted.sum()
        del records
    n_tok = tokens.size
    return [layer_fit(spec, i, counts[i], n_tok, true_pos[i], n_pred[i]) for i in range(spec.n_layer)]


def _fit_table(rows: list[dict[str, Any]]) -> str:
    from pijax.results import format_table

    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("layer", "n_tokens")}
    return format_table([*rows, {"layer": "mean", "n_tokens": rows[0]["n_tokens"], **mean}])


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    import ast

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m pijax.bench.synth build PRESET [--set k=v ...]` or `... measure PATH [--seqs N] [--text FILE]`."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m pijax.bench.synth", description="SYNTHETIC power-law models")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or reuse) a synthetic model and print its path and fit")
    b.add_argument("preset", choices=sorted(PRESETS))
    b.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="SynthSpec overrides, e.g. alpha=1.2")
    b.add_argument("--cache-dir", default=None)
    m = sub.add_parser("measure", help="measure a synthetic model's fit with pijax's dense engine")
    m.add_argument("path")
    m.add_argument("--seqs", type=int, default=32)
    m.add_argument("--seq-len", type=int, default=None)
    m.add_argument("--text", default=None, help="a text file to run instead of random tokens")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "build":
            path = ensure_synth_model(args.preset, cache_dir=args.cache_dir, **_parse_overrides(args.set))
            rep = load_report(path)
            print(
                f"{path}\nSYNTHETIC model: {rep['file_bytes'] / 2**30:.2f} GiB, built in {rep['build_seconds']:.0f} s"
            )
            print(_fit_table(rep["layers"]))
        else:
            text = None if args.text is None else Path(args.text).read_text()
            fits = measure_fit(args.path, n_seqs=args.seqs, seq_len=args.seq_len, text=text)
            rows = [dataclasses.asdict(f) for f in fits]
            print(f"SYNTHETIC model {args.path}: fit on {'text' if text else 'random tokens'}\n{_fit_table(rows)}")
    except PijaxError as e:
        print(f"pijax: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
