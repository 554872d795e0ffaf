"""Benchmark: one FFN layer, dense against the sparse FFN at a fraction of active rows, timed in the same run.

`python -m pijax.bench.ffn_layer` (defaults: a LLaMA-7B-shaped ReGLU layer, n_embd 4096, n_ff 11008, f32, 10%
active rows). Cases, all jitted, all one decode token unless `tokens` says otherwise:
- dense: `FFN` with the dense selector (every neuron).
- rows: `gathered_ffn` on a fixed set of active rows (the FFN's own work at that sparsity, no selection).
- sparse: the whole `FFN` with the predictor selector: a rank-R predictor, top-k selection of `capacity` rows, gathers.
- a token sweep of dense vs the sparse FFN's gather path vs its masked-dense path (the prefill crossover).
Timings are medians over interleaved repeats (each case once per round, so load drifts hit all cases alike).
Weights are random: the cost of a layer does not depend on its values. Results: a table and a CSV.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pijax.config import ModelConfig
from pijax.engine.setup import tune_host_allocator
from pijax.model.ffn import FFN
from pijax.model.predictor import Predictor
from pijax.model.rows import Selector, gathered_ffn
from pijax.results import format_table, write_results_csv


def _layer(n_embd: int, n_ff: int, seed: int) -> tuple[ModelConfig, FFN]:
    cfg = ModelConfig(
        n_vocab=1, n_ctx=1, n_embd=n_embd, n_ff=n_ff, n_layer=1, n_head=1, n_head_kv=1, rope_dim=2, ffn_act="relu"
    )
    return cfg, FFN.from_weights(cfg, None, rngs=nnx.Rngs(seed))  # random N(0, 0.02) rows, drawn on the device


def _jit_module(mod: nnx.Module) -> Callable[[jax.Array], jax.Array]:
    gd, st = nnx.split(mod)
    fn = jax.jit(lambda s, h: nnx.merge(gd, s)(h, h))
    return lambda h: fn(st, h)


def time_cases(cases: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call for each case, interleaved: round r runs every case once."""
    for fn in cases.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return times


def run_bench(
    n_embd: int = 4096,
    n_ff: int = 11008,
    active: float = 0.1,
    rank: int = 256,
    repeats: int = 30,
    sweep: tuple[int, ...] = (1, 2, 4, 8, 16, 64),
    seed: int = 0,
) -> list[dict[str, Any]]:
    if jax.default_backend() == "cpu":
        tune_host_allocator()  # as the engine set-up does (pijax.engine.setup)
    cfg, dense = _layer(n_embd, n_ff, seed)
    k = max(1, round(active * n_ff))
    rng = np.random.default_rng(seed)
    idx = jnp.asarray(np.sort(rng.choice(n_ff, k, replace=False)).astype(np.int32))
    valid = jnp.ones((1, k), dtype=jnp.bool_)
    w_up, w_gate, w_down = dense.w_up_fd[...], dense.w_gate_fd[...], dense.w_down_fd[...]
    rows_jit = jax.jit(lambda h, i, v, wu, wg, wd: gathered_ffn(h, i, v, wu, wg, wd, "relu"))
    pred = Predictor(None, n_embd, n_ff, rank, rngs=nnx.Rngs(seed + 1))
    h1 = jax.random.normal(jax.random.key(seed + 2), (1, 1, n_embd), jnp.float32)
    # A predictor threshold that marks ~`active` of the neurons for this input; the capacity allows 10% more.
    thr = float(np.quantile(np.asarray(pred(h1)), 1.0 - active))
    cap = min(n_ff, round(1.1 * k))

    def sparse(max_gather_rows: int) -> FFN:
        sel = Selector("predictor", capacity=cap, threshold=thr, max_gather_rows=max_gather_rows)
        return FFN(cfg, dense.w_up_fd, dense.w_gate_fd, dense.w_down_fd, selector=sel, predictor=pred)

    dense_fn, gather_fn, masked_fn = _jit_module(dense), _jit_module(sparse(1 << 30)), _jit_module(sparse(0))
    pred_fn = _jit_module(_PredictorOnly(pred))
    cases: dict[str, Callable[[], Any]] = {
        "dense": lambda: dense_fn(h1),
        "rows": lambda: rows_jit(h1[0], idx, valid, w_up, w_gate, w_down),
        "sparse": lambda: gather_fn(h1),
        "predictor_only": lambda: pred_fn(h1),
    }
    times = time_cases(cases, repeats)
    rows: list[dict[str, Any]] = []
    base = float(np.median(times["dense"]))
    for name, ts in times.items():
        rows.append(_row(name, 1, ts, base, n_embd, n_ff, k if name != "dense" else n_ff))
    for t in sweep:
        h = jax.random.normal(jax.random.key(seed + 3 + t), (1, t, n_embd), jnp.float32)
        sw = {
            f"dense T={t}": lambda h=h: dense_fn(h),
            f"sparse-gather T={t}": lambda h=h: gather_fn(h),
            f"sparse-masked T={t}": lambda h=h: masked_fn(h),
        }
        st = time_cases(sw, max(5, repeats // 3))
        b = float(np.median(st[f"dense T={t}"]))
        for name, ts in st.items():
            rows.append(_row(name.split(" ")[0], t, ts, b, n_embd, n_ff, n_ff if name.startswith("dense") else k))
    return rows


class _PredictorOnly(nnx.Module):
    def __init__(self, pred: Predictor):
        self.pred = pred

    def __call__(self, h: jax.Array, ffn_in: jax.Array) -> jax.Array:
        return self.pred(ffn_in)


def _row(name: str, tokens: int, ts: list[float], base: float, d: int, f: int, rows: int) -> dict[str, Any]:
    med = float(np.median(ts))
    return {
        "case": name,
        "tokens": tokens,
        "rows": rows,
        "median_ms": 1e3 * med,
        "min_ms": 1e3 * float(np.min(ts)),
        "speedup_vs_dense": base / med,
        "n_embd": d,
        "n_ff": f,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-embd", type=int, default=4096)
    ap.add_argument("--n-ff", type=int, default=11008)
    ap.add_argument("--active", type=float, default=0.1, help="share of rows computed")
    ap.add_argument("--rank", type=int, default=256, help="predictor rank in the 'sparse' case")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--sweep", type=str, default="1,2,4,8,16,64", help="token counts for the prefill sweep")
    ap.add_argument("--out", type=Path, default=None, help="CSV to write (replaced)")
    a = ap.parse_args(argv)
    print(
        f"device {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    sweep = tuple(int(x) for x in a.sweep.split(",") if x)
    rows = run_bench(a.n_embd, a.n_ff, a.active, a.rank, a.repeats, sweep)
    print(format_table(rows, ["case", "tokens", "rows", "median_ms", "min_ms", "speedup_vs_dense"]))
    if a.out is not None:
        a.out.unlink(missing_ok=True)
        write_results_csv(a.out, [r | {"backend": jax.default_backend()} for r in rows])
        Path(str(a.out) + ".lock").unlink(missing_ok=True)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
