"""Local results of a run, for users without W&B: an append-safe results.csv, a line-plot PNG, a summary table.

Several multirun jobs may append to one `experiments/NAME/results.csv` at once, so every write holds a file lock
(`results.csv.lock`) and the header is written once; a row with a column the file lacks rewrites the file with the
wider header (older rows get empty cells) instead of misaligning it.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock

from pijax.errors import DataError

Row = Mapping[str, Any]


def _lock(path: Path) -> FileLock:
    return FileLock(str(path) + ".lock")


def read_results_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """All rows of a results CSV as dicts of strings (empty cells are empty strings)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("results file does not exist", path)
    # Readers join the writers' lock only where writers have been, so that reading shipped results (notebooks,
    # plots) leaves no lock file behind in a read-mostly folder.
    lock = _lock(path) if Path(str(path) + ".lock").exists() else contextlib.nullcontext()
    with lock, open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_results_csv(path: str | os.PathLike[str], rows: Sequence[Row]) -> Path:
    """Append `rows` to the CSV at `path`, creating it (and its folder) with a header on first use."""
    path = Path(path)
    if not rows:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    new_cols = list(dict.fromkeys(k for r in rows for k in r))
    with _lock(path):
        header: list[str] = []
        if path.is_file() and path.stat().st_size > 0:
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
        missing = [c for c in new_cols if c not in header]
        if header and not missing:
            with open(path, "a", newline="") as f:
                csv.DictWriter(f, header, restval="").writerows(_cells(r) for r in rows)
            return path
        old_rows = []
        if header:
            with open(path, newline="") as f:
                old_rows = list(csv.DictReader(f))
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, header + missing, restval="")
            w.writeheader()
            w.writerows(old_rows)
            w.writerows(_cells(r) for r in rows)
        os.replace(tmp, path)
    return path


def _cells(row: Row) -> dict[str, Any]:
    return {k: ("" if v is None else v) for k, v in row.items()}


def _number(value: Any, column: str, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"column {column!r} holds {value!r}, not a number", where) from None


def plot_lines(
    data: str | os.PathLike[str] | Sequence[Row],
    x: str,
    y: str,
    series: str,
    path: str | os.PathLike[str],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    labels: Sequence[str] = (),
) -> Path:
    """A PNG with one line of `y` against `x` per value of `series`; `data` is a CSV path or rows.

    `labels` (e.g. "synthetic", "simulated") are shown in brackets in the title so a figure cannot be mistaken
    for a measurement on a real model or real hardware.
    """
    # The Agg canvas is used directly, never pyplot, so a notebook's backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    where = str(data) if isinstance(data, str | os.PathLike) else "rows"
    rows = read_results_csv(data) if isinstance(data, str | os.PathLike) else list(data)
    if not rows:
        raise DataError("nothing to plot: no rows", where)
    lines: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        for col in (x, y, series):
            if col not in r:
                raise DataError(f"column {col!r} is missing (have {sorted(r)})", where)
        xv, yv = _number(r[x], x, where), _number(r[y], y, where)
        if math.isfinite(xv) and math.isfinite(yv):
            lines.setdefault(str(r[series]), []).append((xv, yv))
    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name in sorted(lines):
        pts = sorted(lines[name])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    tag = f" [{', '.join(labels)}]" if labels else ""
    ax.set_title((title or f"{y} vs {x}") + tag)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.grid(True, alpha=0.3)
    ax.legend(title=series, fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return "" if value is None else str(value)


def format_table(rows: Sequence[Row], columns: Sequence[str] | None = None) -> str:
    """A plain-text table (header, rule, one line per row); numbers right-aligned, floats to 4 digits."""
    if not rows:
        return "(no results)"
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(cols)]
    numeric = [all(isinstance(r.get(c), int | float) for r in rows if r.get(c) is not None) for c in cols]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric, strict=True))

    out = [line(cols), "  ".join("-" * w for w in widths), *(line(c) for c in cells)]
    return "\n".join(s.rstrip() for s in out)
