"""Synthetic power-law models (tiny preset): a loadable PowerInfer-style ReGLU file, labelled synthetic, whose
neurons really fire with the target power law in pijax's dense forward, with predictors that match them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import spearmanr

from pijax.api import load_model
from pijax.bench.synth import ensure_synth_model as ensure
from pijax.bench.synth import load_report, main, report_path
from pijax.bench.synth_spec import PRESETS, preset_spec, spec_from_metadata, synthetic_vocab, target_frequencies
from pijax.errors import ConfigError
from pijax.io.checkpoint import load_checkpoint
from pijax.io.gguf import GGMLType, read_gguf, write_gguf, write_gguf_stream
from pijax.io.tokenizer import TOKEN_UNUSED, Tokenizer
from pijax.paths import STORIES260K


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="module")
def tiny(cache: Path) -> Path:
    return ensure("tiny", cache_dir=cache, progress=False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def random_tokens(n_vocab: int, n_seqs: int, seq_len: int, seed: int) -> np.ndarray:
    toks = np.random.default_rng(seed).integers(0, n_vocab, size=(n_seqs, seq_len))
    toks[:, 0] = 1
    return toks


def share_covering(freq: np.ndarray, mass: float) -> float:
    """The smallest share of neurons whose frequencies add up to `mass` of the total."""
    cum = np.cumsum(np.sort(freq)[::-1])
    return (np.searchsorted(cum, mass * cum[-1]) + 1) / len(freq)


def fired_and_predicted(path: Path, tokens: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer: which neurons fired (ReGLU act != 0) and which the file's predictor marks, in a real forward."""
    model = load_model(path)
    _, records = model.module.trace(jnp.asarray(tokens))
    out = []
    for rec, pred in zip(records, model.checkpoint.weights.predictors, strict=True):
        fired = np.asarray(rec["act"]).reshape(-1, model.config.n_ff) != 0
        h = np.asarray(rec["ffn_in"]).reshape(-1, model.config.n_embd)
        out.append((fired, (np.maximum(h @ pred.fc1.T, 0) @ pred.fc2.T) >= model.checkpoint.weights.sparse_threshold))
    return out


def test_tiny_is_a_relu_powerinfer_model_labelled_synthetic(tiny: Path):
    spec = preset_spec("tiny")
    ckpt = load_checkpoint(tiny)
    cfg = ckpt.config
    assert ckpt.gguf.magic == "PWRI" and cfg.ffn_act == "relu"
    assert (cfg.n_embd, cfg.n_ff, cfg.n_layer, cfg.n_head, cfg.n_head_kv) == (64, 512, 4, 4, 2)
    assert [p.fc1.shape for p in ckpt.weights.predictors] == [(spec.predictor_rank, 64)] * 4
    md = ckpt.metadata
    assert "synthetic" in md["general.name"] and "SYNTHETIC" in md["general.description"]
    assert md["pijax.synthetic"] is True
    assert md["pijax.synthetic.alpha"] == pytest.approx(0.9) and md["pijax.synthetic.mean_active"] == pytest.approx(0.1)
    assert spec_from_metadata(md) == spec
    assert spec_from_metadata(read_gguf(STORIES260K).metadata) is None
    report = load_report(tiny)
    assert report["synthetic"] is True and report["key"] == spec.key() and report["path"] == str(tiny)
    assert tiny.parent.name != "pijax" and not str(tiny).startswith(str(Path(__file__).parents[1]))


