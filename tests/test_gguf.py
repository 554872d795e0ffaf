"""GGUF reading/writing: the shipped models, PowerInfer's flavour, quantized types, and every kind of bad file."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from pijax.errors import GGUFFormatError, PijaxError, TensorError, UnsupportedModelError
from pijax.io.checkpoint import load_checkpoint, save_checkpoint, tokenizer_metadata
from pijax.io.gguf import GGMLType, Meta, read_gguf, write_gguf
from pijax.paths import STORIES260K

DATA = Path(__file__).parent / "data"
PWRI_MODEL = DATA / "powerinfer_model_tiny" / "stories260K_relu.powerinfer.gguf"
CASE8 = DATA / "powerinfer_gpuidx_case8" / "case8.gpuidx"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "model.gguf"
    shutil.copy(STORIES260K, dst)
    return dst


def rewrite(src: Path, dst: Path, *, drop: str = "", reshape: str = "", metadata: dict | None = None) -> Path:
    """A copy of `src` with one tensor dropped or truncated by a row, or metadata changed."""
    f = read_gguf(src)
    md = {k: Meta(v, f.metadata_types[k]) for k, v in f.metadata.items()} | (metadata or {})
    tensors = []
    for name in f.tensors:
        if name == drop:
            continue
        arr = f.array(name)
        tensors.append((name, arr[:-1] if name == reshape else arr))
    write_gguf(dst, md, tensors, magic=f.magic)
    return dst


def test_reads_stories260k_config():
    ckpt = load_checkpoint(STORIES260K)
    cfg = ckpt.config
    assert (cfg.n_embd, cfg.n_ff, cfg.n_layer, cfg.n_head, cfg.n_head_kv, cfg.n_vocab) == (64, 172, 5, 8, 4, 512)
    assert cfg.ffn_act == "silu" and cfg.rope_dim == 8 and cfg.head_dim == 8
    assert ckpt.weights.layers[0].down_t.shape == (172, 64)


def test_powerinfer_model_matches_stories260k_and_predictors():
    ref = load_checkpoint(STORIES260K)
    pwr = load_checkpoint(PWRI_MODEL)
    assert pwr.gguf.magic == "PWRI" and pwr.config.ffn_act == "relu"
    for a, b in zip(ref.weights.layers, pwr.weights.layers, strict=True):
        for field in ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "up", "gate", "down_t"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    np.testing.assert_array_equal(ref.weights.output, pwr.weights.output)
    preds = np.load(DATA / "powerinfer_model_tiny" / "predictors.npz")
    for i, p in enumerate(pwr.weights.predictors):
        np.testing.assert_array_equal(p.fc1, preds[f"fc1_{i}"])
        np.testing.assert_array_equal(p.fc2, preds[f"fc2_{i}"])
    assert pwr.weights.sparse_threshold == 0.0


def test_powerinfer_gpuidx_old_i32_type_id_is_read_as_int32():
    f = read_gguf(CASE8)
    assert f.magic == "PWRI" and f.tensors["blk.0.gpu_idx"].ggml_type == 18
    bucket = f.raw("blk.0.gpu_bucket")
    assert bucket.dtype == np.int32 and bucket.shape == (1536,)
    assert np.all(np.diff(bucket) > 0)


def test_rewriting_powerinfer_file_is_byte_identical(tmp_path: Path):
    f = read_gguf(CASE8)
    out = tmp_path / "case8.gpuidx"
    md = {k: Meta(v, f.metadata_types[k]) for k, v in f.metadata.items()}
    write_gguf(
        out, md, [(n, np.array(f.raw(n))) for n in f.tensors], magic="PWRI", type_ids=dict.fromkeys(f.tensors, 18)
    )
    assert out.read_bytes() == CASE8.read_bytes()


def test_checkpoint_round_trip_both_flavours(tmp_path: Path):
    src = load_checkpoint(PWRI_MODEL)
    for powerinfer in (False, True):
        out = save_checkpoint(
            tmp_path / f"m{powerinfer}.gguf",
            src.config,
            src.weights,
            tokenizer_metadata(src.gguf),
            powerinfer=powerinfer,
        )
        back = load_checkpoint(out)
        assert back.config == src.config
        assert back.gguf.magic == ("PWRI" if powerinfer else "GGUF")
        np.testing.assert_array_equal(back.weights.layers[3].down_t, src.weights.layers[3].down_t)
        np.testing.assert_array_equal(back.weights.predictors[2].fc2, src.weights.predictors[2].fc2)
        assert back.gguf.metadata["tokenizer.ggml.tokens"] == src.gguf.metadata["tokenizer.ggml.tokens"]


@pytest.mark.parametrize(
    ("qtype", "tol"), [(GGMLType.F16, 1e-3), (GGMLType.BF16, 1e-2), (GGMLType.Q8_0, 2e-2), (GGMLType.Q4_0, 0.25)]
)
def test_dequantizes_supported_types(tmp_path: Path, qtype: GGMLType, tol: float):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    if qtype == GGMLType.F16:
        stored, type_ids = w.astype(np.float16), {}
    else:
        stored, type_ids = gguf.quants.quantize(w, qtype), {"w": int(qtype)}
    write_gguf(tmp_path / "q.gguf", {"general.architecture": "llama"}, [("w", stored)], type_ids=type_ids)
    f = read_gguf(tmp_path / "q.gguf")
    assert f.tensors["w"].shape == (8, 64)
    got = f.array("w")
    assert got.dtype == np.float32
    assert np.max(np.abs(got - w)) < tol * np.max(np.abs(w))


# ---- bad input: each gives one PijaxError line that names the file --------------------------------------------


def assert_clear(err: pytest.ExceptionInfo, path: Path, words: str) -> None:
    msg = str(err.value)
    assert isinstance(err.value, PijaxError)
    assert str(path) in msg and "\n" not in msg
    assert words in msg, msg


@pytest.mark.parametrize("cut", [3, 20, 1000, 14000, 600_000, -1])
def test_truncated_gguf(tmp_path: Path, model_copy: Path, cut: int):
    bad = tmp_path / "cut.gguf"
    data = model_copy.read_bytes()
    bad.write_bytes(data[:cut])
    with pytest.raises(GGUFFormatError) as err:
        load_checkpoint(bad)
    assert_clear(err, bad, "truncated")
    assert sha256(model_copy) == hashlib.sha256(data).hexdigest()


def test_not_a_gguf(tmp_path: Path):
    bad = tmp_path / "notes.gguf"
    bad.write_text("this is a text file, not a model\n" * 10)
    with pytest.raises(GGUFFormatError) as err:
        load_checkpoint(bad)
    assert_clear(err, bad, "not a GGUF file")


def test_empty_and_missing_file(tmp_path: Path):
    empty = tmp_path / "empty.gguf"
    empty.touch()
    with pytest.raises(GGUFFormatError) as err:
        read_gguf(empty)
    assert_clear(err, empty, "empty")
    with pytest.raises(GGUFFormatError) as err:
        read_gguf(tmp_path / "nope.gguf")
    assert_clear(err, tmp_path / "nope.gguf", "cannot open")


def test_unsupported_architecture(tmp_path: Path, model_copy: Path):
    bad = rewrite(model_copy, tmp_path / "gpt2.gguf", metadata={"general.architecture": "gpt2"})
    with pytest.raises(UnsupportedModelError) as err:
        load_checkpoint(bad)
    assert_clear(err, bad, "architecture 'gpt2' is not supported")


def test_unsupported_tensor_type(tmp_path: Path):
    bad = tmp_path / "iq2.gguf"
    block = np.zeros((2, 66), np.uint8)  # two IQ2_XXS super-blocks of 256 values
    write_gguf(bad, {"general.architecture": "llama"}, [("w", block)], type_ids={"w": int(GGMLType.IQ2_XXS)})
    with pytest.raises(UnsupportedModelError) as err:
        read_gguf(bad).array("w")
    assert_clear(err, bad, "tensor w has type IQ2_XXS (ggml type id 16)")
    assert "supported: F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, BF16" in str(err.value)
    unknown = tmp_path / "unknown.gguf"
    write_gguf(unknown, {}, [("w", np.zeros(4, np.float32))])
    raw = bytearray(unknown.read_bytes())
    type_at = raw.index(b"w") + 1 + 4 + 8  # name, n_dims, ne[0]
    raw[type_at : type_at + 4] = (999).to_bytes(4, "little")
    unknown.write_bytes(bytes(raw))
    with pytest.raises(UnsupportedModelError) as err:
        read_gguf(unknown)
    assert_clear(err, unknown, "unknown ggml type id 999")


def test_missing_tensor(tmp_path: Path, model_copy: Path):
    bad = rewrite(model_copy, tmp_path / "missing.gguf", drop="blk.3.attn_q.weight")
    with pytest.raises(TensorError) as err:
        load_checkpoint(bad)
    assert_clear(err, bad, "missing tensor blk.3.attn_q.weight")


def test_wrong_shape(tmp_path: Path, model_copy: Path):
    bad = rewrite(model_copy, tmp_path / "shape.gguf", reshape="blk.1.ffn_up.weight")
    with pytest.raises(TensorError) as err:
        load_checkpoint(bad)
    assert_clear(err, bad, "tensor blk.1.ffn_up.weight has shape (171, 64), expected (172, 64)")


def test_missing_metadata_key(tmp_path: Path, model_copy: Path):
    f = read_gguf(model_copy)
    md = {k: Meta(v, f.metadata_types[k]) for k, v in f.metadata.items() if k != "llama.block_count"}
    bad = tmp_path / "nokey.gguf"
    write_gguf(bad, md, [(n, f.array(n)) for n in f.tensors])
    with pytest.raises(UnsupportedModelError) as err:
        load_checkpoint(bad)
    assert_clear(err, bad, "llama.block_count")
