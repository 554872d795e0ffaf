"""Hardware profiles and the machine fingerprint (fake GPU devices stand in for the H100 it was checked on)."""

from __future__ import annotations

import dataclasses

import pytest

import pijax.index.hardware as hw
from pijax.errors import ConfigError


@dataclasses.dataclass
class FakeDevice:
    device_kind: str
    platform: str
    limit: int | None

    def memory_stats(self):
        return None if self.limit is None else {"bytes_limit": self.limit}


H100_LIMITS = {"0.75": 63763906560, "0.9": 76516687872}  # measured: jax 0.11.2 on one H100 80GB HBM3


@pytest.mark.parametrize("fraction", ["0.75", "0.9"])
def test_gpu_fingerprint_does_not_depend_on_the_allocator_fraction(monkeypatch, fraction):
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", fraction)
    monkeypatch.delenv("XLA_CLIENT_MEM_FRACTION", raising=False)
    devices = [FakeDevice("NVIDIA H100 80GB HBM3", "gpu", H100_LIMITS[fraction])] * 2
    monkeypatch.setattr(hw, "_devices", lambda: devices)
    assert hw.current_hardware_fingerprint() == "jax:gpu NVIDIA H100 80GB HBM3 x2 mem=79GiB"
    detected = hw.detect_hardware()
    assert detected.name == "h100" and detected.n_accel == 2 and detected.accel_memory_bytes == 79 * 2**30
    assert hw.default_budget_bytes() == 2 * (79 * 2**30 - 256 * 2**20)


def test_cpu_fingerprint_and_unknown_devices(monkeypatch):
    assert hw.current_hardware_fingerprint().startswith("jax:cpu ")
    with pytest.raises(ConfigError, match="pass a budget"):
        hw.default_budget_bytes()
    monkeypatch.setattr(hw, "_devices", lambda: [FakeDevice("Mystery Accelerator", "gpu", None)])
    assert hw.current_hardware_fingerprint().endswith("x1 mem=n/a")
    assert hw.detect_hardware().name == "detected:Mystery Accelerator"


def test_profiles_validate_and_fingerprint_their_fields():
    base = hw.get_preset("rtx4090")
    assert base.fingerprint() == hw.get_preset("rtx4090").fingerprint()
    assert base.fingerprint() != dataclasses.replace(base, sync_us_per_layer=21.0).fingerprint()
    with pytest.raises(ConfigError):
        hw.HardwareProfile("bad", 0.0, 1.0, 1.0, 0, 1.0)
    with pytest.raises(ConfigError, match="unknown hardware preset"):
        hw.get_preset("abacus")
