"""Calibration: micro-benchmarks that measure the cost model's terms on this machine and write a profile.

    python -m pijax.bench.calibrate [--smoke] [--out DIR] [--name NAME]
    python -m pijax.bench.calibrate --check experiments/sweep_policies/results.csv

writes `<DIR or configs/hardware>/measured_<host>.yaml`, a `hardware=measured_<host>` config (the device roles
of `auto` plus a `cost:` block that pijax.index.hardware checks and the cost model reads; the terms are
documented in `pijax.index.hardware.MeasuredTerms`). `--check` prints, per sweep point, the measured decode
tok/s against the sim_* prediction logged beside it, with the error (the table of experiments/simulate/README.md).

The accelerator is jax's first device and the host its CPU device; on a CPU-only machine two virtual CPU
devices stand in (as `hardware=cpu1` does), and `shared_bus` is set, since both are the same memory. Methods:
- call_us: median of a jitted call taking CALL_ARGS small arrays (about one layer's leaves), dispatched and
  waited for (charged for the overlap mode's extra call per split layer);
- token_us, layer_us, sparse_layer_us, hybrid_token_us, hybrid_layer_us, handover_us, cold_split_us: the fixed costs of the
  engines' decode steps, measured through the engines on tiny random models (pijax.bench.calibrate_engine);
  `engine_calls` records the calls and device_puts counted there (pijax.index.cost_model.ENGINE_CALLS);
- transfer: device_put accelerator -> host -> accelerator of a 1 KiB and a large array: latency from the small
  one, bandwidth from the difference;
- read_gbs[fmt]: one token through `pijax.kernels.ops.linear` over [N, D] rows in f32, f16, int8 (the routing the
  engine gets), bytes of the matrix / median time; xla_read_gbs: the same through XLA's dot;
- gather_gbs[fmt][fraction]: one token through `pijax.kernels.ops.sparse_ffn` (ReGLU, every selected row read:
  skip_inactive off) with `fraction` of the neurons selected at random positions (SUBSETS different selections
  in turn, so that a small one is not served from cache), bytes of the selected up,
  gate and down_t rows / median time; xla_gather_gbs: f32 rows taken with jnp.take and multiplied by XLA.
  The bandwidth probes are timed in turn, round after round (as the engine terms are), so that a change in the
  machine's load weighs on all of them alike; `WindowProbes` keeps one format's probes ready for a check that
  times them in the same rounds as the runs it predicts.
Smoke mode uses matrices small enough to sit in cache and few repeats (seconds): its figures are for tests only,
and the profile says so (`smoke: true`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import itertools
import os
import platform
import re
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

FORMATS = ("f32", "f16", "int8")
SUBSETS = 8  # different random selections, cycled, so that a small selection is not read from cache every call
CALL_ARGS = 16  # arrays passed to the call_us probe: about one layer's leaves, as the engine's calls pass
FULL = {
    "n": 8192,
    "d": 2048,
    "reps": 15,
    "fractions": (0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
    "layers_engine": 8,
    "engine_tokens": 32,
    "engine_repeats": 11,
}
SMOKE = {
    "n": 1024,
    "d": 256,
    "reps": 5,
    "fractions": (0.05, 0.25, 1.0),
    "layers_engine": 2,
    "engine_tokens": 8,
    "engine_repeats": 3,
}


def host_name() -> str:
    """The host name as a config-safe token (letters, digits, _)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname().split(".")[0]) or "host"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _median_seconds(fn: Callable[[], Any], reps: int) -> float:
    import jax

    jax.block_until_ready(fn())  # compile and warm
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_call(accel: Any, size: dict[str, Any]) -> float:
    """call_us (module docstring)."""
    import jax
    import jax.numpy as jnp

    reps = max(size["reps"] * 10, 50)
    args = [jax.device_put(jnp.full((16,), float(i), jnp.float32), accel) for i in range(CALL_ARGS)]
    add = jax.jit(lambda xs: xs[0] + xs[-1])
    return _median_seconds(lambda: add(args), reps) * 1e6


