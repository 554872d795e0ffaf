"""ReLU-fication: a short fine-tuning run learns and writes a loadable ReLU GGUF; the shipped ReLU model keeps its
claims (ReLU activation, >= 80% exact-zero FFN outputs, held-out perplexity within 10% of the SiLU original)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pijax import load_model
from pijax.corpus import load_corpus, token_windows
from pijax.errors import ConfigError
from pijax.io.checkpoint import load_checkpoint
from pijax.paths import ASSETS, STORIES260K
from pijax.run_config import build_run_config
from pijax.sparsity.relufy import (
    RelufyConfig,
    file_sha256,
    heldout_ppl,
    layer_sparsity,
    module_weights,
    relufy,
    save_relufied,
)

SHIPPED = ASSETS / "stories260K_relu.gguf"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Claimed in pijax/assets/PROVENANCE.md: 0.897 sparsity and +6.7% perplexity on the whole held-out split.
MIN_SPARSITY = 0.8
MAX_PPL_INCREASE = 0.10


@pytest.fixture(scope="module")
def teacher():
    return load_model(STORIES260K)


def test_short_relufy_run_learns_and_writes_a_relu_gguf(teacher, tmp_path):
    corpus = load_corpus()
    corpus = dataclasses.replace(corpus, docs=corpus.docs[:120])  # smoke size: 108 train, 12 held-out stories
    cfg = RelufyConfig(steps=8, batch_size=4, seq_len=32, eval_interval=4, eval_batch=4, warmup_steps=2, smoke=True)
    res = relufy(teacher, corpus, cfg, progress=False)
    first, last = res.history[0], res.history[-1]
    assert [h["step"] for h in res.history] == [0, 4, 8]
    assert last["val_kd"] + last["val_lm"] < first["val_kd"] + first["val_lm"]
    assert res.ppl_student < res.ppl_relu_untrained  # swapping in ReLU alone hurts; fine-tuning repairs some of it
    assert len(res.sparsity_after) == teacher.config.n_layer

    path = save_relufied(tmp_path / "relu.gguf", res, teacher)
    model = load_model(path)
    assert model.config.ffn_act == "relu"
    md = model.checkpoint.metadata
    assert md["pijax.relufy.source_sha256"] == file_sha256(STORIES260K)
    assert md["pijax.relufy.steps"] == 8
    np.testing.assert_array_equal(module_weights(model.module).layers[2].gate, res.weights.layers[2].gate)
    assert len(model.generate("Once upon a time", max_new_tokens=5, stop_at_eos=False).new_ids) == 5


def test_bad_recipe_is_a_config_error(teacher):
    with pytest.raises(ConfigError, match="steps"):
        relufy(teacher, load_corpus(), RelufyConfig(steps=0), progress=False)
    with pytest.raises(ConfigError, match="l1_on"):
        RelufyConfig(l1_on="up").check()  # type: ignore[arg-type]


def test_shipped_relu_model_is_sparse_and_close_to_silu(teacher):
    ckpt = load_checkpoint(SHIPPED)
    assert ckpt.gguf.magic == "GGUF" and ckpt.config.ffn_act == "relu"
    assert ckpt.metadata["pijax.relufy.source_sha256"] == file_sha256(STORIES260K)
    relu = load_model(SHIPPED)
    _, held = load_corpus().split(0.1)
    windows = token_windows(teacher.tokenizer, held.docs, 128)[::8]  # 51 windows spread over the held-out split
    sparsity = layer_sparsity(relu.module, windows)
    assert sparsity.mean() >= MIN_SPARSITY
    assert sparsity.min() >= 0.75  # no layer is left dense
    ppl_silu, ppl_relu = heldout_ppl(teacher.module, windows), heldout_ppl(relu.module, windows)
    assert ppl_relu <= (1 + MAX_PPL_INCREASE) * ppl_silu


def _run_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=relufy_stories260k", *overrides])
    return build_run_config(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]


def test_experiment_config_is_the_recipe_and_overridable():
    assert _run_config().task == "relufy"
    assert _run_config().relufy == RelufyConfig()  # the YAML spells out the dataclass defaults, unchanged
    assert _run_config("seed=3", "relufy.steps=7").relufy == dataclasses.replace(RelufyConfig(), seed=3, steps=7)
