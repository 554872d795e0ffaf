"""Checks of the values a user hands pijax: public-function arguments and configuration values.

Every check returns the value normalised (an int as `int`, a float as `float`) or raises `InputError` (a
`ConfigError`) whose message is one line naming the argument or config key, what it got and what it needs.
Entry points call these before any work, so that a bad value never reaches jax or a file:

    load_model(path)            -> check_model_source
    Model.generate(...)         -> check_prompt, check_generate_args
    Tokenizer.encode(text, ...) -> check_text, check_bool
    Model.chat(messages, ...)   -> check_messages, check_generate_args
    sparse / hybrid engines     -> check_generate_args (and check_int / check_float for their own options)
    the Hydra RunConfig         -> pijax.configure.build, which applies CONFIG_RANGES by dotted key

Rules, the same everywhere:
- An integer is a Python or numpy int, never a bool, a float (2.5, also 5.0) or a string ("5"): nothing is rounded
  or parsed silently. Unless a range says otherwise it lies in [-(2**31), 2**31 - 1] (jax indexes with int32).
- A float is an int or float and finite (nan and inf are refused) unless a range allows infinity.
- A seed is an integer in [0, 2**32 - 1], as llama.cpp's (uint32); jax would silently wrap a negative seed onto
  another one and fail on seeds above 64 bits.
- Text is a `str` of valid Unicode: bytes, None and numbers are refused (decode bytes first), and so are lone
  surrogates ("\\ud800"), which no UTF-8 tokenizer can encode.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pijax.errors import InputError, one_line

INT32_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1


def describe(value: Any, limit: int = 60) -> str:
    """A short, printable description of a value for an error message: its repr, escaped and cut to `limit`."""
    return f"{one_line(repr(value), limit)} ({type(value).__name__})"


def check_int(value: Any, name: str, *, min: int | None = -(2**31), max: int | None = INT32_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InputError(f"{name} must be an integer, got {describe(value)}")
    value = int(value)
    if (min is not None and value < min) or (max is not None and value > max):
        raise InputError(f"{name} must be in [{min}, {max}], got {value}")
    return value


def check_float(
    value: Any,
    name: str,
    *,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    allow_inf: bool = False,
) -> float:
    """An int or float within [min, max] (open ends with min_open / max_open); finite unless allow_inf."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InputError(f"{name} must be a number, got {describe(value)}")
    try:
        out = float(value)
    except OverflowError:  # an int beyond a double
        raise InputError(f"{name} is too large, got {describe(value)}") from None
    if math.isnan(out) or (math.isinf(out) and not allow_inf):
        raise InputError(f"{name} must be a finite number, got {out}")
    below = min is not None and (out <= min if min_open else out < min)
    above = max is not None and (out >= max if max_open else out > max)
    if below or above:
        lo = "(" if min_open else "["
        hi = ")" if max_open else "]"
        raise InputError(
            f"{name} must be in {lo}{'-inf' if min is None else min}, {'inf' if max is None else max}{hi}, got {out}"
        )
    return out


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise InputError(f"{name} must be true or false, got {describe(value)}")
    return bool(value)


def check_choice(value: Any, name: str, choices: Iterable[Any]) -> Any:
    options = tuple(choices)
    if isinstance(value, Mapping | list) or value not in options:
        raise InputError(f"{name} must be one of {', '.join(map(repr, options))}; got {describe(value)}")
    return value


def check_seed(value: Any, name: str = "seed") -> int:
    return check_int(value, name, min=0, max=SEED_MAX)


def check_text(value: Any, name: str = "text") -> str:
    """A str of valid Unicode (see the module docstring)."""
    if isinstance(value, bytes | bytearray | memoryview):
        raise InputError(
            f"{name} must be a str, got {type(value).__name__}; decode it first, e.g. data.decode('utf-8')"
        )
    if not isinstance(value, str):
        raise InputError(f"{name} must be a str, got {describe(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{name} is not valid Unicode: lone surrogate U+{ord(value[e.start]):04X} at index {e.start}"
        ) from None
    return value


def check_prompt(value: Any, name: str = "prompt") -> str | list[int]:
    """Text, or a non-empty sequence of token ids (ints >= 0; the model checks them against its vocabulary)."""
    if isinstance(value, str | bytes | bytearray | memoryview) or value is None:
        return check_text(value, name)
    if isinstance(value, np.ndarray) and value.ndim != 1:
        raise InputError(f"{name} ids must be a 1-D sequence, got shape {value.shape}")
    if not isinstance(value, Sequence | np.ndarray):
        raise InputError(f"{name} must be a str or a sequence of token ids, got {describe(value)}")
    if len(value) == 0:
        raise InputError(f"{name} is an empty id sequence")
    return [check_int(v, f"{name}[{i}]", min=0) for i, v in enumerate(value)]


