"""A ReLU-fied SmolLM2 is written as a plain GGUF that pijax loads back: dReLU activation, tied output, the same
weights, and the gpt2-BPE tokenizer (no BOS, special tokens) tokenizing exactly as the original's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pijax import load_model
from pijax.sparsity.relufy import RelufyConfig, RelufyResult, file_sha256, module_weights, save_relufied

TEXTS = [
    'Once upon a time, Lily saw a big dog. She said: "Héllo, 123 dogs!"\n\n  def f(x):\treturn x**2',
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n",
]


@pytest.fixture(scope="module")
def teacher(smollm2_path):
    return load_model(smollm2_path)


def test_relufied_smollm2_loads_back_and_tokenizes_identically(teacher, smollm2_path, tmp_path):
    weights = module_weights(teacher.module)
    res = RelufyResult(
        config=teacher.config.replace(ffn_act="drelu"),
        weights=weights,
        recipe=RelufyConfig(act="drelu"),
        history=[],
        ppl_teacher=13.0,
        ppl_relu_untrained=13.0,
        ppl_student=13.0,
        sparsity_before=[0.0] * teacher.config.n_layer,
        sparsity_after=[0.0] * teacher.config.n_layer,
        held_out_tokens=0,
        train_tokens=0,
        wall_s=0.0,
        source_sha256=file_sha256(smollm2_path),
        corpus_sha256="none",
    )
    model = load_model(save_relufied(tmp_path / "smollm2_drelu.gguf", res, teacher))
    assert model.config == dataclasses.replace(teacher.config, ffn_act="drelu", name=model.config.name)
    assert model.config.tied_output and model.config.n_layer == 30
    for text in TEXTS:
        ids = teacher.tokenizer.encode(text, bos=True)
        assert model.tokenizer.encode(text, bos=True) == ids
        assert model.tokenizer.decode(ids) == teacher.tokenizer.decode(ids)
    assert teacher.tokenizer.encode("Hi", bos=True)[0] != teacher.tokenizer.bos_id  # SmolLM2 adds no BOS
    np.testing.assert_array_equal(module_weights(model.module).layers[7].gate, weights.layers[7].gate)
    np.testing.assert_array_equal(module_weights(model.module).token_embd, weights.token_embd)
