"""HardwareConfig: which devices are the accelerators, which one is the host, and how the hot rows are computed.

Hydra's `hardware` group fills it (configs/hardware/*.yaml). This module does not import jax, so that
`pijax.run_config` can hold the dataclass without starting a backend.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pijax.errors import ConfigError

Platform = Literal["auto", "cpu", "gpu"]
HotMode = Literal["auto", "masked", "gather"]


@dataclasses.dataclass(frozen=True)
class HardwareConfig:
    """Device roles for hybrid execution.

    platform: where the accelerators come from. "gpu": the first `n_accel` GPUs, the host is the CPU device.
      "cpu": virtual CPU devices stand in for everything: the first `n_accel` are the accelerators and the next
      one is the host (so n_accel + 1 CPU devices are needed; `cpu_devices` asks jax for that many when its
      backend has not started yet). "auto": gpu when jax sees one, else cpu.
    n_accel: accelerators in the mesh (0: every GPU; on cpu, every CPU device but the host).
    mesh_axis / axis_type: the one mesh axis the hot rows are sharded along, and its jax AxisType.
    hot_mode: how the predicted-active hot rows are computed; "auto" picks the measured winner per platform
      (experiments/hybrid/README.md). overlap: whether a split layer's hot part is its own accelerator call so
      that it runs while the host computes the cold part (None: the measured winner per platform).
    coordinator / num_processes / process_id: jax.distributed, for meshes over several processes or machines
      (coordinator "" = single process).
    cost: the measured cost-model terms of a `hardware=measured_<host>` profile (pijax.bench.calibrate writes
      them; pijax.index.hardware reads and checks them); None for the other hardware configs.
    """

    name: str = "auto"
    platform: Platform = "auto"
    n_accel: int = 1
    cpu_devices: int | None = None
    mesh_axis: str = "accel"
    axis_type: Literal["explicit", "auto"] = "explicit"
    hot_mode: HotMode = "auto"
    overlap: bool | None = None
    coordinator: str = ""
    num_processes: int = 1
    process_id: int = 0
    cost: Any = dataclasses.field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.platform not in ("auto", "cpu", "gpu"):
            raise ConfigError(f"hardware.platform must be auto, cpu or gpu, got {self.platform!r}")
        if self.n_accel < 0:
            raise ConfigError(f"hardware.n_accel must be >= 0, got {self.n_accel}")
        if self.cpu_devices is not None and self.cpu_devices < 1:
            raise ConfigError(f"hardware.cpu_devices must be >= 1, got {self.cpu_devices}")
        if self.axis_type not in ("explicit", "auto"):
            raise ConfigError(f"hardware.axis_type must be explicit or auto, got {self.axis_type!r}")
        if self.hot_mode not in ("auto", "masked", "gather"):
            raise ConfigError(f"hardware.hot_mode must be auto, masked or gather, got {self.hot_mode!r}")
        if self.num_processes < 1 or not 0 <= self.process_id < self.num_processes:
            raise ConfigError(
                f"hardware: process_id {self.process_id} is not in [0, num_processes={self.num_processes})"
            )
        if self.cost is not None:  # a measured profile: every term present and >= 0, else one line
            from pijax.index.hardware import terms_from_mapping

            terms_from_mapping(self.cost, f"hardware={self.name}")
        if self.num_processes > 1 and not self.coordinator:
            raise ConfigError("hardware.num_processes > 1 needs hardware.coordinator (host:port of process 0)")
