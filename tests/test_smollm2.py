"""SmolLM2-135M (the real Q4_1 file): logits and greedy continuations equal llama.cpp's, loading streams.

References: tests/data/smollm2_llamacpp.npz, made by tests/data/make_smollm2_refs.py with llama.cpp on an all-F32
copy of the file (`pijax.io.convert --to f32`), F32 KV cache (provenance in smollm2_llamacpp.json). pijax reads
the Q4_1 file and dequantizes it to f32, so both compute the same function: logits must agree to 1e-3 absolute
at every position (measured max: ~1.3e-4), and the 48-token greedy continuations must be identical (the smallest
top-2 gap met during llama.cpp's greedy runs is 0.016, far above 1e-3).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import pijax
from pijax.bench.real_models import load_in_child
from pijax.io.gguf import read_gguf
from pijax.model.generate import Engine, SamplingConfig

DATA = Path(__file__).parent / "data"
REFS = DATA / "smollm2_llamacpp.npz"
N_PROMPTS = len(json.loads(REFS.with_suffix(".json").read_text())["prompts"])
TOL = 1e-3


@pytest.fixture(scope="module")
def refs() -> dict[str, np.ndarray]:
    with np.load(REFS) as z:
        return dict(z)


@pytest.fixture(scope="module")
def model(smollm2_path: Path) -> pijax.Model:
    """Loaded once, by its registry name (`smollm2_path` has fetched it into the cache), at the default f32."""
    m = pijax.load_model("smollm2-135m")
    assert m.checkpoint.gguf.path == smollm2_path
    return m


@pytest.fixture(scope="module")
def engine(model: pijax.Model) -> Engine:
    return model.engine


def test_logits_match_llamacpp_on_f32_copy(engine: Engine, refs: dict[str, np.ndarray]):
    worst = []
    for i in range(N_PROMPTS):
        seq = np.concatenate([refs[f"ids_{i}"], refs[f"gen_{i}"]])
        got = engine.logits(seq.tolist())
        assert got.shape[0] == refs[f"top_logits_{i}"].shape[0] == len(seq)
        d_top = np.abs(np.take_along_axis(got, refs[f"top_ids_{i}"], axis=1) - refs[f"top_logits_{i}"])
        d_sub = np.abs(got[:, refs["sub_ids"]] - refs[f"sub_logits_{i}"])
        worst.append(float(max(d_top.max(), d_sub.max())))
        np.testing.assert_array_equal(got.argmax(-1), refs[f"top_ids_{i}"][:, 0])
    print(f"max |pijax - llama.cpp| over {N_PROMPTS} prompts: {max(worst):.2e} (per prompt {worst})")
    assert max(worst) <= TOL, worst


def test_greedy_continuations_match_llamacpp(engine: Engine, refs: dict[str, np.ndarray]):
    for i in range(N_PROMPTS):
        out = engine.generate(refs[f"ids_{i}"].tolist(), 48, SamplingConfig(), eos_id=None)
        assert out.new_ids == refs[f"gen_{i}"].tolist(), f"prompt {i}"


def test_load_model_by_name_writes_sensible_text(model: pijax.Model):
    res = model.generate("The capital of France is", max_new_tokens=8)
    assert "Paris" in res.text, res.text


def test_streaming_load_peak_rss(smollm2_path: Path):
    """Loading at f32 streams tensor by tensor: the process's peak RSS (interpreter and jax included) stays under
    twice the f32 size of the weights (the weights themselves plus at most one f32 copy's worth of the rest)."""
    f32_mb = sum(int(np.prod(t.shape)) * 4 for t in read_gguf(smollm2_path).tensors.values()) / 2**20
    got = load_in_child(smollm2_path, "f32")
    print(f"peak RSS {got['peak_rss_mb']:.0f} MB for {f32_mb:.0f} MB of f32 weights ({got})")
    assert got["peak_rss_mb"] < 2 * f32_mb
