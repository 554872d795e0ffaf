"""Reading a GGUF's matrices straight into llama.cpp's block formats (`BlockRows`), for `load_llama`.

`load_llama(path, fmt)` with fmt "q8_0", "q4_0", "q4_1" or "native" takes its matrices from here:
- A matrix already stored in the target block type is copied byte for byte: no f32 round trip, no rounding.
- "native" keeps every matrix in its own type where the kernels read it (Q8_0, Q4_0, Q4_1): on SmolLM2's Q4_1
  file the layers stay Q4_1 and the tied Q8_0 embedding/output head stays Q8_0, as llama.cpp runs that file.
  A matrix of another type (F32, F16, the K-quants) becomes Q8_0, the most precise block format the kernels have.
- An explicit format converts every other matrix to it (dequantized, then quantized by llama.cpp's reference
  quantizer, `gguf.quants`), the output head included.
- A matrix whose rows are not a multiple of 32 stays f32 (llama.cpp's quantizer falls back for those too).
The token embedding table is also kept in f32 for the lookup (one row per token), and the norms stay f32.
The dense FFN (`pijax.model.ffn.FFN`) keeps the file's down matrix [D, F] (`down_df`: llama.cpp's order of
products); a predictor-gated one has down_t rows [F, D], the transposed down matrix re-quantized to the FFN's block
format (the file stores it along F; only a file that holds `ffn_down_t` in that format keeps its bytes).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from pijax.config import ModelConfig
from pijax.errors import ConfigError
from pijax.io.gguf import GGUFFile
from pijax.kernels.blocks import BLOCK, BLOCK_FORMATS, FORMAT_OF_GGML, BlockRows, quantize_blocks
from pijax.kernels.formats import Weight
from pijax.model.ffn import FFN
from pijax.model.predictor import Predictor
from pijax.model.rows import Selector

NATIVE = "native"
# What `native` turns a matrix into when the kernels cannot read its own type.
NATIVE_FALLBACK = "q8_0"


def is_block_load(fmt: str) -> bool:
    """Whether `load_llama` keeps matrices in block formats for this `fmt`."""
    return fmt == NATIVE or fmt in BLOCK_FORMATS


def check_load_format(fmt: str) -> str:
    if not is_block_load(fmt):
        raise ConfigError(f"block load format {fmt!r} is not one of {(*BLOCK_FORMATS, NATIVE)}")
    return fmt


def target_kind(f: GGUFFile, name: str, fmt: str) -> str:
    """The block format tensor `name` is kept in under `fmt` (see the module docstring)."""
    if fmt != NATIVE:
        return fmt
    return FORMAT_OF_GGML.get(f.ggml_type(name), NATIVE_FALLBACK)


def block_matrix(f: GGUFFile, name: str, fmt: str, *, transpose: bool = False) -> Weight:
    """Tensor `name` [N, D] (its transpose with `transpose`) as BlockRows, or f32 when D is not a multiple of 32."""
    shape = f.tensors[name].shape
    kind = target_kind(f, name, fmt)
    cols = shape[0] if transpose else shape[-1]
    if cols % BLOCK:
        arr = f.array(name, np.float32)
        return jnp.asarray(np.ascontiguousarray(arr.T) if transpose else arr)
    if not transpose and FORMAT_OF_GGML.get(f.ggml_type(name)) == kind:
        raw = np.array(f.raw(name), copy=True).reshape(shape[0], -1)
        f.release(name)
        if raw.shape[1] != shape[-1] // BLOCK * BLOCK_FORMATS[kind][0]:
            raise ConfigError(f"tensor {name}: {raw.shape[1]} bytes per row for {shape[-1]} {kind} weights")
        return BlockRows(jnp.asarray(raw), kind)
    arr = f.array(name, np.float32)
    return quantize_blocks(arr.T if transpose else arr, kind)


def block_ffn(f: GGUFFile, prefix: str, cfg: ModelConfig, fmt: str, sel: Selector, predictor: Predictor | None) -> FFN:
    """Layer `prefix`'s FFN on the kernels: dense (down [D, F] as stored), or under `sel` with `predictor`."""
    gate_name = prefix + "ffn_gate.weight"
    gate = block_matrix(f, gate_name, fmt) if gate_name in f.tensors else None
    up = block_matrix(f, prefix + "ffn_up.weight", fmt)
    if predictor is None:
        down_df = block_matrix(f, prefix + "ffn_down.weight", fmt)
        return FFN(cfg, up, gate, None, down_df=down_df, selector=sel, backend="kernels")
    if prefix + "ffn_down_t.weight" in f.tensors:
        down_t = block_matrix(f, prefix + "ffn_down_t.weight", up.kind if isinstance(up, BlockRows) else fmt)
    else:
        kind = up.kind if isinstance(up, BlockRows) else NATIVE_FALLBACK
        down_t = block_matrix(f, prefix + "ffn_down.weight", kind, transpose=True)
    if not all(isinstance(w, BlockRows) for w in (up, down_t, gate or up)):
        raise ConfigError(f"{f.path}: a sparse block-format FFN needs n_embd a multiple of {BLOCK}")
    return FFN(cfg, up, gate, down_t, selector=sel, backend="kernels", predictor=predictor)
