"""Same numbers in every mode, on a synthetic preset (the tests do it on stories260K): relu and oracle equal
dense, the sparse engine on both backends agrees, and the hybrid engine equals the sparse engine at each budget
on 1, 2 and 4 virtual accelerators (one process per count: jax fixes its devices at start-up).

    PYTHONPATH=$PWD python experiments/engine/agree.py --preset small --budgets 0,50,100 --accels 1,2,4

Prints, per case, the largest |logit difference| relative to the largest |logit| (the f32 floor is ~1e-5) and
exits 1 when a case is above --floor.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import numpy as np


def one_process(preset: str, n_accel: int, budgets: list[str], floor: float) -> list[dict]:
    from pijax.layout.config import HardwareConfig
    from pijax.layout.devices import setup_devices

    hw = HardwareConfig(platform="cpu", n_accel=n_accel)
    placement = setup_devices(hw)  # before jax starts

    import jax
    import jax.numpy as jnp

    import pijax
    from pijax.bench.synth import ensure_synth_model
    from pijax.engine.pipeline import profile_windows
    from pijax.model.generate import SamplingConfig
    from pijax.sparsity.profile import profile

    m = pijax.load_model(ensure_synth_model(preset, progress=False))
    ids = list(range(1, 17))
    rows = []

    def logits(x: Any) -> np.ndarray:
        """The full-sequence logits, then a 4-token prefill and one-token decode steps (the kernels' and the
        gathered paths' sizes)."""
        key, greedy = jax.random.key(0), SamplingConfig()
        _, lg, cache = x.engine.prefill(ids[:4], 32, greedy, key)
        out = [np.asarray(lg[0])]
        for pos in range(4, len(ids)):
            _, lg, cache = x.engine.decode_step(cache, jnp.asarray([ids[pos]], jnp.int32), pos, greedy, key)
            out.append(np.asarray(lg[0]))
        return np.concatenate([x.logits(ids), np.stack(out)])

    def case(name: str, got: np.ndarray, want: np.ndarray) -> None:
        rel = float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))
        rows.append({"preset": preset, "n_accel": n_accel, "case": name, "rel_diff": rel, "ok": rel <= floor})

    sparse = logits(m.sparse(mode="predictor", backend="kernels"))
    if n_accel == 1:
        dense = logits(m)
        case("relu (kernels) vs dense", logits(m.sparse(mode="relu", backend="kernels")), dense)
        case("relu (xla) vs dense", logits(m.sparse(mode="relu", backend="xla")), dense)
        case("oracle (xla) vs dense", logits(m.sparse(mode="oracle", backend="xla")), dense)
        case("predictor xla vs kernels", logits(m.sparse(mode="predictor", backend="xla")), sparse)
    stats = profile(m, profile_windows(m, None, 128, 2048), mode="relu", progress=False)
    for b in budgets:
        h = m.hybrid(
            f"ffn:{b}%",
            policy="neuron_greedy",
            placement=placement,
            stats=stats,
            index_path=f"/tmp/agree_{preset}_{n_accel}_{b}.gpuidx",
            capacity_quantile=None,
        )
        case(f"hybrid ffn:{b}% vs sparse", logits(h), sparse)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--budgets", default="0,50,100")
    ap.add_argument("--accels", default="1,2,4")
    ap.add_argument("--floor", type=float, default=1e-5)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    budgets = args.budgets.split(",")
    if args.one is not None:
        print(json.dumps(one_process(args.preset, args.one, budgets, args.floor)))
        return
    rows = []
    for n in (int(a) for a in args.accels.split(",")):
        cmd = [sys.executable, __file__, "--preset", args.preset, "--budgets", args.budgets, "--one", str(n)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if out.returncode:
            sys.exit(f"{args.preset} on {n} accelerators failed:\n{out.stderr[-3000:]}")
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    for r in rows:
        print(
            f"{r['preset']:8s} accel {r['n_accel']}  {r['case']:28s} {r['rel_diff']:.2e}  {'ok' if r['ok'] else 'FAIL'}"
        )
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
