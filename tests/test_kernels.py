"""pijax's CPU kernels: each C++ path against its pure-JAX reference, the fallback without the library, the models
built on them, and the decode benchmark's plumbing (never its timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import pijax
from pijax.bench import decode_report, llamacpp
from pijax.io.gguf import read_gguf
from pijax.kernels import build, formats, ops
from pijax.model.convert import load_llama, use_kernels
from pijax.model.ffn import FFN
from pijax.model.generate import Engine, SamplingConfig
from pijax.model.sparse_ffn import sparsify
from pijax.paths import STORIES260K

TINY_PWRI = Path(__file__).parent / "data" / "powerinfer_model_tiny" / "stories260K_relu.powerinfer.gguf"
GREEDY = SamplingConfig()
needs_kernels = pytest.mark.skipif(not build.available(), reason=f"no CPU kernels: {build.status()}")


def _rand(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32) * scale)


def _close(a: jax.Array, b: jax.Array, rel: float = 2e-5) -> None:
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, atol=rel * max(1.0, float(np.abs(b).max())), rtol=0)


@needs_kernels
@pytest.mark.parametrize("fmt", formats.WEIGHT_FORMATS)
@pytest.mark.parametrize(("m", "d", "n"), [(1, 64, 172), (3, 100, 37), (1, 2048, 300)])
def test_linear_kernel_matches_the_reference(fmt: str, m: int, d: int, n: int) -> None:
    x, w = _rand((m, d), 0), formats.to_format(_rand((n, d), 1, 0.05), fmt)
    _close(ops.linear(x, w, use_kernel=True, f32_kernel=True), ops.linear(x, w, use_kernel=False))


@needs_kernels
@pytest.mark.parametrize("fmt", ["f32", "f16", "int8"])
@pytest.mark.parametrize("kind", ["relu", "silu", "drelu"])
@pytest.mark.parametrize("gated", [True, False])
def test_sparse_ffn_kernel_matches_the_reference(fmt: str, kind: str, gated: bool) -> None:
    m, d, f = 3, 72, 200  # d not a multiple of 16: the kernels' tails run too
    x, logits = _rand((m, d), 2), _rand((m, f), 3)
    up, gate, down = (formats.to_format(_rand((f, d), s, 0.1), fmt) for s in (4, 5, 6))
    gate = gate if gated else None
    for cap in (f, 7):  # 7 binds: only the top-scoring selected neurons count
        ref, n_ref = ops.sparse_ffn_reference(x, logits, up, gate, down, kind=kind, threshold=0.3, capacity=cap)
        for skip in (True, False):
            y, n = ops.sparse_ffn(
                x, logits, up, gate, down, kind=kind, threshold=0.3, capacity=cap, skip_inactive=skip, use_kernel=True
            )
            np.testing.assert_array_equal(n, n_ref)
            _close(y, ref)
    y, n = ops.sparse_ffn(x, None, up, gate, down, kind=kind, use_kernel=True)
    ref, _ = ops.sparse_ffn_reference(x, None, up, gate, down, kind=kind)
    assert (np.asarray(n) == f).all()
    _close(y, ref)


def test_quant_rows_round_trip_and_behave_as_a_param() -> None:
    w = _rand((40, 64), 7)
    q = formats.quantize_rows(w)
    assert q.q.dtype == jnp.int8 and q.scale.shape == (40,) and q[...] is q
    assert q.nbytes == 40 * 64 + 40 * 4 and formats.row_bytes(q) == 64 + 4
    err = np.abs(np.asarray(q.dequantize() - w))
    assert (err <= np.asarray(q.scale)[:, None] / 2 + 1e-6).all()
    holder = nnx.Dict(w=nnx.Param(q))
    gd, st = nnx.split(holder)
    y = jax.jit(lambda s, x: ops.linear(x, nnx.merge(gd, s)["w"][...], use_kernel=False))(st, _rand((1, 64), 8))
    _close(y, _rand((1, 64), 8) @ q.dequantize().T)
    assert formats.format_of(formats.to_format(w, "bf16")) == "bf16"
    with pytest.raises(pijax.errors.ConfigError):
        formats.to_format(w, "int4")


@needs_kernels
def test_kernel_model_decodes_like_the_pijax_model() -> None:
    model = pijax.load_model(STORIES260K)
    ids = model.tokenizer.encode("Once upon a time, there was a little girl", bos=True)
    want = model.engine.generate(ids, 16, GREEDY).new_ids
    ref = _teacher_forced(model.engine, ids, 3)
    for fmt, tol in (("f32", 1e-4), ("f16", 0.05), ("int8", 0.6)):
        llama = load_llama(STORIES260K, fmt, progress=False)
        ffn = llama.layers[0].ffn
        assert isinstance(ffn, FFN) and ffn.backend == "kernels" and ffn.selector.mode == "dense"
        eng = Engine(llama)
        if fmt == "f32":
            assert eng.generate(ids, 16, GREEDY).new_ids == want
        np.testing.assert_allclose(_teacher_forced(eng, ids, 3), ref, atol=tol, rtol=0)


def _teacher_forced(engine: Engine, ids: list[int], steps: int = 6) -> np.ndarray:
    key = jax.random.key(0)
    _, logits, cache = engine.prefill(ids, 64, GREEDY, key)
    out = [np.asarray(logits)]
    for i in range(steps):
        _, logits, cache = engine.decode_step(cache, jnp.asarray([ids[1 + i]], jnp.int32), len(ids) + i, GREEDY, key)
        out.append(np.asarray(logits))
    return np.concatenate(out)


@needs_kernels
@pytest.mark.parametrize("capacity", [None, 12])
def test_kernel_ffn_equals_the_predictor_sparse_ffn(capacity: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    model = pijax.load_model(TINY_PWRI)
    ids = model.tokenizer.encode("Once upon a time, there was a girl", bos=True)
    n_ff, n_layer = model.config.n_ff, model.config.n_layer
    caps = [capacity or n_ff] * n_layer
    sparsify(model, mode="predictor", capacities=caps)
    want = _teacher_forced(model.engine, ids)
    got = _teacher_forced(Engine(load_llama(TINY_PWRI, "f32", capacities=caps, progress=False)), ids)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    if capacity is None:
        return
    use_kernels(model, "int8")  # in place: the predictor, threshold and capacity carry over
    ffn = model.module.layers[0].ffn
    assert ffn.backend == "kernels" and ffn.selector.mode == "predictor" and ffn.selector.capacity == caps[0]
    assert isinstance(ffn.w_up_fd[...], formats.QuantRows)
    assert isinstance(ffn.predictor.fc1_rd[...], formats.QuantRows)
    assert isinstance(model.module.layers[0].attn.w_q_nd[...], formats.QuantRows)
    with_kernels = _teacher_forced(model.engine, ids)
    monkeypatch.setattr(build, "available", lambda: False)  # the same int8 model on the pure-JAX path
    model.refresh()
    np.testing.assert_allclose(_teacher_forced(model.engine, ids), with_kernels, atol=1e-3, rtol=0)


def test_fallback_without_the_library_gives_the_kernel_results(tmp_path: Path) -> None:
    code = (
        "import json; from pijax.kernels import build; from pijax.model.convert import load_llama;"
        "from pijax.model.generate import Engine, SamplingConfig; from pijax.paths import STORIES260K;"
        "e = Engine(load_llama(STORIES260K, 'f16', progress=False));"
        "print(json.dumps([build.available(), e.generate([1, 403, 407], 12, SamplingConfig()).new_ids]))"
    )
    env = dict(os.environ, PIJAX_NO_KERNELS="1", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    available, ids = json.loads(out.stdout.strip().splitlines()[-1])
    assert available is False
    llama = load_llama(STORIES260K, "f16", progress=False)
    assert ids == Engine(llama).generate([1, 403, 407], 12, GREEDY).new_ids


def test_hugepages_leave_values_unchanged() -> None:
    w = _rand((1024, 2048), 9)  # 8 MB
    before = np.asarray(w).copy()
    advised = build.use_hugepages({"w": w})
    assert advised in (0, w.nbytes)
    np.testing.assert_array_equal(np.asarray(w), before)


def test_plain_gguf_is_what_llamacpp_loads_with_the_same_weights(tmp_path: Path) -> None:
    plain = llamacpp.plain_gguf(TINY_PWRI, tmp_path / "plain.gguf", "f32")
    src, dst = read_gguf(TINY_PWRI), read_gguf(plain)
    assert dst.magic == "GGUF" and not any(".fc1." in n or "down_t" in n for n in dst.tensors)
    np.testing.assert_array_equal(dst.array("blk.1.ffn_down.weight"), src.array("blk.1.ffn_down_t.weight").T)
    assert dst.metadata["pijax.ffn_activation"] == "relu"
    a = Engine(load_llama(plain, "f32", progress=False)).logits([1, 5, 9])
    b = Engine(load_llama(TINY_PWRI, "f32", use_predictors=False, progress=False)).logits([1, 5, 9])
    np.testing.assert_array_equal(a, b)
    half = llamacpp.plain_gguf(TINY_PWRI, tmp_path / "half.gguf", "f16")
    assert read_gguf(half).raw("blk.0.attn_q.weight").dtype == np.float16
    assert read_gguf(half).raw("blk.0.attn_norm.weight").dtype == np.float32


@pytest.mark.skipif(not llamacpp.llamacpp_available()[0], reason="llama-cpp-python not installed")
def test_llamacpp_reference_runs_on_the_plain_file(tmp_path: Path) -> None:
    plain = llamacpp.plain_gguf(TINY_PWRI, tmp_path / "plain.gguf", "f32")
    res = llamacpp.measure(plain, n_threads=1, n_prompt=4, n_new=3, repeats=1)
    assert (
        len(res.decode_tok_s) >= 1
        and len(res.prefill_tok_s) == len(res.decode_tok_s)
        and res.decode_tok_s[0] > 0
        and res.prefill_tok_s[0] > 0
    )


def test_targets_table_ratios_and_missing_reference() -> None:
    runs = {
        "llamacpp_f32": {
            "decode_tok_s": {"median": 7.0, "min": 6.0, "max": 8.0},
            "prefill_tok_s": {"median": 50.0, "min": 40.0, "max": 60.0},
        },
        "pijax_dense_f32_xla": {
            "decode_tok_s": {"median": 7.7, "min": 7.0, "max": 8.4},
            "prefill_tok_s": {"median": 30.0, "min": 30.0, "max": 30.0},
        },
        "pijax_dense_f32_kernel": {  # faster, but not the engine the config fixed for T1: never picked
            "decode_tok_s": {"median": 9.0, "min": 9.0, "max": 9.0},
            "prefill_tok_s": {"median": 90.0, "min": 90.0, "max": 90.0},
        },
        "config": {"t1_engine": "pijax_dense_f32_xla"},
        "pijax_sparse_f32": {
            "decode_tok_s": {"median": 14.0, "min": 12.0, "max": 16.0},
            "prefill_tok_s": {"median": 1.0, "min": 1.0, "max": 1.0},
            "share_of_bound_bound": {"median": 0.8, "min": 0.7, "max": 0.9},
            "share_of_touched_bound": {"median": 0.75},
            "bound_bytes": 1.5e9,
            "touched_bytes": 1.4e9,
            "selection": {"selected_fraction": 0.11},
        },
    }
    rows = {r["target"]: r for r in decode_report.targets(runs)}
    assert rows["T1 decode"]["ratio"] == pytest.approx(1.1) and rows["T1 decode"]["met"]
    assert rows["T1 decode"]["what"] == "pijax_dense_f32_xla"
    assert rows["T1 decode"]["min"] == pytest.approx(7.0 / 8.0) and rows["T1 decode"]["max"] == pytest.approx(1.4)
    assert rows["T1 prefill"]["ratio"] == pytest.approx(0.6) and not rows["T1 prefill"]["met"]
    assert rows["T2 vs llama.cpp f32"]["ratio"] == pytest.approx(2.0) and not rows["T2 vs llama.cpp f32"]["met"]
    assert rows["T2 share of bound"]["met"]
    del runs["llamacpp_f32"]
    runs["llamacpp_missing"] = llamacpp.INSTALL_HINT
    md = decode_report.targets_markdown(runs)
    assert "T1 decode" not in md and "llama-cpp-python is not installed" in md


def test_bench_smoke_reports_speed_bounds_and_selection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pijax.bench.decode import run_bench
    from pijax.bench.decode_config import BenchConfig

    monkeypatch.setenv("PIJAX_CACHE", str(tmp_path / "cache"))
    cfg = BenchConfig(parts=("sparse",)).smoke()
    res = run_bench(cfg, tmp_path / "out")
    sp = res["pijax_sparse_f32"]
    assert sp["decode_tok_s"]["median"] > 0 and cfg.repeats <= len(sp["decode_runs"]) <= 3 * cfg.repeats
    assert 0 < sp["selection"]["selected_fraction"] < 0.5
    assert sp["touched_bytes"] <= sp["bound_bytes"] < sp["weight_bytes"]["ffn_dense"] + sp["bound_bytes"]
    assert res["synthetic"] is True and (tmp_path / "out" / "decode.csv").is_file()
    assert "T2 share of bound" in (tmp_path / "out" / "targets.md").read_text()


def test_load_llama_checks_the_predictors_fingerprint_as_load_predictors_does() -> None:
    from pijax.errors import DataError
    from pijax.io.checkpoint import load_checkpoint
    from pijax.io.fingerprint import fingerprint_arrays, gguf_arrays, weights_fingerprint
    from pijax.paths import ASSETS

    preds = ASSETS / "stories260K_relu_predictors.gguf"
    relu = ASSETS / "stories260K_relu.gguf"
    # the file-side fingerprint (tensor by tensor) is the loaded model's, for a plain and a PowerInfer-style file
    for path in (relu, preds):
        ckpt = load_checkpoint(path)
        cfg = ckpt.config
        assert fingerprint_arrays(gguf_arrays(ckpt.gguf, cfg.n_layer, cfg.tied_output)) == weights_fingerprint(
            ckpt.weights
        )
    llama = load_llama(relu, predictors_from=preds, progress=False)
    assert llama.layers[0].ffn.backend == "kernels" and llama.layers[0].ffn.selector.mode == "predictor"
    with pytest.raises(DataError, match="trained for another model"):
        load_llama(STORIES260K, predictors_from=preds, progress=False)


@pytest.mark.skipif("avx2" not in build._cpu_flags(), reason="this CPU has no AVX2 to run the AVX2 build on")
def test_avx2_build_computes_what_the_reference_does(tmp_path: Path) -> None:
    """The AVX2+FMA code (x86 without AVX-512), built here with -march=haswell, in a process of its own."""
    code = (
        "import json, numpy as np, jax.numpy as jnp\n"
        "from pijax.kernels import build, ops, formats\n"
        "r = np.random.default_rng(0); f = lambda *s: jnp.asarray(r.normal(size=s).astype(np.float32))\n"
        "x, lg, up, gate, down = f(3, 200), f(3, 96), f(96, 200), f(96, 200), f(96, 200)\n"
        "out = []\n"
        "for fmt in ('f32', 'f16', 'bf16', 'int8'):\n"
        "    u, g, d = (formats.to_format(w, fmt) for w in (up, gate, down))\n"
        "    a = ops.sparse_ffn(x, lg, u, g, d, kind='relu', threshold=0.2, capacity=40, use_kernel=True)[0]\n"
        "    b = ops.sparse_ffn(x, lg, u, g, d, kind='relu', threshold=0.2, capacity=40, use_kernel=False)[0]\n"
        "    c, e = ops.linear(x, u, use_kernel=True, f32_kernel=True), ops.linear(x, u, use_kernel=False)\n"
        "    rel = lambda p, q: float(jnp.abs(p - q).max() / jnp.abs(q).max())\n"
        "    out.append(max(rel(a, b), rel(c, e)))\n"
        "    p = f(13, 200)  # a prompt: the multi-token tiles and the down_t column kernel\n"
        "    c, e = ops.linear(p, u, use_kernel=True, f32_kernel=True), ops.linear(p, u, use_kernel=False)\n"
        "    if fmt != 'f32':\n"
        "        a = ops.sparse_ffn(p, None, u, g, d, kind='silu', use_kernel=True)[0]\n"
        "        b = ops.sparse_ffn(p, None, u, g, d, kind='silu', use_kernel=False)[0]\n"
        "        out.append(rel(a, b))\n"
        "    out.append(rel(c, e))\n"
        "print(json.dumps([build.isa(), out]))\n"
    )
    env = dict(os.environ, PIJAX_KERNEL_MARCH="haswell", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    isa, diffs = json.loads(out.stdout.strip().splitlines()[-1])
    assert isa == "avx2"
    assert max(diffs) < 1e-5  # relative to the largest output: rounding only


@needs_kernels
def test_f32_model_decodes_through_the_kernels_as_through_xla() -> None:
    """load_model's f32 model: with the f32 kernel route on (as on a single CPU device) its decode step runs the
    dense FFN and the matrices on the kernels, and gives XLA's tokens and logits."""
    model = pijax.load_model(STORIES260K)
    ids = model.tokenizer.encode("Once upon a time, there was a little girl", bos=True)
    old = ops.set_f32_kernel(False)
    try:
        xla = Engine(model.module)
        want, ref = xla.generate(ids, 16, GREEDY).new_ids, _teacher_forced(xla, ids, 3)
        ops.set_f32_kernel(True)
        kern = Engine(model.module)
        step = kern._warm(np.asarray(ids, np.int32), 64, GREEDY, jax.random.key(0))
        hlo = step.as_text()
        assert all(f'"{t}"' in hlo for t in ("pijax_sparse_ffn", "pijax_rows_dot3", "pijax_rows_dot"))
        assert kern.generate(ids, 16, GREEDY).new_ids == want
        np.testing.assert_allclose(_teacher_forced(kern, ids, 3), ref, atol=1e-4, rtol=0)
    finally:
        ops.set_f32_kernel(old)


