"""RealSparsityConfig: what `task=real_sparsity` measures (experiments/real_sparsity; issue 13 parts 1-2)."""

from __future__ import annotations

import dataclasses

from pijax.corpus import STDLIB_MODULES


@dataclasses.dataclass(frozen=True)
class RealSparsityConfig:
    """Two domains (the TinyStories text, standard-library source), each split into training and held-out
    documents (the last `held_out` fraction). Thresholds and allocations come from the first
    `calibration_windows` training windows, profiles from the first `profile_windows`; fidelity is measured on the
    first `eval_windows` held-out windows, all of `seq_len` tokens."""

    seq_len: int = 128
    held_out: float = 0.1
    calibration_windows: int = 24
    eval_windows: int = 48
    profile_windows: int = 64
    batch_size: int = 8
    criteria: tuple[str, ...] = ("cats", "oracle", "teal")
    sparsities: tuple[float, ...] = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    greedy_sparsities: tuple[float, ...] = (0.4, 0.5)  # the non-uniform allocation's targets
    # greedy per-layer allocation: grid step, and how many of the calibration windows measure the layer errors
    allocation_step: float = 0.05
    allocation_windows: int = 8
    # part 1: neurons are counted active when |act(gate)*up| > the oracle threshold for this sparsity
    # (calibrated on the TinyStories training windows, used for both domains); hot set = the top `hot_share`
    profile_sparsity: float = 0.5
    hot_share: float = 0.2
    stdlib_modules: tuple[str, ...] = STDLIB_MODULES
    parts: tuple[str, ...] = ("profile", "thresholds")  # part 1, part 2; either may be left out
    resume: bool = False  # keep the rows already in curves.csv and measure only the missing ones
    out_dir: str = ""  # "" = experiments/real_sparsity (smoke runs: the run folder)
