"""Device roles: the accelerator mesh, the host device, and the shardings hybrid execution places arrays with.

`setup_devices(HardwareConfig) -> Placement`. On a GPU machine the accelerators are GPUs and the host is the CPU
device. On CPU only, virtual CPU devices (jax's `jax_num_cpu_devices`, or XLA_FLAGS
`--xla_force_host_platform_device_count=N` set before jax starts) stand in: the first n_accel are the
accelerators and the next one is the host, so a CPU run keeps the same separation of roles (and the same
transfers) as a GPU run.

The mesh has one axis (default "accel") of AxisType Explicit by default: an array's sharding along it is part of
its type, so an operation that would silently gather the sharded hot rows onto every device is an error at trace
time instead of a hidden copy. Everything but the hot rows is replicated over the axis.

Several processes (jax.distributed): every process calls `setup_devices` with its own process_id; the mesh is
built over the accelerators of all processes, and each process uses its own CPU device as its host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pijax.errors import ConfigError
from pijax.layout.config import HardwareConfig

log = logging.getLogger("pijax.layout")

_FLAG_RE = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


@dataclasses.dataclass(frozen=True)
class Placement:
    """The accelerators (as a 1-axis mesh) and the host device."""

    mesh: Mesh
    host_mesh: Mesh  # the host device alone
    axis: str = "accel"

    @property
    def host(self) -> Any:
        return self.host_mesh.devices.flat[0]

    @property
    def accelerators(self) -> tuple[Any, ...]:
        return tuple(self.mesh.devices.flat)

    @property
    def n_accel(self) -> int:
        return int(self.mesh.devices.size)

    @property
    def platform(self) -> str:
        return self.accelerators[0].platform

    @property
    def replicated(self) -> NamedSharding:
        """Every accelerator holds the whole array."""
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def rows(self) -> NamedSharding:
        """Axis 0 (neurons) split over the accelerators, in order."""
        return NamedSharding(self.mesh, PartitionSpec(self.axis))

    @property
    def on_host(self) -> NamedSharding:
        """The host device, as a one-device mesh of its own: an array moved here from the accelerator mesh must
        not keep that mesh in its type (a SingleDeviceSharding would)."""
        return NamedSharding(self.host_mesh, PartitionSpec())

    @property
    def local_accelerators(self) -> tuple[Any, ...]:
        """The accelerators this process drives (all of them with one process)."""
        return tuple(d for d in self.accelerators if d.process_index == jax.process_index())

    def describe(self) -> str:
        acc = ", ".join(str(d) for d in self.accelerators)
        kind = self.accelerators[0].device_kind
        return f"{self.n_accel} accelerator(s) [{acc}] ({kind}), mesh axis {self.axis!r}; host {self.host}"


def _requested_cpu_devices() -> int | None:
    m = _FLAG_RE.search(os.environ.get("XLA_FLAGS", ""))
    return int(m.group(1)) if m else None


def request_cpu_devices(n: int) -> None:
    """Ask jax for at least n CPU devices (per process). Takes effect only before jax's backend starts (any jax
    operation, even jax.devices(), starts it); afterwards it does nothing and `check_cpu_devices` tells."""
    flag = _requested_cpu_devices()
    if flag is None or flag < n:
        # Once the backend is up this raises, and only the check is possible.
        with contextlib.suppress(RuntimeError):
            jax.config.update("jax_num_cpu_devices", n)


def check_cpu_devices(n: int) -> None:
    have = len(jax.local_devices(backend="cpu"))
    if have < n:
        raise ConfigError(
            f"{n} CPU devices are needed but jax has {have}; start Python with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n} (it must be set before jax starts)"
        )


def init_distributed(hw: HardwareConfig) -> None:
    """jax.distributed.initialize for a multi-process mesh (a no-op for one process or when already done)."""
    if hw.num_processes <= 1:
        return
    if jax.distributed.is_initialized():
        return
    if hw.platform == "cpu":  # the CPU backend's cross-process collectives (the psum over hot shards) need gloo
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=hw.coordinator, num_processes=hw.num_processes, process_id=hw.process_id
    )


def _has_gpu() -> bool:
    try:
        return len(jax.devices("gpu")) > 0
    except RuntimeError:
        return False


def setup_devices(hw: HardwareConfig | None = None) -> Placement:
    """The Placement that `hw` describes (see the module docstring). Call it before any other jax work when
    virtual CPU devices or jax.distributed are wanted: both must be set up before jax's backend starts."""
    hw = hw or HardwareConfig()
    per_process = hw.cpu_devices or (max(hw.n_accel, 1) + 1)
    if hw.platform != "gpu":
        request_cpu_devices(per_process)
    init_distributed(hw)
    if hw.platform == "cpu" or (hw.platform == "auto" and not _has_gpu()):
        check_cpu_devices(per_process)
        if hw.num_processes > 1:
            return _cpu_multiprocess(hw)
        cpus = jax.devices("cpu")
        n = hw.n_accel or len(cpus) - 1
        if n < 1 or n + 1 > len(cpus):
            raise ConfigError(f"{n} CPU accelerators plus a host need {n + 1} CPU devices; jax has {len(cpus)}")
        accel, host = cpus[:n], cpus[n]
    else:
        if not _has_gpu():
            raise ConfigError("hardware.platform=gpu but jax sees no GPU (is a CUDA jaxlib plugin installed?)")
        gpus = jax.devices("gpu")  # global over processes
        n = hw.n_accel or len(gpus)
        if n > len(gpus):
            raise ConfigError(f"{n} accelerators asked for, jax sees {len(gpus)} GPU(s)")
        accel = gpus[:n]
        host = jax.local_devices(backend="cpu")[0]
    return _placement(hw, accel, host)


