"""The `<model>.generated.gpuidx` file: GpuIndex, and writing and strictly reading it.

Layout as PowerInfer writes it (a GGUF v3 file): metadata `general.architecture = generic.gpu_index`,
`generic.gpu_index.block_count` (u32), `split.vram_capacity` (u64, the bytes the FFN split was given), then per
layer, in order, `blk.{i}.gpu_idx` int32 [n_ff] (1 = hot) and `blk.{i}.gpu_bucket` int32 [k_i] (hot ids,
ascending). Compat mode writes the `PWRI` magic and ggml type id 18 (2023's I32) so PowerInfer reads the file;
otherwise `GGUF` and today's I32 id (26). Reading accepts PWRI with 18 or 26 and GGUF with 26 (the GGUF reader
maps 18 to I32 only under PWRI).

pijax adds keys under `pijax.`: format version, model / stats / hardware fingerprints, policy name and
parameters (JSON), budget bytes, capacity in neurons, and a CRC32 over the other metadata and all tensor
bytes. A file with none of them (made by PowerInfer) loads with `verified=False`; a file with only some of them
is corrupt. Read problems raise IndexFileError whose problem starts with "missing", "truncated" or "corrupt"
(or "not a file", "cannot read"). Files are written with the usual permissions (0666 less the umask).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pijax.errors import GGUFFormatError, IndexFileError, PijaxError
from pijax.io.gguf import POWERINFER_I32_TYPE_ID, VT, GGMLType, Meta, read_gguf, write_gguf

ARCH = "generic.gpu_index"
KEY_ARCH = "general.architecture"
KEY_BLOCKS = "generic.gpu_index.block_count"
KEY_VRAM = "split.vram_capacity"
FORMAT_VERSION = 1
KEY_CHECKSUM = "pijax.checksum"
PIJAX_KEYS = (
    "pijax.format_version",
    "pijax.model_fingerprint",
    "pijax.stats_fingerprint",
    "pijax.policy",
    "pijax.policy_params",
    "pijax.budget_bytes",
    "pijax.capacity_neurons",
    "pijax.hardware_fingerprint",
    KEY_CHECKSUM,
)
SUFFIX = ".generated.gpuidx"


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What an index was built for; a file is reused only when all of it matches the request."""

    model_fingerprint: str
    stats_fingerprint: str
    policy: str
    policy_params: str
    budget_bytes: int
    capacity_neurons: int
    hardware_fingerprint: str
    format_version: int = FORMAT_VERSION


@dataclasses.dataclass(eq=False)
class GpuIndex:
    """Per-layer hot neuron ids (`buckets`, ascending int32) and `masks` [n_layer, n_ff] bool.

    verified: the file carries pijax's provenance and its checksum matched (False for PowerInfer-made files).
    """

    buckets: list[np.ndarray]
    masks: np.ndarray
    metadata: dict[str, Any]
    verified: bool
    provenance: Provenance | None = None
    path: Path | None = None
    magic: str = "GGUF"

    @property
    def n_layer(self) -> int:
        return int(self.masks.shape[0])

    @property
    def n_ff(self) -> int:
        return int(self.masks.shape[1])

    @property
    def hot_counts(self) -> list[int]:
        return [len(b) for b in self.buckets]

    @property
    def total_hot(self) -> int:
        return int(sum(self.hot_counts))

    @property
    def vram_capacity(self) -> int | None:
        value = self.metadata.get(KEY_VRAM)
        return int(value) if value is not None else None


def default_path(model_path: str | os.PathLike[str]) -> Path:
    """PowerInfer's place for the index: next to the model, `<model file>.generated.gpuidx`."""
    return Path(os.fspath(model_path) + SUFFIX)


def _tensor_names(layer: int) -> tuple[str, str]:
    return f"blk.{layer}.gpu_idx", f"blk.{layer}.gpu_bucket"


def _checksum(metadata: dict[str, Any], arrays: list[np.ndarray]) -> str:
    meta = {k: v for k, v in metadata.items() if k != KEY_CHECKSUM}
    crc = zlib.crc32(json.dumps(meta, sort_keys=True, default=repr).encode())
    for arr in arrays:
        crc = zlib.crc32(memoryview(np.ascontiguousarray(arr)).cast("B"), crc)
    return f"crc32:{crc:08x}"


