"""Every common GGUF tensor type loads close to the f32 model, `pijax.io.convert` copies keep what they must, and
`load_model(dtype=...)` keeps the matrices in the chosen format.

Tolerances come from the format's bits b (values per block are b-bit integers times a block scale): a uniform
quantizer whose 2^b levels span a block's [-max, max] has an RMS error of max / (sqrt(3) 2^b); these weights'
block max is ~2.5x their RMS, so the relative RMS error of a matrix is ~1.44 x 2^-b (measured: Q4_0 0.087,
Q5_1 0.038, Q8_0 0.0054, Q2_K 0.30, Q6_K 0.018). We allow 3 x 2^-b per matrix. The logits inherit about
1.5-2.3x the weights' relative error (measured, through every layer); we allow 4 x 2^-b. Garbage (a wrong
decoder) gives errors of order 1 for the weights and ~1.4 for the logits, so every bound below 1 catches it.
f16/bf16 store 11/8 significant bits; their rounding error is 2^-b / sqrt(3), inside the same bounds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pijax
from pijax.errors import ConfigError, PijaxError
from pijax.io.convert import TARGETS, convert_gguf, main
from pijax.io.gguf import GGMLType, Meta, read_gguf, write_gguf
from pijax.kernels.formats import QuantRows
from pijax.model.convert import load_llama
from pijax.model.generate import Engine
from pijax.paths import STORIES260K

DATA = Path(__file__).parent / "data"
KQUANTS = DATA / "kquants"
PWRI_MODEL = DATA / "powerinfer_model_tiny" / "stories260K_relu.powerinfer.gguf"
BITS = {
    "F32": 24,
    "F16": 11,
    "BF16": 8,
    "Q8_0": 8,
    "Q6_K": 6,
    "Q5_0": 5,
    "Q5_1": 5,
    "Q5_K": 5,
    "Q4_0": 4,
    "Q4_1": 4,
    "Q4_K": 4,
    "Q3_K": 3,
    "Q2_K": 2,
}
K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rel_rms(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - ref) ** 2)) / np.sqrt(np.mean(ref**2)))


def _make_kquants_module():
    spec = importlib.util.spec_from_file_location("make_kquants", DATA / "make_kquants.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def stories_rows64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stories260K with its down projection stored as `ffn_down_t` ([172, 64]): every matrix then has rows of 64,
    which fit the 32-wide blocks, so that every matrix is really quantized (ffn_down's rows of 172 are not)."""
    f = read_gguf(STORIES260K)
    md = {k: Meta(v, f.metadata_types[k]) for k, v in f.metadata.items()}
    tensors = []
    for name in f.tensors:
        arr = f.array(name)
        if name.endswith("ffn_down.weight"):
            name, arr = name.replace("ffn_down", "ffn_down_t"), np.ascontiguousarray(arr.T)
        tensors.append((name, arr))
    out = tmp_path_factory.mktemp("rows64") / "stories_rows64.gguf"
    write_gguf(out, md, tensors)
    return out


@pytest.fixture(scope="module")
def stories_ids() -> list[int]:
    text = (Path(pijax.__file__).parent / "assets" / "tinystories_valid_head.txt").read_text()[:400]
    return pijax.load_model().tokenizer.encode(text, bos=True)[:48]


def check_close(path: Path, ref_path: Path, ids: list[int], qtype: str) -> None:
    """Every matrix of `path` has type `qtype` and is within the format's bound of `ref_path`'s; logits too."""
    f, ref = read_gguf(path), read_gguf(ref_path)
    tol = 2.0 ** -BITS[qtype]
    matrices = [n for n in ref.tensors if len(ref.tensors[n].shape) == 2]
    assert {f.ggml_type(n).name for n in matrices} == {qtype}
    for name in matrices:
        err = rel_rms(f.array(name), ref.array(name))
        assert err <= 3 * tol, f"{name}: relative RMS error {err:.4f} > 3 x 2^-{BITS[qtype]}"
    got = Engine(load_llama(path, "f32", xla_ffn=True, progress=False)).logits(ids)
    want = Engine(load_llama(ref_path, "f32", xla_ffn=True, progress=False)).logits(ids)
    err = rel_rms(got, want)
    assert err <= 4 * tol, f"logits: relative RMS error {err:.4f} > 4 x 2^-{BITS[qtype]}"


