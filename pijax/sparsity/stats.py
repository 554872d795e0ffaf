"""ActivationStats: per-layer, per-neuron activation counts from profiling, their file format and summaries.

A statistics file is a pair: `NAME.npz` (counts [L, F] int64, abs_sum [L, F] float64, thresholds [L] when in
threshold mode) and `NAME.json` (mode, tokens, model fingerprint, corpus hash, the stats' own fingerprint). The
model fingerprint ties the numbers to the checkpoint they were measured on, which PowerInfer's activation files
never did. `export_powerinfer` writes PowerInfer's per-layer count vectors (`activation_{i}.npy`, numbered
numerically) without a torch dependency.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import numpy as np

from pijax.errors import DataError

SparsityMode = Literal["relu", "threshold"]
MODES: tuple[str, ...] = ("relu", "threshold")
FORMAT_VERSION = 1


def _paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(npz, json) for a path given with or without either suffix."""
    p = Path(path)
    base = p.with_suffix("") if p.suffix in (".npz", ".json") else p
    return base.with_name(base.name + ".npz"), base.with_name(base.name + ".json")


@dataclasses.dataclass
class ActivationStats:
    counts: np.ndarray  # int64 [L, F]: tokens on which each neuron was active
    abs_sum: np.ndarray  # float64 [L, F]: sum over tokens of |act|
    n_tokens: int
    mode: SparsityMode
    thresholds: np.ndarray | None  # float32 [L] in threshold mode (|act| > t counts as active), else None
    model_fingerprint: str
    corpus_sha256: str
    # int64 [L, F+1]: how many tokens had exactly n active neurons (for capacity calibration); optional
    active_hist: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.counts = np.asarray(self.counts, dtype=np.int64)
        self.abs_sum = np.asarray(self.abs_sum, dtype=np.float64)
        if self.thresholds is not None:
            self.thresholds = np.asarray(self.thresholds, dtype=np.float32)
        if self.counts.ndim != 2 or self.abs_sum.shape != self.counts.shape:
            raise DataError(f"counts {self.counts.shape} and abs_sum {self.abs_sum.shape} must be the same [L, F]")
        if self.mode not in MODES:
            raise DataError(f"sparsity mode {self.mode!r} is not one of {MODES}")
        if self.thresholds is not None and self.thresholds.shape != (self.n_layer,):
            raise DataError(f"thresholds have shape {self.thresholds.shape}, expected ({self.n_layer},)")
        if self.active_hist is not None:
            self.active_hist = np.asarray(self.active_hist, dtype=np.int64)
            if self.active_hist.shape != (self.n_layer, self.n_ff + 1):
                raise DataError(f"active_hist has shape {self.active_hist.shape}, expected [L, F+1]")

    @property
    def n_layer(self) -> int:
        return int(self.counts.shape[0])

    @property
    def n_ff(self) -> int:
        return int(self.counts.shape[1])

    @property
    def fingerprint(self) -> str:
        """A hash of everything in the statistics (numbers and provenance)."""
        h = hashlib.sha256()
        h.update(f"{self.mode}|{self.n_tokens}|{self.model_fingerprint}|{self.corpus_sha256}|".encode())
        h.update(np.ascontiguousarray(self.counts).tobytes())
        h.update(np.ascontiguousarray(self.abs_sum).tobytes())
        if self.thresholds is not None:
            h.update(np.ascontiguousarray(self.thresholds).tobytes())
        if self.active_hist is not None:
            h.update(np.ascontiguousarray(self.active_hist).tobytes())
        return h.hexdigest()[:16]

    # ---- summaries ----
    def frequencies(self) -> np.ndarray:
        """float64 [L, F]: share of profiled tokens on which each neuron was active."""
        return self.counts / max(self.n_tokens, 1)

    def sparsity(self) -> np.ndarray:
        """float64 [L]: mean share of neurons inactive per token."""
        return 1.0 - self.frequencies().mean(axis=1)

    def coverage_share(self, share: float = 0.8) -> np.ndarray:
        """float64 [L]: the smallest fraction of a layer's neurons (most active first) whose counts cover `share`
        of all the layer's activations (PowerInfer: 43% of neurons cover 80% in one OPT layer)."""
        out = np.zeros(self.n_layer)
        for i, c in enumerate(self.counts):
            total = c.sum()
            if total == 0:
                continue
            cum = np.cumsum(np.sort(c)[::-1])
            out[i] = (np.searchsorted(cum, share * total) + 1) / self.n_ff
        return out

    def active_per_token(self) -> np.ndarray:
        """float64 [L]: mean number of active neurons per token."""
        return self.counts.sum(axis=1) / max(self.n_tokens, 1)

    def summary_rows(self) -> list[dict[str, float | int]]:
        """One row per layer: sparsity, mean active neurons per token, 80%-coverage share, mean |act|."""
        sp, cov, act = self.sparsity(), self.coverage_share(0.8), self.active_per_token()
        mean_abs = self.abs_sum.sum(axis=1) / max(self.n_tokens * self.n_ff, 1)
        rows = []
        for i in range(self.n_layer):
            row: dict[str, float | int] = {
                "layer": i,
                "sparsity": float(sp[i]),
                "active_per_token": float(act[i]),
                "coverage80_share": float(cov[i]),
                "mean_abs_act": float(mean_abs[i]),
            }
            if self.thresholds is not None:
                row["threshold"] = float(self.thresholds[i])
            rows.append(row)
        return rows

    def check_model(
        self,
        *,
        n_layer: int | None = None,
        n_ff: int | None = None,
        model_fingerprint: str | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        """Raise DataError when these statistics were not measured on a model of this shape / identity."""
        if n_layer is not None and n_layer != self.n_layer:
            raise DataError(f"statistics have {self.n_layer} layers, the model has {n_layer}", path)
        if n_ff is not None and n_ff != self.n_ff:
            raise DataError(f"statistics have {self.n_ff} neurons per layer, the model has {n_ff}", path)
        if model_fingerprint is not None and model_fingerprint != self.model_fingerprint:
            raise DataError(
                f"statistics are from another model (fingerprint {self.model_fingerprint}, "
                f"this model is {model_fingerprint})",
                path,
            )

    # ---- files ----
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write `NAME.npz` + `NAME.json`; returns the .npz path."""
        npz, meta = _paths(path)
        npz.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"counts": self.counts, "abs_sum": self.abs_sum}
        if self.thresholds is not None:
            arrays["thresholds"] = self.thresholds
        if self.active_hist is not None:
            arrays["active_hist"] = self.active_hist
        with open(npz, "wb") as f:
            np.savez(f, **arrays)
        info = {
            "format_version": FORMAT_VERSION,
            "mode": self.mode,
            "n_tokens": int(self.n_tokens),
            "n_layer": self.n_layer,
            "n_ff": self.n_ff,
            "model_fingerprint": self.model_fingerprint,
            "corpus_sha256": self.corpus_sha256,
            "fingerprint": self.fingerprint,
        }
        meta.write_text(json.dumps(info, indent=2) + "\n")
        return npz

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        model_fingerprint: str | None = None,
        *,
        n_layer: int | None = None,
        n_ff: int | None = None,
    ) -> ActivationStats:
        """Read a statistics pair; with `model_fingerprint` / `n_layer` / `n_ff` given, check they match."""
        npz, meta = _paths(path)
        for p in (npz, meta):
            if not p.is_file():
                raise DataError("statistics file does not exist", p)
        try:
            info = json.loads(meta.read_text())
            with np.load(npz, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"unreadable statistics file ({type(e).__name__})", npz) from None
        missing = [k for k in ("counts", "abs_sum") if k not in arrays] + [
            k for k in ("mode", "n_tokens", "model_fingerprint", "corpus_sha256") if k not in info
        ]
        if missing:
            raise DataError(f"statistics file lacks {missing}", npz)
        try:
            stats = cls(
                counts=arrays["counts"],
                abs_sum=arrays["abs_sum"],
                n_tokens=int(info["n_tokens"]),
                mode=info["mode"],
                thresholds=arrays.get("thresholds"),
                model_fingerprint=str(info["model_fingerprint"]),
                corpus_sha256=str(info["corpus_sha256"]),
                active_hist=arrays.get("active_hist"),
            )
        except DataError as e:
            raise DataError(e.problem, npz) from None
        if "fingerprint" in info and info["fingerprint"] != stats.fingerprint:
            raise DataError("statistics do not match their own fingerprint (edited or corrupt)", npz)
        stats.check_model(n_layer=n_layer, n_ff=n_ff, model_fingerprint=model_fingerprint, path=npz)
        return stats

    def export_powerinfer(self, folder: str | os.PathLike[str]) -> list[Path]:
        """PowerInfer's solver input: one int64 count vector [F] per layer, `activation_{i}.npy` (i = 0, 1, ...)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(self.n_layer):
            p = folder / f"activation_{i}.npy"
            np.save(p, self.counts[i])
            paths.append(p)
        return paths


def load_powerinfer_counts(folder: str | os.PathLike[str]) -> np.ndarray:
    """Read `activation_{i}.npy` files back as int64 [L, F], ordered by the number in the name (not as text)."""
    folder = Path(folder)
    files = {}
    for p in folder.glob("activation_*.npy"):
        suffix = p.stem.removeprefix("activation_")
        if suffix.isdigit():
            files[int(suffix)] = p
    if not files:
        raise DataError("no activation_{i}.npy files", folder)
    if sorted(files) != list(range(len(files))):
        raise DataError(f"activation files are not numbered 0..{len(files) - 1}: {sorted(files)}", folder)
    return np.stack([np.load(files[i]).astype(np.int64) for i in range(len(files))])
