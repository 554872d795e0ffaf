"""The per-layer activation predictor (inference): logits = fc2(relu(fc1 x)) on the FFN input, no biases.

As in PowerInfer, x is the residual stream before the FFN norm; a neuron is predicted active when its logit is
>= the sparse threshold (default 0). fc1 is [R, D], fc2 is [F, R] (R = the layer's rank). Training lives in
`pijax.sparsity.predictors`. Dimension legend: see `pijax.model.layers`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pijax.errors import TensorError
from pijax.io.weights import PredictorWeights
from pijax.kernels.formats import Weight
from pijax.model.layers import param


class Predictor(nnx.Module):
    """One layer's predictor. With `weights` None it is randomly initialised (for training)."""

    def __init__(
        self,
        weights: PredictorWeights | None,
        n_embd: int,
        n_ff: int,
        rank: int,
        *,
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
    ):
        if weights is not None:
            fc1, fc2 = np.asarray(weights.fc1), np.asarray(weights.fc2)
            if fc1.shape != (rank, n_embd) or fc2.shape != (n_ff, rank):
                raise TensorError(
                    f"predictor fc1 {fc1.shape} / fc2 {fc2.shape} do not fit rank {rank}, "
                    f"n_embd {n_embd}, n_ff {n_ff} (expected {(rank, n_embd)} / {(n_ff, rank)})"
                )
        self.rank = int(rank)
        self.fc1_rd = param(None if weights is None else weights.fc1, (rank, n_embd), rngs, dtype)
        self.fc2_fr = param(None if weights is None else weights.fc2, (n_ff, rank), rngs, dtype)

    @classmethod
    def from_weights(cls, weights: PredictorWeights, *, dtype: jnp.dtype = jnp.float32) -> Predictor:
        f, r = weights.fc2.shape
        return cls(weights, int(weights.fc1.shape[1]), int(f), int(r), rngs=nnx.Rngs(0), dtype=dtype)

    @classmethod
    def from_rows(cls, fc1_rd: Weight, fc2_fr: Weight) -> Predictor:
        """A predictor over matrices in any storage format (pijax.kernels.formats), kept as they are: the
        kernels read them in place (`pijax.model.ffn.FFN.predictor_logits`)."""
        p = nnx.eval_shape(lambda: cls(None, 1, 1, 1, rngs=nnx.Rngs(0)))  # shapes only: no weights drawn
        p.fc1_rd, p.fc2_fr = nnx.Param(fc1_rd), nnx.Param(fc2_fr)
        p.rank = int(fc1_rd.shape[0])
        return p

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        """Logits [B, T, F]."""
        h = jax.nn.relu(jnp.einsum("btd,rd->btr", x_btd, self.fc1_rd[...]))
        return jnp.einsum("btr,fr->btf", h, self.fc2_fr[...])

    def weights(self) -> PredictorWeights:
        """The current parameters as numpy arrays (for saving)."""
        return PredictorWeights(np.asarray(self.fc1_rd[...]), np.asarray(self.fc2_fr[...]))

    @property
    def n_params(self) -> int:
        return int(self.fc1_rd[...].size + self.fc2_fr[...].size)
