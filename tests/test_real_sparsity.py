"""Threshold sparsity on the real SmolLM2-135M: calibration transfers to held-out text, sparsity 0 is dense,
the greedy allocation, hot-set overlap, the standard-library corpus, and bad input as one clear line.

SmolLM2 is loaded once for the module; windows are short (64 tokens) and few, so each forward is a second or two.
"""

from __future__ import annotations

import numpy as np
import pytest

import pijax
from pijax.corpus import STDLIB_MODULES, load_corpus, stdlib_corpus
from pijax.errors import ConfigError, DataError, PijaxError
from pijax.sparsity.allocation import greedy_allocation, greedy_path, level_grid
from pijax.sparsity.criteria import CRITERIA
from pijax.sparsity.overlap import hot_set_overlap
from pijax.sparsity.stats import ActivationStats
from pijax.sparsity.threshold_eval import ThresholdEvaluator
from pijax.sparsity.thresholds import calibrate_thresholds, check_sparsity

SEQ = 64


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return pijax.load_model(smollm2_path)


@pytest.fixture(scope="module")
def split_windows(smollm2):
    train, held = load_corpus().split(0.1)
    return train.windows(smollm2.tokenizer, SEQ, 8 * SEQ), held.windows(smollm2.tokenizer, SEQ, 8 * SEQ)


@pytest.fixture(scope="module")
def evaluator(smollm2, split_windows):
    return ThresholdEvaluator(smollm2, split_windows[1])


def _one_line(e: PijaxError) -> str:
    msg = str(e)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("criterion", CRITERIA)
def test_calibrated_thresholds_hit_the_target_on_held_out_text(smollm2, split_windows, evaluator, criterion):
    cal, _ = split_windows
    thr = calibrate_thresholds(smollm2, cal, 0.5, criterion=criterion, progress=False)
    assert thr.shape == (smollm2.config.n_layer,) and np.all(thr > 0)
    res = evaluator.evaluate(criterion, thr)
    assert abs(res.sparsity - 0.5) <= 0.02, (criterion, res.layer_sparsity)
    # skipping half of the entries costs something, and the oracle (exact output size) the least
    assert res.ppl > res.ppl_dense and res.top1 < 1.0
    if criterion == "oracle":
        assert res.ppl_increase < 0.10 and res.top1 > 0.85


def test_sparsity_zero_is_the_dense_model(smollm2, split_windows, evaluator):
    thr = calibrate_thresholds(smollm2, split_windows[0][:2], 0.0, criterion="cats", progress=False)
    assert np.all(thr == 0)
    res = evaluator.evaluate("cats", thr)
    assert res.top1 == 1.0 and res.ppl == pytest.approx(evaluator.ppl_dense, rel=1e-5)
    assert 8 < evaluator.ppl_dense < 30  # SmolLM2 on TinyStories (13.0 on the experiment's 48 windows)


def test_per_layer_targets_give_per_layer_sparsity(smollm2, split_windows, evaluator):
    target = np.where(np.arange(smollm2.config.n_layer) % 2 == 0, 0.2, 0.6)
    thr = calibrate_thresholds(smollm2, split_windows[0], target, criterion="oracle", progress=False)
    res = evaluator.evaluate("oracle", thr)
    assert abs(res.sparsity - 0.4) <= 0.02
    assert np.abs(res.layer_sparsity - target).max() < 0.08, res.layer_sparsity


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, [0.5, 0.5]])
def test_a_threshold_sparsity_outside_0_1_is_one_clear_line(smollm2, split_windows, bad):
    with pytest.raises(ConfigError) as e:
        calibrate_thresholds(smollm2, split_windows[0][:1], bad, progress=False)
    assert "target sparsity" in _one_line(e.value)


def test_an_unknown_criterion_is_one_clear_line(smollm2, split_windows):
    with pytest.raises(ConfigError, match="criterion 'relu' is not one of"):
        calibrate_thresholds(smollm2, split_windows[0][:1], 0.5, criterion="relu", progress=False)


def test_a_corpus_smaller_than_one_window_is_one_clear_line(smollm2, tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("Once upon a time.\n<|endoftext|>\nThe end.\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_corpus(path).windows(smollm2.tokenizer, 128)
    msg = _one_line(e.value)
    assert str(path) in msg and "fewer than one window of 128" in msg


def test_stdlib_corpus_one_document_per_module_in_order(smollm2):
    c = stdlib_corpus(("bisect", "heapq"))
    assert len(c.docs) == 2 and "def bisect_right" in c.docs[0] and "def heappush" in c.docs[1]
    _, held = stdlib_corpus().split(0.1)
    assert held.docs == (stdlib_corpus((STDLIB_MODULES[-1],)).docs[0],)  # the held-out module: difflib
    assert held.windows(smollm2.tokenizer, 128, 48 * 128).shape == (48, 128)  # enough for the experiment
    for bad, what in ((("sys",), "has no Python source"), (("no_such_mod",), "no module named")):
        with pytest.raises(DataError, match=what):
            stdlib_corpus(bad)


def test_greedy_allocation_spends_sparsity_where_the_error_is_cheapest():
    levels = level_grid(0.25)  # 0, .25, .5, .75
    # layer 0's error grows fast, layer 1's slowly, layer 2 costs nothing
    errors = np.array([[0, 1, 4, 9], [0, 0.1, 0.4, 0.9], [0, 0, 0, 0]], dtype=float)
    alloc = greedy_allocation(errors, levels, 0.5)
    assert alloc.mean() == pytest.approx(0.5)
    assert alloc[2] == 0.75 and alloc[1] >= alloc[0]
    path = greedy_path(errors, levels)
    assert path[0].sum() == 0 and (path[-1] == 3).all() and len(path) == 10
    with pytest.raises(ConfigError, match="target sparsity"):
        greedy_allocation(errors, levels, 1.0)


def test_hot_set_overlap():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 100, (2, 50))

    def stats(c):
        return ActivationStats(c, c.astype(float), 100, "threshold", np.zeros(2), "", "")

    same = hot_set_overlap(stats(counts), stats(counts), 0.2)
    assert [r["jaccard"] for r in same] == [1.0, 1.0]
    assert all(r["b_covered_by_a"] == r["b_covered_by_b"] for r in same)
    other = hot_set_overlap(stats(counts), stats(100 - counts), 0.2)
    assert all(r["jaccard"] == 0.0 and r["b_covered_by_a"] < r["b_covered_by_b"] for r in other)


def test_check_sparsity_accepts_per_layer_targets():
    assert check_sparsity([0.0, 0.5], 2).shape == (2,)
    with pytest.raises(ConfigError, match="one per layer"):
        check_sparsity([0.1, 0.2, 0.3], 2)
