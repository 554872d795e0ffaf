"""pijax: a JAX/Flax research reimplementation of PowerInfer."""

from pijax.errors import PijaxError

__all__ = ["PijaxError"]
__version__ = "0.1.0"
