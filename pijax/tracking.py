"""Experiment tracking behind one small interface: `Tracker`, with `NoopTracker` and `WandbTracker`.

`make_tracker(cfg, run_dir, run_name, config)` picks one from a `LoggerConfig`. W&B runs offline by default: no
network, no API key, every file it writes (the run folder, its artifact staging area, its cache and service logs)
lands under `run_dir` for the length of the run. `logger=wandb logger.mode=online` syncs live for users with an
account. wandb is imported only when a `WandbTracker` is made, so `logger=none` never pays for it.

A tracker is a context manager. `finish()` always ends the run and tears the W&B service down, so that no
wandb-core process outlives the run: the service is shared by every run in a Python process and would otherwise
live until interpreter exit, which in a Hydra multirun is after the last job.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from pijax.config import LoggerConfig
from pijax.errors import ConfigError, DataError

# wandb's own child processes (the service and its system monitor).
_WANDB_PROCESS_NAMES = ("wandb-core", "wandb-symon", "wandb")
_SERVICE_EXIT_TIMEOUT_S = 10.0


class Tracker:
    """Where a run's config, metrics, tables, plots and images go. The base class drops everything."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        pass

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        pass

    def log_line_plot(
        self, name: str, rows: Sequence[Mapping[str, Any]], x: str, y: str, series: str, title: str = ""
    ) -> None:
        """One line per distinct value of `rows[i][series]`, e.g. tokens/s against resident VRAM per policy."""

    def log_image(self, name: str, png_path: str | os.PathLike[str]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


class NoopTracker(Tracker):
    """`logger=none`: logs nothing, starts nothing."""


class WandbTracker(Tracker):
    """A W&B run whose files all live under `run_dir`; offline unless `cfg.mode == "online"`."""

    def __init__(self, cfg: LoggerConfig, run_dir: str | os.PathLike[str], run_name: str, config: Mapping[str, Any]):
        import psutil
        import wandb

        self._wandb = wandb
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._me = psutil.Process()
        self._children_before = {p.pid for p in self._children()}
        self._env_saved = self._redirect_wandb_dirs(self.run_dir / "wandb")
        self._finished = False
        try:
            self.run = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                dir=str(self.run_dir),
                name=run_name,
                tags=list(cfg.tags) or None,
                config=dict(config),
                mode=cfg.mode,
                reinit="finish_previous",
                # console capture rewires stdout/stderr, which fights with pytest and Hydra's own logging.
                settings=wandb.Settings(console="off", silent=True),
            )
        except Exception as e:  # wandb raises many types (UsageError, CommError, ...): one line for the user
            self._shutdown()
            hint = " (online mode needs `wandb login` or WANDB_API_KEY; logger.mode=offline needs neither)"
            raise ConfigError(f"W&B could not start a run: {e}{hint if cfg.mode == 'online' else ''}") from None

    @property
    def run_folder(self) -> Path:
        """The run's own folder: `run_dir/wandb/offline-run-*` (or `run-*` online)."""
        return Path(self.run.dir).parent

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(dict(config), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self.run.log(dict(metrics), step=step)

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.run.log({name: self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def log_line_plot(
        self, name: str, rows: Sequence[Mapping[str, Any]], x: str, y: str, series: str, title: str = ""
    ) -> None:
        table = self._wandb.Table(columns=[x, y, series], data=[[r[x], r[y], str(r[series])] for r in rows])
        self.run.log({name: self._wandb.plot.line(table, x, y, stroke=series, title=title or name)})

    def log_image(self, name: str, png_path: str | os.PathLike[str]) -> None:
        path = Path(png_path)
        if not path.is_file():
            raise DataError("image to log does not exist", path)
        self.run.log({name: self._wandb.Image(str(path))})

    def finish(self, exit_code: int = 0) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            self.run.finish(exit_code=exit_code)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        """Stop the W&B service, then make sure no wandb child this run started is still alive."""
        try:
            self._wandb.teardown()
        finally:
            self._restore_env()
            self._reap_wandb_children()

    def _children(self) -> list[Any]:
        import psutil

        out = []
        for p in self._me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if p.name() in _WANDB_PROCESS_NAMES:
                    out.append(p)
        return out

    def _reap_wandb_children(self) -> None:
        import psutil

        ours = [p for p in self._children() if p.pid not in self._children_before]
        _, alive = psutil.wait_procs(ours, timeout=_SERVICE_EXIT_TIMEOUT_S)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=_SERVICE_EXIT_TIMEOUT_S)

    def _redirect_wandb_dirs(self, root: Path) -> dict[str, str | None]:
        """Point W&B's artifact staging (data dir) and cache/log dir into the run folder unless the user chose."""
        saved: dict[str, str | None] = {}
        for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache")):
            saved[var] = os.environ.get(var)
            if saved[var] is None:
                os.environ[var] = str(root / sub)
        return saved

    def _restore_env(self) -> None:
        for var, value in self._env_saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        self._env_saved = {}


def make_tracker(
    cfg: LoggerConfig, run_dir: str | os.PathLike[str], run_name: str, config: Mapping[str, Any]
) -> Tracker:
    """The tracker `cfg` asks for: `NoopTracker` for kind none (or mode disabled), else a `WandbTracker`."""
    if cfg.kind == "none" or cfg.mode == "disabled":
        return NoopTracker()
    if cfg.kind != "wandb":
        raise ConfigError(f"unknown logger kind {cfg.kind!r}; choose none or wandb")
    if cfg.mode not in ("offline", "online"):
        raise ConfigError(f"unknown logger mode {cfg.mode!r}; choose offline, online or disabled")
    return WandbTracker(cfg, run_dir, run_name, config)
