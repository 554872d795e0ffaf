"""`python -m pijax.io.convert IN.gguf OUT.gguf --to f32|f16|q8_0`: a copy of a GGUF model at another precision.

Also `--to bf16|q4_0|q4_1|q5_0|q5_1`: every type that `gguf.quants.quantize` writes (the K-quants it only reads).

Every metadata key is kept with its GGUF type (tokenizer, chat template, PowerInfer's keys); only
`general.file_type` is set to the new precision. PowerInfer's `PWRI` magic, its predictors (`fc1`/`fc2`) and its
`ffn_down_t` are kept. Which type each tensor gets:
- 1-D tensors (norms) stay F32, as llama.cpp's converters write them.
- Matrices get the target type; tensors that already have it are copied byte for byte. Rows that are not a
  multiple of the type's block (32) fall back to F16. Quantization is `gguf.quants.quantize` (numpy ports of
  llama.cpp's reference quantizers).
- PWRI files: PowerInfer's CPU sparse path reads `ffn_down_t` as f16 whatever type the file declares, except
  Q4_0, which has its own kernel (`ggml_compute_forward_mul_mat_axpy_q4_0`). So `--to q4_0` writes it Q4_0, as
  PowerInfer's own quantize does, and every other `--to` but f32 writes it F16 (an f32 or q8_0 `ffn_down_t`
  loads without complaint and decodes garbage there). `--to f32` keeps it f32 for pijax's parity work and says
  on stderr that PowerInfer cannot run that file. PWRI predictors are Q4_0 under `--to q4_0` (PowerInfer's
  quantize does the same: at 10% active, f16 predictors would be more bytes per token than the selected Q4 rows)
  and F16 under the other lower precisions; their output is only thresholded.
- Non-float tensors (PowerInfer's type-18 I32) are copied as they are.
The input is only read (memory-mapped, read-only); the output is written to a temporary file beside it and
renamed into place, so a failed or interrupted run leaves no partial file. OUT may not be IN.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import gguf
import numpy as np
from tqdm.auto import tqdm

from pijax.errors import ConfigError, PijaxError
from pijax.io.gguf import DEQUANTIZABLE, GGMLType, GGUFFile, Meta, read_gguf, write_gguf_stream

Target = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]
TARGETS: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
_TARGET_TYPE = {t: GGMLType[t.upper()] for t in TARGETS}
# llama.cpp's llama_ftype of a file whose matrices are mostly of that type.
FILE_TYPE = {t: int(gguf.LlamaFileType["ALL_F32" if t == "f32" else "MOSTLY_" + t.upper()]) for t in TARGETS}
FILE_TYPE_KEY = "general.file_type"
PROGRESS_MIN_BYTES = 64 << 20
_PREDICTOR_SUFFIXES = (".fc1.weight", ".fc2.weight")
# The ffn_down_t types PowerInfer's CPU sparse path reads as declared: its axpy kernel has a Q4_0 variant and
# otherwise reads the rows as f16 (f32 is kept for pijax's own parity work, with a warning).
_POWERINFER_DOWN_T = ("f32", "q4_0")


def output_type(f: GGUFFile, name: str, to: Target) -> GGMLType:
    """The ggml type tensor `name` gets in a `--to` copy (see the module docstring)."""
    qtype = f.check_readable(name)
    if qtype not in DEQUANTIZABLE:
        return qtype
    shape = f.tensors[name].shape
    if len(shape) < 2:
        return GGMLType.F32
    target = _TARGET_TYPE[to]
    if f.magic == "PWRI" and name.endswith(".ffn_down_t.weight") and to not in _POWERINFER_DOWN_T:
        return GGMLType.F16
    if f.magic == "PWRI" and name.endswith(_PREDICTOR_SUFFIXES) and target not in (GGMLType.F32, GGMLType.F16):
        target = GGMLType.Q4_0 if to == "q4_0" else GGMLType.F16
    if shape[-1] % gguf.GGML_QUANT_SIZES[target][0]:
        return GGMLType.F16
    return target


def _encode(f: GGUFFile, name: str, qtype: GGMLType) -> np.ndarray:
    """The tensor in `qtype`: numpy-typed for F32/F16/plain types, uint8 block rows for quantized ones."""
    if qtype == f.ggml_type(name):
        _, shape, dtype = _spec(f, name, qtype)
        return np.array(f.raw(name), copy=True).view(dtype).reshape(shape)
    if qtype == GGMLType.F32:
        return f.array(name, np.float32)
    if qtype == GGMLType.F16:
        return f.array(name, np.float16)
    return gguf.quants.quantize(f.array(name, np.float32), qtype)


def _spec(f: GGUFFile, name: str, qtype: GGMLType) -> tuple[str, tuple[int, ...], np.dtype]:
    shape = f.tensors[name].shape
    if qtype == GGMLType.F32:
        return name, shape, np.dtype(np.float32)
    if qtype == GGMLType.F16:
        return name, shape, np.dtype(np.float16)
    raw = f.raw(name)
    if qtype == f.ggml_type(name) and raw.dtype != np.uint8:
        return name, tuple(raw.shape), raw.dtype
    return name, gguf.quant_shape_to_byte_shape(shape, qtype), np.dtype(np.uint8)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def convert_gguf(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    to: Target,
    *,
    force: bool = False,
    progress: bool | None = None,
) -> Path:
    """Write `dst`, a copy of the model `src` at precision `to`; returns `dst`. `force`: replace an existing
    `dst`. `progress`: a tqdm bar on stderr (default: for inputs of at least PROGRESS_MIN_BYTES)."""
    src, dst = Path(src), Path(dst)
    if to not in TARGETS:
        raise ConfigError(f"--to {to!r} is not one of {', '.join(TARGETS)}")
    if _same_file(src, dst):
        raise ConfigError(f"the output {dst} is the input file; choose another output path", src)
    if dst.exists() and not force:
        raise ConfigError("the output file exists; pass --force to replace it", dst)
    f = read_gguf(src)
    types = {name: output_type(f, name, to) for name in f.tensors}
    if f.magic == "PWRI" and to == "f32" and any(n.endswith(".ffn_down_t.weight") for n in f.tensors):
        print(
            f"{dst}: ffn_down_t written as f32: pijax reads it, PowerInfer's CPU sparse path (which reads "
            "ffn_down_t as f16) cannot; use --to f16 for PowerInfer",
            file=sys.stderr,
        )
    metadata = {k: Meta(v, f.metadata_types[k]) for k, v in f.metadata.items()}
    metadata[FILE_TYPE_KEY] = Meta(FILE_TYPE[to], gguf.GGUFValueType.UINT32)
    specs = [_spec(f, name, qtype) for name, qtype in types.items()]
    total = sum(info.nbytes for info in f.tensors.values())
    show = total >= PROGRESS_MIN_BYTES if progress is None else progress
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"{src.name} -> {to}", disable=not show, file=sys.stderr)

    def arrays() -> Iterator[np.ndarray]:
        for name, qtype in types.items():
            yield _encode(f, name, qtype)
            bar.update(f.tensors[name].nbytes)

    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        write_gguf_stream(
            tmp,
            metadata,
            specs,
            arrays(),
            magic=f.magic,
            type_ids={name: _type_id(f, name, qtype) for name, qtype in types.items()},
            alignment=f.alignment,
        )
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    return dst


def _type_id(f: GGUFFile, name: str, qtype: GGMLType) -> int:
    """The id written for a tensor: the input's own id for a tensor kept as it is (PowerInfer's 18 stays 18)."""
    return f.tensors[name].ggml_type if qtype == f.ggml_type(name) else int(qtype)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pijax.io.convert",
        description="Write a copy of a GGUF model at another precision; every metadata key is kept.",
        epilog=(
            "1-D tensors stay f32. For PowerInfer (PWRI) files ffn_down_t is written as f16 for every --to but "
            "f32 and q4_0, because PowerInfer's CPU sparse path reads ffn_down_t as f16 whatever type the file "
            "declares, Q4_0 excepted (an f32 PWRI file decodes garbage there); --to f32 keeps it f32 for pijax "
            "and warns; --to q4_0 writes ffn_down_t and the predictors Q4_0, as PowerInfer's quantize does. "
            "IN is never written; OUT is written to a temporary file and renamed into place."
        ),
    )
    p.add_argument("input", type=Path, metavar="IN.gguf")
    p.add_argument("output", type=Path, metavar="OUT.gguf")
    p.add_argument("--to", required=True, choices=TARGETS, help="the precision of the copy's matrices")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        out = convert_gguf(
            args.input, args.output, args.to, force=args.force, progress=False if args.no_progress else None
        )
    except PijaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
