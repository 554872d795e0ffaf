"""Hybrid placement of a LLaMA: `build_hybrid(model, buckets, placement, ...) -> HybridLlama`.

It places, as PowerInfer does: the token embedding on the host; attention, norms, predictors and the output head
on the accelerators (replicated over the mesh); each layer's hot FFN rows packed in bucket order and sharded over
the mesh; its cold rows packed on the host. `pijax.engine.hybrid_engine.HybridEngine` runs it. Dimension legend:
see `pijax.model.layers`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pijax.config import ModelConfig
from pijax.engine.hybrid_ffn import ColdFFN, HotMode, HybridFFN, MaskSource
from pijax.errors import ConfigError, DataError
from pijax.io.weights import LayerWeights, PredictorWeights
from pijax.layout.devices import Placement, to_mesh
from pijax.layout.memory import ResidentReport, resident_report
from pijax.layout.pack import PackedLayer, pack_layer
from pijax.model.layers import KVCache, RMSNorm
from pijax.model.llama import Block, Llama
from pijax.model.predictor import Predictor


def place(module: nnx.Module, sharding: Any) -> nnx.Module:
    """Move every array of `module` to `sharding`, in place."""
    state = nnx.state(module)
    nnx.update(module, jax.tree.map(lambda a: to_mesh(np.asarray(a), sharding), state))
    return module


class Head(nnx.Module):
    """Output norm and output matrix [V, D] (a copy of the embedding table when the model ties them)."""

    def __init__(self, cfg: ModelConfig, norm_w: np.ndarray, w_out_vd: np.ndarray, *, dtype: Any = jnp.float32):
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps, norm_w, dtype=dtype)
        self.w_out_vd = nnx.Param(jnp.asarray(w_out_vd, dtype=dtype))

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        return jnp.einsum("btd,vd->btv", self.norm(x_btd), self.w_out_vd[...])


class Stage(nnx.Module):
    """The layers one accelerator call runs (see the module docstring); `head` only in the last stage."""

    def __init__(self, blocks: list[Block], head: Head | None):
        self.blocks = nnx.List(blocks)
        self.head = head


@dataclasses.dataclass
class HybridLlama:
    """A LLaMA placed for hybrid execution (see `build_hybrid`)."""

    cfg: ModelConfig
    placement: Placement
    embed_vd: jax.Array  # on the host
    blocks: list[Block]  # accelerators; block.ffn is a HybridFFN
    colds: list[ColdFFN | None]  # host; None for an all-hot layer
    head: Head
    n_hot: list[int]
    source: MaskSource
    hot_mode: HotMode
    overlap: bool

    @property
    def n_layer(self) -> int:
        return len(self.blocks)

    def backends(self) -> str:
        """Which backend the hot and the cold rows run on, e.g. "hot: kernels, cold: kernels" ("none": no rows)."""
        hot = [b.ffn.hot.kernels for b in self.blocks if b.ffn.hot is not None]
        cold = [c.kernels for c in self.colds if c is not None]

        def name(flags: list[bool]) -> str:
            return "none" if not flags else ("kernels" if all(flags) else ("xla" if not any(flags) else "mixed"))

        return f"hot: {name(hot)}, cold: {name(cold)}"

    @property
    def hot_fraction(self) -> float:
        return sum(self.n_hot) / (self.cfg.n_ff * self.n_layer)

    def parts(self, cache: KVCache | None = None) -> dict[str, Any]:
        """Named pytrees of every array the model holds (and the KV cache, if given), for accounting."""
        ffns = [b.ffn for b in self.blocks]
        out = {
            "attention + norms": [
                (nnx.state(b.attn), nnx.state(b.attn_norm), nnx.state(b.ffn_norm)) for b in self.blocks
            ],
            "predictors": [nnx.state(f.predictor) for f in ffns if f.predictor is not None],
            "hot FFN rows": [
                (f.hot.w_up_kd[...], f.hot.w_down_kd[...], None if f.hot.w_gate_kd is None else f.hot.w_gate_kd[...])
                for f in ffns
                if f.hot is not None
            ],
            "hot ids (buckets)": [f.hot.ids_k[...] for f in ffns if f.hot is not None],
            "cold ids": [f.cold_ids[...] for f in ffns if f.cold_ids is not None],
            "output head": nnx.state(self.head),
            "cold FFN rows (host)": [nnx.state(c) for c in self.colds if c is not None],
            "token embedding (host)": self.embed_vd,
        }
        if cache is not None:
            out["kv cache"] = cache
        return out

    def resident_report(self, budget_bytes: int | None = None, cache: KVCache | None = None) -> ResidentReport:
        p = self.placement
        return resident_report(self.parts(cache), p.local_accelerators, p.host, budget_bytes, p.n_accel)


def _np(var: nnx.Variable | None) -> np.ndarray | None:
    return None if var is None else np.asarray(var[...])


def _layer_weights(block: Any) -> LayerWeights:
    ffn = block.ffn
    return LayerWeights(
        attn_norm=_np(block.attn_norm.weight),
        wq=_np(block.attn.w_q_nd),
        wk=_np(block.attn.w_k_nd),
        wv=_np(block.attn.w_v_nd),
        wo=_np(block.attn.w_o_dn),
        ffn_norm=_np(block.ffn_norm.weight),
        up=_np(ffn.w_up_fd),
        gate=_np(ffn.w_gate_fd),
        down_t=_np(ffn.w_down_fd),
    )


def _per_layer(value: Any, n_layer: int, what: str) -> list[Any]:
    if value is None or np.isscalar(value):
        return [value] * n_layer
    values = list(value)
    if len(values) != n_layer:
        raise DataError(f"{what} are given for {len(values)} layers, the model has {n_layer}")
    return values


def build_hybrid(
    model: Any,
    buckets: Sequence[np.ndarray] | Any,
    placement: Placement,
    *,
    source: MaskSource = "predictor",
    predictors: Sequence[PredictorWeights | Predictor] | None = None,
    pred_threshold: float | Sequence[float] | None = None,
    hot_mode: HotMode = "gather",
    overlap: bool = False,
    hot_capacities: Sequence[int | None] | int | None = None,
    cold_capacities: Sequence[int | None] | int | None = None,
    max_gather_rows: int | None = None,
    hot_kernels: bool = False,
    cold_kernels: bool = False,
) -> HybridLlama:
    """Place a Model (or bare Llama) for hybrid execution following per-layer hot ids (a GpuIndex or a list).

    Weights are read from the module (so a swapped or fine-tuned FFN is what gets split); the module itself is
    left untouched. predictors default to the checkpoint's and pred_threshold to its sparse_threshold.
    hot_capacities: per-accelerator row cap for the "gather" hot mode; cold_capacities: cold rows gathered per
    token; None means no cap (every predicted-active row is computed). max_gather_rows: see
    pijax.engine.hybrid_ffn (None: half of each block's rows). hot_kernels / cold_kernels: run the hot shards /
    the cold rows on the CPU kernels (see pijax.engine.setup for when they win)."""
    llama: Llama = getattr(model, "module", model)
    cfg = llama.cfg
    buckets = list(getattr(buckets, "buckets", buckets))
    if len(buckets) != cfg.n_layer:
        raise DataError(f"the index has {len(buckets)} layers, the model has {cfg.n_layer}")
    ckpt = getattr(model, "checkpoint", None)
    if source == "predictor":
        if predictors is None:
            predictors = None if ckpt is None else ckpt.weights.predictors
        if predictors is None:
            raise ConfigError("mask source 'predictor' needs predictors (the model file has none)")
        if pred_threshold is None:
            pred_threshold = 0.0 if ckpt is None else float(ckpt.weights.sparse_threshold)
    preds = _per_layer(predictors, cfg.n_layer, "predictors") if predictors is not None else [None] * cfg.n_layer
    thresholds = _per_layer(0.0 if pred_threshold is None else pred_threshold, cfg.n_layer, "predictor thresholds")
    hot_caps = _per_layer(hot_capacities, cfg.n_layer, "hot capacities")
    cold_caps = _per_layer(cold_capacities, cfg.n_layer, "cold capacities")
    dtype = llama.dtype
    repl, host = placement.replicated, placement.host  # arrays built on the host device, then moved

    blocks, colds, n_hot = [], [], []
    stub_cfg = cfg.replace(n_ff=1)
    for i, src_block in enumerate(llama.layers):
        lw = _layer_weights(src_block)
        packed: PackedLayer = pack_layer(lw.up, lw.gate, lw.down_t, buckets[i], layer=i)
        stub = dataclasses.replace(
            lw,
            up=np.zeros((1, cfg.n_embd)),
            gate=None if lw.gate is None else np.zeros((1, cfg.n_embd)),
            down_t=np.zeros((1, cfg.n_embd)),
        )
        with jax.default_device(host):
            block = Block(stub_cfg, stub, rngs=nnx.Rngs(0), dtype=dtype)
            pred = None
            if source == "predictor":
                p = preds[i]
                pred = p if isinstance(p, Predictor) else Predictor.from_weights(p, dtype=dtype)
                pred = place(nnx.clone(pred), repl)
        for sub in (block.attn, block.attn_norm, block.ffn_norm):
            place(sub, repl)
        block.ffn = HybridFFN(
            cfg,
            packed,
            placement,
            source=source,
            predictor=pred,
            pred_threshold=float(thresholds[i]),
            hot_mode=hot_mode,
            hot_capacity=hot_caps[i],
            cold_capacity=cold_caps[i],
            max_gather_rows=max_gather_rows,
            dtype=dtype,
            hot_kernels=hot_kernels,
            cold_kernels=cold_kernels,
        )
        blocks.append(block)
        colds.append(
            None
            if packed.n_cold == 0
            else ColdFFN(
                packed,
                placement.on_host,
                kind=cfg.ffn_act,
                source=source,
                capacity=cold_caps[i],
                max_gather_rows=max_gather_rows,
                dtype=dtype,
                threshold=float(thresholds[i]),
                kernels=cold_kernels,
            )
        )
        n_hot.append(packed.n_hot)

    table = np.asarray(llama.token_embd_vd[...])
    w_out = table if llama.w_out_vd is None else np.asarray(llama.w_out_vd[...])
    with jax.default_device(host):
        head = Head(cfg, np.asarray(llama.output_norm.weight[...]), w_out, dtype=dtype)
    place(head, repl)
    return HybridLlama(
        cfg=cfg,
        placement=placement,
        embed_vd=jax.device_put(table, placement.on_host),
        blocks=blocks,
        colds=colds,
        head=head,
        n_hot=n_hot,
        source=source,
        hot_mode=hot_mode,
        overlap=overlap,
    )
