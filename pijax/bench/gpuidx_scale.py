"""Benchmark: building, writing and validating a gpuidx at LLaMA-70B shape (80 layers x 28672 neurons).

    python -m pijax.bench.gpuidx_scale --layers 80 --n-ff 28672 --repeats 7 --out experiments/gpuidx/results.csv

Counts are synthetic (a per-layer power law over a shuffled neuron order). Times are medians over repeats, after
one warm-up: `solve` per policy; `write` = write_gpuidx (temp file, fsync, rename, folder fsync); `load+validate`
= reading the file back with every structural check and the checksum, and comparing its provenance with the
request (the path `get_or_build_index` takes before reusing a file). `--milp` also solves the same instance with
scipy's MILP and reports whether the objective matches.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pijax.config import ModelConfig
from pijax.index import IndexConfig, get_or_build_index, get_preset, solve
from pijax.index.cache import _Request, _try_load
from pijax.index.gpuidx import Provenance, write_gpuidx
from pijax.index.milp import milp_group_optimum, objective
from pijax.paths import STORIES260K


def synthetic_counts(n_layer: int, n_ff: int, *, n_tokens: int = 100_000, seed: int = 0) -> np.ndarray:
    """Per layer: activation frequency ~ rank^-s (s drawn per layer), over a random neuron order."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, n_ff + 1, dtype=np.float64)
    out = np.empty((n_layer, n_ff), dtype=np.int64)
    for layer in range(n_layer):
        s = rng.uniform(0.5, 1.2)
        freq = np.minimum(1.0, 0.9 * ranks**-s * (n_ff / 100) ** s)
        out[layer] = rng.permutation(rng.binomial(n_tokens, freq))
    return out


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def end_to_end(args: argparse.Namespace, counts: np.ndarray, record: Callable[..., None]) -> None:
    """get_or_build_index with a 70B-shaped ModelConfig (f16 weights, 80 GiB budget). The model file is the
    small stories260K stand-in: only its fingerprint is taken, the shapes come from the config."""
    import shutil

    cfg = ModelConfig(
        n_vocab=32000,
        n_ctx=4096,
        n_embd=8192,
        n_ff=args.n_ff,
        n_layer=args.layers,
        n_head=64,
        n_head_kv=8,
        rope_dim=128,
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        model = Path(tmp) / "model.gguf"
        shutil.copy(STORIES260K, model)
        kw = {"hardware_fingerprint": "bench", "weight_dtype": "f16"}
        rebuild = median_seconds(
            lambda: get_or_build_index(model, cfg, counts, "80GiB", IndexConfig(reset=True), **kw), args.repeats
        )
        index, _, _ = get_or_build_index(model, cfg, counts, "80GiB", IndexConfig(), **kw)
        load = median_seconds(
            lambda: get_or_build_index(model, cfg, counts, "80GiB", IndexConfig(), **kw), args.repeats
        )
    note = f"f16, 80 GiB: {index.total_hot:,d} hot neurons"
    record("get_or_build_index rebuild", rebuild, note)
    record("get_or_build_index load", load, note)


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=80)
    ap.add_argument("--n-ff", type=int, default=28672)
    ap.add_argument("--hot-share", type=float, default=0.5, help="capacity as a share of all neurons")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--milp", action="store_true")
    ap.add_argument("--dir", default=None, help="folder for the index file (default: a temp folder)")
    ap.add_argument("--out", default=None, help="CSV of the results")
    args = ap.parse_args(argv)

    counts = synthetic_counts(args.layers, args.n_ff)
    capacity = int(args.hot_share * counts.size)
    shape = f"{args.layers}x{args.n_ff}"
    rows: list[dict[str, object]] = []

    def record(step: str, seconds: float, note: str = "") -> None:
        rows.append({"shape": shape, "capacity": capacity, "step": step, "median_s": round(seconds, 4), "note": note})
        print(f"{shape:>10} {step:<28} {seconds * 1e3:9.1f} ms  {note}")

    policies = {
        "powerinfer": {},
        "neuron_greedy": {},
        "uniform": {},
        "random": {},
        "cost_model": {"hardware": get_preset("rtx4090"), "bytes_per_neuron": 3 * 8192 * 2},
    }
    buckets = None
    for name, params in policies.items():
        t = median_seconds(lambda n=name, p=params: solve(n, counts, capacity, **p), args.repeats)
        record(f"solve {name}", t)
        if name == "powerinfer":
            buckets = solve(name, counts, capacity)
    assert buckets is not None
    prov = Provenance(
        "gguf1:" + "0" * 32,
        "counts1:" + "1" * 32,
        "powerinfer",
        '{"group_size":256}',
        40 * 2**30,
        capacity,
        "jax:gpu NVIDIA H100 80GB HBM3 x1 mem=85899345920",
    )
    req = _Request(prov, args.layers, args.n_ff, compat=False)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "model.gguf.generated.gpuidx"
        write = median_seconds(
            lambda: write_gpuidx(path, buckets, args.n_ff, vram_capacity=2**34, provenance=prov), args.repeats
        )
        size = path.stat().st_size

        def load_and_validate() -> None:
            index, why = _try_load(path, req)
            assert index is not None, why

        load = median_seconds(load_and_validate, args.repeats)
    record("write (atomic, fsync)", write, f"{size:,d} bytes")
    record("load + validate", load)
    record("write + load + validate", write + load)
    end_to_end(args, counts, record)
    if args.milp:
        t0 = time.perf_counter()
        best, _ = milp_group_optimum(counts, capacity, 256)
        same = objective(buckets, counts) == best
        record("scipy milp (once)", time.perf_counter() - t0, f"objective equal: {same}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
