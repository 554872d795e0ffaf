"""The engine's explicit set-up step: which FFN backend runs, and the process-wide host settings it needs.

`setup_engine(backend)` is called once by whatever builds a sparse or hybrid engine (pijax.engine.api, the
benches); nothing happens at import time. It decides the backend and logs one line saying which runs and why:
- "kernels": pijax's C++ CPU kernels (pijax.kernels), chosen by "auto" on the CPU backend when the library
  builds and the CPU has AVX-512 or AVX2+FMA (the kernel's vector paths); the portable scalar loops lose to
  XLA's vectorised dot, so there "auto" takes "xla".
- "xla": the pure-JAX reference path (also what GPUs run: XLA on GPU).
A backend requested but unavailable (kernels without a build, or off the CPU backend) is a ConfigError.
On the CPU backend it also tunes glibc's allocator (`tune_host_allocator`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import Literal

import jax

from pijax.errors import ConfigError
from pijax.kernels import build

log = logging.getLogger("pijax.engine")

Backend = Literal["auto", "kernels", "xla"]
BACKENDS: tuple[str, ...] = ("auto", "kernels", "xla")

# glibc's malloc returns big freed blocks to the OS and maps them again on the next call. A sparse decode step's
# gathered rows are MBs of fresh temporaries per call, and in a VM every page of them then faults anew (measured:
# 13k faults and ~35 ms extra per 7B-shaped layer step; experiments/sparse_ffn). Keeping freed blocks of up to
# this size in the heap removes that cost; bigger ones (weights) still go back to the OS.
HOST_MALLOC_KEEP_BYTES = 256 << 20
_allocator_tuned = False
_announced: set[str] = set()


def tune_host_allocator(keep_bytes: int = HOST_MALLOC_KEEP_BYTES) -> bool:
    """Make glibc keep freed blocks below `keep_bytes` for reuse (mallopt, process-wide); a no-op off
    Linux/glibc or with PIJAX_NO_MALLOPT=1. Returns whether the setting is in effect."""
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if os.environ.get("PIJAX_NO_MALLOPT") == "1" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, int(keep_bytes)) == 1
        ok = ok and libc.mallopt(m_trim_threshold, int(2 * keep_bytes)) == 1
    except (OSError, AttributeError):
        return False
    _allocator_tuned = ok
    return ok


def kernels_win(platform: str | None = None) -> tuple[bool, str]:
    """Whether the C++ kernels beat XLA for work on `platform` (default: jax's backend), and why (from the CPU's
    vector features)."""
    platform = platform or jax.default_backend()
    if platform != "cpu":
        return False, f"the work runs on {platform}, the kernels are CPU code"
    if build.load() is None or build.isa() == "portable":
        return False, f"no kernels: {build.status()}"
    return True, build.status()


def setup_engine(
    backend: Backend = "auto", platform: str | None = None, what: str = "FFN"
) -> Literal["kernels", "xla"]:
    """Decide the backend for FFN work on `platform` (default: jax's backend; see the module docstring), log it
    once, and tune the host allocator when CPU work is set up."""
    if backend not in BACKENDS:
        raise ConfigError(f"engine backend {backend!r} is not one of {BACKENDS}")
    platform = platform or jax.default_backend()
    win, why = kernels_win(platform)
    if backend == "kernels" and not win:
        raise ConfigError(f"backend 'kernels' was requested but is unavailable: {why}")
    chosen: Literal["kernels", "xla"] = "kernels" if (backend == "kernels" or (backend == "auto" and win)) else "xla"
    if platform == "cpu":
        tune_host_allocator()
    line = f"{what} backend: {chosen}: {why if chosen == 'kernels' or backend == 'auto' else 'requested'}"
    if line not in _announced:
        _announced.add(line)
        log.info(line)
    return chosen
