"""The hot/cold layout: packing rows from an index, device roles, resident-bytes accounting against a budget."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pijax.errors import BudgetError, ConfigError, IndexFileError
from pijax.layout.config import HardwareConfig
from pijax.layout.devices import setup_devices
from pijax.layout.memory import device_bytes, resident_report
from pijax.layout.pack import layer_kinds, pack_layer, pad_ids, pad_rows, shard_ranges


def _rows(n_ff: int = 10, d: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base = np.arange(n_ff, dtype=np.float32)[:, None] * 10 + np.arange(d, dtype=np.float32)
    return base, base + 1000, base + 2000


def test_pack_layer_puts_hot_rows_in_bucket_order_and_the_rest_on_the_cold_side():
    up, gate, down = _rows()
    p = pack_layer(up, gate, down, np.array([1, 4, 7]))
    assert p.kind == "split" and (p.n_hot, p.n_cold) == (3, 7)
    np.testing.assert_array_equal(p.up_kd, up[[1, 4, 7]])
    np.testing.assert_array_equal(p.gate_kd, gate[[1, 4, 7]])
    np.testing.assert_array_equal(p.down_kd, down[[1, 4, 7]])
    np.testing.assert_array_equal(p.cold_ids, [0, 2, 3, 5, 6, 8, 9])
    np.testing.assert_array_equal(p.down_cd, down[[0, 2, 3, 5, 6, 8, 9]])
    assert p.up_kd.flags.c_contiguous and p.up_cd.flags.c_contiguous


def test_all_hot_and_all_cold_layers_are_not_split():
    up, _, down = _rows()
    assert pack_layer(up, None, down, np.arange(10)).kind == "hot"
    cold = pack_layer(up, None, down, np.zeros(0, np.int32))
    assert cold.kind == "cold" and cold.gate_kd is None and cold.n_cold == 10
    assert layer_kinds([np.arange(10), np.array([3]), np.zeros(0)], 10) == ["hot", "split", "cold"]


@pytest.mark.parametrize("bucket", [np.array([4, 1]), np.array([1, 1]), np.array([-1, 2]), np.array([3, 10])])
def test_a_bucket_that_is_not_ascending_ids_of_the_layer_is_refused(bucket):
    up, gate, down = _rows()
    with pytest.raises(IndexFileError):
        pack_layer(up, gate, down, bucket, layer=2)


def test_padding_spreads_hot_rows_evenly_over_accelerators():
    w = np.ones((5, 2), np.float32)
    assert pad_rows(w, 4).shape == (8, 2) and not pad_rows(w, 4)[5:].any()
    np.testing.assert_array_equal(pad_ids(np.arange(5, dtype=np.int32), 4), [0, 1, 2, 3, 4, -1, -1, -1])
    assert shard_ranges(5, 2) == [(0, 3), (3, 6)]


def test_hardware_config_rejects_bad_values():
    with pytest.raises(ConfigError):
        HardwareConfig(platform="tpu")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        HardwareConfig(hot_mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        HardwareConfig(num_processes=2)  # no coordinator


def test_cpu_placement_keeps_the_host_apart_from_the_accelerators():
    p = setup_devices(HardwareConfig(platform="cpu", n_accel=2))
    cpus = jax.devices("cpu")
    assert p.accelerators == tuple(cpus[:2]) and p.host == cpus[2] and p.n_accel == 2
    assert p.mesh.axis_names == ("accel",)
    assert p.mesh.axis_types == (jax.sharding.AxisType.Explicit,)
    with pytest.raises(ConfigError, match="CPU devices"):
        setup_devices(HardwareConfig(platform="cpu", n_accel=len(cpus)))


def test_resident_bytes_count_replicas_per_device_shards_per_slice_and_skip_host_memory():
    p = setup_devices(HardwareConfig(platform="cpu", n_accel=2))
    a, b = p.accelerators
    repl = jax.device_put(np.zeros((4, 8), np.float32), p.replicated)  # 128 B on each device
    rows = jax.device_put(np.zeros((6, 8), np.float32), p.rows)  # 3 rows (96 B) on each device
    host = jax.device_put(np.zeros((100,), np.float32), p.on_host)
    counts = device_bytes([repl, rows, host])
    assert counts[a] == counts[b] == 128 + 96 and counts[p.host] == 400
    pinned = jax.device_put(
        jnp.zeros((16,), jnp.float32), jax.sharding.SingleDeviceSharding(a, memory_kind="pinned_host")
    )
    assert device_bytes([pinned]) == {}

    report = resident_report({"w": repl, "hot": rows, "cold": host}, p.accelerators, p.host, budget_bytes=1000)
    assert report.total == 2 * (128 + 96) and report.by_part == {"w": 256, "hot": 192, "cold": 0}
    assert report.host_bytes == 400 and report.fits and report.check() is report
    with pytest.raises(BudgetError, match="over budget"):
        resident_report({"w": repl, "hot": rows}, p.accelerators, p.host, budget_bytes=400).check()
    # within the total but over one device's share: still refused
    lopsided = jax.device_put(np.zeros((100,), np.float32), jax.sharding.SingleDeviceSharding(a))
    over = resident_report({"x": lopsided}, p.accelerators, p.host, budget_bytes=500)
    assert over.total <= 500 and not over.fits
