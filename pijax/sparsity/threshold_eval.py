"""Held-out fidelity of threshold sparsity: perplexity, top-1 agreement with dense, and the sparsity reached.

`ThresholdEvaluator(model, windows)` runs the dense model over the windows once (its argmax and perplexity are the
reference), then `evaluate(criterion, thresholds)` runs `criteria.masked_forward` over the same windows. The
thresholds are an argument of the compiled step, so a sweep over sparsity levels compiles once per criterion.
The dense logits are not kept (at vocabulary 49k they would be ~1 GB per 48 windows), so there is no KL here;
`pijax.eval.compare` gives it when needed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from pijax.errors import DataError
from pijax.eval import _nll_sum
from pijax.sparsity.criteria import check_criterion, masked_forward
from pijax.sparsity.profile import check_windows


@dataclasses.dataclass(frozen=True)
class ThresholdResult:
    criterion: str
    ppl_dense: float
    ppl: float
    top1: float  # share of positions whose argmax equals the dense model's
    layer_sparsity: np.ndarray  # float64 [L]: share of entries skipped per layer on these windows

    @property
    def ppl_increase(self) -> float:
        return self.ppl / self.ppl_dense - 1.0

    @property
    def sparsity(self) -> float:
        return float(self.layer_sparsity.mean())


class ThresholdEvaluator:
    """Dense reference and thresholded runs of one model over fixed token windows [N, T]."""

    def __init__(self, model: Any, windows: np.ndarray, *, batch_size: int = 8, progress: bool = False):
        self.llama = getattr(model, "module", model)
        self.windows = check_windows(windows)
        if self.windows.shape[1] < 2:
            raise DataError(f"windows of {self.windows.shape[1]} token(s) have no next token to predict")
        self.batch_size = min(batch_size, len(self.windows))
        self.progress = progress
        gd, self._state = nnx.split(self.llama)

        def dense(st: Any, tok: jax.Array) -> tuple[jax.Array, jax.Array]:
            logits = nnx.merge(gd, st)(tok)
            return _nll_sum(logits, tok), logits.argmax(-1)

        def sparse(st: Any, tok: jax.Array, thr: jax.Array, ref: jax.Array, crit: str) -> tuple[jax.Array, ...]:
            logits, skipped = masked_forward(nnx.merge(gd, st), tok, crit, thr)
            return _nll_sum(logits, tok), (logits.argmax(-1) == ref).sum(), skipped

        self._sparse = jax.jit(sparse, static_argnames="crit")
        dense_step = jax.jit(dense)
        nll, self._ref = 0.0, []
        for tok in self._batches("dense reference"):
            n, a = dense_step(self._state, tok)
            nll += float(n)
            self._ref.append(a)
        self.ppl_dense = float(np.exp(nll / self._n_next))

    @property
    def _n_next(self) -> int:
        return self.windows.shape[0] * (self.windows.shape[1] - 1)

    def _batches(self, desc: str):
        # The last batch is not padded: its different shape costs one more compile, padding would cost its tokens.
        starts = range(0, len(self.windows), self.batch_size)
        for s in tqdm(starts, desc=desc, unit="batch", leave=False, disable=not self.progress):
            yield jnp.asarray(self.windows[s : s + self.batch_size])

    def evaluate(self, criterion: str, thresholds: np.ndarray) -> ThresholdResult:
        """Held-out fidelity of skipping, in layer l, the entries scoring <= thresholds[l]."""
        check_criterion(criterion)
        thr = np.asarray(thresholds, np.float32)
        if thr.shape != (self.llama.cfg.n_layer,):
            raise DataError(f"thresholds are given for {thr.shape} layers, the model has {self.llama.cfg.n_layer}")
        nll, agree, skipped = 0.0, 0, np.zeros(self.llama.cfg.n_layer)
        for tok, ref in zip(self._batches(f"evaluate {criterion}"), self._ref, strict=True):
            n, a, s = self._sparse(self._state, tok, jnp.asarray(thr), ref, crit=criterion)
            nll += float(n)
            agree += int(a)
            skipped += np.asarray(s, np.float64) * tok.shape[0]
        return ThresholdResult(
            criterion=criterion,
            ppl_dense=self.ppl_dense,
            ppl=float(np.exp(nll / self._n_next)),
            top1=agree / self.windows.size,
            layer_sparsity=skipped / len(self.windows),
        )