def _layer_arrays(buckets: list[np.ndarray], n_ff: int) -> list[np.ndarray]:
    out = []
    for ids in buckets:
        mask = np.zeros(n_ff, dtype="<i4")
        mask[ids] = 1
        out += [mask, np.ascontiguousarray(ids, dtype="<i4")]
    return out


def _check_buckets(buckets: list[np.ndarray], n_ff: int) -> None:
    for layer, ids in enumerate(buckets):
        ids = np.asarray(ids)
        if ids.ndim != 1 or (len(ids) and (ids[0] < 0 or ids[-1] >= n_ff or (np.diff(ids) <= 0).any())):
            raise IndexFileError(f"layer {layer}: hot ids must be ascending, unique and in [0, {n_ff})")


def write_gpuidx(
    path: str | os.PathLike[str],
    buckets: list[np.ndarray],
    n_ff: int,
    *,
    vram_capacity: int,
    provenance: Provenance | None = None,
    compat: bool = False,
) -> None:
    """Write the index atomically: a temp file in the same folder, fsync, rename, fsync of the folder.

    A crash at any point leaves either the old file or the new one at `path`, never a partial file (a
    leftover `.<name>.*.tmp` may remain; `remove_orphan_temps` clears them under the build lock).
    """
    path = Path(path)
    _check_buckets(buckets, n_ff)
    arrays = _layer_arrays(buckets, n_ff)
    metadata: dict[str, Any] = {
        KEY_ARCH: ARCH,
        KEY_BLOCKS: Meta(len(buckets), VT.UINT32),
        KEY_VRAM: Meta(int(vram_capacity), VT.UINT64),
    }
    plain: dict[str, Any] = {KEY_ARCH: ARCH, KEY_BLOCKS: len(buckets), KEY_VRAM: int(vram_capacity)}
    if provenance is not None:
        prov = {
            "pijax.format_version": Meta(provenance.format_version, VT.UINT32),
            "pijax.model_fingerprint": provenance.model_fingerprint,
            "pijax.stats_fingerprint": provenance.stats_fingerprint,
            "pijax.policy": provenance.policy,
            "pijax.policy_params": provenance.policy_params,
            "pijax.budget_bytes": Meta(int(provenance.budget_bytes), VT.UINT64),
            "pijax.capacity_neurons": Meta(int(provenance.capacity_neurons), VT.UINT64),
            "pijax.hardware_fingerprint": provenance.hardware_fingerprint,
        }
        metadata.update(prov)
        plain.update({k: (v.value if isinstance(v, Meta) else v) for k, v in prov.items()})
        metadata[KEY_CHECKSUM] = _checksum(plain, arrays)
    names = [n for layer in range(len(buckets)) for n in _tensor_names(layer)]
    type_ids = {n: POWERINFER_I32_TYPE_ID for n in names} if compat else None
    tmp = _create_temp(path)
    try:
        write_gguf(
            tmp, metadata, list(zip(names, arrays, strict=True)), magic="PWRI" if compat else "GGUF", type_ids=type_ids
        )
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_path(path.parent)