def test_real_forward_follows_the_target_power_law_and_predictors_match(tiny: Path):
    spec = preset_spec("tiny")
    tokens = random_tokens(spec.n_vocab, 32, 128, seed=2024)  # not the build's calibration tokens
    for layer, (fired, predicted) in enumerate(fired_and_predicted(tiny, tokens)):
        target = target_frequencies(spec, layer)
        measured = fired.mean(0)
        assert spearmanr(measured, target).statistic > 0.9, f"layer {layer}"
        assert abs(measured.mean() - spec.mean_active) < 0.02, f"layer {layer}"
        # as skewed as the law: the same share of neurons covers 80% of the activations (~43% at alpha 0.9)
        assert abs(share_covering(measured, 0.8) - share_covering(target, 0.8)) < 0.05, f"layer {layer}"
        # the hottest neurons are spread over the layer, not the first rows
        hot = np.argsort(-measured)[: spec.n_ff // 10]
        assert spec.n_ff / 4 < hot.mean() < 3 * spec.n_ff / 4
        tp = (fired & predicted).sum()
        recall, precision = tp / fired.sum(), tp / predicted.sum()
        assert recall > 0.8 and precision > 0.8, f"layer {layer}: recall {recall:.3f} precision {precision:.3f}"
    orders = [np.argsort(target_frequencies(spec, i))[-20:] for i in range(spec.n_layer)]
    assert len({tuple(sorted(o)) for o in orders}) == spec.n_layer, "each layer has its own hot set"


def test_model_is_reused_rebuilt_when_truncated_and_deterministic(tiny: Path, cache: Path):
    digest, mtime = sha256(tiny), tiny.stat().st_mtime_ns
    assert ensure("tiny", cache_dir=cache, progress=False) == tiny and tiny.stat().st_mtime_ns == mtime
    with open(tiny, "r+b") as f:
        f.truncate(tiny.stat().st_size // 2)
    assert ensure("tiny", cache_dir=cache, progress=False) == tiny
    assert sha256(tiny) == digest, "the same parameters and seed must give the same bytes"
    other = ensure("tiny", cache_dir=cache, progress=False, alpha=1.3, seed=1)
    assert other != tiny and json.loads(report_path(other).read_text())["spec"]["alpha"] == 1.3
    assert not list(cache.glob("*.partial"))


def test_f16_storage_keeps_norms_f32_and_the_law(cache: Path):
    path = ensure("tiny", cache_dir=cache, progress=False, storage="f16")
    f = read_gguf(path)
    assert f.ggml_type("blk.0.ffn_gate.weight") == GGMLType.F16 and f.ggml_type("blk.0.fc2.weight") == GGMLType.F16
    assert f.ggml_type("blk.0.ffn_norm.weight") == GGMLType.F32
    spec = preset_spec("tiny", storage="f16")
    (fired, _), *_ = fired_and_predicted(path, random_tokens(spec.n_vocab, 16, 128, seed=7))
    assert spearmanr(fired.mean(0), target_frequencies(spec, 0)).statistic > 0.9


def test_larger_vocab_pads_the_shipped_tokenizer_with_unused_tokens():
    md = {k: v.value for k, v in synthetic_vocab(600).items()}
    tok = Tokenizer.from_metadata(md)
    ref = Tokenizer.from_metadata(read_gguf(STORIES260K).metadata)
    assert tok.vocab_size == 600 and md["tokenizer.ggml.token_type"][599] == TOKEN_UNUSED
    assert tok.encode("Once upon a time, a cat sat.", bos=True) == ref.encode("Once upon a time, a cat sat.", bos=True)


def test_presets_and_bad_parameters():
    one_b = PRESETS["tinyllama-1.1b"]
    assert (one_b.n_vocab, one_b.n_embd, one_b.n_ff, one_b.n_layer, one_b.n_head, one_b.n_head_kv) == (
        32000,
        2048,
        5632,
        22,
        32,
        4,
    )
    small = PRESETS["small"]
    assert (small.n_layer, small.n_embd, small.n_ff, small.n_head, small.n_head_kv) == (8, 1024, 2816, 16, 4)
    seven_b = PRESETS["llama2-7b"]
    assert (seven_b.n_embd, seven_b.n_ff, seven_b.n_layer, seven_b.n_head_kv) == (4096, 11008, 32, 32)
    with pytest.raises(ConfigError, match="unknown synthetic preset"):
        preset_spec("gpt-5")
    with pytest.raises(ConfigError, match="unknown synthetic-model parameter"):
        preset_spec("tiny", alpah=1.0)
    with pytest.raises(ConfigError, match="p_min < mean_active"):
        preset_spec("tiny", mean_active=1.5)


def test_cli_measure_prints_a_labelled_fit_table(tiny: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["measure", str(tiny), "--seqs", "4", "--seq-len", "64"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and out.strip().splitlines()[-1].split()[0] == "mean"
    assert main(["measure", str(STORIES260K)]) == 2


def test_streamed_gguf_equals_the_in_memory_writer_and_checks_each_array(tmp_path: Path):
    rng = np.random.default_rng(0)
    tensors = [
        ("a", rng.standard_normal((3, 5)).astype(np.float32)),
        ("b", rng.standard_normal(7).astype(np.float16)),
        ("c", np.arange(6, dtype=np.int32).reshape(2, 3)),
    ]
    md = {"general.architecture": "llama", "x": 1.5, "s": "hi"}
    specs = [(n, a.shape, a.dtype) for n, a in tensors]
    write_gguf(tmp_path / "mem.gguf", md, tensors, magic="PWRI")
    write_gguf_stream(tmp_path / "stream.gguf", md, specs, (a for _, a in tensors), magic="PWRI")
    assert (tmp_path / "mem.gguf").read_bytes() == (tmp_path / "stream.gguf").read_bytes()
    with pytest.raises(ValueError, match="tensor b: expected float16"):
        write_gguf_stream(tmp_path / "bad.gguf", md, specs, iter([tensors[0][1], tensors[0][1], tensors[2][1]]))