@pytest.mark.parametrize("to", [t for t in TARGETS if t != "f32"])
def test_gguf_quants_types_load_close_to_f32(tmp_path: Path, stories_rows64: Path, stories_ids: list[int], to: str):
    out = convert_gguf(stories_rows64, tmp_path / f"{to}.gguf", to, progress=False)
    check_close(out, stories_rows64, stories_ids, to.upper())


@pytest.mark.parametrize("qtype", K_TYPES)
def test_k_quants_from_llama_cpp_load_close_to_f32(tmp_path: Path, qtype: str):
    ref = _make_kquants_module().write_f32(tmp_path / "tiny_f32.gguf")
    check_close(KQUANTS / f"tiny_{qtype.lower()}.gguf", ref, list(range(3, 250, 9)), qtype)


def test_k_quant_files_are_what_provenance_says():
    import json

    prov = json.loads((KQUANTS / "PROVENANCE.json").read_text())
    for name, facts in prov["files"].items():
        path = KQUANTS / name
        assert path.stat().st_size == facts["bytes"]
        assert int(read_gguf(path).metadata["general.file_type"]) == facts["llama_ftype"]


def test_convert_round_trips_and_keeps_metadata(tmp_path: Path, stories_ids: list[int]):
    src = tmp_path / "in.gguf"
    shutil.copy(STORIES260K, src)
    before = sha256(src)
    f16 = convert_gguf(src, tmp_path / "f16.gguf", "f16", progress=False)
    back = convert_gguf(f16, tmp_path / "back.gguf", "f32", progress=False)
    q8 = convert_gguf(src, tmp_path / "q8.gguf", "q8_0", progress=False)
    assert sha256(src) == before
    a, b, q = read_gguf(src), read_gguf(back), read_gguf(q8)
    for out, file_type in ((b, 0), (read_gguf(f16), 1), (q, 7)):
        # Every key kept with its type; general.file_type (absent in stories260K) says the new precision.
        assert set(out.metadata) == set(a.metadata) | {"general.file_type"}
        assert {k: out.metadata_types[k] for k in a.metadata} == a.metadata_types
        for key, value in a.metadata.items():
            np.testing.assert_array_equal(np.asarray(out.metadata[key], dtype=object), np.asarray(value, dtype=object))
        assert out.metadata["general.file_type"] == file_type
        assert list(out.tensors) == list(a.tensors)
    assert q.ggml_type("blk.0.ffn_up.weight") == GGMLType.Q8_0
    assert q.ggml_type("blk.0.ffn_down.weight") == GGMLType.F16  # rows of 172: not a multiple of 32
    assert q.ggml_type("blk.0.attn_norm.weight") == GGMLType.F32
    ref, m_back, m_q8 = pijax.load_model(src), pijax.load_model(back), pijax.load_model(q8)
    want = ref.logits(stories_ids)
    # f16 -> f32 is exact, so the round trip reads the very numbers of the f16 file.
    np.testing.assert_array_equal(m_back.logits(stories_ids), pijax.load_model(f16).logits(stories_ids))
    assert rel_rms(m_back.logits(stories_ids), want) <= 4 * 2.0**-11
    assert rel_rms(m_q8.logits(stories_ids), want) <= 4 * 2.0**-8
    assert m_q8.generate(stories_ids[:8], 16).new_ids == ref.generate(stories_ids[:8], 16).new_ids