def _create_temp(path: Path) -> str:
    """An empty `.<name>.<random>.tmp` next to `path`, created with mode 0666 less the umask, as other files are
    (tempfile.mkstemp would make it 0600, so other users of a shared cache could not read the index)."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path}")


def _fsync_path(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_orphan_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Delete temp files a killed writer left next to `path`. Call only while holding the build lock."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _corrupt(problem: str, path: Path) -> IndexFileError:
    return IndexFileError(f"corrupt: {problem}", path)


def load_gpuidx(path: str | os.PathLike[str]) -> GpuIndex:
    """Read and fully check a gpuidx file (pijax- or PowerInfer-made). Raises IndexFileError."""
    path = Path(path)
    if not path.exists():
        raise IndexFileError("missing: no such file", path)
    if path.is_dir():
        raise IndexFileError("not a file: it is a folder", path)
    try:
        return _load(path)
    except PermissionError:
        raise IndexFileError("cannot read: permission denied", path) from None
    except IndexFileError:
        raise
    except (PijaxError, OSError, ValueError, TypeError, IndexError, KeyError, OverflowError) as e:
        # Belt and braces: whatever a damaged file trips over is reported as corruption, never a traceback.
        raise _corrupt(f"{type(e).__name__}: {e}", path) from None


def _load(path: Path) -> GpuIndex:
    if path.stat().st_size == 0:
        raise IndexFileError("truncated: empty file (0 bytes)", path)
    try:
        f = read_gguf(path)
    except GGUFFormatError as e:
        kind = "truncated" if e.problem.startswith(("truncated", "empty")) else "corrupt"
        detail = e.problem.removeprefix("truncated or corrupt: ").removeprefix("corrupt: ")
        raise IndexFileError(f"{kind}: {detail}", path) from None
    except PijaxError as e:
        raise _corrupt(e.problem, path) from None
    md = f.metadata
    if md.get(KEY_ARCH) != ARCH:
        raise _corrupt(f"{KEY_ARCH} is {md.get(KEY_ARCH)!r}, not {ARCH!r}", path)
    n_layer = md.get(KEY_BLOCKS)
    if not isinstance(n_layer, int) or n_layer < 1 or len(f.tensors) != 2 * n_layer:
        raise _corrupt(f"{KEY_BLOCKS} {n_layer!r} does not match {len(f.tensors)} tensors", path)
    names = list(f.tensors)
    arrays: list[np.ndarray] = []
    for layer in range(n_layer):
        for pos, want in enumerate(_tensor_names(layer)):
            name = names[2 * layer + pos]
            if name != want:
                raise _corrupt(f"tensor {2 * layer + pos} is {name!r}, expected {want!r}", path)
            type_id = f.tensors[name].ggml_type
            ok = type_id == GGMLType.I32 or (f.magic == "PWRI" and type_id == POWERINFER_I32_TYPE_ID)
            if not ok or len(f.tensors[name].shape) != 1:
                raise _corrupt(f"tensor {name} is not a 1-D int32 tensor (type id {type_id})", path)
            arrays.append(f.raw(name))
    present = [k for k in md if k.startswith("pijax.")]
    if present:
        missing = [k for k in PIJAX_KEYS if k not in md]
        if missing:
            raise _corrupt(f"pijax keys missing: {missing}", path)
        if _checksum(md, arrays) != md[KEY_CHECKSUM]:
            raise _corrupt("checksum mismatch", path)
    mask_rows = arrays[0::2]
    n_ff = len(mask_rows[0])
    if n_ff < 1 or any(len(m) != n_ff for m in mask_rows):
        raise _corrupt("layers' gpu_idx tensors differ in length", path)
    masks_i32 = np.stack(mask_rows)
    if ((masks_i32 != 0) & (masks_i32 != 1)).any():
        raise _corrupt("gpu_idx holds values other than 0 and 1", path)
    masks = masks_i32.astype(bool)
    buckets = [np.array(b, dtype=np.int32) for b in arrays[1::2]]
    for layer, ids in enumerate(buckets):
        if len(ids) and (ids[0] < 0 or ids[-1] >= n_ff or (np.diff(ids) <= 0).any()):
            raise _corrupt(f"layer {layer}: gpu_bucket is not strictly ascending within [0, {n_ff})", path)
        if len(ids) != int(masks_i32[layer].sum()) or not masks[layer, ids].all():
            raise _corrupt(f"layer {layer}: gpu_bucket does not list exactly the gpu_idx neurons", path)
    metadata = dict(md)
    if not present:
        return GpuIndex(buckets, masks, metadata, verified=False, path=path, magic=f.magic)
    try:
        prov = Provenance(
            model_fingerprint=str(md["pijax.model_fingerprint"]),
            stats_fingerprint=str(md["pijax.stats_fingerprint"]),
            policy=str(md["pijax.policy"]),
            policy_params=str(md["pijax.policy_params"]),
            budget_bytes=int(md["pijax.budget_bytes"]),
            capacity_neurons=int(md["pijax.capacity_neurons"]),
            hardware_fingerprint=str(md["pijax.hardware_fingerprint"]),
            format_version=int(md["pijax.format_version"]),
        )
    except (TypeError, ValueError):
        raise _corrupt("pijax keys have the wrong types", path) from None
    return GpuIndex(buckets, masks, metadata, verified=True, provenance=prov, path=path, magic=f.magic)


def index_from_buckets(buckets: list[np.ndarray], n_ff: int, **metadata: Any) -> GpuIndex:
    """An in-memory GpuIndex (no file), e.g. for `disable`d or unsaved indexes."""
    from pijax.index.policies import masks_from_buckets

    b = [np.asarray(x, dtype=np.int32) for x in buckets]
    return GpuIndex(b, masks_from_buckets(b, n_ff), dict(metadata), verified=False)
