"""Profiling: counts match the model's own activations, statistics files round-trip and refuse foreign models,
PowerInfer's numbered count files, threshold calibration, and task=profile end to end (a few hundred tokens)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import pijax
from pijax.corpus import load_corpus, token_windows
from pijax.errors import ConfigError, DataError
from pijax.run_config import RunConfig
from pijax.sparsity.config import ProfileConfig
from pijax.sparsity.profile import profile
from pijax.sparsity.stats import ActivationStats, load_powerinfer_counts
from pijax.sparsity.thresholds import calibrate_thresholds
from pijax.tasks import profile as profile_task

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def relu_model():
    return pijax.load_model(ffn_act="relu")


@pytest.fixture(scope="module")
def silu_model():
    return pijax.load_model()


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


@pytest.fixture(scope="module")
def windows(relu_model, corpus):
    return token_windows(relu_model.tokenizer, corpus.docs[:40], 32, max_tokens=32 * 7)  # 7 windows, 224 tokens


def test_relu_counts_match_the_models_activations(relu_model, windows):
    seen: list[int] = []
    stats = profile(relu_model, windows, batch_size=3, progress=False, on_batch=lambda tok, recs: seen.append(len(tok)))
    _, records = relu_model.module.trace(jnp.asarray(windows))
    acts = np.stack([np.asarray(r["act"]) for r in records])  # [L, N, T, F]
    np.testing.assert_array_equal(stats.counts, (acts != 0).sum(axis=(1, 2)))
    np.testing.assert_allclose(stats.abs_sum, np.abs(acts).sum(axis=(1, 2)), rtol=1e-4)
    assert stats.n_tokens == windows.size == 224
    assert seen == [3, 3, 1]  # the padded last batch hands over only its real rows
    per_token = (acts != 0).sum(-1).reshape(acts.shape[0], -1)
    for layer in range(stats.n_layer):
        np.testing.assert_array_equal(stats.active_hist[layer], np.bincount(per_token[layer], minlength=173))
    assert stats.model_fingerprint == relu_model.checkpoint.fingerprint
    assert 0.3 < stats.sparsity().mean() < 0.7  # ReLU without fine-tuning: about half the neurons are zero


def test_on_batch_gets_the_predictor_inputs_and_activations(relu_model, windows):
    got = []
    profile(relu_model, windows[:2], progress=False, on_batch=lambda tok, recs: got.append((tok, recs)))
    ((tok, recs),) = got
    assert len(recs) == 5
    assert recs[0]["ffn_in"].shape == (2, 32, 64) and recs[0]["act"].shape == (2, 32, 172)
    np.testing.assert_array_equal(tok, windows[:2])


def test_stats_save_load_and_refusals(tmp_path, relu_model, windows):
    stats = profile(relu_model, windows[:2], progress=False, corpus_sha256="abc")
    npz = stats.save(tmp_path / "stats")
    assert npz.name == "stats.npz" and (tmp_path / "stats.json").is_file()
    meta = json.loads((tmp_path / "stats.json").read_text())
    assert meta["model_fingerprint"] == relu_model.checkpoint.fingerprint
    assert meta["corpus_sha256"] == "abc" and meta["mode"] == "relu" and meta["n_tokens"] == 64
    back = ActivationStats.load(npz, relu_model.checkpoint.fingerprint, n_layer=5, n_ff=172)
    np.testing.assert_array_equal(back.counts, stats.counts)
    assert back.fingerprint == stats.fingerprint
    with pytest.raises(DataError, match=r"stats\.npz: statistics are from another model"):
        ActivationStats.load(npz, model_fingerprint="0123456789abcdef")
    with pytest.raises(DataError, match=r"stats\.npz: statistics have 5 layers, the model has 6"):
        ActivationStats.load(npz, n_layer=6)
    meta["n_tokens"] = 65
    (tmp_path / "stats.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="own fingerprint"):
        ActivationStats.load(npz)
    with pytest.raises(DataError, match="does not exist"):
        ActivationStats.load(tmp_path / "nothing.npz")


def test_powerinfer_export_is_numbered_numerically(tmp_path):
    counts = np.arange(12)[:, None] * np.ones((12, 8), np.int64)  # layer i counts are all i
    stats = ActivationStats(counts, counts.astype(float), 100, "relu", None, "m", "c")
    paths = stats.export_powerinfer(tmp_path)
    assert [p.name for p in paths] == [f"activation_{i}.npy" for i in range(12)]
    assert np.load(tmp_path / "activation_10.npy").tolist() == [10] * 8
    np.testing.assert_array_equal(load_powerinfer_counts(tmp_path), counts)  # 10 after 9, not after 1


def test_summaries_on_a_known_distribution():
    counts = np.array([[60, 20, 10, 10, 0], [10, 10, 10, 10, 10]])
    stats = ActivationStats(counts, counts.astype(float), 100, "relu", None, "m", "c")
    np.testing.assert_allclose(stats.sparsity(), [1 - 1.0 / 5, 1 - 0.5 / 5])
    # layer 0: the top 2 of 5 neurons hold 80 of 100 activations; layer 1: 4 of 5 are needed
    np.testing.assert_allclose(stats.coverage_share(0.8), [0.4, 0.8])


def test_threshold_calibration_hits_target_on_held_out_text(silu_model, corpus):
    train, held = corpus.split(0.1)
    tok = silu_model.tokenizer
    w_cal = token_windows(tok, train.docs, 64, max_tokens=64 * 6)
    w_held = token_windows(tok, held.docs, 64, max_tokens=64 * 4)
    thr = calibrate_thresholds(silu_model, w_cal, 0.5, batch_size=4, progress=False)
    assert thr.shape == (5,) and (thr > 0).all()
    on_cal = profile(silu_model, w_cal, mode="threshold", thresholds=thr, progress=False)
    np.testing.assert_allclose(on_cal.sparsity(), 0.5, atol=0.002)  # the quantile itself
    on_held = profile(silu_model, w_held, mode="threshold", thresholds=thr, progress=False)
    assert abs(on_held.sparsity().mean() - 0.5) < 0.02
    np.testing.assert_array_equal(on_held.thresholds, thr)


def test_mode_and_threshold_errors(silu_model, windows):
    with pytest.raises(ConfigError, match="use mode=threshold"):
        profile(silu_model, windows, mode="relu", progress=False)
    with pytest.raises(ConfigError, match="needs per-layer thresholds"):
        profile(silu_model, windows, mode="threshold", progress=False)
    with pytest.raises(DataError, match="thresholds are given for 3 layers, the model has 5"):
        profile(silu_model, windows, mode="threshold", thresholds=[0.1, 0.1, 0.1], progress=False)
    with pytest.raises(ConfigError, match="target sparsity"):
        calibrate_thresholds(silu_model, windows, 1.5)


def _small_corpus(tmp_path, corpus) -> Path:
    path = tmp_path / "small.txt"
    path.write_text("\n<|endoftext|>\n".join(corpus.docs[:12]), encoding="utf-8")
    return path


def test_task_profile_writes_stats_counts_table_and_plot(tmp_path, corpus, capsys):
    small = _small_corpus(tmp_path, corpus)
    cfg = RunConfig(
        task="profile",
        corpus=str(small),
        sparsity=ProfileConfig(seq_len=32, max_tokens=320, calibration_tokens=320, eval_tokens=128, held_out=0.2),
    )
    out = tmp_path / "run"
    mean_sparsity = profile_task.run(cfg, out)
    printed = capsys.readouterr().out
    assert "held_out_sparsity" in printed and "coverage80_share" in printed and "perplexity" in printed
    stats = ActivationStats.load(out / "activation_stats.npz", pijax.load_model().checkpoint.fingerprint)
    assert stats.mode == "threshold" and stats.n_tokens == 320  # auto: the SiLU model profiles by threshold
    assert abs(mean_sparsity - 0.5) < 0.05
    assert sorted(p.name for p in (out / "activation").iterdir()) == [f"activation_{i}.npy" for i in range(5)]
    assert (out / "profile.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "profile_report.json").read_text())
    assert report["corpus_sha256"] == load_corpus(small).sha256
    assert {"ppl_dense", "ppl_thresholded", "held_out_sparsity"} <= set(report)


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b" \n<|endoftext|>\n\n", "corpus is empty"), (b"Once upon a \xff\xfe time", "corpus is not UTF-8")],
)
def test_task_profile_rejects_bad_corpus(tmp_path, content, problem):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=f"^{bad}: {problem}"):
        profile_task.run(RunConfig(task="profile", corpus=str(bad)), tmp_path / "run")


def test_cli_bad_corpus_is_one_line_and_exit_code_2(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "pijax.run", "+experiment=profile", f"corpus={bad}", f"hydra.run.dir={tmp_path}/o"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1]
        == f"pijax: error: {bad}: corpus is not UTF-8 text (invalid byte at offset 3)"
    )
    assert "Traceback" not in proc.stderr
