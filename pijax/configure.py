"""Turn Hydra's DictConfig into pijax's frozen dataclasses, once, at the entry point.

`build(cls, mapping)` fills a (nested) frozen dataclass from a plain mapping, checking that every key is a field
and converting lists to tuples, so that a typo in a YAML file or an override is a one-line ConfigError rather
than a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from pijax.errors import ConfigError

T = TypeVar("T")


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return build(tp, value, where=where)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            if dataclasses.is_dataclass(arm) and isinstance(value, Mapping):
                return build(arm, value, where=where)
        return tuple(value) if isinstance(value, list) else value
    if origin is tuple or isinstance(value, list):
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def build(cls: type[T], mapping: Mapping[str, Any] | None, *, where: str = "") -> T:
    """Instantiate dataclass `cls` from `mapping`; unknown keys raise ConfigError naming the config path."""
    mapping = dict(mapping or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in config {where or cls.__name__}; valid: {sorted(names)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}".lstrip(".")) for k, v in mapping.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config {where or cls.__name__}: {e}") from None
