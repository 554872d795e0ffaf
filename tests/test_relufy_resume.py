"""Resumable ReLU-fication: a run stopped at a checkpoint and resumed ends where an uninterrupted run ends (step
count, history and loss carried over); a corrupt or foreign checkpoint is refused with one line; the SmolLM2
experiment config is the documented recipe."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pijax import load_model
from pijax.corpus import load_corpus
from pijax.errors import DataError
from pijax.paths import STORIES260K
from pijax.run_config import build_run_config
from pijax.sparsity.relufy import RelufyConfig, relufy
from pijax.sparsity.relufy_checkpoint import STATE_FILE

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def teacher():
    return load_model(STORIES260K)


@pytest.fixture(scope="module")
def corpus():
    c = load_corpus()
    return dataclasses.replace(c, docs=c.docs[:120])


def _cfg(ck: Path, **kw) -> RelufyConfig:
    base = RelufyConfig(
        act="drelu",
        steps=6,
        batch_size=4,
        seq_len=32,
        eval_interval=3,
        eval_batch=4,
        warmup_steps=2,
        smoke=True,
        checkpoint_every=3,
        checkpoint_dir=str(ck),
        eval_held=True,
    )
    return dataclasses.replace(base, **kw)


@pytest.fixture(scope="module")
def stopped(teacher, corpus, tmp_path_factory):
    """A run of 6 steps stopped after its first session of 3 steps, at its checkpoint."""
    ck = tmp_path_factory.mktemp("relufy") / "split"
    return ck, relufy(teacher, corpus, _cfg(ck, session_steps=3), progress=False)


def test_resumed_run_continues_from_its_checkpoint(teacher, corpus, stopped, tmp_path):
    ck, first = stopped
    assert (first.steps, first.finished) == (3, False)
    assert (ck / STATE_FILE).exists()
    full = relufy(teacher, corpus, _cfg(tmp_path / "full"), progress=False)
    resumed = relufy(teacher, corpus, _cfg(ck), progress=False)

    assert (resumed.steps, resumed.total_steps, resumed.finished) == (6, 6, True)
    assert [h["step"] for h in resumed.history] == [0, 3, 6]
    assert [h["tokens"] for h in resumed.history] == [0, 3 * 128, 6 * 128]
    assert resumed.history[:2] == first.history  # the first session's curve is kept, not recomputed
    # Same optimizer state, data position and weights: the loss goes on as if never interrupted.
    for a, b in zip(resumed.history, full.history, strict=True):
        assert a.keys() == b.keys()
        np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], rtol=1e-4)  # train/val losses, sparsity
    assert resumed.history[-1]["train_loss"] < resumed.history[1]["train_loss"]
    np.testing.assert_allclose(resumed.ppl_student, full.ppl_student, rtol=1e-4)
    np.testing.assert_allclose(resumed.weights.layers[1].gate, full.weights.layers[1].gate, rtol=1e-4, atol=1e-6)
    assert resumed.ppl_teacher == first.ppl_teacher

    # A finished run resumed again trains nothing and returns the same model.
    again = relufy(teacher, corpus, _cfg(ck), progress=False)
    assert again.steps == 6 and again.history == resumed.history
    np.testing.assert_array_equal(again.weights.layers[1].gate, resumed.weights.layers[1].gate)


def test_corrupt_or_foreign_checkpoint_is_one_clear_line(teacher, corpus, stopped, tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    state = ck / STATE_FILE
    shutil.copy(stopped[0] / STATE_FILE, state)
    with pytest.raises(DataError, match="checkpoint of another run") as e:  # another recipe, same folder
        relufy(teacher, corpus, _cfg(ck, lr=1e-3), progress=False)
    assert "\n" not in str(e.value) and str(state) in str(e.value)

    state.write_bytes(state.read_bytes()[:1000])  # truncated
    with pytest.raises(DataError, match="unreadable relufy checkpoint") as e:
        relufy(teacher, corpus, _cfg(ck), progress=False)
    assert "\n" not in str(e.value)

    np.savez(state, header=np.frombuffer(b'{"format": "something else"}', np.uint8))
    with pytest.raises(DataError, match="not a pijax ReLU-fication checkpoint"):
        relufy(teacher, corpus, _cfg(ck), progress=False)


def test_smollm2_experiment_config():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        raw = compose("config", overrides=["+experiment=relufy_smollm2", "relufy.act=relu"])
    cfg = build_run_config(OmegaConf.to_container(raw, resolve=True))  # type: ignore[arg-type]
    assert cfg.task == "relufy" and cfg.model.path == "smollm2-135m"
    r = cfg.relufy
    assert r.act == "relu" and r.checkpoint_every > 0 and r.resume and r.eval_held
    assert r.total_steps == -(-r.max_tokens // (r.batch_size * r.seq_len))
    # Session limits are not part of the run's identity: a bounded session and its continuation share a key.
    assert dataclasses.replace(r, max_minutes=5, session_steps=2).training_recipe() == r.training_recipe()
    assert dataclasses.replace(r, lr=1.0).training_recipe() != r.training_recipe()
