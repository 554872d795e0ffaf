"""Hardware descriptions: the HardwareProfile the cost model reads, presets, measured profiles, the fingerprint.

`PRESETS` hold nominal DATASHEET figures (simulated hardware, not measurements; `source="datasheet"`). A
MEASURED profile (`source="measured"`) carries `MeasuredTerms` written by `python -m pijax.bench.calibrate` as a
`hardware=measured_<host>` config (configs/hardware/measured_<host>.yaml, its `cost:` block); `get_preset`
finds it by name or path, and refuses, in one line, a profile whose terms are missing or negative. The fingerprint of the current machine comes from `jax.devices()`: platform, device kinds, count and,
where `memory_stats()` reports it, each device's memory limit. jax is imported only when it is needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pijax.errors import ConfigError

WEIGHT_FORMATS = ("f32", "f16", "int8")
# Scalar terms of a measured profile (microseconds or GB/s), every one required and >= 0 (bandwidths > 0).
SCALAR_TERMS = (
    "call_us",
    "token_us",
    "layer_us",
    "sparse_layer_us",
    "hybrid_token_us",
    "hybrid_layer_us",
    "handover_us",
    "cold_split_us",
    "transfer_latency_us",
    "transfer_gbs",
)
META_TERMS = ("date", "host", "cpu_model", "device_kind")


@dataclasses.dataclass(frozen=True)
class MeasuredTerms:
    """Cost terms measured on one machine (pijax.bench.calibrate; the methods are in its docstring).

    call_us: fixed cost of one jitted call (dispatch + synchronisation, nothing computed);
    token_us / layer_us: the dense Engine's decode step beyond its layers (token loop, call, head, sampling) and
    each of its layers' fixed cost (pijax.bench.calibrate_engine: measured through the engine on tiny models);
    sparse_layer_us: a layer's fixed cost in the single-device sparse engine (predictor + kernel FFN);
    hybrid_token_us / hybrid_layer_us: the HybridEngine's step beyond its layers (with the host's embedding round
    trip) and an all-hot layer's fixed cost;
    handover_us: what one split layer adds in the HybridEngine: its round trip accelerator -> host -> accelerator
    (the calls and device_puts `pijax.index.cost_model.ENGINE_CALLS` counts), chained as the engine runs it;
    cold_split_us: the same for a split layer with no hot rows (its stage call runs no hot kernel);
    transfer_latency_us / transfer_gbs: one device_put between the accelerator and the host device;
    read_gbs[fmt]: streaming read bandwidth of a dense matvec over rows of that format (pijax.kernels.ops.linear);
    gather_gbs[fmt][fraction]: bandwidth of gathered rows (up, gate, down_t of the selected neurons,
    pijax.kernels.ops.sparse_ffn) when `fraction` of the rows are selected, in bytes of the rows read;
    xla_read_gbs / xla_gather_gbs: the same through XLA's dot and take, for comparison (not used by the model);
    host_gather_gbs: gather_gbs on the host CPU where the accelerator is another device (empty: the same table);
    shared_bus: the accelerator and the host are the same memory (one CPU): their parts add instead of overlap.
    """

    date: str
    host: str
    cpu_model: str
    device_kind: str
    call_us: float
    token_us: float
    layer_us: float
    sparse_layer_us: float
    hybrid_token_us: float
    hybrid_layer_us: float
    handover_us: float
    cold_split_us: float
    transfer_latency_us: float
    transfer_gbs: float
    read_gbs: dict[str, float]
    gather_gbs: dict[str, dict[float, float]]
    shared_bus: bool
    xla_read_gbs: dict[str, float] = dataclasses.field(default_factory=dict)
    xla_gather_gbs: dict[float, float] = dataclasses.field(default_factory=dict)
    host_gather_gbs: dict[str, dict[float, float]] = dataclasses.field(default_factory=dict)

    def read_bandwidth(self, fmt: str) -> float:
        """GB/s of streamed rows in `fmt` (f32 for an unmeasured format such as bf16)."""
        return self.read_gbs.get(fmt, self.read_gbs["f32"])

    def gather_bandwidth(self, fmt: str, fraction: float, *, host: bool = False) -> float:
        """GB/s of gathered rows at `fraction` selected (on the host with `host`): linear in log(fraction)
        between measured points, clamped at the ends."""
        import numpy as np

        tables = self.host_gather_gbs if host and self.host_gather_gbs else self.gather_gbs
        table = tables.get(fmt, tables["f32"])
        xs = sorted(table)
        f = min(max(float(fraction), xs[0]), xs[-1])
        return float(np.interp(np.log(f), np.log(xs), [table[x] for x in xs]))


def _number(value: Any, key: str, where: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"hardware profile term {key} is missing or not a number ({value!r})", where)
    if value < 0 or (positive and value == 0) or value != value:
        raise ConfigError(f"hardware profile term {key} must be {'> 0' if positive else '>= 0'}, got {value}", where)
    return float(value)


def _table(value: Any, key: str, where: str) -> dict[str, float]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(f"hardware profile term {key} is missing (a table per weight format)", where)
    return {str(k): _number(v, f"{key}.{k}", where, positive=True) for k, v in value.items()}


def terms_from_mapping(cost: Mapping[str, Any], where: str = "hardware.cost") -> MeasuredTerms:
    """MeasuredTerms from a profile's `cost:` block; ConfigError (one line) for a missing or negative term."""
    if not isinstance(cost, Mapping):
        raise ConfigError("hardware profile has no cost terms (a `cost:` block)", where)
    scalars = {k: _number(cost.get(k), k, where, positive=k == "transfer_gbs") for k in SCALAR_TERMS}
    read = _table(cost.get("read_gbs"), "read_gbs", where)
    gather_raw = cost.get("gather_gbs")
    if not isinstance(gather_raw, Mapping) or not gather_raw:
        raise ConfigError("hardware profile term gather_gbs is missing (fractions per weight format)", where)
    gather = _fraction_tables(gather_raw, "gather_gbs", where)
    host_raw = cost.get("host_gather_gbs")
    host_gather = _fraction_tables(host_raw, "host_gather_gbs", where) if host_raw else {}
    for fmt in ("f32",):
        if fmt not in read or fmt not in gather or (host_gather and fmt not in host_gather):
            raise ConfigError(f"hardware profile needs the {fmt} read_gbs and gather_gbs terms", where)
    meta = {k: str(cost.get(k, "")) for k in META_TERMS}
    if not meta["date"] or not meta["host"]:
        raise ConfigError("hardware profile term date or host is missing", where)
    xla_read = {str(k): float(v) for k, v in (cost.get("xla_read_gbs") or {}).items()}
    xla_gather = {float(k): float(v) for k, v in (cost.get("xla_gather_gbs") or {}).items()}
    return MeasuredTerms(
        **meta,
        **scalars,
        read_gbs=read,
        gather_gbs=gather,
        shared_bus=bool(cost.get("shared_bus", False)),
        xla_read_gbs=xla_read,
        xla_gather_gbs=xla_gather,
        host_gather_gbs=host_gather,
    )


