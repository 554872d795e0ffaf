"""The notebooks in notebooks/ run top to bottom on the tiny models, in the default `python3` kernel (so a fresh
venv with ipykernel installed runs them), contain no model code of their own, and write nothing into the repo.

CI may equally run `pytest --nbmake notebooks/`; this test is the same check inside the normal test run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Model code would define modules, einsums over weights or jitted forwards; notebooks must call pijax instead.
MODEL_CODE = re.compile(r"nnx\.Module|jnp\.einsum|@jax\.jit|def __call__")


def test_three_notebooks_on_the_issue_topics_import_pijax_and_hold_no_model_code():
    names = [p.stem for p in NOTEBOOKS]
    assert len(names) == 3 and any("power_law" in n for n in names)
    assert any("recall" in n for n in names) and any("gpuidx" in n for n in names)
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3", path
        code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        assert "from pijax" in code and not MODEL_CODE.search(code), path
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), f"{path}: clear outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PIJAX_CACHE", str(tmp_path / "cache"))  # the tiny synthetic model is built here
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # Where a notebook could leave files: beside itself, beside the shipped models, in the results it reads.
    watched = [ROOT / "notebooks", ROOT / "pijax" / "assets", ROOT / "experiments" / "sweep_policies"]
    before = {p: p.stat().st_mtime for w in watched for p in w.rglob("*") if p.is_file()}
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    after = {p: p.stat().st_mtime for w in watched for p in w.rglob("*") if p.is_file()}
    assert [str(p) for p in after if before.get(p) != after[p]] == []
