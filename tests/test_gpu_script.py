"""experiments/gpu/run.sh as the lead runs it, in its tiny configuration on CPU (hardware=cpu2: two virtual
accelerators and a host): dense on the accelerator, the hybrid engine and layer offload at each budget, CSV + PNG."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_runs_tiny_on_cpu2_and_writes_csv_and_png(tmp_path):
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env |= {"JAX_PLATFORMS": "cpu", "PIJAX_CACHE": str(tmp_path / "cache"), "TMPDIR": str(tmp_path)}
    cmd = [str(ROOT / "experiments" / "gpu" / "run.sh"), "--tiny", "hardware=cpu2", f"bench.out_dir={out}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "decode.csv", newline="") as f:
        rows = {r["engine"]: r for r in csv.DictReader(f)}
    budgets = ("ffn:0%", "ffn:100%")
    assert set(rows) == {"pijax_dense_f32_xla"} | {f"pijax_{k}_f32_{b}" for k in ("hybrid", "layers") for b in budgets}
    for b in budgets:
        r = rows[f"pijax_layers_f32_{b}"]
        assert 0 < int(r["resident_bytes"]) <= int(r["budget_bytes"])
    assert float(rows["pijax_layers_f32_ffn:100%"]["hot_fraction"]) == 1.0
    assert (out / "tok_s_vs_vram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "done in" in proc.stdout
