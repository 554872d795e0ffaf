"""Engine-level calibration: the fixed costs of pijax's decode loops, measured through the engines themselves on
tiny random models (so their weight bytes are negligible; what remains is dispatch, synchronisation and
transfers). `measure_engine_terms(placement, size, read_gbs)` returns, in microseconds:

- token_us: the dense Engine's decode step beyond its layers (the token loop, one call, the head and sampling):
  a 1-layer model's step minus layer_us;
- layer_us: each extra layer of the dense Engine's one decode call: (the L-layer step - the 1-layer step) / (L-1);
- sparse_layer_us: a layer of the single-device sparse engine (predictor + the kernel FFN: pijax.model.ffn.FFN on the kernels backend):
  (the L-layer sparse step - token_us) / L;
- hybrid_token_us / hybrid_layer_us: the same two terms for the HybridEngine with every layer hot (its token loop
  with the host's embedding round trip, and an all-hot layer), from a 1-layer and an L-layer all-hot model;
- handover_us: what each split layer with hot rows adds (the engine's round trip accelerator -> host ->
  accelerator with its calls and device_puts): (the L-layer half-hot / half-cold step - the L-layer all-hot step) / L;
- cold_split_us: the same for a split layer with NO hot rows (every row on the host, as a small budget gives):
  its stage call has no hot kernel, so it costs less than a half-hot one: (the L-layer all-cold step - the
  L-layer all-hot step) / L.
Every step time is the median over `engine_repeats` runs of `engine_tokens` decode steps driven as the engine's
token loop drives them, the seven engines timed in turn round after round (so that the machine's load weighs on
all alike), minus the tiny model's weight bytes at the measured read bandwidth. The hybrid models use the
predictor source with random predictors, on the backends `pijax.engine.pipeline` picks (the kernels on CPU).
`engine_steppers` and `engine_terms` split the same measurement so that a check (pijax.bench.sim_check) can time
the steppers in the same rounds as the engine it predicts.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

# Small enough that the weights are a few KB, shaped like a model (GQA heads, a predictor, capped row gathers).
TINY = {"n_vocab": 128, "n_embd": 64, "n_ff": 128, "n_head": 4, "n_head_kv": 2, "rope_dim": 16, "rank": 8}


def tiny_config(n_layer: int) -> Any:
    from pijax.config import ModelConfig

    t = TINY
    return ModelConfig(
        n_vocab=t["n_vocab"],
        n_ctx=256,
        n_embd=t["n_embd"],
        n_ff=t["n_ff"],
        n_layer=n_layer,
        n_head=t["n_head"],
        n_head_kv=t["n_head_kv"],
        rope_dim=t["rope_dim"],
        ffn_act="relu",
        name=f"calibration-tiny-{n_layer}",
    )


def _llama(n_layer: int, device: Any) -> Any:
    """A tiny Llama with random weights (numpy-made: nnx's initialisers would compile per parameter)."""
    import jax

    from pijax.io.weights import LayerWeights, LlamaWeights
    from pijax.model.llama import Llama

    cfg = tiny_config(n_layer)
    rng = np.random.default_rng(n_layer)
    d, f, kv = cfg.n_embd, cfg.n_ff, cfg.n_head_kv * (cfg.n_embd // cfg.n_head)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    layers = [
        LayerWeights(
            np.ones(d, np.float32),
            w(d, d),
            w(kv, d),
            w(kv, d),
            w(d, d),
            np.ones(d, np.float32),
            w(f, d),
            w(f, d),
            w(f, d),
        )
        for _ in range(n_layer)
    ]
    embd = w(cfg.n_vocab, d)
    with jax.default_device(device):
        return Llama(cfg, LlamaWeights(embd, np.ones(d, np.float32), w(cfg.n_vocab, d), layers), rngs=nnx_rngs())


def nnx_rngs() -> Any:
    from flax import nnx

    return nnx.Rngs(0)


def _predictors(n_layer: int) -> list[Any]:
    from pijax.io.weights import PredictorWeights

    rng = np.random.default_rng(0)
    t = TINY
    return [
        PredictorWeights(
            fc1=rng.standard_normal((t["rank"], t["n_embd"])).astype(np.float32),
            fc2=rng.standard_normal((t["n_ff"], t["rank"])).astype(np.float32),
        )
        for _ in range(n_layer)
    ]


def _stepper(engine: Any, n_steps: int) -> Any:
    """A function timing `n_steps` decode steps of `engine` (a dense Engine or a HybridEngine), driven as
    `Engine.generate` drives them (dispatch the next step, then read the previous token): seconds per step.
    Only the decode step is compiled (no prefill: it is not timed); the first call compiles and warms."""
    import time

    import jax
    import jax.numpy as jnp

    from pijax.engine.hybrid_engine import HybridEngine
    from pijax.model.generate import SamplingConfig
    from pijax.model.layers import init_cache

    greedy, key, n_cache = SamplingConfig(), jax.random.key(0), 64
    if isinstance(engine, HybridEngine):
        step, cache = functools.partial(engine._step, greedy), engine.new_cache(1, n_cache)
    else:
        i32 = jax.ShapeDtypeStruct((), jnp.int32)
        shapes = jax.eval_shape(lambda: init_cache(engine.cfg, 1, n_cache, engine.dtype))
        tok = jax.ShapeDtypeStruct((1,), jnp.int32)
        step = engine._compile("decode", engine._decode_fn, (greedy,), (engine.leaves, shapes, tok, i32, key))
        cache = init_cache(engine.cfg, 1, n_cache, engine.dtype)
    state = {"cache": cache, "cur": jnp.ones((1,), jnp.int32)}
    device = jax.config.jax_default_device  # where it was made (the dense engines: their weights' device)

    def run() -> float:
        with jax.default_device(device):
            cache, cur, pos = state["cache"], state["cur"], jnp.asarray(8, jnp.int32)
            t0 = time.perf_counter()
            for _ in range(n_steps):
                nxt, _, cache, pos = step(engine.leaves, cache, cur, pos, key)
                np.asarray(cur)
                cur = nxt
            jax.block_until_ready(cur)
        state["cache"], state["cur"] = cache, cur
        return (time.perf_counter() - t0) / n_steps

    run()
    return run


def interleaved_runs(steppers: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    """Every stepper's seconds, timed in turn round after round, so that a change in the machine's load weighs on
    all of them alike (their differences are the terms)."""
    times: dict[str, list[float]] = {k: [] for k in steppers}
    for _ in range(rounds):
        for k, run in steppers.items():
            times[k].append(run())
    return times


def _interleaved(steppers: dict[str, Any], rounds: int) -> dict[str, float]:
    """Median seconds of each stepper over `interleaved_runs`."""
    import statistics

    return {k: statistics.median(v) for k, v in interleaved_runs(steppers, rounds).items()}


def _weight_seconds(module: Any, read_gbs: float) -> float:
    import jax
    from flax import nnx

    leaves = jax.tree.leaves(nnx.state(module))
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in leaves) / (read_gbs * 1e9)


def _sparse(llama: Any) -> Any:
    """The tiny model with every FFN on the kernels, predictor-gated (what Model.sparse('predictor') builds)."""
    import jax.numpy as jnp
    from flax import nnx

    from pijax.model.predictor import Predictor
    from pijax.model.rows import Selector

    module = nnx.clone(llama)
    for block, p in zip(module.layers, _predictors(len(module.layers)), strict=True):
        pred = Predictor.from_rows(jnp.asarray(p.fc1), jnp.asarray(p.fc2))
        block.ffn.configure(Selector(mode="predictor"), "kernels", pred)
    return module


def _hybrid(llama: Any, placement: Any, hot: bool | None) -> Any:
    """The tiny model as a HybridEngine: every layer all hot (True), split half hot / half cold (False) or all
    cold (None)."""
    from pijax.engine.hybrid import build_hybrid
    from pijax.engine.hybrid_engine import HybridEngine
    from pijax.engine.setup import setup_engine

    cfg = llama.cfg
    n_hot = {True: cfg.n_ff, False: cfg.n_ff // 2, None: 0}[hot]
    kernels = setup_engine("auto", "cpu", "calibration host FFN") == "kernels"
    hybrid = build_hybrid(
        llama,
        [np.arange(n_hot)] * cfg.n_layer,
        placement,
        source="predictor",
        predictors=_predictors(cfg.n_layer),
        pred_threshold=0.0,
        hot_capacities=n_hot // 2 or None,  # capped, as pijax.layout.capacity always caps the engines' gathers
        cold_capacities=max((cfg.n_ff - n_hot) // 2, 1),
        hot_kernels=kernels and placement.platform == "cpu",
        cold_kernels=kernels,
    )
    return HybridEngine(hybrid, n_ctx=cfg.n_ctx)


def _count_step(engine: Any) -> tuple[int, int]:
    """(jitted calls, transfers) of one decode step of a HybridEngine, after the first (which also moves the
    caller's position and key once): calls through its `_run`, its "transfer" parts (whichever copy they use) and
    every other jax.device_put (the engine's and pijax.layout.devices.to_mesh's)."""
    import jax
    import jax.numpy as jnp

    from pijax.model.generate import SamplingConfig

    greedy, key = SamplingConfig(), jax.random.key(0)
    arr = np.arange(1, 9, dtype=np.int32)
    step = engine._warm(arr, 64, greedy, key)
    cur, _, cache = engine.prefill(arr, 64, greedy, key)
    cur, _, cache, pos = step(engine.leaves, cache, cur, jnp.asarray(arr.size, jnp.int32), key)
    counts = {"calls": 0, "puts": 0, "in_transfer": 0}
    run, put = engine._run, jax.device_put

    def counting_run(part: str, fn: Any, *args: Any) -> Any:
        if part != "transfer":
            counts["calls"] += 1
            return run(part, fn, *args)
        counts["puts"] += 1
        counts["in_transfer"] += 1
        try:
            return run(part, fn, *args)
        finally:
            counts["in_transfer"] -= 1

    def counting_put(*args: Any, **kwargs: Any) -> Any:
        counts["puts"] += counts["in_transfer"] == 0  # a transfer's own device_put is that transfer
        return put(*args, **kwargs)

    engine._run, jax.device_put = counting_run, counting_put
    try:
        jax.block_until_ready(step(engine.leaves, cache, cur, pos, key))
    finally:
        jax.device_put = put
        del engine._run
    return counts["calls"], counts["puts"]


def count_engine_calls(placement: Any, n_layer: int = 2) -> Any:
    """The hybrid engine's calls and device_puts per token and per split layer, counted on tiny engines with no
    split layer and with every layer split (`pijax.index.cost_model.EngineCalls`; overlap as the engine built)."""
    from pijax.index.cost_model import EngineCalls

    llama = _llama(n_layer, placement.host)
    hot_calls, hot_puts = _count_step(_hybrid(llama, placement, hot=True))
    split_calls, split_puts = _count_step(_hybrid(llama, placement, hot=False))
    return EngineCalls(
        calls_per_token=hot_calls,
        transfers_per_token=hot_puts,
        calls_per_split=(split_calls - hot_calls) // n_layer,
        transfers_per_split=(split_puts - hot_puts) // n_layer,
    )


def engine_steppers(placement: Any, size: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The seven timed tiny engines (name -> run(): seconds per step) and each one's module (for its bytes)."""
    import jax

    from pijax.model.generate import Engine

    n, steps = size["layers_engine"], size["engine_tokens"]
    one, many = _llama(1, placement.host), _llama(n, placement.host)
    sparse = _sparse(many)
    with jax.default_device(placement.host):  # the dense engines run where their weights are
        steppers = {"d1": _stepper(Engine(one), steps), "dn": _stepper(Engine(many), steps)}
        steppers["sn"] = _stepper(Engine(sparse), steps)
    steppers["h1"] = _stepper(_hybrid(one, placement, hot=True), steps)
    steppers["hn"] = _stepper(_hybrid(many, placement, hot=True), steps)
    steppers["split"] = _stepper(_hybrid(many, placement, hot=False), steps)
    steppers["cold"] = _stepper(_hybrid(many, placement, hot=None), steps)
    weights = {"d1": one, "dn": many, "sn": sparse, "h1": one, "hn": many, "split": many, "cold": many}
    return steppers, weights


def engine_terms(times: dict[str, float], weights: dict[str, Any], n: int, read_gbs: float) -> dict[str, float]:
    """The terms of the module docstring (microseconds, each floored at 0) from the steppers' median seconds."""
    t = {k: times[k] - _weight_seconds(weights[k], read_gbs) for k in weights}
    layer = max(t["dn"] - t["d1"], 0.0) / (n - 1)
    token = max(t["d1"] - layer, 0.0)
    hybrid_layer = max(t["hn"] - t["h1"], 0.0) / (n - 1)
    return {
        "token_us": token * 1e6,
        "layer_us": layer * 1e6,
        "sparse_layer_us": max(t["sn"] - token, 0.0) / n * 1e6,
        "hybrid_token_us": max(t["h1"] - hybrid_layer, 0.0) * 1e6,
        "hybrid_layer_us": hybrid_layer * 1e6,
        "handover_us": max(t["split"] - t["hn"], 0.0) / n * 1e6,
        "cold_split_us": max(t["cold"] - t["hn"], 0.0) / n * 1e6,
    }


def measure_engine_terms(placement: Any, size: dict[str, Any], read_gbs: float) -> dict[str, float]:
    """The engine terms of the module docstring, in microseconds (each floored at 0)."""
    steppers, weights = engine_steppers(placement, size)
    times = _interleaved(steppers, size["engine_repeats"])
    return engine_terms(times, weights, size["layers_engine"], read_gbs)
