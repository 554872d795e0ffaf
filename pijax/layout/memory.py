"""Resident accelerator bytes: measured from the arrays' shardings, checked against the budget.

For every jax array, each addressable shard in device memory adds prod(shard shape) x itemsize to its device
(a replicated array counts once per device; a sharded one only its slice per device). Shards in a host memory
kind (pinned_host, unpinned_host) are not accelerator memory and are left out. Where a device reports
`memory_stats()` (GPUs), its `bytes_in_use` is recorded beside the count: that figure also holds temporaries and
anything else the process allocated on the device.

The budget is the total over the accelerators, as in `pijax.index.plan_budget`; a device's share is
budget / n_accel. `ResidentReport.check()` raises BudgetError when either the total or one device's bytes exceed
them: the planner decided the capacity, this is the measurement that holds it to its word.

Compute buffers, estimate against measurement (`with_compute`): the plan reserves XLA's temporaries of the dense
decode step and prefill times a margin (pijax.index.compute_buffers); the measurement is the temporaries of the
programs the engine really compiled (`engine_temp_bytes`: `memory_analysis()` of each, on every backend, CPU
included) and, where the device reports it, the allocator's peak bytes in use. A measured peak of resident bytes
plus temporaries over the budget is a violation like any other.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np

from pijax.errors import BudgetError
from pijax.index.compute_buffers import temp_bytes

HOST_KINDS = ("pinned_host", "unpinned_host")


def _shard_elems(index: tuple[slice, ...], shape: tuple[int, ...]) -> int:
    n = 1
    for sl, dim in zip(index, shape, strict=False):
        n *= len(range(*sl.indices(dim)))
    for dim in shape[len(index) :]:
        n *= dim
    return n


def device_bytes(tree: Any, devices: Iterable[Any] | None = None) -> dict[Any, int]:
    """Bytes per device of every jax array in `tree` (device memory only), optionally only on `devices`."""
    wanted = None if devices is None else set(devices)
    out: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        if not isinstance(leaf, jax.Array):
            continue
        if getattr(leaf.sharding, "memory_kind", None) in HOST_KINDS:
            continue
        itemsize = np.dtype(leaf.dtype).itemsize
        for shard in leaf.addressable_shards:
            if wanted is not None and shard.device not in wanted:
                continue
            out[shard.device] = out.get(shard.device, 0) + _shard_elems(shard.index, leaf.shape) * itemsize
    return out


def engine_temp_bytes(engine: Any) -> int | None:
    """The largest XLA temporaries among the programs `engine` compiled (`compiled_programs()`, or a dense
    Engine's compile cache); None when the engine exposes none or the backend reports no memory analysis."""
    programs = engine.compiled_programs() if hasattr(engine, "compiled_programs") else None
    if programs is None:
        programs = list(getattr(engine, "_compiled", {}).values())
    sizes = [temp_bytes(compiled) for compiled in programs]
    sizes = [n for n in sizes if n is not None]
    return max(sizes) if sizes else None


def bytes_in_use(device: Any) -> int | None:
    """The device allocator's bytes in use, or None where the backend reports no memory stats (CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:  # some backends raise instead of returning None
        return None
    value = (stats or {}).get("bytes_in_use")
    return None if value is None else int(value)


@dataclasses.dataclass(frozen=True)
class ResidentReport:
    """Accelerator bytes of a hybrid model, per device and per part, against a budget (None: no budget)."""

    per_device: dict[str, int]
    by_part: dict[str, int]
    host_bytes: int
    memory_stats: dict[str, int | None]
    budget_bytes: int | None
    n_accel: int = 0  # accelerators the budget is spread over (all processes'); 0: those in per_device
    host_by_part: dict[str, int] = dataclasses.field(default_factory=dict)
    compute_planned: int | None = None  # bytes the budget plan reserved for temporaries (all accelerators)
    compute_how: str = ""  # how the plan found them, e.g. "xla x1.25"
    compute_measured: int | None = None  # largest temporaries of the engine's compiled programs (one device)

    def with_compute(self, planned: int, how: str, measured: int | None) -> ResidentReport:
        """This report with the plan's compute reservation and the measured temporaries beside it."""
        return dataclasses.replace(self, compute_planned=planned, compute_how=how, compute_measured=measured)

    @property
    def total(self) -> int:
        return sum(self.per_device.values())

    @property
    def per_device_budget(self) -> int | None:
        if self.budget_bytes is None:
            return None
        return math.floor(self.budget_bytes / max(self.n_accel or len(self.per_device), 1))

    @property
    def fits(self) -> bool:
        return not self.violations()

    def violations(self) -> list[str]:
        if self.budget_bytes is None:
            return []
        out = []
        if self.total > self.budget_bytes:
            out.append(f"{self.total:,d} resident bytes exceed the budget of {self.budget_bytes:,d}")
        share = self.per_device_budget
        for dev, n in self.per_device.items():
            if share is not None and n > share:
                out.append(f"{dev} holds {n:,d} bytes, over its share {share:,d} of the budget")
        if self.compute_measured is not None:
            peak = self.total + self.compute_measured * len(self.per_device)
            if peak > self.budget_bytes:
                out.append(
                    f"{self.total:,d} resident bytes plus {self.compute_measured:,d} bytes of compiled temporaries per "
                    f"device exceed the budget of {self.budget_bytes:,d}"
                )
        return out

    def check(self) -> ResidentReport:
        """Raise BudgetError when the measured bytes exceed the budget; return self otherwise."""
        bad = self.violations()
        if bad:
            raise BudgetError("resident accelerator memory over budget: " + "; ".join(bad))
        return self

    def summary(self) -> str:
        rows = [f"{name:<22} {n:>14,d}" for name, n in self.by_part.items() if n]
        rows.append(f"{'total (accelerators)':<22} {self.total:>14,d}")
        for dev, n in self.per_device.items():
            stats = self.memory_stats.get(dev)
            extra = "" if stats is None else f"   (memory_stats bytes_in_use {stats:,d})"
            rows.append(f"  {dev:<20} {n:>14,d}{extra}")
        if self.budget_bytes is not None:
            rows.append(f"{'budget':<22} {self.budget_bytes:>14,d}   ({'fits' if self.fits else 'OVER BUDGET'})")
        if self.compute_planned is not None:
            measured = "not reported by this engine" if self.compute_measured is None else f"{self.compute_measured:,d}"
            rows.append(f"{'compute (planned)':<22} {self.compute_planned:>14,d}   ({self.compute_how})")
            rows.append(f"{'compute (compiled)':<22} {measured:>14}   (XLA temporaries of the engine's programs)")
        host = ", ".join(f"{name} {n:,d}" for name, n in self.host_by_part.items() if n)
        rows.append(f"{'host':<22} {self.host_bytes:>14,d}   ({host})")
        return "\n".join(rows)


def resident_report(
    parts: Mapping[str, Any],
    accelerators: Iterable[Any],
    host: Any,
    budget_bytes: int | None = None,
    n_accel: int | None = None,
) -> ResidentReport:
    """Measure `parts` (name -> pytree of jax arrays) on the accelerators (this process's); host bytes are summed
    separately. n_accel: how many accelerators the budget covers, when other processes hold some of them."""
    accel = list(accelerators)
    per_device = {str(d): 0 for d in accel}
    by_part: dict[str, int] = {}
    host_by_part: dict[str, int] = {}
    for name, tree in parts.items():
        counts = device_bytes(tree)
        by_part[name] = sum(n for d, n in counts.items() if d in accel)
        for d in accel:
            per_device[str(d)] += counts.get(d, 0)
        if host not in accel:
            host_by_part[name] = counts.get(host, 0)
    stats = {str(d): bytes_in_use(d) for d in accel}
    return ResidentReport(
        per_device, by_part, sum(host_by_part.values()), stats, budget_bytes, n_accel or len(accel), host_by_part
    )
