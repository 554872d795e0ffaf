"""Trained activation predictors: learning, the PowerInfer-style file, identity checks, shipped quality, interop."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

import pijax
from pijax.corpus import load_corpus, token_windows
from pijax.errors import ConfigError, DataError, PijaxError
from pijax.io.checkpoint import load_checkpoint
from pijax.io.weights import PredictorWeights
from pijax.model.predictor import Predictor
from pijax.paths import ASSETS, STORIES260K
from pijax.sparsity.predictor_config import PredictorTrainConfig
from pijax.sparsity.predictor_data import PredictorMetrics, collect_pairs, predictor_logits
from pijax.sparsity.predictor_files import load_predictors, save_predictor_model, weights_fingerprint
from pijax.sparsity.predictors import TrainedPredictors, evaluate_predictors, fit_rank, fold_thresholds

RELU = ASSETS / "stories260K_relu.gguf"
SHIPPED = ASSETS / "stories260K_relu_predictors.gguf"
TINY = Path(__file__).parent / "data" / "powerinfer_model_tiny"


@pytest.fixture(scope="module")
def relu_model() -> pijax.Model:
    return pijax.load_model(RELU)


@pytest.fixture(scope="module")
def windows(relu_model):
    train, held = load_corpus().split(0.1)
    return (
        token_windows(relu_model.tokenizer, train.docs, 128, max_tokens=128 * 64),
        token_windows(relu_model.tokenizer, held.docs, 128, max_tokens=128 * 8),
    )


def _random_predictors(ranks, n_embd=64, n_ff=172, seed=0):
    rng = np.random.default_rng(seed)
    return [
        PredictorWeights(
            rng.normal(size=(r, n_embd)).astype(np.float32) / 8, rng.normal(size=(n_ff, r)).astype(np.float32) / 4
        )
        for r in ranks
    ]


def test_training_beats_hot_neuron_baseline_on_unseen_text(relu_model, windows):
    w_train, w_held = windows
    pairs, _ = collect_pairs(relu_model, w_train, progress=False)
    held, _ = collect_pairs(relu_model, w_held, progress=False)
    cfg = PredictorTrainConfig(batch_size=256, max_epochs=8, patience=8, lr=1e-2)
    layer = 1
    fit = fit_rank(pairs.x[layer], pairs.y[layer], 48, cfg, seed=0)
    pred = np.asarray(predictor_logits(fit.weights, held.x[layer])) >= fit.threshold
    y = held.y[layer]
    m = PredictorMetrics.of(pred, y)
    # The trivial baseline at the same predicted density: always the k most frequently active neurons (hot set).
    k = round(pred.mean() * y.shape[1])
    hot = np.argsort(-pairs.y[layer].mean(0))[:k]
    base = np.zeros_like(y)
    base[:, hot] = True
    b = PredictorMetrics.of(base, y)
    assert abs(b.predicted_sparsity - m.predicted_sparsity) < 0.01
    assert m.recall > 0.9 and m.precision > 0.3, m.row()
    assert m.recall > b.recall + 0.3, (m.row(), b.row())


def test_fold_thresholds_keeps_every_decision():
    ws = _random_predictors([8, 16, 4])
    x = np.random.default_rng(1).normal(size=(500, 64)).astype(np.float32)
    for ts in ([0.3, 0.8, 0.05], [-0.4, -0.1, -2.0]):
        folded, g = fold_thresholds(ws, ts)
        assert g == (1.0 if ts[0] > 0 else -1.0)
        for w, f, t in zip(ws, folded, ts, strict=True):
            np.testing.assert_array_equal(
                np.asarray(predictor_logits(f, x)) >= g, np.asarray(predictor_logits(w, x)) >= t
            )
    # Mixed signs: the positive layer falls back to (just below) threshold 0, which only adds predicted rows.
    folded, g = fold_thresholds(ws, [-0.5, 0.4, -0.2])
    assert g == -1.0
    orig = np.asarray(predictor_logits(ws[1], x)) >= 0.4
    now = np.asarray(predictor_logits(folded[1], x)) >= g
    assert (now | ~orig).all() and now.sum() >= orig.sum()


def test_saved_gguf_loads_back_with_identical_predictors(relu_model, tmp_path):
    ws = _random_predictors([8, 16, 32, 16, 8])
    ts = [-0.5, -0.2, -1.0, -0.3, -0.7]
    trained = TrainedPredictors(weights=ws, thresholds=ts, capacities=[40, 50, 60, 70, 80], n_tokens=123)
    path = save_predictor_model(tmp_path / "p.gguf", relu_model.checkpoint, trained)
    folded, g = fold_thresholds(ws, ts)

    ps = load_predictors(path, relu_model)
    assert ps.threshold == g == -1.0
    assert ps.capacities == [40, 50, 60, 70, 80]
    for a, b in zip(ps.weights, folded, strict=True):
        np.testing.assert_array_equal(a.fc1, b.fc1)
        np.testing.assert_array_equal(a.fc2, b.fc2)

    # The whole model loads back as PowerInfer's flavour: ReGLU, same weights and logits, predictors attached.
    back = pijax.load_model(path)
    assert back.checkpoint.gguf.magic == "PWRI" and back.config.ffn_act == "relu"
    assert back.checkpoint.weights.sparse_threshold == g
    assert [p.rank for p in back.checkpoint.weights.predictors] == [8, 16, 32, 16, 8]
    assert weights_fingerprint(back.checkpoint.weights) == weights_fingerprint(relu_model.checkpoint.weights)
    ids = [1, 403, 407, 261, 378, 12, 64]
    np.testing.assert_allclose(back.logits(ids), relu_model.logits(ids), atol=1e-5)


def _shrunk(ckpt, n_layer=None, n_ff=None):
    """A checkpoint of another shape (fewer layers or fewer neurons) made from the ReLU model's arrays."""
    w = ckpt.weights
    layers = w.layers[: n_layer or len(w.layers)]
    if n_ff is not None:
        layers = [
            dataclasses.replace(lw, up=lw.up[:n_ff], gate=lw.gate[:n_ff], down_t=lw.down_t[:n_ff]) for lw in layers
        ]
    cfg = ckpt.config.replace(n_layer=len(layers), n_ff=n_ff or ckpt.config.n_ff)
    return dataclasses.replace(ckpt, config=cfg, weights=dataclasses.replace(w, layers=layers))


