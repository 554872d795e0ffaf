"""The real-model decode targets of `pijax.bench.decode --model` and the PowerInfer timing reader: the plumbing and
the arithmetic of the report (timings are never asserted: they are noise in CI)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pijax.bench import powerinfer
from pijax.bench.decode_real import REAL_TARGETS, RealBenchConfig, RealTarget, run_real, summarize
from pijax.errors import ConfigError, DataError

SAMPLES = Path(__file__).parent / "data" / "powerinfer"


@pytest.mark.parametrize("name", ["timings_llama_print_timings.txt", "timings_llama_perf_context_print.txt"])
def test_powerinfer_timings_are_read_from_the_milliseconds_and_counts(name: str) -> None:
    t = powerinfer.parse_timings((SAMPLES / name).read_text())
    assert t.prompt_tokens == 64 and t.decode_runs == 127
    if "print_timings" in name:
        assert t.decode_tok_s == pytest.approx(127 / 3.99671) and t.prefill_tok_s == pytest.approx(64 / 0.35463)
    else:
        assert t.decode_tok_s == pytest.approx(50.0) and t.prefill_tok_s == pytest.approx(533.333, rel=1e-5)


def test_output_without_a_timing_block_is_a_data_error() -> None:
    with pytest.raises(DataError, match="prompt eval time"):
        powerinfer.parse_timings("main: error: unable to load model\n")


def test_powerinfer_binary_is_run_greedy_with_the_bench_settings(tmp_path: Path) -> None:
    args = tmp_path / "args.txt"
    fake = tmp_path / "main"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {args}\ncat {SAMPLES / "timings_llama_print_timings.txt"} >&2\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    t = powerinfer.run_once(fake, tmp_path / "model.gguf", threads=2, n_new=128, extra=("--vram-budget", "0"))
    assert t.decode_runs == 127
    given = args.read_text().splitlines()
    assert given[given.index("-t") + 1] == "2" and given[given.index("-n") + 1] == "128"
    assert "--ignore-eos" in given and given[given.index("--temp") + 1] == "0" and given[-2:] == ["--vram-budget", "0"]
    with pytest.raises(DataError, match="not an executable"):
        powerinfer.run_once(tmp_path / "missing", tmp_path / "model.gguf", threads=2, n_new=8)


def _round(pijax: float, llama: float, probe: float) -> dict:
    return {
        "probe_GBps": probe,
        "pijax": {"decode_tok_s": pijax, "prefill_tok_s": 100.0},
        "llamacpp": {"decode_tok_s": llama, "prefill_tok_s": 200.0},
    }


def test_targets_are_met_on_the_median_round_with_the_worst_round_beside_it() -> None:
    rounds = [_round(50, 50, 30), _round(60, 50, 30), _round(40, 50, 30)]
    s = summarize(rounds, bytes_per_token=int(0.5e9), goal=1.0)
    assert s["ratio"]["median"] == pytest.approx(1.0) and s["ratio"]["min"] == pytest.approx(0.8) and s["met"]
    # The bound's bandwidth is the higher of the probe (30 GB/s) and llama.cpp's own rate (50 tok/s x 0.5 GB).
    assert s["bound_GBps"]["median"] == pytest.approx(30.0)
    assert s["share_of_bound"]["max"] == pytest.approx(60 * 0.5 / 30)
    # prefill: every round's pijax 100 tok/s against llama.cpp's 200, the same engine as the decode figures
    assert s["prefill_ratio"]["median"] == pytest.approx(0.5) and not s["prefill_met"]
    assert summarize(rounds, bytes_per_token=int(0.5e9), goal=1.0, prefill_goal=0.5)["prefill_met"]
    slow_probe = summarize([_round(50, 80, 10)], bytes_per_token=int(0.5e9), goal=1.0)
    assert slow_probe["bound_GBps"]["median"] == pytest.approx(40.0) and not slow_probe["met"]


def test_unknown_or_unrunnable_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="R9"):
        RealBenchConfig(targets=("R9",))
    assert REAL_TARGETS["R1"].pijax_dtype == "f32" and REAL_TARGETS["R3"].weights == "original"
    # A target whose pijax format does not exist is reported as not run, and no copy of the weights is made.
    monkeypatch.setitem(REAL_TARGETS, "RX", RealTarget("RX", "q2_k_copy", "q2_k", 1.0))
    res = run_real(RealBenchConfig(targets=("RX",), repeats=1), tmp_path)
    assert "not_run" in res["rows"]["RX"] and "q2_k" in res["rows"]["RX"]["not_run"]
    assert "| RX | not run |" in (tmp_path / "targets.md").read_text()


def test_synthetic_report_uses_the_fixed_format_and_powerinfer_at_equal_precision() -> None:
    from pijax.bench import decode_report

    def run(tok_s: float) -> dict:
        return {
            "decode_tok_s": {"median": tok_s, "min": tok_s, "max": tok_s},
            "prefill_tok_s": {"median": 1.0, "min": 1.0, "max": 1.0},
        }

    results = {
        "config": {"t3_format": "f16"},
        "llamacpp_f16": run(10.0),
        "pijax_sparse_f16": run(25.0) | {"selection": {"timed_selected_fraction": 0.1}},
        "pijax_sparse_int8": run(40.0),  # faster, but T3's format was fixed to f16 before the run
        "powerinfer_f16": run(20.0),
    }
    rows = {r["target"]: r for r in decode_report.targets(results)}
    assert rows["T3 vs llama.cpp f16"]["ratio"] == pytest.approx(2.5)
    assert rows["S3 vs PowerInfer f16"]["ratio"] == pytest.approx(1.25) and rows["S3 vs PowerInfer f16"]["met"]
    assert "SiLU" in decode_report.targets_markdown(results)  # llama.cpp runs the synthetic ReGLU weights as SiLU
