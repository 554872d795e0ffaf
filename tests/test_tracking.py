"""Tracking and local results: an offline W&B run folder holds the table, the line plot and the image, no W&B
process outlives the run, `logger=none` starts nothing, and the CSV/PNG/summary-table writers."""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import psutil
import pytest

from pijax.config import LoggerConfig
from pijax.results import format_table, plot_lines, read_results_csv, write_results_csv
from pijax.tracking import NoopTracker, WandbTracker, make_tracker

ROWS = [
    {"policy": "greedy", "budget": "1MiB", "resident_bytes": 1.0e6, "decode_tok_s": 310.0},
    {"policy": "greedy", "budget": "2MiB", "resident_bytes": 2.0e6, "decode_tok_s": 420.5},
    {"policy": "random", "budget": "1MiB", "resident_bytes": 1.0e6, "decode_tok_s": 250.0},
    {"policy": "random", "budget": "2MiB", "resident_bytes": 2.0e6, "decode_tok_s": 330.25},
]
COLS = list(ROWS[0])


def wandb_children() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "wandb" in p.name() or any("wandb-core" in a for a in p.cmdline()[:1]):
                out.append(p)
        except psutil.Error:
            pass
    return out


def wandb_records(path: Path) -> list:
    """Records of a .wandb file: a 7-byte ':W&B' header, then LevelDB-log chunks in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, buf, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is zero padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0:
            break
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk ends a record
            rec = pb.Record()
            rec.ParseFromString(buf)
            records.append(rec)
            buf = b""
    return records


def write_png(path: Path) -> Path:
    return plot_lines(ROWS, "resident_bytes", "decode_tok_s", "policy", path, title="tok/s vs VRAM")


def test_offline_wandb_run_folder_holds_table_plot_and_image_and_no_process_survives(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_DATA_DIR", raising=False)
    monkeypatch.delenv("WANDB_CACHE_DIR", raising=False)
    png = write_png(tmp_path / "plot.png")
    run_dir = tmp_path / "run"
    cfg = LoggerConfig(kind="wandb", mode="offline", project="pijax-test")
    with make_tracker(cfg, run_dir, "sweep-test", {"budget": "1MiB"}) as tr:
        assert isinstance(tr, WandbTracker)
        assert any(p.name() == "wandb-core" for p in wandb_children()), "the W&B service should be running"
        tr.log_config({"policy": "greedy"})
        tr.log_metrics({"decode_tok_s": 310.0, "resident_bytes": 1.0e6})
        tr.log_table("results", COLS, [[r[c] for c in COLS] for r in ROWS])
        tr.log_line_plot("tok_s_vs_vram", ROWS, "resident_bytes", "decode_tok_s", "policy", "tok/s vs VRAM")
        tr.log_image("plot", png)
        folder = tr.run_folder
    assert wandb_children() == [], "a W&B process outlived the run"
    assert "WANDB_DATA_DIR" not in os.environ and "WANDB_CACHE_DIR" not in os.environ

    assert folder.parent == run_dir / "wandb" and folder.name.startswith("offline-run-")
    assert (run_dir / "wandb" / "data").is_dir(), "artifact staging should live inside the run folder"
    tables = {json.loads(p.read_text())["columns"][0]: json.loads(p.read_text()) for p in folder.rglob("*.table.json")}
    assert tables["policy"]["data"][1] == ["greedy", "2MiB", 2.0e6, 420.5]
    images = list(folder.rglob("media/images/plot_*.png"))
    assert len(images) == 1 and images[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    records = wandb_records(next(folder.glob("run-*.wandb")))
    config, logged_keys = {}, set()
    for rec in records:
        for item in rec.config.update:
            config[tuple(item.nested_key) or (item.key,)] = json.loads(item.value_json)
        for item in rec.history.item:
            logged_keys.add(item.key or item.nested_key[0])
    # W&B records a custom chart as a Vega panel spec in the run config, next to the table it plots.
    spec = config[("_wandb", "visualize", "tok_s_vs_vram")]["panel_config"]
    assert spec["panelDefId"] == "wandb/line/v0"
    assert spec["fieldSettings"] == {"x": "resident_bytes", "y": "decode_tok_s", "stroke": "policy"}
    assert {"results", "tok_s_vs_vram_table", "plot", "decode_tok_s"} <= logged_keys
    assert folder.parent.parent.parent == tmp_path


def test_wandb_service_is_stopped_when_the_run_body_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = LoggerConfig(kind="wandb", mode="offline", project="pijax-test")
    with pytest.raises(RuntimeError, match="boom"), make_tracker(cfg, tmp_path, "crash", {}) as tr:
        tr.log_metrics({"x": 1.0})
        raise RuntimeError("boom")
    assert wandb_children() == []


def test_logger_none_and_disabled_start_nothing(tmp_path):
    for cfg in (LoggerConfig(kind="none"), LoggerConfig(kind="wandb", mode="disabled")):
        with make_tracker(cfg, tmp_path, "x", {"a": 1}) as tr:
            assert isinstance(tr, NoopTracker)
            tr.log_table("t", ["a"], [[1]])
            tr.log_line_plot("p", ROWS, "resident_bytes", "decode_tok_s", "policy")
            tr.log_image("i", tmp_path / "missing.png")
    assert wandb_children() == []
    assert list(tmp_path.iterdir()) == []


def _append(path: str, worker: int, n: int) -> None:
    for i in range(n):
        write_results_csv(path, [{"worker": worker, "i": i, "tok_s": worker * 1000.0 + i}])


def test_csv_two_writers_append_one_header(tmp_path):
    path = tmp_path / "experiments" / "sweep" / "results.csv"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append, args=(str(path), w, 40)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    assert lines[0] == ["worker", "i", "tok_s"]
    assert len(lines) == 81 and lines.count(["worker", "i", "tok_s"]) == 1
    got = sorted((int(r["worker"]), int(r["i"])) for r in read_results_csv(path))
    assert got == sorted((w, i) for w in (1, 2) for i in range(40))


def test_csv_new_column_widens_the_header(tmp_path):
    path = tmp_path / "results.csv"
    write_results_csv(path, [{"policy": "a", "tok_s": 1.5}])
    write_results_csv(path, [{"policy": "b", "tok_s": 2.5, "recall": 0.9}])
    rows = read_results_csv(path)
    assert rows == [
        {"policy": "a", "tok_s": "1.5", "recall": ""},
        {"policy": "b", "tok_s": "2.5", "recall": "0.9"},
    ]


def test_plot_from_csv_writes_a_png_with_labels(tmp_path):
    from matplotlib.image import imread

    csv_path = write_results_csv(tmp_path / "results.csv", ROWS)
    png = plot_lines(
        csv_path,
        "resident_bytes",
        "decode_tok_s",
        "policy",
        tmp_path / "out" / "plot.png",
        title="decode tokens/s vs resident bytes",
        labels=("synthetic", "simulated"),
    )
    img = imread(png)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert np.ptp(img[..., :3]) > 0.5, "the figure should not be blank"


def test_plot_rejects_a_non_numeric_column(tmp_path):
    from pijax.errors import DataError

    with pytest.raises(DataError, match="not a number"):
        plot_lines(ROWS, "policy", "decode_tok_s", "budget", tmp_path / "p.png")


def test_format_table_aligns_columns():
    text = format_table(ROWS, ["policy", "budget", "decode_tok_s"])
    lines = text.splitlines()
    assert lines[0].split() == ["policy", "budget", "decode_tok_s"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["greedy", "1MiB", "310"] and lines[5].split() == ["random", "2MiB", "330.2"]
    assert len({len(line) for line in lines[1:]}) == 1, "rows should be padded to the same width"
    assert format_table([]) == "(no results)"