def test_predictors_for_another_model_are_refused(relu_model, tmp_path):
    # Another model's predictors (same shapes, other weights): the fingerprint catches it.
    silu = pijax.load_model(STORIES260K)
    with pytest.raises(DataError, match="another model") as e:
        load_predictors(SHIPPED, silu)
    assert str(SHIPPED) in str(e.value)

    # A wrong layer count and wrong neuron count: named with the file.
    four = _shrunk(relu_model.checkpoint, n_layer=4)
    p4 = save_predictor_model(tmp_path / "four.gguf", four, TrainedPredictors(_random_predictors([8] * 4), [-1.0] * 4))
    with pytest.raises(DataError, match="4 layers, the model has 5") as e:
        load_predictors(p4, relu_model)
    assert str(p4) in str(e.value)
    narrow = _shrunk(relu_model.checkpoint, n_ff=100)
    preds = _random_predictors([8] * 5, n_ff=100)
    p100 = save_predictor_model(tmp_path / "narrow.gguf", narrow, TrainedPredictors(preds, [-1.0] * 5))
    with pytest.raises(DataError, match="n_ff 100") as e:
        load_predictors(p100, relu_model)
    assert str(p100) in str(e.value)
    with pytest.raises(PijaxError, match="no predictors"):
        load_predictors(RELU)
    with pytest.raises(DataError, match="5 layers"):
        save_predictor_model(tmp_path / "x.gguf", relu_model.checkpoint, TrainedPredictors(preds[:3], [0.0] * 3))


def test_shipped_predictors_meet_targets_on_held_out_text(windows):
    model = pijax.load_model(SHIPPED)
    ps = load_predictors(SHIPPED, model)
    metrics, counts = evaluate_predictors(model, windows[1], ps.weights, ps.threshold, progress=False)
    recall = np.mean([m.recall for m in metrics])
    precision = np.mean([m.precision for m in metrics])
    assert recall >= 0.94, [m.row() for m in metrics]
    assert precision >= 0.5, [m.row() for m in metrics]
    assert counts.shape == (windows[1].size, 5)


def test_powerinfer_predictors_load_and_match_numpy(tmp_path):
    src = TINY / "stories260K_relu.powerinfer.gguf"
    path = tmp_path / src.name
    shutil.copy(src, path)
    ref = np.load(TINY / "predictors.npz")
    ps = load_predictors(path)
    assert ps.threshold == 0.0 and ps.model_fingerprint is None and len(ps.weights) == 5
    x = np.random.default_rng(0).normal(size=(3, 7, 64)).astype(np.float32)
    for i, w in enumerate(ps.weights):
        fc1, fc2 = ref[f"fc1_{i}"], ref[f"fc2_{i}"]
        np.testing.assert_array_equal(w.fc1, fc1)
        np.testing.assert_array_equal(w.fc2, fc2)
        expected = np.einsum("fr,btr->btf", fc2, np.maximum(np.einsum("rd,btd->btr", fc1, x), 0.0))
        got = np.asarray(Predictor.from_weights(w)(x))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert load_checkpoint(path).config.ffn_act == "relu"


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError):
        PredictorTrainConfig(ranks=())
    with pytest.raises(ConfigError):
        PredictorTrainConfig(target_recall=1.5)
    with pytest.raises(ConfigError):
        PredictorTrainConfig(val_fraction=0.0)


def test_shipped_predictors_gate_the_sparse_model(windows):
    model = pijax.load_model(SHIPPED)
    dense = model.logits
    tokens = windows[1][:2]
    ref = [dense(t) for t in tokens]
    ps = load_predictors(SHIPPED, model)
    assert ps.capacities is not None and all(1 <= c <= 172 for c in ps.capacities)
    # the public API on both backends: the kernels (decode-sized calls) and XLA (the file's capacities)
    for s in (model.sparse(mode="predictor"), model.sparse(mode="predictor", backend="xla", capacities=ps.capacities)):
        agree = np.mean([(s.logits(t).argmax(-1) == r.argmax(-1)).mean() for t, r in zip(tokens, ref, strict=True)])
        assert agree >= 0.97
    ps.apply(model)
    assert model.module.layers[0].ffn.selector.capacity == ps.capacities[0]


def test_experiment_config_spells_out_the_defaults():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pijax.run_config import build_run_config
    from pijax.tasks import TASKS

    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=train_predictors", "seed=3", "predictor.ranks=[8,32]"])
    run = build_run_config(OmegaConf.to_container(cfg, resolve=True))
    assert run.task == "train_predictors" and "train_predictors" in TASKS
    assert run.predictor == dataclasses.replace(PredictorTrainConfig(), seed=3, ranks=(8, 32))
