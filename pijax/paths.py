"""Where the files shipped with pijax live (the stories260K models, TinyStories text)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
STORIES260K = ASSETS / "stories260K.gguf"
TINYSTORIES = ASSETS / "tinystories_valid_head.txt"
RELU_STORIES260K = ASSETS / "stories260K_relu.gguf"
RELU_STORIES260K_PREDICTORS = ASSETS / "stories260K_relu_predictors.gguf"


def default_relu_model() -> Path:
    """The shipped ReLU-fied stories260K, preferring the copy with trained predictors."""
    return RELU_STORIES260K_PREDICTORS if RELU_STORIES260K_PREDICTORS.is_file() else RELU_STORIES260K


# Oracle predictors for SmolLM2-135M-Instruct (pijax.sparsity.predictor_store; made by pijax, see PROVENANCE.md).
SMOLLM2_PREDICTORS = ASSETS / "smollm2_135m_oracle_predictors.gguf"