def check_ids(value: Any, name: str = "ids") -> list[int]:
    """A sequence of token ids (ints >= 0, possibly empty; the tokenizer checks them against its vocabulary)."""
    if isinstance(value, str | bytes | bytearray | memoryview | Mapping) or value is None:
        raise InputError(f"{name} must be a sequence of token ids, got {describe(value)}")
    if isinstance(value, np.ndarray) and value.ndim != 1:
        raise InputError(f"{name} must be a 1-D sequence of token ids, got shape {value.shape}")
    if not isinstance(value, Sequence | np.ndarray):
        raise InputError(f"{name} must be a sequence of token ids, got {describe(value)}")
    return [check_int(v, f"{name}[{i}]", min=0) for i, v in enumerate(value)]


def check_options(fn: Any, args: tuple[Any, ...], options: Mapping[str, Any], name: str) -> None:
    """Unknown or missing keyword options of a public entry point say so in one line (not Python's TypeError)."""
    import inspect

    try:
        inspect.signature(fn).bind(*args, **options)
    except TypeError as err:
        accepted = [p for p in inspect.signature(fn).parameters if p not in ("model", "self")]
        raise InputError(f"{name}: {err}; it takes {', '.join(accepted)}") from None


@dataclasses.dataclass(frozen=True)
class GenerateArgs:
    """Checked generation arguments (see check_generate_args)."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int


def check_generate_args(
    max_new_tokens: Any = 64, temperature: Any = 0.0, top_k: Any = 0, top_p: Any = 1.0, seed: Any = 0
) -> GenerateArgs:
    """max_new_tokens an int >= 0 (clipped to the context later); temperature finite >= 0 (0 = greedy); top_k an int
    >= 0 (0 = off); top_p in (0, 1]; seed in [0, 2**32 - 1]."""
    return GenerateArgs(
        max_new_tokens=check_int(max_new_tokens, "max_new_tokens", min=0, max=None),
        temperature=check_float(temperature, "temperature", min=0.0),
        top_k=check_int(top_k, "top_k", min=0, max=None),
        top_p=check_float(top_p, "top_p", min=0.0, max=1.0, min_open=True),
        seed=check_seed(seed),
    )


def check_messages(messages: Any, name: str = "messages") -> list[dict[str, str]]:
    """A chat: a non-empty list of {"role": str, "content": str} mappings (other keys kept as they are)."""
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
        raise InputError(f'{name} must be a list of {{"role": ..., "content": ...}} dicts, got {describe(messages)}')
    if not messages:
        raise InputError(f"{name} is empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise InputError(f'{name}[{i}] must be a dict with "role" and "content", got {describe(m)}')
        out.append(
            {
                **m,
                "role": check_text(m["role"], f"{name}[{i}].role"),
                "content": check_text(m["content"], f"{name}[{i}].content"),
            }
        )
    return out


def check_model_source(value: Any, name: str = "model path") -> str:
    """A model given as a path or a registered name: a str or os.PathLike that is not a folder. The empty string
    means the shipped default. Existence is checked by the reader (a missing file is a one-line GGUFFormatError)."""
    if not isinstance(value, str | os.PathLike):
        raise InputError(f"{name} must be a file path or a registered model name (str), got {describe(value)}")
    text = os.fspath(value)
    if not isinstance(text, str):
        raise InputError(f"{name} must be a str path, got {describe(value)}")
    check_text(text, name)
    if "\x00" in text:
        raise InputError(f"{name} contains a NUL character")
    if text and Path(text).expanduser().is_dir():
        raise InputError(f"{name} {one_line(text, 200)!s} is a folder, not a GGUF file; give the .gguf file inside it")
    return text


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of one numeric config key (ints: bounds inclusive; floats: open ends as flagged)."""

    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    seed: bool = False

    def check(self, value: Any, name: str, is_int: bool) -> Any:
        if self.seed:
            return check_seed(value, name)
        if is_int:
            lo = -(2**31) if self.min is None else int(self.min)
            hi = INT32_MAX if self.max is None else int(self.max)
            return check_int(value, name, min=lo, max=hi)
        return check_float(value, name, min=self.min, max=self.max, min_open=self.min_open, max_open=self.max_open)


SEED = Range(seed=True)
POS = Range(min=1)  # counts and sizes: >= 1
NONNEG = Range(min=0)
FRACTION = Range(min=0.0, max=1.0)  # [0, 1]
SHARE = Range(min=0.0, max=1.0, min_open=True)  # (0, 1]
HOLD_OUT = Range(min=0.0, max=1.0, max_open=True)  # [0, 1)
POSITIVE = Range(min=0.0, min_open=True)  # > 0
ANY = Range()  # finite, and an int within int32