def _cpu_multiprocess(hw: HardwareConfig) -> Placement:
    """Each process: its first cpu_devices-1 local CPU devices are accelerators, its last one its host."""
    per = hw.cpu_devices or (max(hw.n_accel, 1) + 1)
    accel = []
    for p in range(hw.num_processes):
        local = sorted((d for d in jax.devices("cpu") if d.process_index == p), key=lambda d: d.id)
        accel += local[: per - 1]
    host = sorted(jax.local_devices(backend="cpu"), key=lambda d: d.id)[per - 1]
    return _placement(hw, accel, host)


def _placement(hw: HardwareConfig, accel: list[Any], host: Any) -> Placement:
    axis_type = jax.sharding.AxisType.Explicit if hw.axis_type == "explicit" else jax.sharding.AxisType.Auto
    mesh = Mesh(np.array(accel), (hw.mesh_axis,), axis_types=(axis_type,))
    host_mesh = Mesh(np.array([host]), ("host",), axis_types=(axis_type,))
    placement = Placement(mesh=mesh, host_mesh=host_mesh, axis=hw.mesh_axis)
    log.info("hybrid placement: %s", placement.describe())
    return placement


def to_mesh(tree: Any, sharding: Any) -> Any:
    """Put arrays (numpy, or jax arrays this process holds) onto `sharding`. With several processes the sharding
    spans devices this process cannot address; every process then passes the same values and supplies its own
    devices' parts (numpy: sliced; a local jax array: the whole of it, for a replicated sharding)."""
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def one(a: Any) -> jax.Array:
        if isinstance(a, jax.Array):
            parts = [jax.device_put(a, d) for d in sharding.addressable_devices]
            return jax.make_array_from_single_device_arrays(a.shape, sharding, parts)
        arr = np.asarray(a)
        return jax.make_array_from_callback(arr.shape, sharding, lambda idx: arr[idx])

    return jax.tree.map(one, tree)


def to_local(tree: Any) -> Any:
    """A replicated global array as this process's own copy (the identity with one process)."""

    def one(a: Any) -> Any:
        return a.addressable_data(0) if isinstance(a, jax.Array) and not a.is_fully_addressable else a

    return jax.tree.map(one, tree)
