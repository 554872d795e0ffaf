"""How much of the machine other processes used while a measurement ran ("foreign" CPU, in cores).

The benchmark machine is shared: a timing taken while another job computes is slower, and a spin-waiting engine
(llama.cpp's thread barriers) collapses far more than one that is not. Each timed repeat is wrapped in a
`Contention` probe: busy CPU time of the whole machine (/proc/stat) minus this process's own CPU time (all its
threads, `resource.getrusage`), over the wall time. Repeats with little foreign CPU are the clean ones.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

_STAT = Path("/proc/stat")
CLEAN_FOREIGN_CORES = 0.25


def _machine_busy_s() -> float | None:
    try:
        fields = _STAT.read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


class Contention:
    """`with Contention() as c: ...` then `c.foreign_cores` (None where /proc/stat is unavailable)."""

    def __enter__(self) -> Contention:
        self.t0, self.busy0, self.own0 = time.perf_counter(), _machine_busy_s(), _own_cpu_s()
        self.foreign_cores: float | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        busy1, own1, t1 = _machine_busy_s(), _own_cpu_s(), time.perf_counter()
        if self.busy0 is not None and busy1 is not None and t1 > self.t0:
            self.foreign_cores = max(0.0, (busy1 - self.busy0) - (own1 - self.own0)) / (t1 - self.t0)


def is_clean(foreign: float | None) -> bool:
    """A repeat during which other processes used under CLEAN_FOREIGN_CORES (unknown counts as clean)."""
    return foreign is None or foreign < CLEAN_FOREIGN_CORES


def clean_mask(foreign: list[float | None], min_clean: int) -> list[bool]:
    """Which repeats to keep: the clean ones when at least `min_clean` of them are; else all."""
    ok = [is_clean(f) for f in foreign]
    return ok if sum(ok) >= min_clean else [True] * len(foreign)


def enough(foreign: list[float | None], repeats: int) -> bool:
    """Stop repeating: `repeats` clean repeats, or 3 x repeats tries."""
    return sum(is_clean(f) for f in foreign) >= repeats or len(foreign) >= 3 * repeats
