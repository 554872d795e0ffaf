"""The project's exception hierarchy: every user-facing failure is a PijaxError naming the file and the problem."""

from __future__ import annotations

import os


class PijaxError(Exception):
    """Base class. `str(err)` is one line: '<path>: <problem>' when a file is involved."""

    def __init__(self, problem: str, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


class GGUFFormatError(PijaxError):
    """The file is not a readable GGUF: wrong magic, truncated, bad header or offsets."""


class UnsupportedModelError(PijaxError):
    """A readable GGUF that pijax cannot run: another architecture, an unsupported tensor type."""


class TensorError(PijaxError):
    """A tensor the model needs is missing or has the wrong shape."""


class ConfigError(PijaxError):
    """A configuration value is invalid (bad budget string, unknown policy, ...)."""


class BudgetError(PijaxError):
    """The accelerator-memory budget cannot hold what must live on the accelerator."""


class DataError(PijaxError):
    """A corpus or statistics file is unusable: empty, not UTF-8 text, from another model."""


class IndexFileError(PijaxError):
    """A gpuidx file is unreadable or does not fit the model."""


class ModelFetchError(PijaxError):
    """A named model is unknown, not cached and cannot be fetched, or its download failed its checks."""
