"""get_or_build_index: reuse a gpuidx only when it is valid for this request, else rebuild it safely.

Valid means: readable and intact (checksum), same model (shapes and fingerprint), and built for the same budget
(bytes and capacity), policy (name and parameters), statistics and hardware, in the requested format. Otherwise
it is rebuilt with one log line on the "pijax.index" logger saying why (missing, corrupt, truncated, other
model, stale (budget|policy|stats|hardware|format), reset requested).

Writes are atomic (see `gpuidx.write_gpuidx`) and serialised by a file lock next to the index; a process that
waited for the lock first re-reads the file and reuses what the winner wrote. When the model's folder is not
writable the index lives in a per-user cache folder, `$PIJAX_CACHE_DIR` or `$XDG_CACHE_HOME/pijax/gpuidx` or
`~/.cache/pijax/gpuidx`, under `<model fingerprint>/`. The model file is only ever opened for reading.
A PowerInfer-made file (no pijax keys) is used, with a warning, as "unverified" if its shapes fit the model and
its hot neurons fit the capacity; otherwise it is replaced.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from pijax.config import ModelConfig
from pijax.errors import DataError, IndexFileError
from pijax.index.budget import BudgetPlan, plan_budget
from pijax.index.config import IndexConfig, params_json
from pijax.index.fingerprint import model_fingerprint
from pijax.index.fingerprint import stats_fingerprint as counts_fingerprint
from pijax.index.gpuidx import (
    GpuIndex,
    Provenance,
    default_path,
    index_from_buckets,
    load_gpuidx,
    remove_orphan_temps,
    write_gpuidx,
)
from pijax.index.hardware import HardwareProfile, current_hardware_fingerprint, detect_hardware
from pijax.index.policies import check_counts, solve
from pijax.io.gguf import GGUFFile, read_gguf

log = logging.getLogger("pijax.index")

LOADED = "loaded"
LOADED_UNVERIFIED = "loaded (unverified PowerInfer file)"
REUSED = "reused (built by another process)"
DISABLED = "disabled"
REBUILT = "rebuilt: "
LOCK_TIMEOUT_S = 600.0
"""A builder waits this long for another one; then it builds into the cache folder instead."""


def folder_is_writable(folder: Path) -> bool:
    """Whether pijax may create files in `folder`. Root passes os.access on any folder, so tests monkeypatch
    this to simulate a read-only model folder; a write that still fails falls back to the cache folder too."""
    try:
        return os.access(folder, os.W_OK) and not (os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def cache_root() -> Path:
    env = os.environ.get("PIJAX_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pijax" / "gpuidx"


@dataclasses.dataclass(frozen=True)
class _Request:
    provenance: Provenance
    n_layer: int
    n_ff: int
    compat: bool


def _stale_reasons(index: GpuIndex, req: _Request) -> str | None:
    """None when `index` serves `req`; else the reason, e.g. 'stale (budget: ..., policy: ...)'."""
    if index.n_layer != req.n_layer or index.n_ff != req.n_ff:
        return (
            f"other model (index for {index.n_layer} layers x {index.n_ff} neurons, "
            f"model has {req.n_layer} x {req.n_ff})"
        )
    if not index.verified:
        return None
    have, want = index.provenance, req.provenance
    assert have is not None
    if have.model_fingerprint != want.model_fingerprint:
        return f"other model (fingerprint {have.model_fingerprint} != {want.model_fingerprint})"
    stale = []
    if have.format_version != want.format_version or (index.magic == "PWRI") != req.compat:
        stale.append(
            f"format: v{have.format_version} {index.magic}, want v{want.format_version} "
            f"{'PWRI' if req.compat else 'GGUF'}"
        )
    if have.budget_bytes != want.budget_bytes or have.capacity_neurons != want.capacity_neurons:
        stale.append(
            f"budget: {have.budget_bytes:,d} B / {have.capacity_neurons:,d} neurons -> "
            f"{want.budget_bytes:,d} B / {want.capacity_neurons:,d} neurons"
        )
    if have.policy != want.policy or have.policy_params != want.policy_params:
        stale.append(f"policy: {have.policy} {have.policy_params} -> {want.policy} {want.policy_params}")
    if have.stats_fingerprint != want.stats_fingerprint:
        stale.append("stats: the activation statistics changed")
    if have.hardware_fingerprint != want.hardware_fingerprint:
        stale.append(f"hardware: {have.hardware_fingerprint!r} -> {want.hardware_fingerprint!r}")
    return f"stale ({'; '.join(stale)})" if stale else None


def _try_load(path: Path, req: _Request) -> tuple[GpuIndex | None, str]:
    """(index, "") when `path` serves the request, else (None, why it does not)."""
    if not path.exists():
        return None, "missing"
    try:
        index = load_gpuidx(path)
    except IndexFileError as e:
        return None, e.problem.replace(": ", " (", 1) + ")" if ": " in e.problem else e.problem
    why = _stale_reasons(index, req)
    if why is None and not index.verified and index.total_hot > req.provenance.capacity_neurons:
        why = (
            f"stale (budget: PowerInfer file holds {index.total_hot:,d} hot neurons, "
            f"capacity is {req.provenance.capacity_neurons:,d})"
        )
    return (index, "") if why is None else (None, why)


def _policy_args(
    index_cfg: IndexConfig, plan: BudgetPlan, model_cfg: ModelConfig, hardware: HardwareProfile | None
) -> dict[str, Any]:
    derived: dict[str, Any] = {
        "bytes_per_neuron": plan.bytes_per_neuron,
        "transfer_bytes": 2 * model_cfg.n_embd * 4,
    }
    if index_cfg.policy == "cost_model":
        derived["hardware"] = hardware if hardware is not None else detect_hardware()
    return index_cfg.policy_params(**derived)


def _build_and_write(
    target: Path, counts: np.ndarray, plan: BudgetPlan, index_cfg: IndexConfig, req: _Request, args: dict[str, Any]
) -> tuple[GpuIndex, str | None]:
    """Under the lock: reuse a file another process just wrote, else solve, write and re-read. Returns the index
    and None if it was reused, or the index and "" if this process built it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=LOCK_TIMEOUT_S):
        if not index_cfg.reset:
            index, _ = _try_load(target, req)
            if index is not None:
                return index, None
        remove_orphan_temps(target)
        buckets = solve(index_cfg.policy, counts, plan.capacity_neurons, **args)
        write_gpuidx(
            target, buckets, req.n_ff, vram_capacity=plan.remaining_bytes, provenance=req.provenance, compat=req.compat
        )
        return load_gpuidx(target), ""


