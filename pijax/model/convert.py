"""Put a model on the CPU kernels: convert a loaded Llama in place, or load a GGUF straight into a weight format.

- `use_kernels(model, fmt)`: attention and output-head matrices stored in `fmt`, every FFN's rows (and
  predictor) too, and its backend set to the kernels (its selector, threshold and capacity kept). The modules
  then compute through `pijax.kernels.ops`; build a new Engine (or `model.refresh()`) afterwards.
- `load_llama(path, fmt)`: the same model read from a GGUF tensor by tensor (memory-mapped), each matrix
  converted as it arrives, so peak memory is the converted model plus one matrix: never a second copy of a
  multi-GB model (`pijax.api.load_model` keeps the numpy checkpoint next to the module). Predictors may come from
  another file (a PowerInfer-style GGUF of the same weights).
The token embedding and the norms stay f32 (one embedding row is read per token). With `fmt` "q8_0", "q4_0",
"q4_1" or "native" the matrices are llama.cpp's blocks, read from the file as they are where they already are
one (`pijax.model.load_blocks` says which tensor gets what).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from pijax.config import FfnActivation
from pijax.errors import DataError
from pijax.io.checkpoint import THRESHOLD_KEY, model_config_from_gguf
from pijax.io.fingerprint import (
    PREDICTOR_FINGERPRINT_KEY,
    check_predictor_fingerprint,
    fingerprint_arrays,
    gguf_arrays,
)
from pijax.io.gguf import GGUFFile, read_gguf
from pijax.kernels import build
from pijax.kernels.formats import WeightFormat, check_format, to_format
from pijax.model.ffn import FFN
from pijax.model.llama import Llama
from pijax.model.load_blocks import block_ffn, block_matrix, is_block_load
from pijax.model.predictor import Predictor
from pijax.model.rows import Selector

_ATTN = {"w_q_nd": "attn_q", "w_k_nd": "attn_k", "w_v_nd": "attn_v", "w_o_dn": "attn_output"}


def use_kernels(
    model: Any,
    fmt: WeightFormat = "f32",
    *,
    predictor_fmt: WeightFormat | None = None,
    skip_inactive: bool = True,
) -> None:
    """Convert a Llama (or a pijax Model) in place; see the module docstring."""
    check_format(fmt)
    llama: Llama = getattr(model, "module", model)
    for block in llama.layers:
        for name in _ATTN:
            setattr(block.attn, name, nnx.Param(to_format(getattr(block.attn, name)[...], fmt)))
        ffn = block.ffn
        ffn.check(ffn.selector, "kernels", ffn.predictor)  # before any weight is converted
        ffn.to_format(fmt, predictor_fmt)
        ffn.configure(dataclasses.replace(ffn.selector, skip_inactive=skip_inactive), "kernels")
    if llama.w_out_vd is not None:
        llama.w_out_vd = nnx.Param(to_format(llama.w_out_vd[...], fmt))
    if hasattr(model, "refresh"):
        model.refresh()


def _stored(f: GGUFFile, name: str, transpose: bool = False) -> jax.Array:
    """A tensor as a jax array in its stored float dtype (f32/f16/bf16; other types dequantized to f32)."""
    stored = f.raw(name).dtype
    # A copy (f.array), not a view of the memory map: it also drops the file's pages from the resident set.
    arr = f.array(name, stored if stored in (np.float32, np.float16) else np.float32)
    if transpose:
        arr = np.ascontiguousarray(arr.T)
    return jnp.asarray(arr)


def load_llama(
    path: str | os.PathLike[str],
    fmt: WeightFormat = "f32",
    *,
    predictors_from: str | os.PathLike[str] | None = None,
    use_predictors: bool = True,
    pred_threshold: float | None = None,
    capacities: Sequence[int] | None = None,
    predictor_fmt: WeightFormat | None = None,
    ffn_act: FfnActivation | None = None,
    skip_inactive: bool = True,
    xla_ffn: bool = False,
    hugepages: bool = True,
    progress: bool = True,
) -> Llama:
    """A Llama whose matrices are stored in `fmt` and whose FFNs run on the kernels: predictor-gated when
    predictors are found (in `predictors_from`, else in `path`) and `use_predictors`, dense otherwise.
    `xla_ffn`: dense FFNs on the XLA backend instead (f32 only, no predictors). `hugepages`: back the
    weights with transparent huge pages (`pijax.kernels.build.use_hugepages`).

    `pred_threshold` defaults to the predictor file's `powerinfer.sparse_threshold` (else 0); `capacities`
    (per layer) to no cap. `fmt` "q8_0", "q4_0", "q4_1" or "native": llama.cpp's block formats, the file's
    bytes kept where they already are one (`pijax.model.load_blocks`); predictors then default to int8."""
    blocks = is_block_load(fmt)
    if not blocks:
        check_format(fmt)
    pfmt = check_format(predictor_fmt or ("int8" if blocks else fmt))
    if xla_ffn and fmt != "f32":
        raise DataError(f"the XLA FFN runs f32 weights, not {fmt}", path)
    use_predictors = use_predictors and not xla_ffn
    f = read_gguf(path)
    cfg = model_config_from_gguf(f, ffn_act)
    pf = f
    if use_predictors and predictors_from is not None:
        pf = read_gguf(predictors_from)
    has_pred = use_predictors and "blk.0.fc1.weight" in pf.tensors
    if use_predictors and predictors_from is not None and not has_pred:
        raise DataError("no predictors (blk.N.fc1/fc2) in this file", predictors_from)
    stored = pf.metadata.get(PREDICTOR_FINGERPRINT_KEY) if has_pred else None
    if stored is not None:  # the check load_predictors makes, computed from the file tensor by tensor
        mine = fingerprint_arrays(gguf_arrays(f, cfg.n_layer, cfg.tied_output))
        check_predictor_fingerprint(stored, mine, predictors_from or path)
    thr = float(pf.metadata.get(THRESHOLD_KEY, 0.0)) if pred_threshold is None else float(pred_threshold)
    caps = list(capacities) if capacities is not None else [cfg.n_ff] * cfg.n_layer
    if len(caps) != cfg.n_layer:
        raise DataError(f"{len(caps)} capacities for {cfg.n_layer} layers", path)
    for name, shape in (("token_embd.weight", (cfg.n_vocab, cfg.n_embd)), ("blk.0.ffn_up.weight", None)):
        if name not in f.tensors or (shape is not None and tuple(f.tensors[name].shape) != shape):
            raise DataError(f"tensor {name} is missing or has the wrong shape", path)

    llama = nnx.eval_shape(lambda: Llama(cfg, None, rngs=nnx.Rngs(0)))
    llama.token_embd_vd = nnx.Param(_stored(f, "token_embd.weight").astype(jnp.float32))
    llama.output_norm.weight = nnx.Param(_stored(f, "output_norm.weight").astype(jnp.float32))

    def matrix(name: str) -> Any:
        return block_matrix(f, name, fmt) if blocks else to_format(_stored(f, name), fmt)

    if llama.w_out_vd is not None:
        llama.w_out_vd = nnx.Param(matrix("output.weight"))
    elif blocks:  # a tied head in its block format; the lookup keeps the f32 table
        llama.w_out_vd = nnx.data(nnx.Param(matrix("token_embd.weight")))
    has_down_t = "blk.0.ffn_down_t.weight" in f.tensors
    for i, block in enumerate(tqdm(llama.layers, desc=f"load {fmt}", unit="layer", disable=not progress)):
        p = f"blk.{i}."
        block.attn_norm.weight = nnx.Param(_stored(f, p + "attn_norm.weight").astype(jnp.float32))
        block.ffn_norm.weight = nnx.Param(_stored(f, p + "ffn_norm.weight").astype(jnp.float32))
        for attr, tensor in _ATTN.items():
            setattr(block.attn, attr, nnx.Param(matrix(p + tensor + ".weight")))
        pred = None
        if has_pred:
            fc1, fc2 = (to_format(_stored(pf, p + f"{n}.weight"), pfmt) for n in ("fc1", "fc2"))
            pred = Predictor.from_rows(fc1, fc2)
        mode = "predictor" if has_pred else "dense"
        sel = Selector(mode, capacity=caps[i], threshold=thr, skip_inactive=skip_inactive)
        if blocks:
            block.ffn = block_ffn(f, p, cfg, fmt, sel, pred)
            continue
        down = _stored(f, p + "ffn_down_t.weight") if has_down_t else _stored(f, p + "ffn_down.weight", True)
        gate = to_format(_stored(f, p + "ffn_gate.weight"), fmt) if p + "ffn_gate.weight" in f.tensors else None
        if xla_ffn:
            block.ffn.w_up_fd = nnx.Param(to_format(_stored(f, p + "ffn_up.weight"), "f32"))
            block.ffn.w_gate_fd = None if gate is None else nnx.Param(gate)
            block.ffn.w_down_fd = nnx.Param(to_format(down, "f32"))
            continue
        up = to_format(_stored(f, p + "ffn_up.weight"), fmt)
        block.ffn = FFN(cfg, up, gate, to_format(down, fmt), selector=sel, backend="kernels", predictor=pred)
    if hugepages:
        build.use_hugepages(nnx.state(llama))
    return llama
