"""The gpuidx file: PowerInfer's case8 read exactly, PowerInfer-compatible writing, pijax provenance and checks."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from pijax.errors import IndexFileError
from pijax.index import format_index_table, load_gpuidx, solve, write_gpuidx
from pijax.index.gpuidx import Provenance
from pijax.io.gguf import read_gguf, write_gguf

CASE8 = Path(__file__).parent / "data" / "powerinfer_gpuidx_case8"
CASE8_HOT = [1536, 2048, 256, 1536, 256, 256, 256, 512]
PROV = Provenance("gguf1:m", "counts1:s", "powerinfer", '{"group_size":256}', 10**10, 6656, "hw")


def test_reading_case8_gives_its_buckets_and_masks():
    counts = np.load(CASE8 / "activation_counts.npy")
    index = load_gpuidx(CASE8 / "case8.gpuidx")
    assert index.magic == "PWRI" and not index.verified and index.provenance is None
    assert index.hot_counts == CASE8_HOT
    assert index.masks.shape == (8, 2048) and index.masks.dtype == bool
    raw = read_gguf(CASE8 / "case8.gpuidx")
    for layer in range(8):
        bucket = raw.raw(f"blk.{layer}.gpu_bucket")
        assert np.array_equal(index.buckets[layer], bucket)
        assert np.array_equal(index.masks[layer], raw.raw(f"blk.{layer}.gpu_idx") == 1)
        assert np.array_equal(index.buckets[layer], np.sort(np.argsort(-counts[layer])[: CASE8_HOT[layer]]))
    assert index.vram_capacity == 123456789


def test_compat_writer_reproduces_case8_byte_for_byte(tmp_path):
    buckets = solve("powerinfer", np.load(CASE8 / "activation_counts.npy"), 6656)
    out = tmp_path / "case8.gpuidx"
    write_gpuidx(out, buckets, 2048, vram_capacity=123456789, compat=True)
    assert out.read_bytes() == (CASE8 / "case8.gpuidx").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["case8.gpuidx"]


@pytest.mark.parametrize("compat", [False, True])
def test_round_trip_with_provenance(tmp_path, compat):
    buckets = [np.array([0, 5, 9], np.int32), np.zeros(0, np.int32), np.arange(10, dtype=np.int32)]
    path = tmp_path / "x.gpuidx"
    write_gpuidx(path, buckets, 10, vram_capacity=1234, provenance=PROV, compat=compat)
    index = load_gpuidx(path)
    assert index.verified and index.provenance == PROV
    assert index.magic == ("PWRI" if compat else "GGUF")
    assert read_gguf(path).tensors["blk.0.gpu_idx"].ggml_type == (18 if compat else 26)
    assert all(np.array_equal(a, b) for a, b in zip(index.buckets, buckets, strict=True))
    assert index.masks.sum(axis=1).tolist() == [3, 0, 10]
    table = format_index_table(index, np.ones((3, 10)))
    assert "  all        13        30    43.3         43.3" in table


def test_pwri_magic_with_todays_i32_id_is_accepted(tmp_path):
    path = tmp_path / "y.gpuidx"
    mask, bucket = np.array([1, 0, 1], np.int32), np.array([0, 2], np.int32)
    meta = {"general.architecture": "generic.gpu_index", "generic.gpu_index.block_count": 1}
    write_gguf(path, meta, [("blk.0.gpu_idx", mask), ("blk.0.gpu_bucket", bucket)], magic="PWRI")
    assert load_gpuidx(path).hot_counts == [2]


def flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x5A
    path.write_bytes(bytes(data))


def test_damage_is_reported_as_truncated_or_corrupt(tmp_path):
    good = tmp_path / "good.gpuidx"
    write_gpuidx(good, [np.array([1, 2], np.int32)] * 2, 4, vram_capacity=1, provenance=PROV)
    bad = tmp_path / "bad.gpuidx"
    shutil.copy(good, bad)
    with open(bad, "r+b") as f:
        f.truncate(good.stat().st_size // 2)
    with pytest.raises(IndexFileError, match=r"^\S+: truncated"):
        load_gpuidx(bad)
    bad.write_bytes(b"")
    with pytest.raises(IndexFileError, match="truncated: empty file"):
        load_gpuidx(bad)
    shutil.copy(good, bad)
    flip(bad, read_gguf(good).tensors["blk.1.gpu_bucket"].offset + 4)
    with pytest.raises(IndexFileError, match="corrupt: checksum mismatch"):
        load_gpuidx(bad)
    bad.write_bytes(b"GGML" + good.read_bytes()[4:])
    with pytest.raises(IndexFileError, match="corrupt: not a GGUF file"):
        load_gpuidx(bad)


def test_inconsistent_masks_and_buckets_are_corrupt(tmp_path):
    path = tmp_path / "z.gpuidx"
    meta = {"general.architecture": "generic.gpu_index", "generic.gpu_index.block_count": 1}
    write_gguf(
        path, meta, [("blk.0.gpu_idx", np.array([1, 0, 1], np.int32)), ("blk.0.gpu_bucket", np.array([0, 1], np.int32))]
    )
    with pytest.raises(IndexFileError, match="does not list exactly"):
        load_gpuidx(path)


def test_writing_never_leaves_a_partial_file(tmp_path, monkeypatch):
    import pijax.index.gpuidx as g

    path = tmp_path / "w.gpuidx"
    write_gpuidx(path, [np.array([1], np.int32)], 4, vram_capacity=1, provenance=PROV)
    before = hashlib.sha256(path.read_bytes()).hexdigest()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(g, "write_gguf", boom)
    with pytest.raises(OSError, match="disk full"):
        write_gpuidx(path, [np.array([2], np.int32)], 4, vram_capacity=1, provenance=PROV)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.gpuidx"]
