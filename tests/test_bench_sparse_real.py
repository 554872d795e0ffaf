"""The sparse real-model targets of `pijax.bench.decode --model smollm2-135m` (issue 13 part 6, issue 14 R4): fixed
before the run, bytes from the timed steps' own counts, and the held-out perplexity beside the speed. Timings are
never asserted (noise in CI); one tiny run on SmolLM2 checks the plumbing end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from pijax.bench import decode_real, sparse_real
from pijax.bench.decode_real import REAL_TARGETS, SPARSE_TARGETS, RealBenchConfig, expand_targets, sparse_bytes
from pijax.bench.sparse_real import SparseSpec
from pijax.errors import ConfigError


def test_sparse_targets_are_fixed_before_the_run() -> None:
    r4 = REAL_TARGETS["R4"]
    assert r4.sparse == SparseSpec("predictor", decode_real.R4_SPARSITY) and r4.weights == "original"
    assert r4.pijax_dtype == "native" and r4.goal == 1.15
    # Each sparse selector at f32, Q8_0 and Q4_1, against llama.cpp on the file of that precision.
    for spec in {REAL_TARGETS[n].sparse for n in SPARSE_TARGETS}:
        files = sorted(REAL_TARGETS[n].weights for n in SPARSE_TARGETS if REAL_TARGETS[n].sparse == spec)
        assert files == ["f32_copy", "original", "q8_0_copy"]
    assert expand_targets("dense,R4") == ("R1", "R2", "R3", "R4")
    assert set(expand_targets("all")) == set(REAL_TARGETS)
    with pytest.raises(ConfigError, match="criterion"):
        SparseSpec("threshold", 0.4)  # threshold targets are CATS
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        SparseSpec("predictor", 1.0)


def test_sparse_bytes_drop_only_the_skipped_rows() -> None:
    row = {"bytes_per_token": 10_000, "n_ff": 100, "skippable_row_bytes": [20, 30]}
    # layer 0 ran 60 of 100 neurons (40 skipped x 20 bytes), layer 1 all of them
    assert sparse_bytes(row, [60.0, 100.0]) == 10_000 - 40 * 20


def test_tiny_sparse_run_on_smollm2(smollm2_path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sparse_real, "CALIBRATION_TOKENS", 512)  # 4 windows of 128 from the training split
    monkeypatch.setattr(sparse_real, "_cache_file", lambda model, spec: tmp_path / f"cut-{spec.mode}.json")
    # This test is about the sparse side: llama.cpp pairing and the overhead split are the dense targets' code.
    monkeypatch.setattr(decode_real.llamacpp, "llamacpp_available", lambda: (False, "not in this test"))
    monkeypatch.setattr(decode_real, "per_token_overhead", lambda m, prompt: {"overhead_ms": 0.0})
    cfg = RealBenchConfig(targets=("C40q4",), repeats=1, n_prompt=4, n_new=6, fidelity_windows=1, probe_gb=0.05)
    res = decode_real.run_real(cfg, tmp_path / "out")
    row = res["rows"]["C40q4"]
    assert len(row["cutoffs"]) == 30 and (tmp_path / "cut-threshold.json").is_file()
    assert 0.15 < row["timed_sparsity"] < 0.65  # the kernel's own counts over the timed steps
    one = row["rounds"][0]
    assert one["pijax"]["steps_counted"] in (cfg.n_new - 1, cfg.n_new)
    assert row["bytes_per_token"] * 0.5 < one["pijax_bytes_per_token"] < row["bytes_per_token"]
    assert row["heldout_ppl"] > row["heldout_dense_ppl"] > 1.0 and row["heldout_windows"] == 1
    md = (tmp_path / "out" / "targets.md").read_text()
    assert "| C40q4 | CATS 40% |" in md
