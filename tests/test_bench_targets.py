"""Issue 14's synthetic targets S1-S6 in `pijax.bench.decode`: each target's engine, format and reference fixed in
the config before the run, the report reading exactly those (median ratio, worst pairing beside it), and a
user-built PowerInfer main timed on PWRI copies it can run, its real output read (timings are never asserted)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pijax.bench import decode_report, powerinfer
from pijax.bench.decode_config import SYNTH_TARGETS, BenchConfig
from pijax.errors import ConfigError

REAL_SAMPLE = Path(__file__).parent / "data" / "powerinfer" / "powerinfer_d3ebd7c_tinyllama_f16.txt"
REAL_PROMPT_TOKENS, REAL_PROMPT_MS, REAL_DECODE_MS = 133, 34763.88, 95055.15


def test_real_powerinfer_output_is_read() -> None:
    # Captured from PowerInfer d3ebd7c's own main on the synthetic 1.1B (tests/data/powerinfer/README.md).
    t = powerinfer.parse_timings(REAL_SAMPLE.read_text())
    assert (t.prompt_tokens, t.decode_runs) == (REAL_PROMPT_TOKENS, 15)  # 16 new tokens: 15 decode steps
    assert t.prompt_ms == pytest.approx(REAL_PROMPT_MS) and t.decode_ms == pytest.approx(REAL_DECODE_MS)
    assert t.decode_tok_s == pytest.approx(1e3 * 15 / REAL_DECODE_MS)


def test_targets_fix_what_the_run_measures() -> None:
    cfg = BenchConfig(targets=tuple(SYNTH_TARGETS)).for_targets()
    assert cfg.parts == ("llamacpp", "dense", "sparse", "hybrid", "lowp")
    assert cfg.lowp_formats == ("f16", "q8_0", "q4_0") and cfg.llamacpp_formats == ("f32", "q8_0", "q4_0")
    assert cfg.powerinfer_formats == ("f16", "q4_0") and cfg.hybrid_budgets == ("ffn:50%",)
    assert cfg.for_targets() == cfg
    only_s3 = BenchConfig(targets=("S3",)).for_targets()
    assert only_s3.parts == ("lowp",) and only_s3.lowp_formats == ("f16",) and only_s3.llamacpp_formats == ()
    assert BenchConfig().for_targets() == BenchConfig()  # no targets: the T parts as before
    with pytest.raises(ConfigError, match="S7"):
        BenchConfig(targets=("S7",))
    with pytest.raises(ConfigError, match="q5_0"):
        BenchConfig(powerinfer_formats=("q5_0",))


def _run(tok_s: list[float]) -> dict:
    return {
        "decode_tok_s": {"median": sorted(tok_s)[len(tok_s) // 2], "min": min(tok_s), "max": max(tok_s)},
        "prefill_tok_s": {"median": 1.0, "min": 1.0, "max": 1.0},
    }


def test_report_reads_the_fixed_engines_and_shows_the_worst_pairing() -> None:
    results = {
        "config": {"targets": ["S3", "S4", "S5"], "powerinfer_bin": "/x/main"},
        "pijax_sparse_f16": _run([24.0, 25.0, 26.0]) | {"selection": {"timed_selected_fraction": 0.095}},
        "pijax_sparse_int8": _run([90.0]),  # faster, but no S target names it
        "powerinfer_f16": _run([19.0, 20.0, 22.0]),
        "pijax_sparse_q8_0": _run([30.0]),
        "llamacpp_q8_0": _run([10.0]),
        "pijax_sparse_q4_0": _run([40.0]),
        "powerinfer_q4_0": "PowerInfer exited with 1: unsupported type",
    }
    rows = decode_report.targets(results)
    assert [r["target"] for r in rows] == [
        "S3 vs powerinfer_f16",
        "S4 vs llamacpp_q8_0",
        "S5 vs llamacpp_q4_0",
        "S5 vs powerinfer_q4_0",
    ]
    s3 = rows[0]
    assert s3["ratio"] == pytest.approx(25 / 20) and s3["met"] and "9.5% selected" in s3["what"]
    assert s3["min"] == pytest.approx(24 / 22) and s3["max"] == pytest.approx(26 / 19)  # worst and best pairing
    assert rows[1]["ratio"] == pytest.approx(3.0) and rows[1]["met"]
    assert rows[2]["not_run"] == "llamacpp_q4_0 was not measured"
    assert rows[3]["not_run"] == "PowerInfer exited with 1: unsupported type"
    md = decode_report.targets_markdown(results)
    assert "| S3 vs powerinfer_f16 | 1.25 | 1.09 | 1.37 | >= 1.2 | yes |" in md
    assert "| S5 vs powerinfer_q4_0 | not run |" in md and "same ReLU function" in md
    no_bin = decode_report.targets({"config": {"targets": ["S3"]}, "pijax_sparse_f16": _run([1.0])})
    assert no_bin[0]["not_run"] == "no --powerinfer-bin given"


def test_powerinfer_targets_run_a_binary_on_pwri_copies_it_can_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pijax.bench.decode import run_bench
    from pijax.io.gguf import GGMLType, read_gguf

    monkeypatch.setenv("PIJAX_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "main"
    args = tmp_path / "args"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {args}\ncat {REAL_SAMPLE} >&2\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    cfg = BenchConfig(targets=("S3", "S5"), powerinfer_bin=str(fake)).for_targets().smoke()
    res = run_bench(cfg, tmp_path / "out")
    calls = args.read_text().splitlines()
    assert len(calls) == 2 * (cfg.repeats + 1)  # a warm-up, then the timed runs, per format
    for fmt, down_t in (("f16", GGMLType.F16), ("q4_0", GGMLType.Q4_0)):
        pi = res[f"powerinfer_{fmt}"]
        f = read_gguf(pi["file"])
        assert f.magic == "PWRI" and "blk.0.fc1.weight" in f.tensors and "blk.0.fc2.weight" in f.tensors
        assert f.ggml_type("blk.0.ffn_down_t.weight") == down_t
        assert pi["decode_tok_s"]["median"] == pytest.approx(1e3 * 15 / REAL_DECODE_MS)
        assert any(f"-m {pi['file']} " in c and "--repeat-penalty 1.0" in c for c in calls)
    assert res["pijax_sparse_q4_0"]["decode_tok_s"]["median"] > 0
    md = (tmp_path / "out" / "targets.md").read_text()
    assert "| S3 vs powerinfer_f16 | " in md and "| S5 vs powerinfer_q4_0 | " in md
    assert "| S5 vs llamacpp_q4_0 | not run |" in md  # the smoke run has no llama.cpp


def test_a_measured_model_is_freed_when_dropped() -> None:
    # The harness loads one multi-GB model after another: the counting engine's host callback (kept in jax's
    # compilation cache) must not hold the engine, and so the weights, of a model already dropped.
    import gc

    import jax

    from pijax.bench.decode_timing import measure_pijax
    from pijax.model.convert import load_llama

    tiny = Path(__file__).parent / "data" / "powerinfer_model_tiny" / "stories260K_relu.powerinfer.gguf"
    gc.collect()
    before = {id(a) for a in jax.live_arrays()}
    llama = load_llama(tiny, "f32", progress=False)
    weights = {id(a) for a in jax.tree.leaves(llama) if isinstance(a, jax.Array)}
    r = measure_pijax(llama, [1, 5, 9, 12], 3, 1, None, "tiny")
    assert r["timed_selected_per_layer"] is not None  # the counting engine ran
    del llama
    gc.collect()
    assert not weights & ({id(a) for a in jax.live_arrays()} - before)