CONFIG_RANGES: dict[str, Range] = {
    "seed": SEED,
    "generate.max_new_tokens": NONNEG,
    "generate.temperature": NONNEG,
    "generate.top_k": NONNEG,
    "generate.top_p": SHARE,
    "generate.seed": SEED,
    "sparsity.target_sparsity": FRACTION,
    "sparsity.seq_len": POS,
    "sparsity.batch_size": POS,
    "sparsity.max_tokens": POS,
    "sparsity.calibration_tokens": POS,
    "sparsity.held_out": HOLD_OUT,
    "sparsity.eval_tokens": POS,
    "real_sparsity.seq_len": POS,
    "real_sparsity.held_out": HOLD_OUT,
    "real_sparsity.calibration_windows": POS,
    "real_sparsity.eval_windows": POS,
    "real_sparsity.profile_windows": POS,
    "real_sparsity.batch_size": POS,
    "real_sparsity.sparsities": HOLD_OUT,  # each target sparsity in [0, 1)
    "real_sparsity.greedy_sparsities": HOLD_OUT,
    "real_sparsity.allocation_step": SHARE,
    "real_sparsity.allocation_windows": POS,
    "real_sparsity.profile_sparsity": HOLD_OUT,
    "real_sparsity.hot_share": SHARE,
    "relufy.steps": NONNEG,
    "relufy.lr": POSITIVE,
    "relufy.warmup_steps": NONNEG,
    "relufy.min_lr_ratio": FRACTION,
    "relufy.weight_decay": NONNEG,
    "relufy.grad_clip": POSITIVE,
    "relufy.batch_size": POS,
    "relufy.seq_len": POS,
    "relufy.kd_weight": NONNEG,
    "relufy.lm_weight": NONNEG,
    "relufy.temperature": POSITIVE,
    "relufy.l1_weight": NONNEG,
    "relufy.l1_start": NONNEG,
    "relufy.l1_ramp_steps": NONNEG,
    "relufy.held_out": HOLD_OUT,
    "relufy.val_fraction": HOLD_OUT,
    "relufy.eval_interval": POS,
    "relufy.eval_batch": POS,
    "relufy.seed": SEED,
    "relufy.max_tokens": Range(min=0, max=2**53),  # a training budget in tokens may pass 2**31
    "relufy.val_windows": NONNEG,
    "relufy.held_windows": NONNEG,
    "relufy.checkpoint_every": NONNEG,
    "relufy.session_steps": NONNEG,
    "relufy.max_minutes": NONNEG,
    "predictor.ranks": POS,
    "predictor.target_recall": SHARE,
    "predictor.recall_margin": HOLD_OUT,
    "predictor.min_precision": FRACTION,
    "predictor.precision_margin": HOLD_OUT,
    "predictor.threshold": ANY,
    "predictor.lr": POSITIVE,
    "predictor.weight_decay": NONNEG,
    "predictor.batch_size": POS,
    "predictor.max_epochs": POS,
    "predictor.patience": POS,
    "predictor.min_delta": NONNEG,
    "predictor.neg_weight_offset": NONNEG,
    "predictor.val_fraction": HOLD_OUT,
    "predictor.max_tokens": POS,
    "predictor.seq_len": POS,
    "predictor.profile_batch": POS,
    "predictor.held_out": HOLD_OUT,
    "predictor.eval_tokens": POS,
    "predictor.capacity_quantile": SHARE,
    "predictor.capacity_slack": POSITIVE,
    "predictor.seed": SEED,
    "index.group_size": POS,
    "index.seed": SEED,
    "index.recall": SHARE,
    "index.precision": SHARE,
    "index.n_tokens": POS,
    "hardware.n_accel": NONNEG,
    "hardware.cpu_devices": POS,
    "hardware.num_processes": POS,
    "hardware.process_id": NONNEG,
    "sweep.n_ctx": POS,
    "sweep.prompt_tokens": POS,
    "sweep.new_tokens": POS,
    "sweep.warmup": NONNEG,
    "sweep.repeats": POS,
    "sweep.profile_tokens": POS,
    "sweep.calibration_tokens": POS,
    "sweep.capacity_quantile": SHARE,
    "sweep.sparsity": HOLD_OUT,
    "sweep.eval_windows": NONNEG,
    "sweep.eval_seq_len": Range(min=2),
    "sweep.trace_tokens": NONNEG,
    "simulate.ffn_fractions": FRACTION,
    "simulate.n_ctx": POS,
    "simulate.profile_tokens": POS,
    "simulate.trace_tokens": POS,
    "simulate.seq_len": POS,
    "bench.threads": POS,
    "bench.n_prompt": POS,
    "bench.n_new": Range(min=2),
    "bench.repeats": POS,
    "bench.sweep_fractions": SHARE,
    "bench.sweep_new": POS,
    "bench.size_layers": POS,
    "bench.ffn_repeats": POS,
    "bench.hybrid_profile_tokens": POS,
    "bench.probe_gb": Range(min=0.0, max=1024.0, min_open=True),
}
"""The range of every numeric key of the RunConfig (tuples: of each element). tests/test_bad_input.py checks that
every int and float key has an entry, so a new key cannot skip validation."""


def check_config_value(key: str, value: Any, is_int: bool) -> Any:
    """A numeric config value at dotted `key`, checked against CONFIG_RANGES (a key without an entry only gets the
    type check and the int32 / finite bounds)."""
    return CONFIG_RANGES.get(key, ANY).check(value, key, is_int)