def get_or_build_index(
    model: str | os.PathLike[str] | GGUFFile,
    model_cfg: ModelConfig,
    counts: Any,
    budget: int | str | BudgetPlan,
    index_cfg: IndexConfig | None = None,
    *,
    stats_fingerprint: str | None = None,
    hardware: HardwareProfile | None = None,
    hardware_fingerprint: str | None = None,
    predictor_ranks: Sequence[int] | None = None,
    weight_dtype: str = "f32",
) -> tuple[GpuIndex | None, Path | None, str]:
    """Load `<model>.generated.gpuidx` if it is valid for this request, else (re)build it.

    counts: `[n_layer, n_ff]` activation counts, or an object with `.counts` (and optionally `.fingerprint`,
    e.g. ActivationStats). budget: bytes, a string like "2GiB", or a ready BudgetPlan. hardware: the profile for
    the `cost_model` policy and, if `hardware_fingerprint` is not given, the fingerprint recorded in the file
    (default: the current machine from `jax.devices()`).
    Returns (index, path, reason); reason is "loaded", "loaded (unverified PowerInfer file)", "reused (built by
    another process)", "disabled" (index and path None) or "rebuilt: <why>". Raises BudgetError when the dense
    part does not fit (unless `index_cfg.allow_all_cold`), DataError for counts of the wrong shape.
    """
    cfg = index_cfg or IndexConfig()
    if cfg.disable:
        log.info("gpuidx disabled: no FFN split, every FFN neuron stays where the dense model puts it")
        return None, None, DISABLED
    model_path = Path(model.path if isinstance(model, GGUFFile) else model)
    gguf_file = model if isinstance(model, GGUFFile) else read_gguf(model_path)

    fp_from_stats = getattr(counts, "fingerprint", None)
    arr = check_counts(getattr(counts, "counts", counts))
    if arr.shape != (model_cfg.n_layer, model_cfg.n_ff):
        raise DataError(
            f"activation counts are [{arr.shape[0]}, {arr.shape[1]}] but the model has "
            f"{model_cfg.n_layer} layers x {model_cfg.n_ff} neurons (statistics from another model?)",
            model_path,
        )
    if isinstance(budget, BudgetPlan):
        plan = budget
    else:
        plan = plan_budget(
            model_cfg,
            budget,
            weight_dtype=weight_dtype,
            predictor_ranks=predictor_ranks,
            rounding="powerinfer" if cfg.powerinfer_compat else "exact",
            allow_all_cold=cfg.allow_all_cold,
        )
    if not plan.fits:
        log.warning(
            "the dense part (%s B) exceeds the budget (%s B): every FFN neuron will be cold",
            f"{plan.dense_bytes:,d}",
            f"{plan.budget_bytes:,d}",
        )
    args = _policy_args(cfg, plan, model_cfg, hardware)
    if hardware_fingerprint is None:
        hardware_fingerprint = hardware.fingerprint() if hardware is not None else current_hardware_fingerprint()
    model_fp = model_fingerprint(gguf_file)
    req = _Request(
        Provenance(
            model_fingerprint=model_fp,
            stats_fingerprint=stats_fingerprint or fp_from_stats or counts_fingerprint(arr),
            policy=cfg.policy,
            policy_params=params_json(args),
            budget_bytes=plan.budget_bytes,
            capacity_neurons=plan.capacity_neurons,
            hardware_fingerprint=hardware_fingerprint,
        ),
        n_layer=model_cfg.n_layer,
        n_ff=model_cfg.n_ff,
        compat=cfg.powerinfer_compat,
    )

    primary = Path(cfg.path) if cfg.path else default_path(model_path)
    fallback = cache_root() / model_fp.split(":")[-1] / primary.name
    primary_ok = folder_is_writable(primary.parent)
    candidates = [primary] if primary_ok else [primary, fallback]
    why = "reset requested"
    if not cfg.reset:
        reasons = []
        for path in candidates:
            index, reason = _try_load(path, req)
            if index is not None:
                if not index.verified:
                    log.warning(
                        "using PowerInfer-made %s unverified: it records no model, budget, policy or "
                        "statistics; pass reset=True to rebuild it",
                        path,
                    )
                    return index, path, LOADED_UNVERIFIED
                return index, path, LOADED
            reasons.append(reason)
        why = reasons[0] if reasons[0] != "missing" or len(reasons) == 1 else reasons[-1]

    targets = [primary, fallback] if primary_ok else [fallback]
    for target in targets:
        try:
            index, built = _build_and_write(target, arr, plan, cfg, req, args)
        except OSError as e:
            log.debug("cannot write %s: %s", target, e)
            continue
        if built is None:
            return index, target, REUSED
        owner = "index.path" if cfg.path else "model"
        where = "" if target == primary else f" ({owner} folder {primary.parent} not writable)"
        level = logging.WARNING if why.startswith(("corrupt", "truncated", "other model")) else logging.INFO
        log.log(level, "rebuilt gpuidx %s%s: %s", target, where, why)
        if cfg.policy == "all" and index.total_hot > plan.capacity_neurons:
            log.warning(
                "policy 'all' puts %s neurons on the accelerator but only %s fit the budget",
                f"{index.total_hot:,d}",
                f"{plan.capacity_neurons:,d}",
            )
        return index, target, REBUILT + why
    buckets = solve(cfg.policy, arr, plan.capacity_neurons, **args)
    log.warning("could not write the gpuidx to %s or %s; using it unsaved: %s", primary, fallback, why)
    return index_from_buckets(buckets, model_cfg.n_ff), None, REBUILT + why + " (not saved)"
