"""Accelerator-memory accounting: how many FFN neurons fit once everything that must be resident is placed.

Order of accounting follows PowerInfer (attention with its norm, predictors, FFN norms, output head and output
norm, KV cache for n_ctx); pijax adds what PowerInfer forgets, the compute buffers and the bucket arrays, so a
budget that "fits" does not run out of memory later. The token embedding never goes to the accelerator.

Per hot neuron: (3 with a gate, else 2) x n_embd x itemsize weight bytes, plus 4 bytes for its int32 bucket entry.
Each layer also keeps an int32 [n_ff] neuron map on the accelerator (PowerInfer's gpu_idx), counted as dense.

Compute buffers (`compute_buffers="xla"`, the default) are the temporaries XLA compiles for the dense model's
decode step and a prefill of n_batch tokens at n_ctx, times a safety margin (pijax.index.compute_buffers). The
closed formula of earlier versions (`compute_buffers="formula"`) is kept for comparison; it over-reserves ~10x:
    n_batch x (4 D + 2 D_kv + H x n_ctx + 4 F + R_max + V) x compute_itemsize
n_batch (default 32) is the longest prompt chunk the plan allows: a longer prompt prefilled at once needs more.

PowerInfer's own capacity rounding (`rounding="powerinfer"`, used with `powerinfer_compat`):
    capacity = floor(remaining / (n_ff x itemsize x (4.5 with a gate, else 2))) x 4
It uses n_ff where the true cost is n_embd; pijax also caps it at the exact capacity so it can never overshoot.

Budgets are absolute ("2GiB", "512MB", a byte count: `parse_bytes`) or relative to the model ("ffn:30%":
`ffn_share`): the dense part plus that share of all FFN neurons, so one sweep grid means the same thing for a 260K
and a 1.1B model. `plan_budget` reads both, so every task that takes a budget takes both.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from pijax.config import ModelConfig
from pijax.errors import BudgetError, ConfigError

BUCKET_BYTES_PER_NEURON = 4
"""int32 bucket entry per hot neuron."""

_DTYPE_BYTES: dict[str, float] = {
    "f32": 4.0,
    "float32": 4.0,
    "f16": 2.0,
    "float16": 2.0,
    "bf16": 2.0,
    "bfloat16": 2.0,
    "q8_0": 34 / 32,
    "q4_0": 18 / 32,
}

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
MAX_BUDGET_BYTES = 2**62
"""The largest budget read (4 EiB): files record it as u64, and 'everything fits' is 2**62 in resolve_budget."""
_FFN_RE = re.compile(r"^\s*ffn\s*:\s*([0-9]*\.?[0-9]+)\s*%\s*$", re.IGNORECASE)
_BYTES_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: int | float | str) -> int:
    """'6GiB' -> 6442450944. Units: B; KB/MB/GB/TB (powers of 1000); K/M/G/T and KiB/MiB/GiB/TiB (powers of 1024).

    A bare number is bytes. Fractions are floored to whole bytes. Anything else, a negative size or one above
    MAX_BUDGET_BYTES raises ConfigError.
    """
    if isinstance(value, bool):
        raise ConfigError(f"budget must be a byte count or a string like '6GiB', got {value!r}")
    if isinstance(value, int | np.integer):
        n = int(value)
    elif isinstance(value, float | np.floating):
        if not math.isfinite(value):
            raise ConfigError(f"budget must be a finite number of bytes, got {value!r}")
        n = int(value)
    elif isinstance(value, str):
        m = _BYTES_RE.match(value[:100])
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            if value.strip().startswith("-"):
                raise ConfigError(f"budget must not be negative, got {value[:40]!r}")
            raise ConfigError(f"cannot read budget {value[:40]!r}; write e.g. '6GiB', '512MiB', '2GB' or a byte count")
        number = float(m.group(1))  # '1e999' reads as inf
        if not math.isfinite(number) or number * _UNITS[unit] > MAX_BUDGET_BYTES:
            raise ConfigError(f"budget {value[:40]!r} is larger than any memory ({MAX_BUDGET_BYTES:,d} bytes at most)")
        n = int(number * _UNITS[unit])
    else:
        raise ConfigError(f"budget must be a byte count or a string like '6GiB', got {type(value).__name__}")
    if n < 0:
        raise ConfigError(f"budget must not be negative, got {n}")
    if n > MAX_BUDGET_BYTES:
        raise ConfigError(f"budget {n:,d} bytes is larger than any memory ({MAX_BUDGET_BYTES:,d} bytes at most)")
    return n


def ffn_share(budget: str | int | float | None) -> float | None:
    """0.3 for 'ffn:30%', None for anything else (an absolute budget)."""
    if not isinstance(budget, str):
        return None
    m = _FFN_RE.match(budget)
    if m is None:
        if budget.strip().lower().startswith("ffn"):
            raise ConfigError(f"cannot read budget {budget!r}; a relative budget is written like 'ffn:30%'")
        return None
    share = float(m.group(1)) / 100.0
    if share > 1.0:
        raise ConfigError(f"budget {budget!r}: the FFN share must be at most 100%")
    return share


def check_budget(budget: str | int | float | None) -> None:
    """Raise ConfigError now for a budget that cannot be read (relative or absolute), before any work needs it."""
    if ffn_share(budget) is None:
        parse_bytes(budget)  # type: ignore[arg-type]


def resolve_budget(budget: str | int | float | None, model_cfg: ModelConfig, **plan_kwargs: Any) -> int | str:
    """Bytes for 'ffn:X%' (dense part + X% of all FFN neurons, under plan_budget(**plan_kwargs)); None means
    'ffn:100%'; any other budget is returned unchanged for plan_budget to read."""
    share = 1.0 if budget is None else ffn_share(budget)
    if share is None:
        return budget  # type: ignore[return-value]
    return ffn_budget_bytes(share, model_cfg, **plan_kwargs)


def ffn_budget_bytes(share: float, model_cfg: ModelConfig, **plan_kwargs: Any) -> int:
    """The budget that holds the dense part (under plan_budget(**plan_kwargs)) plus `share` of all FFN neurons."""
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"the FFN share must be between 0 and 1, got {share!r}")
    plan_kwargs = {k: v for k, v in plan_kwargs.items() if k != "allow_all_cold"}
    full = plan_budget(model_cfg, 2**62, **plan_kwargs)
    per = full.bytes_per_neuron + BUCKET_BYTES_PER_NEURON
    return full.dense_bytes + math.ceil(share * full.total_neurons) * per


def dtype_bytes(dtype: str | np.dtype | type) -> float:
    """Bytes per stored weight: 'f32' 4, 'f16'/'bf16' 2, 'q8_0' 34/32, 'q4_0' 18/32 (block scales included)."""
    if isinstance(dtype, str) and dtype.lower() in _DTYPE_BYTES:
        return _DTYPE_BYTES[dtype.lower()]
    try:
        return float(np.dtype(dtype).itemsize)
    except TypeError:
        raise ConfigError(f"unknown weight dtype {dtype!r}; use one of {sorted(_DTYPE_BYTES)}") from None


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
    """Where an accelerator budget goes. All sizes in bytes; `capacity_neurons` is the FFN rows that fit."""

    budget_bytes: int
    attention_bytes: int
    predictor_bytes: int
    ffn_norm_bytes: int
    output_bytes: int
    kv_cache_bytes: int
    compute_buffer_bytes: int
    neuron_map_bytes: int
    remaining_bytes: int
    bytes_per_neuron: int
    bucket_bytes_per_neuron: int
    capacity_neurons: int
    total_neurons: int
    fits: bool
    rounding: Literal["exact", "powerinfer"] = "exact"
    compute_source: str = "formula"  # how compute_buffer_bytes was found: "xla", "formula" or "given"

    @property
    def dense_bytes(self) -> int:
        """Everything resident before any FFN row."""
        return sum(self.parts().values())

    @property
    def hot_bytes_at_capacity(self) -> int:
        return self.capacity_neurons * (self.bytes_per_neuron + self.bucket_bytes_per_neuron)

    def parts(self) -> dict[str, int]:
        return {
            "attention (+ norm)": self.attention_bytes,
            "predictors": self.predictor_bytes,
            "ffn norms": self.ffn_norm_bytes,
            "output (+ norm)": self.output_bytes,
            "kv cache": self.kv_cache_bytes,
            "compute buffers": self.compute_buffer_bytes,
            "neuron maps": self.neuron_map_bytes,
        }

    def summary(self) -> str:
        rows = [f"{k:<20} {v:>16,d}" for k, v in self.parts().items()]
        rows[list(self.parts()).index("compute buffers")] += f"   ({self.compute_source})"
        rows.append(f"{'dense total':<20} {self.dense_bytes:>16,d}")
        rows.append(f"{'budget':<20} {self.budget_bytes:>16,d}")
        rows.append(
            f"{'ffn neurons':<20} {self.capacity_neurons:>16,d} of {self.total_neurons:,d} "
            f"({self.bytes_per_neuron + self.bucket_bytes_per_neuron:,d} B each, {self.rounding} rounding)"
        )
        return "\n".join(rows)


def plan_budget(
    model_cfg: ModelConfig,
    budget: int | float | str,
    *,
    weight_dtype: str | np.dtype = "f32",
    kv_dtype: str | np.dtype = "f32",
    predictor_dtype: str | np.dtype | None = None,
    compute_dtype: str | np.dtype = "f32",
    n_ctx: int | None = None,
    n_batch: int = 32,
    predictor_ranks: Sequence[int] | None = None,
    gated: bool = True,
    n_devices: int = 1,
    replicate_dense: bool = True,
    rounding: Literal["exact", "powerinfer"] = "exact",
    allow_all_cold: bool = False,
    compute_buffers: Literal["xla", "formula"] | int = "xla",
) -> BudgetPlan:
    """Account `budget` (total over `n_devices` accelerators) and return the FFN neuron capacity.

    budget: bytes, a size string ('2GiB') or a share of the FFN ('ffn:30%': the dense part under these same
    settings plus 30% of all FFN neurons).

    n_ctx defaults to the model's; n_batch is clipped to n_ctx. With `replicate_dense` every device holds the
    dense part and its own compute buffers; otherwise the dense part is counted once (sharded). Raises
    BudgetError naming the bytes needed when the dense part does not fit, unless `allow_all_cold`, which
    returns a plan with capacity 0 and `fits=False`.
    """
    if ffn_share(budget) is not None:
        budget = resolve_budget(
            budget,
            model_cfg,
            weight_dtype=weight_dtype,
            kv_dtype=kv_dtype,
            predictor_dtype=predictor_dtype,
            compute_dtype=compute_dtype,
            n_ctx=n_ctx,
            n_batch=n_batch,
            predictor_ranks=predictor_ranks,
            gated=gated,
            n_devices=n_devices,
            replicate_dense=replicate_dense,
            rounding=rounding,
            compute_buffers=compute_buffers,
        )
    budget_bytes = parse_bytes(budget)
    cfg = model_cfg
    if n_devices < 1:
        raise ConfigError(f"n_devices must be >= 1, got {n_devices}")
    if rounding not in ("exact", "powerinfer"):
        raise ConfigError(f"rounding must be 'exact' or 'powerinfer', got {rounding!r}")
    n_ctx = cfg.n_ctx if n_ctx is None else int(n_ctx)
    if n_ctx < 1 or n_batch < 1:
        raise ConfigError(f"n_ctx and n_batch must be >= 1, got {n_ctx}, {n_batch}")
    if predictor_ranks is not None and len(predictor_ranks) != cfg.n_layer:
        raise ConfigError(f"{len(predictor_ranks)} predictor ranks given for a model of {cfg.n_layer} layers")
    wb = dtype_bytes(weight_dtype)
    pb = wb if predictor_dtype is None else dtype_bytes(predictor_dtype)
    kvb = dtype_bytes(kv_dtype)
    cb = dtype_bytes(compute_dtype)
    norm_b = 4  # norms stay f32
    d, dkv, f, n_layer = cfg.n_embd, cfg.n_embd_kv, cfg.n_ff, cfg.n_layer

    attention = n_layer * (math.ceil((2 * d * d + 2 * dkv * d) * wb) + d * norm_b)
    ranks = list(predictor_ranks or [])
    predictors = sum(math.ceil((r * d + f * r) * pb) for r in ranks)
    ffn_norms = n_layer * d * norm_b
    output = math.ceil(cfg.n_vocab * d * wb) + d * norm_b
    kv_cache = math.ceil(2 * n_layer * n_ctx * dkv * kvb)
    tokens = min(n_batch, n_ctx)
    r_max = max(ranks, default=0)
    if isinstance(compute_buffers, int) and not isinstance(compute_buffers, bool):
        compute, source = int(compute_buffers), "given"
    elif compute_buffers == "formula":
        compute = math.ceil(tokens * (4 * d + 2 * dkv + cfg.n_head * n_ctx + 4 * f + r_max + cfg.n_vocab) * cb)
        source = "formula"
    elif compute_buffers == "xla":
        from pijax.index.compute_buffers import SAFETY_MARGIN, reserved_compute_bytes

        dtype = "float32" if cb >= 4 else "bfloat16"
        compute = reserved_compute_bytes(cfg, n_ctx, tokens, dtype=dtype, r_max=r_max, itemsize=cb)
        source = f"xla x{SAFETY_MARGIN:g}"
    else:
        raise ConfigError(f"compute_buffers must be 'xla', 'formula' or a byte count, got {compute_buffers!r}")
    neuron_maps = n_layer * f * 4
    copies = n_devices if replicate_dense else 1
    dense = (attention + predictors + ffn_norms + output + kv_cache + neuron_maps) * copies + compute * n_devices
    per_neuron = math.ceil((3 if gated else 2) * d * wb)
    total = n_layer * f

    fits = dense <= budget_bytes
    if not fits and not allow_all_cold:
        raise BudgetError(
            f"the dense part needs {dense:,d} bytes ({dense / 2**30:.3f} GiB) but the budget is "
            f"{budget_bytes:,d} bytes; raise the budget by {dense - budget_bytes:,d} bytes or allow an all-cold index"
        )
    remaining = max(budget_bytes - dense, 0)
    capacity = min(remaining // (per_neuron + BUCKET_BYTES_PER_NEURON), total)
    if rounding == "powerinfer":
        pi = math.floor(remaining / (f * wb * (4.5 if gated else 2))) * 4
        capacity = min(capacity, pi)
    return BudgetPlan(
        budget_bytes=budget_bytes,
        attention_bytes=attention * copies,
        predictor_bytes=predictors * copies,
        ffn_norm_bytes=ffn_norms * copies,
        output_bytes=output * copies,
        kv_cache_bytes=kv_cache * copies,
        compute_buffer_bytes=compute * n_devices,
        neuron_map_bytes=neuron_maps * copies,
        remaining_bytes=remaining,
        bytes_per_neuron=per_neuron,
        bucket_bytes_per_neuron=BUCKET_BYTES_PER_NEURON,
        capacity_neurons=int(capacity),
        total_neurons=total,
        fits=fits,
        rounding=rounding,
        compute_source=source,
    )