def _fraction_tables(raw: Any, key: str, where: str) -> dict[str, dict[float, float]]:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"hardware profile term {key} is missing (fractions per weight format)", where)
    gather: dict[str, dict[float, float]] = {}
    for fmt, table in raw.items():
        checked = _table(table, f"{key}.{fmt}", where)
        try:
            gather[str(fmt)] = {float(k): v for k, v in checked.items()}
        except ValueError:
            raise ConfigError(f"hardware profile {key}.{fmt}: fractions must be numbers", where) from None
        if any(not 0 < f <= 1 for f in gather[str(fmt)]):
            raise ConfigError(f"hardware profile {key}.{fmt}: fractions must be in (0, 1]", where)
    return gather


@dataclasses.dataclass(frozen=True)
class HardwareProfile:
    """One machine: an accelerator (bandwidth, memory), the host (bandwidth) and the link between them.

    sync_us_per_layer: fixed cost of one accelerator<->host hand-over per layer with a split FFN.
    source: "datasheet" (nominal figures, the cost model's bandwidth-only formula) or "measured" (`terms` set:
    the calibrated formula, pijax.index.cost_model).
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
    source: str = "datasheet"
    terms: MeasuredTerms | None = None

    @property
    def measured(self) -> bool:
        return self.terms is not None

    def __post_init__(self) -> None:
        if self.source not in ("datasheet", "measured") or (self.source == "measured") != (self.terms is not None):
            raise ConfigError(f"hardware profile {self.name!r}: source {self.source!r} does not match its terms")
        for field in ("accel_bandwidth_gbs", "host_bandwidth_gbs", "pcie_gbs"):
            if not getattr(self, field) > 0:
                raise ConfigError(f"hardware profile {self.name!r}: {field} must be > 0")
        if self.sync_us_per_layer < 0 or self.accel_memory_bytes < 0 or self.n_accel < 1:
            raise ConfigError(f"hardware profile {self.name!r}: negative sync/memory or no accelerator")

    def fingerprint(self) -> str:
        """Readable, stable: the name plus a short hash of every field."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str).encode()
        return f"profile:{self.name}:{hashlib.blake2b(blob, digest_size=6).hexdigest()}"


GiB = 2**30
# DATASHEET figures (nominal, simulated): a measured profile replaces them only when named (hardware=measured_*).
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


PROFILE_DIR = Path(__file__).resolve().parents[2] / "configs" / "hardware"


def profile_from_config(mapping: Mapping[str, Any], where: str = "hardware") -> HardwareProfile:
    """The measured HardwareProfile of a `hardware=measured_<host>` config (its name and `cost:` block)."""
    cost = mapping.get("cost") if isinstance(mapping, Mapping) else None
    terms = terms_from_mapping(cost, where)  # type: ignore[arg-type]
    host_gbs = terms.read_bandwidth("f32")
    return HardwareProfile(
        name=str(mapping.get("name") or f"measured_{terms.host}"),
        accel_bandwidth_gbs=host_gbs,
        host_bandwidth_gbs=host_gbs,
        pcie_gbs=terms.transfer_gbs,
        accel_memory_bytes=int(cost.get("accel_memory_bytes", 0) or 0),  # type: ignore[union-attr]
        sync_us_per_layer=terms.transfer_latency_us,
        device_kind=terms.device_kind,
        simulated=False,
        source="measured",
        terms=terms,
    )


def load_profile(path: str | os.PathLike[str]) -> HardwareProfile:
    """A measured profile file (YAML written by pijax.bench.calibrate)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"unreadable hardware profile ({type(e).__name__})", path) from None
    if not isinstance(data, Mapping):
        raise ConfigError("a hardware profile must be a YAML mapping", path)
    return profile_from_config(data, os.fspath(path))


def get_preset(name: str) -> HardwareProfile:
    """A datasheet preset, or a measured profile: `measured_<host>` (configs/hardware/, then the working
    directory's configs/hardware/) or a path to its YAML."""
    if name in PRESETS:
        return PRESETS[name]
    candidates = [Path(name)] if name.endswith((".yaml", ".yml")) else []
    candidates += [PROFILE_DIR / f"{name}.yaml", Path("configs") / "hardware" / f"{name}.yaml"]
    for path in candidates:
        if path.is_file():
            return load_profile(path)
    raise ConfigError(f"unknown hardware preset {name!r}; choose one of {sorted(PRESETS)} or a measured_* profile")


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
