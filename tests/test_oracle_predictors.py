"""Oracle predictors on the real SmolLM2-135M: a tiny training run through the whole pipeline (and its resume),
the file's fingerprint check, `m.sparse(mode="predictor", sparsity=s)` hitting s on its calibration windows and
running what the evaluator measures, `dense_positions` keeping the first position dense (XLA and kernels), the
shipped predictors beating a random predictor on held-out text, and
`criterion=` passed through `m.sparse(mode="threshold")`.

SmolLM2 is loaded once for the module; windows are short (32-64 tokens) and few.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import pijax
from pijax.corpus import load_corpus
from pijax.engine.pipeline import profile_windows
from pijax.errors import ConfigError, DataError, PijaxError, TensorError
from pijax.io.weights import PredictorWeights
from pijax.paths import SMOLLM2_PREDICTORS, STORIES260K
from pijax.sparsity.criteria import masked_forward
from pijax.sparsity.oracle_predictors import (
    OraclePredictorConfig,
    OraclePredictors,
    calibrate_logit_thresholds,
    load_oracle_predictors,
    save_oracle_predictors,
    train_oracle_predictors,
)
from pijax.sparsity.predictor_config import PredictorTrainConfig
from pijax.sparsity.predictor_eval import PredictorEvaluator, predictor_masked_forward
from pijax.sparsity.predictor_store import find_predictors
from pijax.sparsity.thresholds import calibration_scores, thresholds_from_scores

SEQ = 64
CAL = {"calibration_tokens": 4 * SEQ, "seq_len": SEQ}


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return pijax.load_model(smollm2_path)


@pytest.fixture(scope="module")
def shipped(smollm2):
    return load_oracle_predictors(SMOLLM2_PREDICTORS, smollm2)


def _one_line(e: PijaxError) -> str:
    msg = str(e)
    assert "\n" not in msg
    return msg


TINY = OraclePredictorConfig(
    tokens=512,
    seq_len=32,
    layers=(0, 29),
    pool_tokens=4096,
    train=PredictorTrainConfig(ranks=(4, 8), target_recall=0.8, recall_margin=0.0, min_precision=0.99,
                               max_epochs=2, patience=2, batch_size=64, val_fraction=0.1, max_tokens=None),
)  # fmt: skip


def test_tiny_training_run_learns_saves_and_resumes(smollm2, tmp_path):
    preds = train_oracle_predictors(smollm2, TINY, tmp_path / "work", progress=False)
    assert len(preds.weights) == 2 and preds.model_fingerprint
    # the adaptive rank: no rank meets precision 0.99, so both were tried and the better kept
    for info in preds.meta["layer_info"]:
        assert [t["rank"] for t in info["tried"]] == [4, 8] and not info["met_target"]
        assert info["label_threshold"] > 0
    # position 0 is dropped: 16 windows x 31 tokens of pairs
    assert preds.meta["train_tokens"] == 16 * 31
    # a rerun resumes: every layer is read back, nothing is retrained
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "work").glob("layer_*.npz")}
    again = train_oracle_predictors(smollm2, TINY, tmp_path / "work", progress=False)
    assert stamp == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "work").glob("layer_*.npz")}
    for a, b in zip(preds.weights, again.weights, strict=True):
        np.testing.assert_array_equal(a.fc1, b.fc1)
    # the file round trip (float16) keeps the decisions' inputs to f16 precision
    path = save_oracle_predictors(tmp_path / "p.gguf", preds)
    back = load_oracle_predictors(path)
    assert back.ranks == preds.ranks and back.model_fingerprint == preds.model_fingerprint
    np.testing.assert_allclose(back.weights[1].fc2, preds.weights[1].fc2, rtol=1e-3, atol=1e-3)


def test_predictors_file_for_another_model_is_refused(smollm2, shipped, tmp_path):
    other = dataclasses.replace(shipped, model_fingerprint="0123456789abcdef")
    path = save_oracle_predictors(tmp_path / "other.gguf", other)
    with pytest.raises(DataError) as e:
        load_oracle_predictors(path, smollm2)
    assert "another model" in _one_line(e.value) and "other.gguf" in str(e.value)
    with pytest.raises(TensorError) as e:  # a model file is not a predictors file
        load_oracle_predictors(STORIES260K)
    assert "not a pijax predictors file" in _one_line(e.value)
    short = OraclePredictors(shipped.weights[:2], shipped.ranks[:2], [], shipped.model_fingerprint)
    with pytest.raises(DataError) as e:
        load_oracle_predictors(save_oracle_predictors(tmp_path / "short.gguf", short), smollm2)
    assert "2 layers" in _one_line(e.value)


def test_shipped_predictors_are_found_and_within_the_byte_budget(smollm2, shipped):
    assert find_predictors(smollm2) == SMOLLM2_PREDICTORS
    cfg = smollm2.config
    ffn_weights = 3 * cfg.n_embd * cfg.n_ff
    for w in shipped.weights:  # f16 predictor vs the f16 FFN it gates: <= 10% per layer
        assert w.fc1.size + w.fc2.size <= 0.10 * ffn_weights


@pytest.fixture(scope="module")
def sparse40(smollm2):
    return smollm2.sparse(mode="predictor", sparsity=0.4, backend="xla", **CAL)


def test_sparse_predictor_mode_hits_the_sparsity_on_its_calibration_windows(smollm2, shipped, sparse40):
    thr = sparse40.setup.act_thresholds
    assert thr.shape == (smollm2.config.n_layer,)
    cal = profile_windows(smollm2, None, SEQ, CAL["calibration_tokens"])
    ev = PredictorEvaluator(smollm2, cal, shipped.weights)
    res = ev.evaluate_predictors(thr)
    assert abs(res.sparsity - 0.4) <= 0.01 and np.all(np.abs(res.layer_sparsity - 0.4) <= 0.02)
    # the sparse model computes exactly what the evaluator measures (the one FFN module vs the masked forward)
    tok = jnp.asarray(cal[:1])
    params = [{"fc1": jnp.asarray(w.fc1), "fc2": jnp.asarray(w.fc2)} for w in shipped.weights]
    ref, _ = predictor_masked_forward(smollm2.module, tok, params, jnp.asarray(thr), jnp.full(len(thr), jnp.inf))
    np.testing.assert_allclose(np.asarray(sparse40.module(tok)), np.asarray(ref), rtol=2e-3, atol=2e-3)


def test_dense_positions_keep_the_attention_sink_dense_on_both_backends(smollm2, shipped, sparse40):
    sm = smollm2.sparse(mode="predictor", sparsity=0.4, backend="xla", dense_positions=1, **CAL)
    thr = sm.setup.act_thresholds
    cal = profile_windows(smollm2, None, SEQ, CAL["calibration_tokens"])
    # calibrated with position 0 dense: the sparsity over ALL positions is still the target
    res = PredictorEvaluator(smollm2, cal, shipped.weights).evaluate_predictors(thr, dense_positions=1)
    assert abs(res.sparsity - 0.4) <= 0.01
    assert np.all(res.layer_sparsity <= 0.4 * SEQ / (SEQ - 1) + 0.02)
    tok = jnp.asarray(cal[:1])
    dense, got = np.asarray(smollm2.module(tok)), np.asarray(sm.module(tok))
    # position 0 runs every row in every layer, so its logits are the dense model's; later positions are gated
    np.testing.assert_allclose(got[:, 0], dense[:, 0], rtol=1e-4, atol=1e-4)
    assert np.abs(got[:, 1:] - dense[:, 1:]).max() > 0.1
    assert np.abs(np.asarray(sparse40.module(tok))[:, 0] - dense[:, 0]).max() > 0.1  # without the option it is not
    params = [{"fc1": jnp.asarray(w.fc1), "fc2": jnp.asarray(w.fc2)} for w in shipped.weights]
    ref, _ = predictor_masked_forward(
        smollm2.module, tok, params, jnp.asarray(thr), jnp.full(len(thr), jnp.inf), dense_positions=1
    )
    np.testing.assert_allclose(got, np.asarray(ref), rtol=2e-3, atol=2e-3)
    # per FFN, on the same inputs: positions are absolute (a chunk starting at 5 has no dense position), and the
    # C++ kernels run the same selection as XLA
    sk = smollm2.sparse(mode="predictor", pred_threshold=list(thr), backend="kernels", dense_positions=1)
    assert sk.setup.backend == "kernels"
    _, records = smollm2.module.trace(tok[:, :4])
    for i in (0, 15):
        h = records[i]["ffn_in"]
        hn = smollm2.module.layers[i].ffn_norm(h)
        full = np.asarray(smollm2.module.layers[i].ffn(hn, h, 0))
        at0, at5 = (np.asarray(sm.module.layers[i].ffn(hn, h, p)) for p in (0, 5))
        np.testing.assert_allclose(at0[:, 0], full[:, 0], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(at0[:, 1:], at5[:, 1:])
        assert np.abs(at5[:, 0] - full[:, 0]).max() > 1e-3
        for p, want in ((0, at0), (5, at5)):
            np.testing.assert_allclose(np.asarray(sk.module.layers[i].ffn(hn, h, p)), want, rtol=2e-3, atol=2e-3)


def test_shipped_predictors_beat_a_random_predictor_on_held_out_text(smollm2, shipped):
    train, held = load_corpus().split(0.1)
    cal = train.windows(smollm2.tokenizer, SEQ, 4 * SEQ)
    win = held.windows(smollm2.tokenizer, SEQ, 4 * SEQ)
    oracle = thresholds_from_scores(calibration_scores(smollm2, cal, "oracle", progress=False), 0.4)
    ev = PredictorEvaluator(smollm2, win, shipped.weights)
    trained = ev.evaluate_predictors(calibrate_logit_thresholds(smollm2, shipped.weights, cal, 0.4), oracle)
    rng = np.random.default_rng(0)
    rand_w = [PredictorWeights(rng.standard_normal(w.fc1.shape).astype(np.float32) / np.sqrt(w.fc1.shape[1]),
                               rng.standard_normal(w.fc2.shape).astype(np.float32)) for w in shipped.weights]  # fmt: skip
    ev.params = [{"fc1": jnp.asarray(w.fc1), "fc2": jnp.asarray(w.fc2)} for w in rand_w]  # same shapes: no recompile
    rand = ev.evaluate_predictors(calibrate_logit_thresholds(smollm2, rand_w, cal, 0.4), oracle)
    rec_t = np.mean([m.recall for m in trained.metrics])
    rec_r = np.mean([m.recall for m in rand.metrics])
    # figures from experiments/predictors_smollm2 (48 windows of 128: recall ~0.7 at 40%), minus noise
    assert rec_t >= 0.66 and rec_t >= rec_r + 0.05, (rec_t, rec_r)
    assert trained.ppl < rand.ppl and trained.top1 > rand.top1


@pytest.mark.parametrize("criterion", ["cats", "teal"])
def test_sparse_threshold_mode_passes_the_criterion(smollm2, criterion):
    sm = smollm2.sparse(mode="threshold", sparsity=0.5, criterion=criterion, **CAL)
    cal = profile_windows(smollm2, None, SEQ, CAL["calibration_tokens"])
    from pijax.sparsity.thresholds import calibrate_thresholds

    thr = calibrate_thresholds(smollm2, cal, 0.5, criterion=criterion, progress=False)
    np.testing.assert_allclose(sm.setup.act_thresholds, thr, rtol=1e-6)
    tok = jnp.asarray(cal[:1])
    ref, skipped = masked_forward(smollm2.module, tok, criterion, jnp.asarray(thr))
    np.testing.assert_allclose(np.asarray(sm.module(tok)), np.asarray(ref), rtol=2e-3, atol=2e-3)
    assert 0.4 < float(skipped.mean()) < 0.6


def test_bad_sparse_options_are_one_line(smollm2):
    with pytest.raises(ConfigError) as e:
        smollm2.sparse(mode="predictor", sparsity=1.0)
    assert "[0, 1)" in _one_line(e.value)
    with pytest.raises(ConfigError) as e:
        smollm2.sparse(mode="threshold", criterion="bogus")
    assert "bogus" in _one_line(e.value)
    with pytest.raises(ConfigError) as e:
        smollm2.sparse(mode="predictor", criterion="cats")
    assert "mode='threshold'" in _one_line(e.value)
    with pytest.raises(ConfigError) as e:
        smollm2.sparse(mode="threshold", dense_positions=1)
    assert "dense_positions applies to mode 'predictor'" in _one_line(e.value)
    with pytest.raises(ConfigError) as e:
        smollm2.sparse(mode="predictor", dense_positions=1, capacity_quantile=0.9)
    assert "no capacity" in _one_line(e.value)
    with pytest.raises(ConfigError) as e:
        smollm2.sparse(mode="predictor", dense_positions=-1)
    assert ">= 0" in _one_line(e.value)
