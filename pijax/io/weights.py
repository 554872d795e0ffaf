"""Typed containers for a LLaMA checkpoint's arrays, in pijax's row-per-neuron convention.

Shapes (numpy order): wq [H*E, D], wk/wv [K*E, D], wo [D, H*E]; FFN up, gate and down_t are all [F, D] so that a
neuron (a hot set, an active set) is a row gather. Predictor: fc1 [R, D], fc2 [F, R].
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class LayerWeights:
    attn_norm: np.ndarray
    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray
    ffn_norm: np.ndarray
    up: np.ndarray
    gate: np.ndarray | None  # None for a gate-less ReLU FFN
    down_t: np.ndarray


@dataclasses.dataclass
class PredictorWeights:
    fc1: np.ndarray  # [R, D]
    fc2: np.ndarray  # [F, R]

    @property
    def rank(self) -> int:
        return int(self.fc1.shape[0])


@dataclasses.dataclass
class LlamaWeights:
    token_embd: np.ndarray  # [V, D]
    output_norm: np.ndarray  # [D]
    output: np.ndarray  # [V, D]; the same array as token_embd when the head is tied
    layers: list[LayerWeights]
    predictors: list[PredictorWeights] | None = None
    sparse_threshold: float = 0.0