@needs_kernels
@pytest.mark.parametrize("fmt", ["f32", "f16", "bf16"])
def test_three_products_in_one_call_equal_three_calls(fmt: str) -> None:
    x = _rand((2, 100), 0)
    ws = [formats.to_format(_rand((n, 100), i + 1), fmt) for i, n in enumerate((96, 40, 17))]
    old = ops.set_f32_kernel(True)
    try:
        fused = jax.jit(lambda x, a, b, c: ops.linear3(x, a, b, c))
        assert "pijax_rows_dot3" in fused.lower(x, *ws).as_text()
        got = fused(x, *ws)
        for y, w in zip(got, ws, strict=True):
            np.testing.assert_array_equal(np.asarray(y), np.asarray(jax.jit(ops.linear)(x, w)))
    finally:
        ops.set_f32_kernel(old)


@needs_kernels
def test_a_one_device_program_takes_the_f32_kernel_beside_other_devices() -> None:
    """The default f32 rule follows where the program runs, not how many devices jax sees: the single-device
    engine's step (the tests see 8 virtual devices) runs its large f32 products on the kernel, as it does when
    jax sees one device; a program not declared one-device keeps XLA's dot."""
    assert jax.device_count() > 1 and ops.set_f32_kernel(None) is None
    x, w = _rand((1, 512), 0), _rand((ops.F32_KERNEL_MIN_ELEMENTS // 512, 512), 1)
    assert "pijax_rows_dot" not in jax.jit(lambda x, w: ops.linear(x, w)).lower(x, w).as_text()
    with ops.one_device(True):
        assert "pijax_rows_dot" in jax.jit(lambda x, w: ops.linear(x, w)).lower(x, w).as_text()
    model = pijax.load_model(STORIES260K)
    assert Engine(model.module)._one_device() is True
