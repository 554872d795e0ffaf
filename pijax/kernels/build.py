"""Build (once per source, compiler and CPU) and register pijax's C++ CPU kernels as jax.ffi targets.

The shared library is compiled on first use with the system C++ compiler into `$PIJAX_CACHE/kernels` (default
`~/.cache/pijax/kernels`), named by a hash of the source, the compiler, jax's FFI headers and the CPU flags
(the build uses -march=native, or PIJAX_KERNEL_MARCH), and loaded with ctypes. Anything that goes wrong (no compiler, no x86-64, a
failed build, PIJAX_NO_KERNELS=1) leaves `available()` False with the reason in `status()`; every caller then
takes its pure-JAX path, which computes the same result.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import jax

SOURCE = Path(__file__).with_name("cpu_kernels.cc")
INCLUDES = tuple(
    SOURCE.with_name(n)
    for n in (
        "cpu_pool.inc",
        "cpu_rows.inc",
        "cpu_tiles.inc",
        "cpu_quant.inc",
        "cpu_bandwidth.inc",
        "cpu_fused.inc",
        "cpu_attention.inc",
        "cpu_cats.inc",
    )
)
TARGETS = {
    "pijax_rows_dot": "PijaxRowsDot",
    "pijax_sparse_ffn": "PijaxSparseFfn",
    "pijax_rows_dot3": "PijaxRowsDot3",
    "pijax_rows_tdot": "PijaxRowsTDot",
    "pijax_qrows_dot": "PijaxQRowsDot",
    "pijax_qsparse_ffn": "PijaxQSparseFfn",
    "pijax_decode_attention": "PijaxDecodeAttention",
    "pijax_cats_ffn": "PijaxCatsFfn",
    "pijax_qcats_ffn": "PijaxQCatsFfn",
}
# -ffp-contract=off: no multiply-add fused by the compiler where the source does not ask for one, so that a product
# is rounded the same wherever it is inlined (a prompt's multi-token tiles give each token its one-token result).
_FLAGS = ["-O3", "-shared", "-fPIC", "-std=c++17", "-DNDEBUG", "-pthread", "-ffp-contract=off"]


def _march() -> str:
    """-march=native, or PIJAX_KERNEL_MARCH (e.g. "haswell": the AVX2 code on an AVX-512 machine, for tests)."""
    return f"-march={os.environ.get('PIJAX_KERNEL_MARCH') or 'native'}"


_ISA_NAMES = {2: "avx512", 1: "avx2", 0: "portable"}

_lock = threading.Lock()
_state: dict[str, object] = {}


def cache_dir() -> Path:
    root = os.environ.get("PIJAX_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "pijax") / "kernels"


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _library_path(cxx: str) -> Path:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
    h = hashlib.sha256()
    sources = [SOURCE.read_bytes(), *(p.read_bytes() for p in INCLUDES)]
    for part in (*sources, version.encode(), jax.__version__.encode(), _cpu_flags().encode(), *_FLAGS, _march()):
        h.update(part if isinstance(part, bytes) else part.encode())
    return cache_dir() / f"pijax_kernels-{h.hexdigest()[:16]}.so"


def _compile(cxx: str, out: Path) -> None:
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if out.is_file():
            return
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            tmp_so = Path(tmp) / out.name
            cmd = [cxx, *_FLAGS, _march(), f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(tmp_so)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
            os.replace(tmp_so, out)


def load() -> ctypes.CDLL | None:
    """The kernel library, built and registered on the first call; None when it cannot be had."""
    with _lock:
        if "lib" in _state:
            return _state["lib"]  # type: ignore[return-value]
        lib, why = None, ""
        cxx = _compiler()
        if os.environ.get("PIJAX_NO_KERNELS") == "1":
            why = "disabled by PIJAX_NO_KERNELS=1"
        elif platform.machine() not in ("x86_64", "AMD64"):
            why = f"CPU kernels are written for x86-64, this is {platform.machine()}"
        elif cxx is None:
            why = "no C++ compiler found (set CXX, or install g++)"
        else:
            try:
                path = _library_path(cxx)
                if not path.is_file():
                    _compile(cxx, path)
                lib = ctypes.CDLL(str(path))
                for target, symbol in TARGETS.items():
                    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
                threads = os.environ.get("PIJAX_KERNEL_THREADS")
                n = int(threads) if threads else len(os.sched_getaffinity(0))
                lib.pijax_set_threads(ctypes.c_int(n))
                _state["isa"] = _ISA_NAMES.get(int(lib.pijax_isa()), "portable")
                why = f"{path} ({_state['isa']}, {n} threads)"
                if _state["isa"] == "portable":
                    why += ": built without AVX-512 or AVX2+FMA, so the XLA path runs (it is faster than scalar loops)"
            except (OSError, RuntimeError, AttributeError, ValueError) as e:
                lib, why = None, f"kernel build/load failed: {e}"
        _state["lib"], _state["status"] = lib, why
        return lib


def isa() -> str:
    """The vector code the library was built with: "avx512", "avx2" or "portable" (scalar loops); "" without
    a library."""
    load()
    return str(_state.get("isa", ""))


def available() -> bool:
    """Whether the C++ kernels are used: CPU backend, a working build, and vector code (AVX-512 or AVX2+FMA).
    Built without either (an old or non-Intel-compatible CPU), their scalar loops lose to XLA's dot, so every
    caller takes the pure-JAX path (`status()` says so)."""
    return jax.default_backend() == "cpu" and load() is not None and isa() != "portable"


def status() -> str:
    """One line: where the kernel library is and how it was built, or why it is not in use."""
    load()
    return str(_state["status"])


def use_hugepages(arrays: object) -> int:
    """Back the CPU buffers of every array in a pytree with transparent huge pages where the kernel allows it
    (see pijax_hugepages in cpu_kernels.cc); returns the bytes now advised. A no-op without the library, off
    Linux, or with PIJAX_NO_HUGEPAGES=1."""
    lib = load()
    if lib is None or os.environ.get("PIJAX_NO_HUGEPAGES") == "1" or not sys.platform.startswith("linux"):
        return 0
    lib.pijax_hugepages.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    done = 0
    for arr in jax.tree.leaves(arrays):
        if not isinstance(arr, jax.Array) or arr.nbytes < (4 << 20):
            continue
        for shard in arr.addressable_shards:
            if shard.device.platform != "cpu":
                continue
            data = shard.data
            if lib.pijax_hugepages(ctypes.c_void_p(data.unsafe_buffer_pointer()), ctypes.c_size_t(data.nbytes)) >= 0:
                done += data.nbytes
    return done


def set_threads(n: int) -> int:
    """Threads the kernels use per call (the caller included); returns the count in effect (0: no kernels)."""
    lib = load()
    return 0 if lib is None else int(lib.pijax_set_threads(ctypes.c_int(int(n))))
