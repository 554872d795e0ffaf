"""Calibration: the smoke micro-benchmarks write a measured profile that the hardware machinery loads, a damaged
profile is refused in one line, the calibrated formula charges what it documents, and the check table reports
the error per sweep point."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import yaml

from pijax.bench.calibrate import main as calibrate_main
from pijax.bench.simulate import Trace, check_table_markdown, simulate_seconds
from pijax.configure import build
from pijax.errors import ConfigError, PijaxError
from pijax.index.cost_model import ENGINE_CALLS, dense_engine_seconds, sparse_engine_seconds
from pijax.index.hardware import SCALAR_TERMS, get_preset, load_profile, profile_from_config
from pijax.layout.config import HardwareConfig
from pijax.results import write_results_csv


@pytest.fixture(scope="module")
def smoke_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("calib")
    assert calibrate_main(["--smoke", "--out", str(out), "--name", "measured_test"]) == 0
    return out / "measured_test.yaml"


def test_smoke_calibration_writes_a_profile_the_hardware_config_loads(smoke_profile):
    data = yaml.safe_load(smoke_profile.read_text())
    cost = data["cost"]
    for key in ("date", "host", "cpu_model", "device_kind"):
        assert cost[key]
    assert cost["smoke"] is True and cost["shared_bus"] is True  # CPU stands in for accelerator and host
    hw = get_preset(str(smoke_profile))
    assert hw.source == "measured" and hw.terms is not None and not hw.simulated
    for key in SCALAR_TERMS:
        assert getattr(hw.terms, key) >= 0
    assert set(hw.terms.read_gbs) == {"f32", "f16", "int8"} == set(hw.terms.gather_gbs)
    assert all(len(t) == 3 and min(t.values()) > 0 for t in hw.terms.gather_gbs.values())
    assert hw.terms.xla_read_gbs and hw.terms.xla_gather_gbs
    # the same file is a `hardware=` config: its device-role keys fill HardwareConfig as Hydra would
    cfg = build(HardwareConfig, {k: v for k, v in data.items() if k != "defaults"}, where="hardware")
    assert cfg.name == "measured_test" and profile_from_config(dataclasses.asdict(cfg)).terms == hw.terms
    assert get_preset("rtx4090").source == "datasheet" and get_preset("rtx4090").terms is None


@pytest.mark.parametrize(
    "damage, term",
    [
        (lambda c: c.pop("call_us"), "call_us"),
        (lambda c: c.pop("hybrid_token_us"), "hybrid_token_us"),
        (lambda c: c.__setitem__("handover_us", -0.5), "handover_us"),
        (lambda c: c.pop("cold_split_us"), "cold_split_us"),
        (lambda c: c.__setitem__("layer_us", -1.0), "layer_us"),
        (lambda c: c["gather_gbs"]["f32"].__setitem__("0.25", -3.0), "gather_gbs.f32.0.25"),
        (lambda c: c.pop("read_gbs"), "read_gbs"),
        (lambda c: c.__setitem__("transfer_gbs", 0), "transfer_gbs"),
    ],
)
def test_a_profile_with_a_missing_or_negative_term_is_refused_in_one_line(smoke_profile, tmp_path, damage, term):
    data = yaml.safe_load(smoke_profile.read_text())
    damage(data["cost"])
    bad = tmp_path / "measured_bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_profile(bad)
    msg = str(e.value)
    assert "\n" not in msg and term in msg and str(bad) in msg
    assert isinstance(e.value, PijaxError)
    with pytest.raises(ConfigError, match=term.split(".")[0]):  # hardware=measured_bad is refused the same way
        HardwareConfig(name="measured_bad", cost=data["cost"])


def _measured(shared_bus: bool):
    cost = {
        "date": "2026-01-01T00:00:00Z",
        "host": "h",
        "cpu_model": "c",
        "device_kind": "cpu",
        "call_us": 10.0,
        "token_us": 30.0,
        "layer_us": 2.0,
        "sparse_layer_us": 4.0,
        "hybrid_token_us": 50.0,
        "hybrid_layer_us": 3.0,
        "handover_us": 40.0,
        "cold_split_us": 25.0,
        "transfer_latency_us": 5.0,
        "transfer_gbs": 10.0,
        "read_gbs": {"f32": 20.0},
        "gather_gbs": {"f32": {"0.1": 5.0, "1.0": 20.0}},
        "shared_bus": shared_bus,
    }
    return profile_from_config({"name": "m", "cost": cost})


@pytest.mark.parametrize("shared_bus", [True, False])
def test_the_calibrated_formula_charges_calls_gathers_and_the_shared_bus(shared_bus):
    hw = _measured(shared_bus)
    masks = np.zeros((1, 2, 10), bool)
    masks[0, 0, [0, 5]] = True  # layer 0: 1 hot row (hot set {0}) and 1 cold row of 9
    masks[0, 1, :] = True  # layer 1: all hot, never leaves the accelerator
    trace = Trace(masks, "true", counts=masks[0].astype(int), n_counted_tokens=1)
    b, xfer, dense = 1000, 80, 20000
    got = simulate_seconds(
        trace, [np.array([0]), np.arange(10)], hw, bytes_per_neuron=b, transfer_bytes=xfer, dense_bytes=dense
    )
    fixed = 50e-6 + dense / 20e9  # hybrid_token_us + the dense part streamed
    g0 = b / 20e9  # 1 of 1 hot rows: the whole hot set, fraction 1
    bw_cold = np.interp(np.log(1 / 9), np.log([0.1, 1.0]), [5.0, 20.0])
    c0 = b / (bw_cold * 1e9)
    split = 40e-6 + xfer / 10e9  # one hand-over (measured through the engine) and the bytes moved
    layer0 = 3e-6 + (g0 + c0 if shared_bus else max(g0, c0)) + split
    layer1 = 3e-6 + 10 * b / 20e9
    assert got == pytest.approx(fixed + layer0 + layer1, rel=1e-9)
    # the engine's compiled capacity caps the rows it computes; a skipping kernel reads a share of each row
    hits = np.array([[1, 5]])  # layer 0: 1 of its 2 rows truly active; layer 1: 5 of 10
    trace = dataclasses.replace(trace, hits=hits)
    capped = simulate_seconds(
        trace, [np.array([0]), np.arange(10)], hw, bytes_per_neuron=b, transfer_bytes=xfer, dense_bytes=dense,
        hot_capacity=[1, 4], cold_capacity=[1, 0], skip_inactive=True,
    )  # fmt: skip
    share = np.array([(1 + 2 * 0.5) / 3, (1 + 2 * 0.5) / 3])
    g1 = 4 * b * share[1] / (np.interp(np.log(0.4), np.log([0.1, 1.0]), [5.0, 20.0]) * 1e9)
    layer0 = 3e-6 + share[0] * (g0 + c0 if shared_bus else max(g0, c0)) + split
    assert capped == pytest.approx(fixed + layer0 + 3e-6 + g1, rel=1e-9)
    # a split layer with no hot rows runs no hot kernel: charged the all-cold hand-over (cold_split_us)
    cold_only = simulate_seconds(
        trace, [np.array([], np.int64), np.arange(10)], hw, bytes_per_neuron=b, transfer_bytes=xfer,
        dense_bytes=dense,
    )  # fmt: skip
    c_all = 2 * b / (np.interp(np.log(2 / 10), np.log([0.1, 1.0]), [5.0, 20.0]) * 1e9)
    layer0 = 3e-6 + c_all + 25e-6 + xfer / 10e9
    assert cold_only == pytest.approx(fixed + layer0 + 3e-6 + 10 * b / 20e9, rel=1e-9)


def test_dense_and_sparse_engines_are_charged_their_layers_and_bytes():
    terms = _measured(True).terms
    assert dense_engine_seconds(terms, 4, 2_000_000) == pytest.approx(30e-6 + 4 * 2e-6 + 2e6 / 20e9)
    rows = np.array([10.0, 100.0])  # of n_ff 100: 10% and all rows
    got = sparse_engine_seconds(terms, rows, 100, dense_bytes=40_000, bytes_per_neuron=1000, share=0.5)
    want = 30e-6 + 2 * 4e-6 + 40_000 / 20e9 + 0.5 * (10 * 1000 / 5e9 + 100 * 1000 / 20e9)
    assert got == pytest.approx(want, rel=1e-9)


def test_engine_calls_match_the_hybrid_engine_as_it_runs():
    """ENGINE_CALLS says what the measured hybrid_token_us and handover_us cover: recount when the engine's step
    changes (this counts a running engine's jitted calls and device_puts)."""
    from pijax.bench.calibrate_engine import count_engine_calls
    from pijax.layout.devices import setup_devices

    assert count_engine_calls(setup_devices(HardwareConfig())) == ENGINE_CALLS


def test_check_table_reports_the_error_of_every_sweep_point(tmp_path):
    csv = tmp_path / "results.csv"
    base = {"model": "m", "source": "predictor", "hardware": "1xcpu", "smoke": False}
    write_results_csv(
        csv,
        [
            base | {"policy": "uniform", "budget": "ffn:0%", "decode_tok_s": 100.0, "sim_x_decode_tok_s": 110.0,
                    "sim_x_capacity_decode_tok_s": 90.0},
            base | {"policy": "uniform", "budget": "ffn:50%", "decode_tok_s": 100.0, "sim_x_decode_tok_s": 150.0,
                    "sim_x_capacity_decode_tok_s": 120.0},
        ],
    )  # fmt: skip
    table = check_table_markdown(csv)
    assert "| m | x | uniform | ffn:0% | 100.0 | 110.0 | +10% | 90.0 | -10% |" in table
    assert "| m | x | uniform | ffn:50% | 100.0 | 150.0 | +50% | 120.0 | +20% |" in table
    assert "(error): 1/2 points within +-25%" in table
    assert "(capacity error): 2/2 points within +-25%" in table
