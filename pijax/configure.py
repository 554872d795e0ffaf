"""Turn Hydra's DictConfig into pijax's frozen dataclasses, once, at the entry point: the one validation layer.

`build(cls, mapping)` fills a (nested) frozen dataclass from a plain mapping. Every value is checked against its
field's type hint before the dataclass is made: ints are ints (not 2.5, "5" or true), floats are finite numbers,
bools are bools, Literals are one of their values, strings are strings (a number given for a string, e.g.
`generate.prompt=123`, becomes its text), tuples hold elements of their type, and every numeric key is checked
against its range in `pijax.validate.CONFIG_RANGES`. Unknown keys, wrong types and values out of range are each one
ConfigError line naming the dotted key, so that nothing expensive starts with a bad configuration.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from pijax.errors import ConfigError
from pijax.validate import check_bool, check_choice, check_config_value, describe

T = TypeVar("T")
_NONE = type(None)


_type_hints = functools.cache(typing.get_type_hints)


def _convert(tp: Any, value: Any, where: str) -> Any:
    """`value` checked (and normalised) as type `tp` at dotted key `where`; ConfigError when it is not one."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return tuple(value) if isinstance(value, list) else value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a group of keys ({tp.__name__}), got {describe(value)}")
        return build(tp, value, where=where)
    if origin in (typing.Union, types.UnionType):
        arms = typing.get_args(tp)
        if value is None and _NONE in arms:
            return None
        errors = []
        for arm in arms:
            if arm is _NONE:
                continue
            try:
                return _convert(arm, value, where)
            except ConfigError as e:
                errors.append(e.problem)
        if len(errors) == 1:
            raise ConfigError(errors[0] + (" (or null)" if _NONE in arms else ""))
        raise ConfigError(f"{where}: {describe(value)} is none of {typing.get_args(tp)}")
    if origin is typing.Literal:
        return check_choice(value, where, typing.get_args(tp))
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {describe(value)}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {describe(value)}")
        return tuple(_convert(a, v, where) for a, v in zip(args, value, strict=True))
    if tp is bool:
        return check_bool(value, where)
    if tp is int or tp is float:
        return check_config_value(where, value, is_int=tp is int)
    if tp is str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # Hydra reads `prompt=123` as a number; the user meant its text
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {describe(value)}")
        return value
    raise ConfigError(f"{where}: no check for type {tp!r} (a pijax bug: add it to pijax.configure)")


def build(cls: type[T], mapping: Mapping[str, Any] | None, *, where: str = "") -> T:
    """Instantiate dataclass `cls` from `mapping`, every value checked (see the module docstring); raises
    ConfigError naming the dotted config key."""
    mapping = dict(mapping or {})
    hints = _type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(mapping) - names, key=str)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in config {where or cls.__name__}; valid: {sorted(names)}")
    # plain keys before groups, so that `seed=banana` is reported as `seed`, not as a group key interpolating it
    order = sorted(mapping, key=lambda k: dataclasses.is_dataclass(hints[k]))
    kwargs = {k: _convert(hints[k], mapping[k], f"{where}.{k}".lstrip(".")) for k in order}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config {where or cls.__name__}: {e}") from None
