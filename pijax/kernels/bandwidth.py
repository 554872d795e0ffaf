"""The read-bandwidth probe of pijax's kernel library (`pijax_read_bandwidth`, cpu_bandwidth.inc), from Python.

`read_bandwidth(gbytes)` streams a fresh buffer larger than the L3 cache on the kernels' own thread pool and returns
the best GB/s (1e9 bytes/s) of `repeats` passes; `sweep()` measures it across threads, prefetch distances and page
sizes, to find what holds a reader back on a given machine. The decode benchmark's bound is the higher of this
probe and llama.cpp's own effective rate (model bytes x tok/s), so that no share of the bound is inflated by a slow
probe.
"""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Sequence

from pijax.kernels import build


@dataclasses.dataclass(frozen=True)
class BandwidthReading:
    gbps: float  # best pass
    passes: tuple[float, ...]  # every pass
    threads: int
    prefetch_bytes: int
    hugepages: bool
    gbytes: float


def read_bandwidth(
    gbytes: float = 1.0,
    *,
    repeats: int = 5,
    prefetch_bytes: int = 0,
    hugepages: bool = True,
    parts_per_thread: int = 1,
    threads: int | None = None,
) -> BandwidthReading | None:
    """The kernel library's streaming-read bandwidth; None without the library. `threads` (default: the kernels'
    current count) is restored afterwards."""
    lib = build.load()
    if lib is None:
        return None
    fn = lib.pijax_read_bandwidth
    fn.restype = ctypes.c_double
    fn.argtypes = [ctypes.c_int64, ctypes.c_int, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    old = build.set_threads(0)  # n < 1 leaves the pool as it is and returns its size
    if threads is not None:
        build.set_threads(threads)
    try:
        each = (ctypes.c_double * max(1, repeats))()
        best = fn(int(gbytes * 1e9), repeats, prefetch_bytes, int(hugepages), parts_per_thread, each)
        n = build.set_threads(0)
    finally:
        build.set_threads(old)
    if best < 0:
        return None
    return BandwidthReading(best, tuple(each[: max(1, repeats)]), n, prefetch_bytes, hugepages, gbytes)


def sweep(
    gbytes: float = 1.0,
    threads: Sequence[int] = (1, 2),
    prefetch: Sequence[int] = (0, 256, 1024, 4096),
    hugepages: Sequence[bool] = (False, True),
    repeats: int = 5,
) -> list[BandwidthReading]:
    """`read_bandwidth` at every combination, interleaved round by round (so a load change hits each alike)."""
    out = []
    for n in threads:
        for pf in prefetch:
            for hp in hugepages:
                r = read_bandwidth(gbytes, repeats=repeats, prefetch_bytes=pf, hugepages=hp, threads=n)
                if r is not None:
                    out.append(r)
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="the kernel library's read bandwidth across threads/prefetch/pages")
    ap.add_argument("--gbytes", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prefetch", default="0,256,1024,4096")
    a = ap.parse_args(argv)
    print(build.status())
    for r in sweep(
        a.gbytes,
        [int(x) for x in a.threads.split(",")],
        [int(x) for x in a.prefetch.split(",")],
        repeats=a.repeats,
    ):
        print(
            f"threads {r.threads}  prefetch {r.prefetch_bytes:5d} B  hugepages {r.hugepages!s:5s}  "
            f"best {r.gbps:6.2f} GB/s  passes {' '.join(f'{x:.1f}' for x in r.passes)}"
        )


if __name__ == "__main__":
    main()
