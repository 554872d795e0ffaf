"""What `pijax.Model.sparse(...)` and `pijax.Model.hybrid(...)` build: one selector (which rows), one placement
(where), one backend (which code computes them).

Selectors (`mode=`):
- "predictor": the model file's predictors (logit >= the file's sparse threshold): PowerInfer's path.
- "relu": exact zero-skip for ReLU-family models (a row whose gate product is <= 0 contributes exactly 0).
- "threshold": SiLU models, |act| > a per-layer cut-off calibrated for `sparsity` on the corpus' training split
  (pijax.sparsity.thresholds); an approximation, like CATS/TEAL.
- "oracle": the true activity act != 0 as the selector (exact, the reference for tests; for a SiLU model it
  keeps every row, so it equals dense).
Placements: `sparse_model` keeps every row on one device; `hybrid_model` puts the gpuidx's hot rows on the
accelerator mesh and the cold rows on the host (pijax.engine.pipeline). Backends (pijax.engine.setup): the CPU
kernels where they win, else XLA (the reference; on GPU, XLA on GPU).
`sparse_model` never changes the model it is given: it clones the module (the weight arrays are shared).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from flax import nnx

from pijax.engine.setup import Backend, setup_engine
from pijax.errors import ConfigError, InputError
from pijax.model.llama import Llama
from pijax.model.sparse_ffn import calibrate_capacities, mask_counts, sparsify

log = logging.getLogger("pijax.engine")

Mode = Literal["predictor", "relu", "threshold", "oracle"]
MODES: tuple[str, ...] = ("predictor", "relu", "threshold", "oracle")
# Hybrid selectors and the hybrid FFN's mask source each maps to ("relu" there: every row, inactive ReLU rows
# skipped exactly, which is the uncapped oracle).
_HYBRID_SOURCE = {"predictor": "predictor", "relu": "oracle", "oracle": "oracle"}


@dataclasses.dataclass
class SparseSetup:
    """A sparse module and how it was made."""

    module: Llama
    mode: str
    backend: str
    capacities: list[int] | None
    act_thresholds: np.ndarray | None


def check_mode(mode: str, ffn_act: str, *, hybrid: bool = False) -> None:
    """ConfigError, one line, when `mode` is unknown or cannot run on this model."""
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is not one of {MODES}")
    if ffn_act == "silu" and mode == "relu":
        raise ConfigError("mode='relu' skips exact zeros, which a SiLU model never produces; use mode='threshold'")
    if hybrid and ffn_act == "silu" and mode != "predictor":
        raise ConfigError(
            f"a hybrid engine for a SiLU model needs a sparse selector it can place; mode={mode!r} on SiLU selects "
            "every row, and mode='threshold' runs only on one device (m.sparse(mode='threshold')): use "
            "mode='predictor' (its oracle predictors) or relufy the model"
        )
    if hybrid and mode == "threshold":
        raise ConfigError("mode='threshold' runs on one device only (m.sparse); the hybrid engine needs a ReLU model")


def _windows(model: Any, corpus_path: str | os.PathLike[str] | None, seq_len: int, tokens: int) -> np.ndarray:
    from pijax.engine.pipeline import profile_windows

    return profile_windows(model, corpus_path, seq_len, tokens)


def sparse_model(
    model: Any,
    mode: Mode = "predictor",
    *,
    sparsity: float | Sequence[float] | None = None,
    criterion: str = "oracle",
    backend: Backend = "auto",
    capacity_quantile: float | None = None,
    capacities: Sequence[int] | None = None,
    pred_threshold: float | None = None,
    corpus_path: str | os.PathLike[str] | None = None,
    calibration_tokens: int = 16_384,
    seq_len: int = 128,
    dense_positions: int = 0,
) -> SparseSetup:
    """A sparse copy of a pijax Model's module, every row on one device (see the module docstring).

    sparsity: the target share of skipped rows (one number, or one per layer: a per-layer allocation), calibrated
    per layer on the corpus' training split: for
    mode="threshold" (default 0.5) the cut-off of `criterion` ("oracle" |act(gate)*up|, "cats" |act(gate)|, or
    "teal" |FFN input|, whose entries are input channels); for mode="predictor" the predictor-logit cut-off (None:
    the file's threshold). A SiLU model without predictors in its file gets oracle predictors
    (pijax.sparsity.predictor_store: shipped, cached, or trained on first use; without `sparsity`, their
    training thresholds). capacity_quantile / capacities: a static cap
    on rows per token (calibrated on the corpus' training split, or given per layer); None: no cap (the result
    is then exact for "relu" and "oracle"). backend: "auto", "kernels" or "xla"; the kernels run "predictor",
    "relu" and uncapped "threshold" with criterion "cats" (the other thresholds and a capped oracle need the
    dense activations, so they run on XLA).
    dense_positions (mode="predictor", no capacity): the first N positions of every sequence run every row (1
    keeps SmolLM2's attention sink dense); `sparsity` is then calibrated with them dense, over all positions."""
    cfg = model.config
    check_mode(mode, cfg.ffn_act)
    chosen = setup_engine(backend)
    # The kernels select by predictor logit or by the CATS cut-off (pijax.kernels.cats); other thresholds and the
    # oracle need act(gate, up) of every row first.
    cats = mode == "threshold" and criterion == "cats" and capacity_quantile is None and capacities is None
    if mode in ("threshold", "oracle") and not cats and chosen == "kernels":
        if backend == "kernels":
            raise ConfigError(f"mode={mode!r} needs the dense activations, which the kernels do not compute: use xla")
        chosen = "xla"
    from pijax.sparsity.criteria import check_criterion
    from pijax.sparsity.thresholds import check_sparsity

    check_criterion(criterion)
    if sparsity is not None:
        check_sparsity(sparsity)
    if dense_positions:  # said before any calibration runs
        from pijax.model.rows import Selector

        capped = capacity_quantile is not None or capacities is not None
        Selector(mode, dense_positions=dense_positions, capacity=1 if capped else None)
    if criterion != "oracle" and (mode != "threshold" or capacity_quantile is not None or capacities is not None):
        raise ConfigError(f"criterion={criterion!r} applies to mode='threshold' without a capacity")
    module = nnx.clone(model.module)
    got: dict[str, np.ndarray] = {}

    def windows() -> np.ndarray:  # the corpus' training windows, read once and only when needed
        if "w" not in got:
            got["w"] = _windows(model, corpus_path, seq_len, calibration_tokens)
        return got["w"]

    preds = None
    if mode == "predictor":
        from pijax.engine.predictor_choice import choose_predictors

        preds, pred_threshold = choose_predictors(
            model, sparsity=sparsity, pred_threshold=pred_threshold, windows=windows, dense_positions=dense_positions
        )
    thresholds = None
    if mode == "threshold":
        from pijax.sparsity.thresholds import calibrate_thresholds

        target = 0.5 if sparsity is None else sparsity
        thresholds = calibrate_thresholds(model.module, windows(), target, criterion=criterion, progress=False)
    if capacities is None and capacity_quantile is not None:
        counts = mask_counts(
            model.module,
            windows(),
            mode=mode,
            predictors=preds,
            pred_threshold=pred_threshold or 0.0,
            act_thresholds=thresholds,
        )
        capacities = calibrate_capacities(counts, quantile=capacity_quantile, n_ff=cfg.n_ff)
    if chosen == "kernels" and mode == "relu" and capacities is not None:
        if backend == "kernels":
            raise ConfigError("mode='relu' with a capacity needs the dense activations: use backend 'xla'")
        chosen = "xla"
    sparsify(
        module,
        mode=mode,
        capacities=capacities,
        predictors=preds,
        pred_threshold=pred_threshold,
        act_thresholds=thresholds,
        backend=chosen,
        criterion=criterion,
        dense_positions=dense_positions,
    )
    log.info("sparse engine: mode %s on %s", mode, chosen)
    if mode == "predictor" and pred_threshold is not None and not np.isscalar(pred_threshold):
        thresholds = np.asarray(pred_threshold, np.float32)  # the calibrated predictor cut-offs
    return SparseSetup(module, mode, chosen, None if capacities is None else list(capacities), thresholds)


def hybrid_model(
    model: Any,
    budget: int | str,
    *,
    policy: str = "powerinfer",
    mode: Mode = "predictor",
    backend: Backend = "auto",
    hardware: Any = None,
    placement: Any = None,
    index_path: str | os.PathLike[str] | None = None,
    capacity_quantile: float | None = 1.0,
    sparsity: float | None = None,
    **options: Any,
) -> Any:
    """A budget-checked hybrid engine (pijax.engine.pipeline.HybridSetup): the gpuidx's hot rows on the
    accelerators, the rest on the host. budget: bytes, "2GiB", or "ffn:30%" (the dense part plus 30% of the FFN
    rows). policy: a gpuidx policy (pijax.index.POLICIES). index_path: where the gpuidx is cached (default next
    to the model file). sparsity (mode "predictor"): the share of rows the predictors skip, their cut-offs
    calibrated on the corpus' training split (pijax.engine.predictor_choice; a SiLU model's oracle predictors
    must be shipped or cached). options go to `prepare_hybrid` (stats, corpus_path, n_ctx, index_cfg fields...)."""
    from pijax.engine.pipeline import prepare_hybrid
    from pijax.index import IndexConfig
    from pijax.index.budget import check_budget

    check_budget(budget)  # an unreadable budget is said before the devices are set up
    check_mode(mode, model.config.ffn_act, hybrid=True)
    index_fields = {f.name for f in dataclasses.fields(IndexConfig)}
    index_kw = {k: options.pop(k) for k in list(options) if k in index_fields}
    passed = ("index_cfg", "hardware", "placement", "source", "backend", "capacity_quantile", "predictors")
    unknown = sorted(set(options) - (set(inspect.signature(prepare_hybrid).parameters) - set(passed)))
    if unknown:
        raise InputError(
            f"Model.hybrid: unknown option(s) {', '.join(unknown)}; it takes policy, mode, backend, hardware, "
            f"placement, index_path, capacity_quantile, sparsity, IndexConfig fields and prepare_hybrid's stats, "
            f"corpus_path, profile_tokens, seq_len, n_ctx, pred_threshold"
        )
    index_cfg = IndexConfig(policy=policy, path=None if index_path is None else os.fspath(index_path), **index_kw)
    if sparsity is not None:
        from pijax.sparsity.thresholds import check_sparsity

        check_sparsity(sparsity)
        if mode != "predictor":
            raise ConfigError(f"sparsity= applies to the hybrid's mode='predictor', not mode={mode!r}")
    if mode == "predictor":
        from pijax.engine.pipeline import profile_windows
        from pijax.engine.predictor_choice import choose_predictors

        def windows() -> np.ndarray:
            tokens = options.get("profile_tokens", 32_768)
            return profile_windows(model, options.get("corpus_path"), options.get("seq_len", 128), tokens)

        options["predictors"], options["pred_threshold"] = choose_predictors(
            model,
            sparsity=sparsity,
            pred_threshold=options.get("pred_threshold"),
            windows=windows,
            train=False,
            what="a hybrid engine",
        )
    return prepare_hybrid(
        model,
        budget,
        index_cfg=index_cfg,
        hardware=hardware,
        placement=placement,
        source=_HYBRID_SOURCE[mode],
        backend=backend,
        capacity_quantile=capacity_quantile if mode == "predictor" else None,
        **options,
    )
