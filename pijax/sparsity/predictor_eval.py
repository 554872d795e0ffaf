"""Held-out fidelity of predictor-gated FFNs on a SiLU model, against the dense model and the oracle, and the
per-layer allocation from end-to-end sensitivity.

`predictor_masked_forward` is the dense forward in which layer l keeps neuron f only when its predictor logit is
>= t_l (the same result as `pijax.model.ffn.FFN` in predictor mode without a capacity cap, which computes only those rows),
and it counts, per layer, how the predicted set compares with the oracle's set at a given oracle threshold
(|SiLU(gate)·up| > o_l): true positives, predicted and truly kept entries. `PredictorEvaluator` runs it over
fixed windows against the dense reference of `ThresholdEvaluator`.

`sensitivity_allocation`: the calibration loss with ONE layer's predictor at each level of a grid (every other
layer dense), on training windows; then per-layer sparsities that minimise the summed loss increase at a target
mean (a greedy over grid steps, cheapest increase per step first). NOTES: the layer-local error greedy was worse
than uniform; this one measures the end-to-end loss. Dimension legend: see `pijax.model.layers`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from pijax.eval import _nll_sum
from pijax.io.weights import PredictorWeights
from pijax.kernels.reference import down_project, ffn_activation
from pijax.model.rows import dense_position_logits
from pijax.sparsity.predictor_data import PredictorMetrics, jit_logits
from pijax.sparsity.threshold_eval import ThresholdEvaluator


def predictor_masked_forward(
    llama: Any,
    tokens_bt: jax.Array,
    params: Sequence[dict[str, jax.Array]],
    thr_l: jax.Array,
    oracle_l: jax.Array,
    use_oracle_l: jax.Array | None = None,
    dense_positions: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Logits [B, T, V] with predictor-gated FFNs, and per layer [L, 3] int counts: (kept by both, predicted
    kept, oracle kept). `use_oracle_l` (bool [L]): those layers keep the oracle's set instead (diagnosis: what a
    perfect predictor of that layer would give); `dense_positions`: the first N positions keep every row (the
    selector's option of that name)."""
    b, t = tokens_bt.shape
    cos, sin = llama._angles(b, t, 0)
    x = llama.embed(tokens_bt)
    counts = []
    for i, block in enumerate(llama.layers):
        h, _ = block.attend(x, cos, sin, None, 0)
        ffn = block.ffn
        hn = block.ffn_norm(h)
        up = jnp.einsum("btd,fd->btf", hn, ffn.w_up_fd[...])
        gate = jnp.einsum("btd,fd->btf", hn, ffn.w_gate_fd[...])
        act = ffn_activation(gate, up, ffn.kind)
        logits = dense_position_logits(
            jit_logits(params[i], h.reshape(b * t, -1)).reshape(b, t, -1), 0, dense_positions
        )
        true = jnp.abs(act) > oracle_l[i]
        pred = logits >= thr_l[i]
        if use_oracle_l is not None:
            pred = jnp.where(use_oracle_l[i], true, pred)
        counts.append(jnp.stack([(pred & true).sum(), pred.sum(), true.sum()]))
        x = h + down_project(jnp.where(pred, act, 0.0), ffn.w_down_fd[...])
    return llama.head(llama.output_norm(x)), jnp.stack(counts)


@dataclasses.dataclass(frozen=True)
class PredictorResult:
    ppl_dense: float
    ppl: float
    top1: float
    metrics: list[PredictorMetrics]  # per layer, predicted set vs the oracle's set

    @property
    def ppl_increase(self) -> float:
        return self.ppl / self.ppl_dense - 1.0

    @property
    def layer_sparsity(self) -> np.ndarray:
        return np.asarray([m.predicted_sparsity for m in self.metrics])

    @property
    def sparsity(self) -> float:
        return float(self.layer_sparsity.mean())


