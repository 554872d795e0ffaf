"""Hardware descriptions: the HardwareProfile the cost model reads, nominal presets, and the machine fingerprint.

Preset figures are nominal datasheet-level numbers (simulated hardware, not measurements); issue 6 may refine
them. The fingerprint of the current machine comes from `jax.devices()`: platform, device kinds, count and,
where `memory_stats()` reports it, each device's memory limit. jax is imported only when it is needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from pijax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class HardwareProfile:
    """One machine: an accelerator (bandwidth, memory), the host (bandwidth) and the link between them.

    sync_us_per_layer: fixed cost of one accelerator<->host hand-over per layer with a split FFN.
    """

    name: str
    accel_bandwidth_gbs: float
    host_bandwidth_gbs: float
    pcie_gbs: float
    accel_memory_bytes: int
    sync_us_per_layer: float
    n_accel: int = 1
    device_kind: str = ""
    simulated: bool = True

    def __post_init__(self) -> None:
        for field in ("accel_bandwidth_gbs", "host_bandwidth_gbs", "pcie_gbs"):
            if not getattr(self, field) > 0:
                raise ConfigError(f"hardware profile {self.name!r}: {field} must be > 0")
        if self.sync_us_per_layer < 0 or self.accel_memory_bytes < 0 or self.n_accel < 1:
            raise ConfigError(f"hardware profile {self.name!r}: negative sync/memory or no accelerator")

    def fingerprint(self) -> str:
        """Readable, stable: the name plus a short hash of every field."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return f"profile:{self.name}:{hashlib.blake2b(blob, digest_size=6).hexdigest()}"


GiB = 2**30
PRESETS: dict[str, HardwareProfile] = {
    "rtx4090": HardwareProfile("rtx4090", 1008.0, 60.0, 25.0, 24 * GiB, 20.0, device_kind="NVIDIA GeForce RTX 4090"),
    "a100_80gb": HardwareProfile("a100_80gb", 2039.0, 150.0, 25.0, 80 * GiB, 15.0, device_kind="NVIDIA A100-SXM4-80GB"),
    "h100": HardwareProfile("h100", 3350.0, 250.0, 50.0, 80 * GiB, 10.0, device_kind="NVIDIA H100 80GB HBM3"),
    "laptop": HardwareProfile(
        "laptop", 256.0, 50.0, 12.0, 8 * GiB, 30.0, device_kind="NVIDIA GeForce RTX 4060 Laptop GPU"
    ),
    # This kind of 2-core dev machine (DESIGN.md: ~22 GB/s read bandwidth); "accelerator" and host are one CPU.
    "cpu": HardwareProfile("cpu", 22.0, 22.0, 1000.0, 0, 5.0, device_kind="cpu"),
}

_KIND_MATCH = (("h100", "h100"), ("h200", "h100"), ("a100", "a100_80gb"), ("laptop", "laptop"), ("4090", "rtx4090"))


def get_preset(name: str) -> HardwareProfile:
    if name not in PRESETS:
        raise ConfigError(f"unknown hardware preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def _devices() -> list:
    import jax

    return list(jax.devices())


def _device_memory(device: object) -> int | None:
    """The device's memory in bytes, rounded to whole GiB, where jax reports it (None on CPU).

    jax reports the allocator's limit, not the device's size: on GPUs a fraction (XLA_CLIENT_MEM_FRACTION or
    XLA_PYTHON_CLIENT_MEM_FRACTION, default 0.75) of the memory free at start-up (measured on an H100: 0.75 ->
    63763906560, 0.9 -> 76516687872, both 85018542080 / fraction), and nothing at all with the platform
    allocator. Dividing by the fraction and rounding keeps the fingerprint stable across those settings.
    """
    try:
        stats = device.memory_stats()  # type: ignore[attr-defined]
    except Exception:  # backends without memory stats raise rather than return None
        return None
    limit = (stats or {}).get("bytes_limit")
    if not limit:
        return None
    if getattr(device, "platform", "") == "gpu":
        env = os.environ.get("XLA_CLIENT_MEM_FRACTION") or os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
        try:
            fraction = float(env) if env else 0.75
        except ValueError:
            fraction = 0.75
        limit = limit / fraction if 0 < fraction <= 1 else limit
    return round(limit / GiB) * GiB


def current_hardware_fingerprint() -> str:
    """e.g. 'jax:cpu cpu x1 mem=n/a' or 'jax:gpu NVIDIA H100 80GB HBM3 x1 mem=79GiB'."""
    devices = _devices()
    kinds = sorted({d.device_kind for d in devices})
    mems = sorted({m for m in (_device_memory(d) for d in devices) if m is not None})
    mem = ",".join(f"{m // GiB}GiB" for m in mems) if mems else "n/a"
    return f"jax:{devices[0].platform} {'+'.join(kinds)} x{len(devices)} mem={mem}"


def detect_hardware() -> HardwareProfile:
    """A profile for the current machine: a preset whose device kind matches, else the 'cpu' preset's figures."""
    devices = _devices()
    kind = devices[0].device_kind
    mem = _device_memory(devices[0]) or 0
    for token, preset_name in _KIND_MATCH:
        if token in kind.lower():
            preset = PRESETS[preset_name]
            return dataclasses.replace(
                preset, n_accel=len(devices), accel_memory_bytes=mem or preset.accel_memory_bytes
            )
    base = PRESETS["cpu"]
    return dataclasses.replace(
        base, name=f"detected:{kind}", n_accel=len(devices), accel_memory_bytes=mem, device_kind=kind
    )


def default_budget_bytes(reserve_bytes: int = 256 * 2**20) -> int:
    """PowerInfer's default budget: the accelerator's memory minus 256 MiB (per device, summed over devices).

    Raises ConfigError where jax reports no accelerator memory (CPU), so the user must give a budget.
    """
    devices = _devices()
    mems = [_device_memory(d) for d in devices]
    if any(m is None for m in mems):
        raise ConfigError(f"{devices[0].platform} devices report no memory size; pass a budget such as budget=2GiB")
    return sum(max(int(m) - reserve_bytes, 0) for m in mems)  # type: ignore[arg-type]
