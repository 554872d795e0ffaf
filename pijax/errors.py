"""The project's exception hierarchy: every user-facing failure is a PijaxError naming the file and the problem.

A PijaxError's message is always one readable line: control characters, newlines and other unprintable
characters are escaped, and a message longer than MAX_MESSAGE characters keeps its start and its end with the
middle cut out (a damaged file can make a name or a value thousands of bytes long).
"""

from __future__ import annotations

import os

MAX_MESSAGE = 400


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` with unprintable characters escaped (\\n, \\x00, \\udc80, ...) and cut to `limit` characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode() for c in text)
    if len(text) > limit:
        head = max(limit * 2 // 3, 1)
        tail = max(limit - head - 5, 0)
        text = text[:head] + " ... " + (text[-tail:] if tail else "")
    return text


class PijaxError(Exception):
    """Base class. `str(err)` is one line: '<path>: <problem>' when a file is involved."""

    def __init__(self, problem: str, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = one_line(str(problem))
        where = None if self.path is None else one_line(str(self.path), 200)
        super().__init__(f"{where}: {self.problem}" if where is not None else self.problem)


class GGUFFormatError(PijaxError):
    """The file is not a readable GGUF: wrong magic, truncated, bad header or offsets."""


class UnsupportedModelError(PijaxError):
    """A readable GGUF that pijax cannot run: another architecture, an unsupported tensor type."""


class TensorError(PijaxError):
    """A tensor the model needs is missing or has the wrong shape."""


class ConfigError(PijaxError):
    """A configuration value is invalid (bad budget string, unknown policy, ...)."""


class InputError(ConfigError):
    """A value given to pijax, as a function argument or a config key, has the wrong type or is out of range
    (see pijax.validate)."""


class BudgetError(PijaxError):
    """The accelerator-memory budget cannot hold what must live on the accelerator."""


class DataError(PijaxError):
    """A corpus or statistics file is unusable: empty, not UTF-8 text, from another model."""


class IndexFileError(PijaxError):
    """A gpuidx file is unreadable or does not fit the model."""


class ModelFetchError(PijaxError):
    """A named model is unknown, not cached and cannot be fetched, or its download failed its checks."""