class PredictorEvaluator(ThresholdEvaluator):
    """Dense reference (ThresholdEvaluator) plus predictor-gated runs over the same windows."""

    def __init__(self, model: Any, windows: np.ndarray, preds: Sequence[PredictorWeights], **kw: Any):
        super().__init__(model, windows, **kw)
        self.params = [{"fc1": jnp.asarray(w.fc1), "fc2": jnp.asarray(w.fc2)} for w in preds]
        gd = nnx.graphdef(self.llama)

        def run(st: Any, p: Any, tok: jax.Array, thr: jax.Array, orc: jax.Array, use: jax.Array, ref: jax.Array,
                dense: int):  # fmt: skip
            logits, counts = predictor_masked_forward(nnx.merge(gd, st), tok, p, thr, orc, use, dense)
            return _nll_sum(logits, tok), (logits.argmax(-1) == ref).sum(), counts

        self._run = jax.jit(run, static_argnames=("dense",))

    def evaluate_predictors(
        self,
        thresholds: np.ndarray,
        oracle: np.ndarray | None = None,
        *,
        oracle_layers: Sequence[int] = (),
        dense_positions: int = 0,
    ) -> PredictorResult:
        """Fidelity with predictor thresholds t_l; recall/precision against the oracle thresholds o_l (default:
        +inf, no oracle comparison). `oracle_layers` keep the oracle's set (needs `oracle`) instead of the
        predictor's; `dense_positions`: the first N positions of each window keep every row."""
        n_layer = self.llama.cfg.n_layer
        thr = jnp.asarray(np.asarray(thresholds, np.float32))
        orc = jnp.asarray(np.full(n_layer, np.inf, np.float32) if oracle is None else np.asarray(oracle, np.float32))
        use = jnp.asarray(np.isin(np.arange(n_layer), list(oracle_layers)))
        nll, agree, counts = 0.0, 0, np.zeros((n_layer, 3), np.int64)
        for tok, ref in zip(self._batches("evaluate predictors"), self._ref, strict=True):
            n, a, c = self._run(self._state, self.params, tok, thr, orc, use, ref, dense=int(dense_positions))
            nll += float(n)
            agree += int(a)
            counts += np.asarray(c, np.int64)
        total = self.windows.size * self.llama.cfg.n_ff
        metrics = [
            PredictorMetrics(int(tp), int(p - tp), int(tr - tp), int(total - p - tr + tp)) for tp, p, tr in counts
        ]
        return PredictorResult(self.ppl_dense, float(np.exp(nll / self._n_next)), agree / self.windows.size, metrics)


def layer_sensitivity(
    ev: PredictorEvaluator,
    samples: Sequence[np.ndarray],
    grid: Sequence[float],
    *,
    progress: bool = True,
    dense_positions: int = 0,
) -> np.ndarray:
    """float64 [L, G]: the perplexity increase (relative) on ev's windows with only layer l gated at grid level g
    (`samples` from `predictor_logit_samples` with the same `dense_positions`)."""
    from pijax.sparsity.oracle_predictors import logit_thresholds

    n_layer = len(samples)
    out = np.zeros((n_layer, len(grid)))
    bar = tqdm(total=n_layer * len(grid), desc="layer sensitivity", unit="run", disable=not progress)
    for g, level in enumerate(grid):
        full = logit_thresholds(samples, level)
        for layer in range(n_layer):
            thr = np.full(n_layer, -np.inf, np.float32)
            thr[layer] = full[layer]
            res = ev.evaluate_predictors(thr, dense_positions=dense_positions) if level > 0 else None
            out[layer, g] = 0.0 if res is None else res.ppl_increase
            bar.update()
    bar.close()
    return out


def sensitivity_allocation(sens: np.ndarray, grid: Sequence[float], target: float) -> np.ndarray:
    """float64 [L]: per-layer sparsity levels from `grid` (ascending, starting at 0) with mean >= target, raising
    at each step the layer whose next level adds the least loss per unit sparsity (loss assumed additive)."""
    grid = np.asarray(grid, np.float64)
    n_layer = sens.shape[0]
    pos = np.zeros(n_layer, int)
    while grid[pos].mean() < target - 1e-9:
        cost = np.full(n_layer, np.inf)
        for i in range(n_layer):
            if pos[i] + 1 < len(grid):
                cost[i] = (sens[i, pos[i] + 1] - sens[i, pos[i]]) / (grid[pos[i] + 1] - grid[pos[i]])
        if not np.isfinite(cost).any():
            break
        pos[int(np.argmin(cost))] += 1
    return grid[pos]
