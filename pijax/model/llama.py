"""The dense LLaMA model as a Flax NNX module: embedding, blocks (attention + replaceable FFN), output head.

`Llama(cfg, weights)` holds a checkpoint's arrays (or a random init when `weights` is None). Its blocks live in
`llama.layers[i]`; `block.ffn` may be swapped for any module called as `ffn(h_btd, ffn_in_btd, pos) -> y_btd`
(pos: the position of the first of the T tokens).
Dimension legend: see `pijax.model.layers`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pijax.config import ModelConfig
from pijax.io.weights import LayerWeights, LlamaWeights
from pijax.kernels.formats import nbytes
from pijax.kernels.ops import linear
from pijax.model.ffn import FFN
from pijax.model.layers import Attention, KVCache, LayerCache, RMSNorm, param, rope_angles


class Block(nnx.Module):
    """x + attn(attn_norm(x)), then h + ffn(ffn_norm(h), h)."""

    def __init__(
        self,
        cfg: ModelConfig,
        weights: LayerWeights | None = None,
        *,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        w = weights
        self.attn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps, None if w is None else w.attn_norm, dtype=dtype)
        self.attn = Attention(cfg, w, rngs=rngs, dtype=dtype)
        self.ffn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps, None if w is None else w.ffn_norm, dtype=dtype)
        self.ffn = FFN.from_weights(cfg, w, rngs=rngs, dtype=dtype)

    def attend(
        self, x_btd: jax.Array, cos: jax.Array, sin: jax.Array, cache: LayerCache | None, pos: jax.Array | int
    ) -> tuple[jax.Array, LayerCache | None]:
        """The residual stream after attention (the FFN input), and the updated cache."""
        a, cache = self.attn(self.attn_norm(x_btd), cos, sin, cache, pos)
        return x_btd + a, cache

    def __call__(
        self, x_btd: jax.Array, cos: jax.Array, sin: jax.Array, cache: LayerCache | None, pos: jax.Array | int
    ) -> tuple[jax.Array, LayerCache | None]:
        h, cache = self.attend(x_btd, cos, sin, cache, pos)
        return h + self.ffn(self.ffn_norm(h), h, pos), cache


class Llama(nnx.Module):
    """A LLaMA-architecture decoder; compute happens in `dtype` (f32 on CPU)."""

    def __init__(
        self,
        cfg: ModelConfig,
        weights: LlamaWeights | None = None,
        *,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        self.cfg = cfg
        self.dtype = jnp.dtype(dtype)
        w = weights
        if w is not None and len(w.layers) != cfg.n_layer:
            raise ValueError(f"weights have {len(w.layers)} layers, config says {cfg.n_layer}")
        self.token_embd_vd = param(None if w is None else w.token_embd, (cfg.n_vocab, cfg.n_embd), rngs, dtype)
        self.layers = nnx.List(
            [Block(cfg, None if w is None else w.layers[i], rngs=rngs, dtype=dtype) for i in range(cfg.n_layer)]
        )
        self.output_norm = RMSNorm(cfg.n_embd, cfg.norm_eps, None if w is None else w.output_norm, dtype=dtype)
        tied = cfg.tied_output or (w is not None and w.output is w.token_embd)
        self.w_out_vd = None if tied else param(None if w is None else w.output, (cfg.n_vocab, cfg.n_embd), rngs, dtype)

    def _angles(self, b: int, t: int, pos: jax.Array | int) -> tuple[jax.Array, jax.Array]:
        positions = jnp.broadcast_to(jnp.arange(t) + pos, (b, t))
        return rope_angles(positions, self.cfg.rope_dim, self.cfg.rope_base)

    def embed(self, tokens_bt: jax.Array) -> jax.Array:
        return jnp.take(self.token_embd_vd[...], tokens_bt, axis=0)

    def hidden(
        self, tokens_bt: jax.Array, cache: KVCache | None = None, pos: jax.Array | int = 0
    ) -> tuple[jax.Array, KVCache | None]:
        """The final-normed hidden states [B, T, D] (before the output head) and the updated cache."""
        b, t = tokens_bt.shape
        cos, sin = self._angles(b, t, pos)
        x = self.embed(tokens_bt)
        new_cache: KVCache | None = None if cache is None else []
        for i, block in enumerate(self.layers):
            x, layer_cache = block(x, cos, sin, None if cache is None else cache[i], pos)
            if new_cache is not None:
                new_cache.append(layer_cache)
        return self.output_norm(x), new_cache

    def head(self, h_btd: jax.Array) -> jax.Array:
        """Logits [B, T, V] from final-normed hidden states."""
        w = self.token_embd_vd if self.w_out_vd is None else self.w_out_vd
        return linear(h_btd, w[...])

    def __call__(
        self, tokens_bt: jax.Array, cache: KVCache | None = None, pos: jax.Array | int = 0
    ) -> jax.Array | tuple[jax.Array, KVCache]:
        """Causal forward of T tokens starting at position `pos`: logits [B, T, V], and the updated cache when
        one is given (the tokens' k/v are written at pos..pos+T-1)."""
        h, new_cache = self.hidden(tokens_bt, cache, pos)
        logits = self.head(h)
        return logits if cache is None else (logits, new_cache)

    def trace(self, tokens_bt: jax.Array) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
        """Full-sequence causal forward (no cache) that also returns, per layer, the FFN input (residual stream
        before the FFN norm, [B, T, D]) and the per-neuron activations act(gate)*up ([B, T, F])."""
        b, t = tokens_bt.shape
        cos, sin = self._angles(b, t, 0)
        x = self.embed(tokens_bt)
        records = []
        for block in self.layers:
            h, _ = block.attend(x, cos, sin, None, 0)
            hn = block.ffn_norm(h)
            records.append({"ffn_in": h, "act": block.ffn.activations(hn)})
            x = h + block.ffn(hn, h, 0)
        return self.head(self.output_norm(x)), records

    def weight_bytes_per_token(self) -> int:
        """Bytes of weights one decode step reads: all parameters except the embedding table (one row)."""
        total = 0
        for path, var in nnx.to_flat_state(nnx.state(self, nnx.Param)):
            arr = var[...]
            # block formats and int8 rows by their stored bytes (a Q4_1 weight is 0.625 bytes, not its uint8 size)
            total += arr.shape[-1] * np.dtype(arr.dtype).itemsize if path[-1] == "token_embd_vd" else nbytes(arr)
        if self.w_out_vd is None:  # tied head: the table is read in full as the output matrix
            arr = self.token_embd_vd[...]
            total += (arr.size - arr.shape[-1]) * np.dtype(arr.dtype).itemsize
        return total
