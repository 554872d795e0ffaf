"""GGUF v2/v3 reading and writing: the one parser and the one writer of every pijax file.

Models, PowerInfer-style predictor files and the `.generated.gpuidx` all go through here. The `gguf` package
supplies the constants and the (de)quantization kernels; parsing is ours so that we can accept PowerInfer's
`PWRI` magic and its 2023 ggml type ids, and turn every malformation into one `GGUFFormatError` line that names
the file, instead of a numpy or struct traceback.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from pijax.errors import GGUFFormatError, UnsupportedModelError

VT = gguf.GGUFValueType
GGMLType = gguf.GGMLQuantizationType
MAGICS = {b"GGUF": "GGUF", b"PWRI": "PWRI"}
DEFAULT_ALIGNMENT = 32
# PowerInfer files come from late-2023 ggml, where type 18 was I32 (now 26); see POWERINFER.md.
POWERINFER_I32_TYPE_ID = 18
GPU_INDEX_ARCH = "generic.gpu_index"
_MAX_DIMS = 4
_MAX_STRING = 1 << 30

_SCALAR_FMT = {
    VT.UINT8: "<B",
    VT.INT8: "<b",
    VT.UINT16: "<H",
    VT.INT16: "<h",
    VT.UINT32: "<I",
    VT.INT32: "<i",
    VT.FLOAT32: "<f",
    VT.BOOL: "<?",
    VT.UINT64: "<Q",
    VT.INT64: "<q",
    VT.FLOAT64: "<d",
}
_NUMPY_OF_VT = {
    VT.UINT8: np.uint8,
    VT.INT8: np.int8,
    VT.UINT16: np.uint16,
    VT.INT16: np.int16,
    VT.UINT32: np.uint32,
    VT.INT32: np.int32,
    VT.FLOAT32: np.float32,
    VT.BOOL: np.bool_,
    VT.UINT64: np.uint64,
    VT.INT64: np.int64,
    VT.FLOAT64: np.float64,
}
_VT_OF_NUMPY = {np.dtype(v): k for k, v in _NUMPY_OF_VT.items()}
_GGML_OF_NUMPY = {
    np.dtype(np.float32): GGMLType.F32,
    np.dtype(np.float16): GGMLType.F16,
    np.dtype(np.int32): GGMLType.I32,
    np.dtype(np.int8): GGMLType.I8,
    np.dtype(np.int16): GGMLType.I16,
    np.dtype(np.int64): GGMLType.I64,
    np.dtype(np.float64): GGMLType.F64,
}
_PLAIN_NUMPY_OF_GGML = {v: k for k, v in _GGML_OF_NUMPY.items()}
# The tensor types a model may hold: dequantized by `gguf.quants` (plain floats are read directly).
DEQUANTIZABLE = frozenset(
    {
        GGMLType.F32,
        GGMLType.F16,
        GGMLType.BF16,
        GGMLType.Q4_0,
        GGMLType.Q4_1,
        GGMLType.Q5_0,
        GGMLType.Q5_1,
        GGMLType.Q8_0,
        GGMLType.Q2_K,
        GGMLType.Q3_K,
        GGMLType.Q4_K,
        GGMLType.Q5_K,
        GGMLType.Q6_K,
    }
)
SUPPORTED_TYPES_TEXT = ", ".join(t.name for t in sorted(DEQUANTIZABLE))
# Dequantize this many output elements at a time: gguf.quants builds every group's output before joining them,
# so a whole embedding table at once would briefly need twice its f32 size.
_DEQUANT_CHUNK = 1 << 22


@dataclasses.dataclass(frozen=True)
class Meta:
    """A metadata value with an explicit GGUF value type (for arrays: the element type)."""

    value: Any
    vtype: gguf.GGUFValueType


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    shape: tuple[int, ...]  # numpy order: the reverse of GGUF's ne
    offset: int  # absolute byte offset in the file
    nbytes: int


@dataclasses.dataclass
class GGUFFile:
    """A parsed GGUF file; tensor data is a read-only memory map, nothing is copied until asked."""

    path: Path
    magic: str
    version: int
    alignment: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    _mmap: np.memmap
    metadata_types: dict[str, gguf.GGUFValueType] = dataclasses.field(default_factory=dict)

    @property
    def file_size(self) -> int:
        return int(self._mmap.shape[0])

    def ggml_type(self, name: str) -> GGMLType:
        info = self._info(name)
        arch = self.metadata.get("general.architecture")
        return _resolve_type(info.ggml_type, self.magic, info.name, self.path, arch)

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of a tensor as a view; plain types come back typed and shaped."""
        info = self._info(name)
        buf = self._mmap[info.offset : info.offset + info.nbytes]
        plain = _PLAIN_NUMPY_OF_GGML.get(self.ggml_type(name))
        return buf.view(plain).reshape(info.shape) if plain is not None else buf

    def array(self, name: str, dtype: np.typing.DTypeLike = np.float32) -> np.ndarray:
        """A dequantized copy of a tensor in numpy shape, made in row chunks (peak: the copy plus one chunk).

        The file pages it touched are dropped from this process's resident set afterwards (`release`), so that
        streaming a model through `array` does not keep a second, file-backed copy of it in RSS."""
        info = self._info(name)
        qtype = self.ggml_type(name)
        buf = self._mmap[info.offset : info.offset + info.nbytes]
        if qtype in _PLAIN_NUMPY_OF_GGML:
            out = np.array(buf.view(_PLAIN_NUMPY_OF_GGML[qtype]).reshape(info.shape), dtype=dtype, copy=True)
        elif qtype in DEQUANTIZABLE:
            out = np.empty(info.shape, dtype=dtype)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            row_elems = info.shape[-1] if info.shape else 1
            rows = buf.reshape(-1, row_elems // block * type_size)
            flat = out.reshape(-1, row_elems)
            step = max(1, _DEQUANT_CHUNK // max(row_elems, 1))
            for r in range(0, rows.shape[0], step):
                flat[r : r + step] = gguf.quants.dequantize(np.asarray(rows[r : r + step]), qtype)
        else:
            self.check_readable(name)
        self.release(name)
        return out

    def check_readable(self, name: str) -> GGMLType:
        """The tensor's type, or one UnsupportedModelError line naming the tensor, its type and what pijax reads."""
        qtype = self.ggml_type(name)
        if qtype not in DEQUANTIZABLE and qtype not in _PLAIN_NUMPY_OF_GGML:
            raise UnsupportedModelError(
                f"tensor {name} has type {qtype.name} (ggml type id {self.tensors[name].ggml_type}), which pijax "
                f"cannot read; supported: {SUPPORTED_TYPES_TEXT}",
                self.path,
            )
        return qtype

    def release(self, name: str) -> None:
        """Drop the pages of a tensor's bytes from this process's resident set (the page cache keeps them, and
        a later read faults them back in: the mapping is read-only and file-backed, so nothing is lost)."""
        info = self._info(name)
        page = mmap.PAGESIZE
        start = info.offset // page * page
        end = -(-(info.offset + info.nbytes) // page) * page
        raw_map = getattr(self._mmap, "_mmap", None)
        if raw_map is None or not hasattr(raw_map, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        end = min(end, len(raw_map))
        if end > start:
            raw_map.madvise(mmap.MADV_DONTNEED, start, end - start)

    def _info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            from pijax.errors import TensorError

            raise TensorError(f"missing tensor {name}", self.path) from None


def _is_old_i32(type_id: int, magic: str, arch: Any) -> bool:
    """PowerInfer-era files: the PWRI magic, or a gpu index (which never holds IQ3_XXS) under either magic."""
    return type_id == POWERINFER_I32_TYPE_ID and (magic == "PWRI" or arch == GPU_INDEX_ARCH)


def _resolve_type(type_id: int, magic: str, name: str, path: Path, arch: Any = None) -> GGMLType:
    if _is_old_i32(type_id, magic, arch):
        return GGMLType.I32
    try:
        return GGMLType(type_id)
    except ValueError:
        raise UnsupportedModelError(
            f"tensor {name} has unknown ggml type id {type_id}; supported: {SUPPORTED_TYPES_TEXT}", path
        ) from None


class _Cursor:
    """Bounds-checked little-endian reads; running off the end is reported as truncation."""

    def __init__(self, data: memoryview, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise GGUFFormatError(
                f"truncated or corrupt: {what} at byte {self.pos} needs {n} bytes, the file has {len(self.data)}",
                self.path,
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.scalar("<Q", what)
        if n > _MAX_STRING:
            raise GGUFFormatError(f"corrupt: {what} claims a {n}-byte string", self.path)
        raw = self.take(n, what)
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFFormatError(f"corrupt: {what} is not valid UTF-8", self.path) from None

    def value(self, vtype: int, key: str) -> Any:
        try:
            vt = VT(vtype)
        except ValueError:
            raise GGUFFormatError(f"corrupt: metadata {key!r} has unknown value type {vtype}", self.path) from None
        if vt == VT.STRING:
            return self.string(f"metadata {key!r}")
        if vt == VT.ARRAY:
            etype = self.scalar("<I", f"metadata {key!r}")
            count = self.scalar("<Q", f"metadata {key!r}")
            if etype in _SCALAR_FMT and etype != VT.BOOL:
                dt = np.dtype(_NUMPY_OF_VT[VT(etype)]).newbyteorder("<")
                raw = self.take(count * dt.itemsize, f"metadata {key!r}")
                return np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="))
            if count > len(self.data):
                raise GGUFFormatError(f"corrupt: metadata {key!r} claims {count} elements", self.path)
            return [self.value(etype, key) for _ in range(count)]
        return self.scalar(_SCALAR_FMT[vt], f"metadata {key!r}")


def _shown(name: str, limit: int = 48) -> str:
    """A name as error messages show it, cut at `limit` or its first unprintable character: a damaged length can
    make a key thousands of raw bytes long."""
    cut = min(limit, next((i for i, c in enumerate(name) if not c.isprintable()), len(name)))
    return name if cut == len(name) else name[:cut] + "..."


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Parse a GGUF (or PowerInfer `PWRI`) file; any malformation raises GGUFFormatError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise GGUFFormatError(f"cannot open: {e.strerror}", path) from None
    if size == 0:
        raise GGUFFormatError("empty file (0 bytes), not a GGUF model", path)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(memoryview(mm), path)
    magic_raw = bytes(cur.take(4, "magic"))
    if magic_raw not in MAGICS:
        raise GGUFFormatError(f"not a GGUF file (magic {magic_raw!r}, expected b'GGUF' or b'PWRI')", path)
    magic = MAGICS[magic_raw]
    version = cur.scalar("<I", "version")
    if version not in (2, 3):
        raise GGUFFormatError(f"unsupported GGUF version {version} (pijax reads 2 and 3)", path)
    n_tensors = cur.scalar("<Q", "tensor count")
    n_kv = cur.scalar("<Q", "metadata count")
    if n_tensors > size or n_kv > size:
        raise GGUFFormatError(f"corrupt header: {n_tensors} tensors, {n_kv} metadata entries", path)
    metadata: dict[str, Any] = {}
    metadata_types: dict[str, VT] = {}
    for _ in range(n_kv):
        key = cur.string("metadata key")
        vtype = cur.scalar("<I", f"metadata {_shown(key)!r}")
        metadata[key] = cur.value(vtype, _shown(key))
        metadata_types[key] = VT(vtype)
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    if alignment <= 0 or alignment & (alignment - 1):
        raise GGUFFormatError(f"corrupt: general.alignment {alignment} is not a power of two", path)
    infos = []
    for _ in range(n_tensors):
        name = cur.string("tensor name")
        shown = _shown(name)
        n_dims = cur.scalar("<I", f"tensor {shown}")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise GGUFFormatError(f"corrupt: tensor {shown} has {n_dims} dimensions", path)
        ne = [cur.scalar("<Q", f"tensor {shown}") for _ in range(n_dims)]
        type_id = cur.scalar("<I", f"tensor {shown}")
        rel = cur.scalar("<Q", f"tensor {shown}")
        infos.append((name, ne, type_id, rel))
    data_start = -(-cur.pos // alignment) * alignment
    tensors: dict[str, TensorInfo] = {}
    for name, ne, type_id, rel in infos:
        qtype = _resolve_type(type_id, magic, name, path, metadata.get("general.architecture"))
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n = int(np.prod(ne, dtype=np.uint64))
        if ne[0] % block:
            raise GGUFFormatError(f"corrupt: tensor {name} row of {ne[0]} is not a multiple of {block}", path)
        nbytes = n // block * type_size
        start = data_start + rel
        if rel % alignment or start + nbytes > size:
            raise GGUFFormatError(
                f"truncated or corrupt: tensor {name} spans bytes {start}..{start + nbytes}, the file has {size}",
                path,
            )
        if name in tensors:
            raise GGUFFormatError(f"corrupt: tensor {name} appears twice", path)
        tensors[name] = TensorInfo(name, type_id, tuple(int(x) for x in reversed(ne)), start, nbytes)
    return GGUFFile(path, magic, version, alignment, metadata, tensors, mm, metadata_types)


def _pack_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _infer_vtype(value: Any) -> VT:
    if isinstance(value, bool):
        return VT.BOOL
    if isinstance(value, int):
        if 0 <= value < 1 << 32:
            return VT.UINT32
        return VT.INT64 if value < 0 else VT.UINT64
    if isinstance(value, float):
        return VT.FLOAT32
    if isinstance(value, str):
        return VT.STRING
    if isinstance(value, np.generic):
        return _VT_OF_NUMPY[value.dtype]
    raise TypeError(f"cannot infer a GGUF type for {type(value).__name__}")


def _pack_value(value: Any, vtype: VT | None = None) -> bytes:
    """Type id + payload. For arrays, `vtype` is the element type."""
    if isinstance(value, np.ndarray | list | tuple):
        arr = value if isinstance(value, np.ndarray) else None
        if arr is not None:
            etype = vtype or _VT_OF_NUMPY[arr.dtype]
            body = np.ascontiguousarray(arr, dtype=np.dtype(_NUMPY_OF_VT[etype]).newbyteorder("<")).tobytes()
        else:
            etype = vtype or (_infer_vtype(value[0]) if len(value) else VT.INT32)
            body = b"".join(_pack_value(v, etype)[4:] for v in value)
        return struct.pack("<IIQ", VT.ARRAY, etype, len(value)) + body
    vt = vtype or _infer_vtype(value)
    if vt == VT.STRING:
        return struct.pack("<I", vt) + _pack_string(value)
    return struct.pack("<I", vt) + struct.pack(_SCALAR_FMT[vt], value)


def _tensor_type(
    name: str, dtype: np.dtype, type_ids: Mapping[str, int], magic: str, arch: Any
) -> tuple[int, GGMLType]:
    if name in type_ids:
        type_id = type_ids[name]
        return type_id, GGMLType.I32 if _is_old_i32(type_id, magic, arch) else GGMLType(type_id)
    qtype = _GGML_OF_NUMPY[np.dtype(dtype)]
    return int(qtype), qtype


def write_gguf(
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any],
    tensors: Sequence[tuple[str, np.ndarray]],
    *,
    magic: str = "GGUF",
    type_ids: Mapping[str, int] | None = None,
    alignment: int = DEFAULT_ALIGNMENT,
) -> None:
    """Write a GGUF v3 file. Arrays are written in numpy shape (GGUF ne is the reverse).

    Plain numpy dtypes map to their ggml types; a uint8 array plus a `type_ids` entry writes pre-quantized
    blocks (its last axis is then bytes). `magic="PWRI"` and `type_ids={name: 18}` write PowerInfer's flavour.
    """
    specs = [(name, arr.shape, arr.dtype) for name, arr in tensors]
    write_gguf_stream(
        path, metadata, specs, (arr for _, arr in tensors), magic=magic, type_ids=type_ids, alignment=alignment
    )


def write_gguf_stream(
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any],
    specs: Sequence[tuple[str, tuple[int, ...], np.typing.DTypeLike]],
    arrays: Iterable[np.ndarray],
    *,
    magic: str = "GGUF",
    type_ids: Mapping[str, int] | None = None,
    alignment: int = DEFAULT_ALIGNMENT,
) -> None:
    """Write a GGUF v3 file whose tensors arrive one at a time from `arrays`, in the order of `specs`.

    For files larger than memory (e.g. synthetic scale models): the header is built from `specs` (name, numpy
    shape, dtype) and each array is written and dropped as soon as it arrives.
    """
    if magic not in MAGICS.values():
        raise ValueError(f"magic must be one of {sorted(MAGICS.values())}")
    type_ids = dict(type_ids or {})
    arch = metadata.get("general.architecture")
    arch = arch.value if isinstance(arch, Meta) else arch
    kv = bytearray()
    for key, value in metadata.items():
        kv += _pack_string(key)
        if isinstance(value, Meta):
            kv += _pack_value(value.value, None if value.vtype == VT.ARRAY else value.vtype)
        else:
            kv += _pack_value(value)
    infos = bytearray()
    offset = 0
    for name, shape, dtype in specs:
        type_id, qtype = _tensor_type(name, np.dtype(dtype), type_ids, magic, arch)
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        ne = list(shape)
        if np.dtype(dtype) == np.uint8 and qtype not in _PLAIN_NUMPY_OF_GGML:
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            ne[-1] = ne[-1] // type_size * block
        infos += _pack_string(name) + struct.pack("<I", len(ne))
        infos += b"".join(struct.pack("<Q", d) for d in reversed(ne))
        infos += struct.pack("<IQ", type_id, offset)
        offset += nbytes + (-nbytes % alignment)
    header = struct.pack("<4sIQQ", magic.encode(), 3, len(specs), len(metadata)) + bytes(kv) + bytes(infos)
    header += b"\0" * (-len(header) % alignment)
    with open(path, "wb") as f:
        f.write(header)
        it = iter(arrays)
        for name, shape, dtype in specs:
            arr = next(it, None)
            if arr is None or arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
                got = "nothing" if arr is None else f"{arr.dtype}{arr.shape}"
                raise ValueError(f"tensor {name}: expected {np.dtype(dtype)}{tuple(shape)}, got {got}")
            raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False)
            f.write(memoryview(raw).cast("B"))
            f.write(b"\0" * (-raw.nbytes % alignment))
        if next(it, None) is not None:
            raise ValueError(f"more arrays than the {len(specs)} tensor specs")
