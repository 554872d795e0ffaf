"""Timing for the decode benchmarks: tok/s of an engine over repeats (median, min, max), the share of the bandwidth
bound each repeat reached, and a per-component profile of one decode step.

Repeats run until enough of them saw little foreign CPU (pijax.bench.contention), so a busy machine shows in the
result (`contended`) rather than in silently lower figures.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from pijax.bench.contention import Contention, clean_mask, enough, is_clean
from pijax.bench.dense_decode import BandwidthProbe
from pijax.model.generate import Engine, SamplingConfig
from pijax.model.llama import Llama

GREEDY = SamplingConfig()


def spread(xs: Sequence[float]) -> dict[str, float]:
    """Median, min, max and count of `xs`."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


class CountingEngine(Engine):
    """The Engine, whose decode steps also hand each layer's selected-neuron count (the kernel's own per-token
    count) to the host, so that the bytes of a bound come from the timed steps themselves. Every block's FFN must
    run on the kernels backend (`pijax.model.ffn.FFN`). `counts`: one [n_layer] array per decode step since the last `counts.clear()`."""

    def __init__(self, module: Llama):
        if not all(b.ffn.backend == "kernels" for b in module.layers):
            raise TypeError("CountingEngine needs every FFN on the kernels backend")
        super().__init__(module)
        self.counts: list[np.ndarray] = []

    def _decode_fn(
        self, sampling: SamplingConfig, leaves: Any, cache: Any, token_b: jax.Array, pos: jax.Array, key: jax.Array
    ) -> Any:
        from pijax.model.generate import sample_logits

        model = self._model(leaves)
        cos, sin = model._angles(token_b.shape[0], 1, pos)
        x = model.embed(token_b[:, None])
        new_cache, sel = [], []
        for block, layer_cache in zip(model.layers, cache, strict=True):
            h, layer_cache = block.attend(x, cos, sin, layer_cache, pos)
            y, n_sel = block.ffn.selected(block.ffn_norm(h), h)
            x = h + y
            new_cache.append(layer_cache)
            sel.append(n_sel.reshape(-1)[0])
        logits = model.head(model.output_norm(x))[:, 0]
        # The callback outlives the engine in jax's compilation cache: it holds the list, never `self` (which
        # would keep the engine's weights alive after the model is dropped).
        counts = self.counts
        jax.debug.callback(lambda n: counts.append(np.asarray(n)), jnp.stack(sel))
        return sample_logits(logits, jax.random.fold_in(key, pos + 1), sampling), logits, new_cache, pos + 1


def measure_pijax(
    llama: Llama, prompt: Sequence[int], n_new: int, repeats: int, probe: BandwidthProbe | None, label: str
) -> dict[str, Any]:
    """Prefill and decode tok/s of the Engine over `llama` (see `measure_engine`); for a predictor-gated model the
    result also holds `timed_selected_per_layer`, the mean selected neurons per layer over the timed steps."""
    sparse = all(b.ffn.backend == "kernels" and b.ffn.selector.mode != "dense" for b in llama.layers)
    engine = CountingEngine(llama) if sparse else Engine(llama)
    res = measure_engine(engine, prompt, n_new, repeats, probe, label)
    if sparse and engine.counts:
        res["timed_selected_per_layer"] = np.mean(np.stack(engine.counts), axis=0).tolist()
        res["timed_steps_counted"] = len(engine.counts)
    return res


def measure_engine(
    engine: Any, prompt: Sequence[int], n_new: int, repeats: int, probe: BandwidthProbe | None, label: str
) -> dict[str, Any]:
    """Prefill and decode tok/s of `engine` (anything with the Engine's `generate` and `cache_size`): one warm-up,
    then timed generations until `repeats` of them ran with little foreign CPU (see `pijax.bench.contention`; at
    most 3 x repeats tries, after which every try counts and the result says `contended`). The read bandwidth is
    measured right before each."""
    out = engine.generate(prompt, n_new, GREEDY)  # compile, page everything in
    jax.effects_barrier()
    if hasattr(engine, "counts"):
        engine.counts.clear()  # from here on: the timed steps only
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
    jax.effects_barrier()
    gc.collect()
    keep = clean_mask(foreign, repeats)
    kept = [i for i, k in enumerate(keep) if k]
    res: dict[str, Any] = {"label": label, "contended": not all(is_clean(foreign[i]) for i in kept)}
    res["decode_runs"] = [dec[i] for i in kept]
    res["prefill_runs"] = [pre[i] for i in kept]
    res["decode_tok_s"], res["prefill_tok_s"] = spread(res["decode_runs"]), spread(res["prefill_runs"])
    res["all_decode_runs"], res["foreign_cores"], res["new_ids"] = dec, foreign, [int(i) for i in ids]
    if bw:
        res["bandwidth_runs"] = [bw[i] for i in kept]
        res["bandwidth_GBps"] = spread([b / 1e9 for b in res["bandwidth_runs"]])
    res["n_cache"] = engine.cache_size(len(prompt), n_new)
    return res


def with_bound(res: dict[str, Any], bytes_: dict[str, int]) -> dict[str, Any]:
    """Add the share of the bandwidth bound each repeat reached (tok/s x bytes / bandwidth of that repeat)."""
    res |= bytes_
    if "bandwidth_runs" in res:
        for key in ("bound_bytes", "touched_bytes"):
            shares = [t * bytes_[key] / b for t, b in zip(res["decode_runs"], res["bandwidth_runs"], strict=True)]
            res[f"share_of_{key.removesuffix('_bytes')}_bound"] = spread(shares)
        res["bound_tok_s"] = res["bandwidth_GBps"]["median"] * 1e9 / bytes_["bound_bytes"]
    return res


def raise_bound(res: dict[str, Any], floor_bps: float) -> dict[str, Any]:
    """The shares of `with_bound` again, with each repeat's bandwidth at least `floor_bps` (llama.cpp's own
    effective rate: the bound is the higher of the probe and what llama.cpp sustains)."""
    if "bandwidth_runs" not in res or "bound_bytes" not in res or floor_bps <= 0:
        return res
    res["bandwidth_runs_probe"] = res["bandwidth_runs"]
    res["bandwidth_runs"] = [max(b, floor_bps) for b in res["bandwidth_runs"]]
    res["bandwidth_GBps"] = spread([b / 1e9 for b in res["bandwidth_runs"]])
    return with_bound(res, {k: res[k] for k in ("bound_bytes", "touched_bytes")})


def time_fn(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> dict[str, float]:
    for _ in range(warmup):
        jax.block_until_ready(fn())
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return spread(ts)


def _predictor_kernels(ffn: Any) -> bool:
    return ffn.backend == "kernels" and ffn.selector.mode == "predictor"


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
    sparse = _predictor_kernels(llama.layers[0].ffn)

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
            threshold=f.selector.threshold,
            capacity=f.selector.cap(f.n_ff),
            skip_inactive=f.selector.skip_inactive,
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
