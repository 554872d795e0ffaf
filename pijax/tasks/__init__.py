"""The task registry behind `python -m pijax.run task=NAME`: each task is a module with `run(cfg, out_dir)`.

Modules are imported on demand so that `task=generate` does not pay for scipy, optax or wandb.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pijax.errors import ConfigError

TASKS: dict[str, str] = {
    "generate": "pijax.tasks.generate",
    "chat": "pijax.tasks.chat",
    "profile": "pijax.tasks.profile",
    "relufy": "pijax.tasks.relufy",
    "train_predictors": "pijax.tasks.train_predictors",
    "sweep": "pijax.tasks.sweep",
    "simulate": "pijax.tasks.simulate",
    "gpuidx": "pijax.tasks.gpuidx",
    "bench": "pijax.tasks.bench",
    "real_sparsity": "pijax.tasks.real_sparsity",
}


def get_task(name: str) -> Callable[[Any, Path], Any]:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return importlib.import_module(TASKS[name]).run