def test_convert_powerinfer_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    before = sha256(PWRI_MODEL)
    src = read_gguf(PWRI_MODEL)
    for to in ("f16", "q8_0"):
        out = read_gguf(convert_gguf(PWRI_MODEL, tmp_path / f"{to}.gguf", to, progress=False))
        assert out.magic == "PWRI" and list(out.tensors) == list(src.tensors)
        # PowerInfer's CPU sparse path reads ffn_down_t as f16 whatever the file says.
        assert out.ggml_type("blk.0.ffn_down_t.weight") == GGMLType.F16
        assert out.ggml_type("blk.0.fc1.weight") == GGMLType.F16
        assert out.metadata["powerinfer.sparse_threshold"] == src.metadata["powerinfer.sparse_threshold"]
    # Q4_0 has its own axpy kernel in PowerInfer: ffn_down_t and the predictors are Q4_0, as its quantize writes
    # them (fc2's 16-wide rows are no whole Q4_0 block: F16).
    out = read_gguf(convert_gguf(PWRI_MODEL, tmp_path / "q4_0.gguf", "q4_0", progress=False))
    assert out.magic == "PWRI" and list(out.tensors) == list(src.tensors)
    assert [out.ggml_type(f"blk.1.{t}.weight") for t in ("ffn_down_t", "ffn_gate", "fc1", "fc2", "attn_norm")] == [
        GGMLType.Q4_0,
        GGMLType.Q4_0,
        GGMLType.Q4_0,
        GGMLType.F16,
        GGMLType.F32,
    ]
    assert out.metadata["general.file_type"] == 2  # llama.cpp's MOSTLY_Q4_0
    assert capsys.readouterr().err == ""
    out = read_gguf(convert_gguf(PWRI_MODEL, tmp_path / "f32.gguf", "f32", progress=False))
    assert out.ggml_type("blk.0.ffn_down_t.weight") == GGMLType.F32
    assert "PowerInfer's CPU sparse path" in capsys.readouterr().err
    np.testing.assert_array_equal(out.array("blk.2.fc2.weight"), src.array("blk.2.fc2.weight"))
    assert sha256(PWRI_MODEL) == before


def test_convert_refuses_its_input_and_an_existing_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    src = tmp_path / "in.gguf"
    shutil.copy(STORIES260K, src)
    before = sha256(src)
    link = tmp_path / "link.gguf"
    link.symlink_to(src)
    for out in (src, link, tmp_path / "." / "in.gguf"):
        assert main([str(src), str(out), "--to", "f16"]) == 2
        err = capsys.readouterr().err
        assert "is the input file" in err and err.count("\n") == 1
    other = tmp_path / "other.gguf"
    other.write_bytes(b"keep me")
    assert main([str(src), str(other), "--to", "f16"]) == 2
    assert "--force" in capsys.readouterr().err and other.read_bytes() == b"keep me"
    assert main([str(src), str(other), "--to", "f16", "--force"]) == 0
    assert read_gguf(other).ggml_type("blk.0.ffn_up.weight") == GGMLType.F16
    assert sha256(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gguf", "link.gguf", "other.gguf"]  # no temp left
    with pytest.raises(ConfigError):
        convert_gguf(src, tmp_path / "x.gguf", "q4_k")  # type: ignore[arg-type]


def test_convert_help_explains_powerinfer_down_t():
    res = subprocess.run(
        [sys.executable, "-m", "pijax.io.convert", "--help"], capture_output=True, text=True, check=True
    )
    assert "ffn_down_t" in res.stdout and "as f16" in res.stdout


def test_load_model_dtype(stories_ids: list[int]):
    want = pijax.load_model().logits(stories_ids)
    for dtype, bits in (("f16", 11), ("bf16", 8), ("int8", 8)):
        m = pijax.load_model(dtype=dtype)
        up = m.module.layers[0].ffn.up if hasattr(m.module.layers[0].ffn, "up") else None
        wq = m.module.layers[0].attn.w_q_nd[...]
        assert (
            isinstance(wq, QuantRows) if dtype == "int8" else str(wq.dtype) == {"f16": "float16"}.get(dtype, "bfloat16")
        ), (dtype, up)
        assert rel_rms(m.logits(stories_ids), want) <= 4 * 2.0**-bits
    with pytest.raises(ConfigError) as err:
        pijax.load_model(dtype="q4")  # type: ignore[arg-type]
    assert isinstance(err.value, PijaxError) and "q4" in str(err.value)
