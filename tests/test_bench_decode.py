"""`python -m pijax.bench.decode --parts ...,hybrid`: one decode.csv row per engine and budget, the hybrid engine
built through the library pipeline and held to its budget (timings are not asserted: they are noise in CI)."""

from __future__ import annotations

import csv
from pathlib import Path

from pijax.bench.decode import main
from pijax.paths import RELU_STORIES260K_PREDICTORS


def test_hybrid_and_layer_rows_per_budget_in_decode_csv(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PIJAX_CACHE", str(tmp_path / "cache"))  # the plain copies of the model go there
    out = tmp_path / "out"
    main(
        [
            "--parts",
            "hybrid,layers",
            "--preset",
            str(RELU_STORIES260K_PREDICTORS),
            "--repeats",
            "1",
            "--n-new",
            "4",
            "--n-prompt",
            "8",
            "--budgets",
            "ffn:60%",
            "--policy",
            "neuron_greedy",
            "--out",
            str(out),
        ]
    )
    with open(out / "decode.csv", newline="") as f:
        rows = {r["engine"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"pijax_hybrid_f32_ffn:60%", "pijax_layers_f32_ffn:60%"}
    for r in rows.values():
        assert float(r["decode_min"]) <= float(r["decode_tok_s"]) <= float(r["decode_max"]) and int(r["runs"]) >= 1
        assert 0 < int(r["resident_bytes"]) <= int(r["budget_bytes"])
    assert float(rows["pijax_hybrid_f32_ffn:60%"]["hot_fraction"]) == 0.6  # 60% of each layer's rows
    assert float(rows["pijax_layers_f32_ffn:60%"]["hot_fraction"]) == 0.6  # 3 of 5 whole layers
    assert rows["pijax_layers_f32_ffn:60%"]["policy"] == "layers"
