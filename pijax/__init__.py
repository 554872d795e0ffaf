"""pijax: a JAX/Flax research reimplementation of PowerInfer.

`load_model`, `Model` and `GenerationResult` are imported on first use so that `import pijax` (and tools such as
the gpuidx builder) do not pay for importing jax.
"""

from typing import Any

from pijax import paths
from pijax.errors import PijaxError

__all__ = ["GenerationResult", "Model", "PijaxError", "load_model", "paths"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("GenerationResult", "Model", "load_model"):
        from pijax import api

        return getattr(api, name)
    raise AttributeError(f"module 'pijax' has no attribute {name!r}")