def measure_transfer(accel: Any, host: Any, size: dict[str, Any]) -> dict[str, float]:
    """transfer_latency_us and transfer_gbs: a round trip accelerator -> host -> accelerator, halved."""
    import jax
    import numpy as np

    reps = max(size["reps"] * 4, 20)
    big_bytes = 4 * size["n"] * size["d"]
    small = jax.device_put(np.ones(256, np.float32), accel)
    big = jax.device_put(np.ones(big_bytes // 4, np.float32), accel)

    def round_trip(x: Any) -> Callable[[], Any]:
        return lambda: jax.device_put(jax.device_put(x, host), accel)

    t_small = _median_seconds(round_trip(small), reps) / 2
    t_big = _median_seconds(round_trip(big), reps) / 2
    gbs = big_bytes / max(t_big - t_small, t_big * 1e-3) / 1e9
    return {"transfer_latency_us": t_small * 1e6, "transfer_gbs": gbs}


def _cycle(items: list[Any]) -> Iterator[Any]:
    return itertools.cycle(items)


def _selection(rng: Any, n: int, k: int) -> Any:
    """Logits [1, n] selecting k random rows at threshold 0."""
    import numpy as np

    logits = np.full((1, n), -1.0, np.float32)
    logits[0, rng.permutation(n)[:k]] = 1.0
    return logits


def _weights(n: int, d: int, device: Any) -> dict[str, Any]:
    """up, gate, down_t [n, d] per format, on `device`."""
    import jax
    import numpy as np

    from pijax.kernels.formats import to_format

    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    base = [jax.device_put(rng.standard_normal((n, d), np.float32) * 0.02, device) for _ in range(3)]
    for fmt in FORMATS:
        out[fmt] = [jax.device_put(to_format(w, fmt), device) for w in base]  # type: ignore[arg-type]
    return out


def _probe(fn: Callable[[], Any]) -> Callable[[], float]:
    """A probe: fn compiled and warmed now; each call runs it once, waited for, and returns its seconds."""
    import jax

    jax.block_until_ready(fn())

    def run() -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        return time.perf_counter() - t0

    return run


def bandwidth_probes(
    device: Any, size: dict[str, Any], formats: tuple[str, ...] = FORMATS, *, xla: bool = True
) -> dict[str, tuple[Callable[[], float], float]]:
    """name -> (probe, bytes it reads) for read_gbs ("read:<fmt>"), gather_gbs ("gather:<fmt>:<fraction>") and,
    with `xla`, their XLA comparisons, on `device` (module docstring)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from pijax.kernels.formats import dequantize, nbytes, row_bytes
    from pijax.kernels.ops import linear, sparse_ffn

    n, d = size["n"], size["d"]
    weights = {f: w for f, w in _weights(n, d, device).items() if f in formats}
    x = jax.device_put(jnp.full((1, d), 0.5, jnp.float32), device)
    rng = np.random.default_rng(1)
    lin = jax.jit(lambda x, w: linear(x, w))
    dot = jax.jit(lambda x, w: jnp.einsum("md,nd->mn", x, dequantize(w)))
    ffn = jax.jit(
        lambda x, lg, u, g, dn: sparse_ffn(x, lg, u, g, dn, kind="relu", threshold=0.0, skip_inactive=False)[0]
    )
    out: dict[str, tuple[Callable[[], float], float]] = {}
    for fmt, (up, gate, down) in weights.items():
        out[f"read:{fmt}"] = (_probe(functools.partial(lin, x, up)), nbytes(up))
        if xla:
            out[f"xla_read:{fmt}"] = (_probe(functools.partial(dot, x, up)), nbytes(up))
        for frac in size["fractions"]:
            k = max(1, round(frac * n))
            cycle = _cycle([jax.device_put(_selection(rng, n, k), device) for _ in range(SUBSETS)])
            run = _probe(lambda c=cycle, u=up, g=gate, dn=down: ffn(x, next(c), u, g, dn))
            out[f"gather:{fmt}:{float(frac)}"] = (run, 3 * k * row_bytes(up))
    if xla and "f32" in weights:
        up, gate, down = weights["f32"]

        @jax.jit
        def take(x: jax.Array, idx: jax.Array, u: jax.Array, g: jax.Array, dn: jax.Array) -> jax.Array:
            h = jax.nn.relu(jnp.einsum("md,kd->mk", x, jnp.take(g, idx, 0))) * jnp.einsum(
                "md,kd->mk", x, jnp.take(u, idx, 0)
            )
            return jnp.einsum("mk,kd->md", h, jnp.take(dn, idx, 0))

        for frac in size["fractions"]:
            k = max(1, round(frac * n))
            ids = [np.sort(rng.permutation(n)[:k]).astype(np.int32) for _ in range(SUBSETS)]
            cycle = _cycle([jax.device_put(i, device) for i in ids])
            run = _probe(lambda c=cycle: take(x, next(c), up, gate, down))
            out[f"xla_gather:{float(frac)}"] = (run, 3 * k * 4 * d)
    return out


def bandwidth_terms(times: dict[str, float], probes: dict[str, tuple[Any, float]]) -> dict[str, Any]:
    """read_gbs, gather_gbs, xla_read_gbs, xla_gather_gbs from the probes' median seconds."""
    out: dict[str, Any] = {"read_gbs": {}, "gather_gbs": {}, "xla_read_gbs": {}, "xla_gather_gbs": {}}
    for name, (_, nbytes) in probes.items():
        kind, *key = name.split(":")
        gbs = nbytes / times[name] / 1e9
        if kind in ("read", "xla_read"):
            out[f"{kind}_gbs"][key[0]] = gbs
        elif kind == "gather":
            out["gather_gbs"].setdefault(key[0], {})[float(key[1])] = gbs
        else:
            out["xla_gather_gbs"][float(key[0])] = gbs
    return out


def measure_bandwidths(device: Any, size: dict[str, Any], *, xla: bool = True) -> dict[str, Any]:
    """read_gbs, gather_gbs (and the xla_* comparisons) on `device` (module docstring): every probe timed in turn,
    round after round, `reps` rounds, so that a change in load weighs on all alike; medians."""
    from pijax.bench.calibrate_engine import _interleaved

    probes = bandwidth_probes(device, size, xla=xla)
    times = _interleaved({k: run for k, (run, _) in probes.items()}, size["reps"])
    out = bandwidth_terms(times, probes)
    return out if xla else {k: v for k, v in out.items() if not k.startswith("xla")}


class WindowProbes:
    """The probes of one weight format's terms (the engine steppers, read and gather bandwidth), kept ready so
    that a check times them in the same rounds as the engine it predicts: on a shared machine the load changes
    from minute to minute, and terms measured before a run are not those the run met (pijax.bench.sim_check)."""

    def __init__(self, placement: Any, size: dict[str, Any], fmt: str = "f32"):
        from pijax.bench.calibrate_engine import engine_steppers

        self.size, self.fmt = size, fmt
        self.steppers, self.modules = engine_steppers(placement, size)
        self.bandwidth = bandwidth_probes(placement.accelerators[0], size, (fmt,), xla=False)

    def probes(self) -> dict[str, Callable[[], float]]:
        return self.steppers | {k: run for k, (run, _) in self.bandwidth.items()}

    def cost(self, times: dict[str, float], base: dict[str, Any]) -> dict[str, Any]:
        """`base` (a calibration's cost block) with this format's terms replaced by those of `times`."""
        from pijax.bench.calibrate_engine import engine_terms

        bw = bandwidth_terms(times, self.bandwidth)
        cost = dict(base)
        cost["read_gbs"] = dict(base["read_gbs"]) | bw["read_gbs"]
        cost["gather_gbs"] = dict(base["gather_gbs"]) | bw["gather_gbs"]
        read = bw["read_gbs"][self.fmt]
        return cost | engine_terms(times, self.modules, self.size["layers_engine"], read)


def calibrate(*, smoke: bool = False) -> dict[str, Any]:
    """Every term of the `cost:` block, measured now (jax must already see its devices)."""
    from pijax.bench.calibrate_engine import measure_engine_terms
    from pijax.layout.config import HardwareConfig
    from pijax.layout.devices import setup_devices

    placement = setup_devices(HardwareConfig())
    accel, host = placement.accelerators[0], placement.host
    size = SMOKE if smoke else FULL
    cost: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": host_name(),
        "cpu_model": cpu_model(),
        "device_kind": str(accel.device_kind),
        "platform": str(accel.platform),
        "smoke": bool(smoke),
        "shared_bus": accel.platform == "cpu",
        "sizes": {k: v for k, v in size.items() if k != "fractions"},
    }
    cost["call_us"] = measure_call(accel, size)
    cost |= measure_transfer(accel, host, size)
    cost |= measure_bandwidths(accel, size)
    if accel.platform != "cpu":  # a real accelerator: the cold rows are gathered by the host CPU
        cost["host_gather_gbs"] = measure_bandwidths(host, size, xla=False)["gather_gbs"]
    cost |= measure_engine_terms(placement, size, cost["read_gbs"]["f32"])
    return cost


def profile_config(cost: dict[str, Any], name: str) -> dict[str, Any]:
    """The `hardware=<name>` config: auto's device roles plus the measured terms."""
    return {
        "defaults": ["auto", "_self_"],
        "name": name,
        "platform": "cpu" if cost["platform"] == "cpu" else "gpu",
        "n_accel": 1,
        "cost": cost,
    }


def write_profile(cost: dict[str, Any], out_dir: str | os.PathLike[str], name: str) -> Path:
    """Write and re-read (checked by pijax.index.hardware) the profile YAML."""
    import yaml

    from pijax.index.hardware import load_profile

    def keyed(table: Any) -> Any:  # fraction keys as text: every YAML and OmegaConf reader takes them
        return {str(k): keyed(v) for k, v in table.items()} if isinstance(table, dict) else table

    cost = keyed(cost)
    path = Path(out_dir) / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    head = (
        f"# MEASURED hardware profile: python -m pijax.bench.calibrate{' --smoke' if cost['smoke'] else ''}\n"
        f"# {cost['date']} on {cost['host']} ({cost['cpu_model']}; device {cost['device_kind']}).\n"
        "# Terms: pijax.index.hardware.MeasuredTerms; formula: pijax.index.cost_model.\n"
    )
    path.write_text(head + yaml.safe_dump(profile_config(cost, name), sort_keys=False), encoding="utf-8")
    load_profile(path)
    return path


def _start_devices() -> None:
    """Two CPU devices when jax will run on CPU (accelerator + host), as hardware=cpu1 asks."""
    import jax

    if "cpu" in (os.environ.get("JAX_PLATFORMS") or "cpu"):
        with contextlib.suppress(RuntimeError):  # the backend already started: keep its devices
            jax.config.update("jax_num_cpu_devices", max(2, int(jax.config.jax_num_cpu_devices or 0)))


def main(argv: list[str] | None = None) -> int:
    from pijax.errors import PijaxError

    ap = argparse.ArgumentParser(prog="python -m pijax.bench.calibrate", description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (for tests)")
    ap.add_argument("--out", default="", help="folder for the profile (default configs/hardware)")
    ap.add_argument("--name", default="", help="profile name (default measured_<host>)")
    ap.add_argument("--check", default="", help="a sweep results.csv: print predicted vs measured per point")
    args = ap.parse_args(argv)
    try:
        if args.check:
            from pijax.bench.simulate import check_table_markdown

            print(check_table_markdown(args.check))
            return 0
        _start_devices()
        cost = calibrate(smoke=args.smoke)
        name = args.name or f"measured_{cost['host']}"
        path = write_profile(cost, args.out or Path("configs") / "hardware", name)
    except PijaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"profile: {path}  (use hardware={name} or sweep.simulate_profile={name})")
    from pijax.index.hardware import SCALAR_TERMS

    for key in SCALAR_TERMS:
        print(f"  {key:>20}: {cost[key]:.3f}")
    for fmt, gbs in cost["read_gbs"].items():
        gather = ", ".join(f"{f:g}: {v:.1f}" for f, v in cost["gather_gbs"][fmt].items())
        print(f"  {fmt:>5} read {gbs:.1f} GB/s (xla {cost['xla_read_gbs'].get(fmt, 0):.1f}); gather {{{gather}}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
