"""RunConfig: the whole run's configuration as one frozen dataclass, built once from the composed Hydra config.

`build_run_config` is where a run's configuration is validated, before any work starts: every key's type and range
(pijax.configure), then what can be checked without loading a model: the task name, the budget's syntax and size
(`budget=banana`, `-5`, `ffn:150%`, `99999999999999999999999TiB`), and that model.path and corpus name files that
exist. Budget checks that need the model (the dense part must fit) run in each task before profiling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pijax.bench.config import SimulateConfig, SweepConfig
from pijax.bench.decode_config import BenchConfig
from pijax.config import GenerateConfig, LoggerConfig, ModelSpec
from pijax.configure import build
from pijax.errors import ConfigError
from pijax.index.config import IndexConfig
from pijax.layout.config import HardwareConfig
from pijax.sparsity.config import ProfileConfig
from pijax.sparsity.predictor_config import PredictorTrainConfig
from pijax.sparsity.real_config import RealSparsityConfig
from pijax.sparsity.relufy_config import RelufyConfig
from pijax.validate import check_model_source, check_text


@dataclasses.dataclass(frozen=True)
class RunConfig:
    task: str = "generate"
    seed: int = 0
    smoke: bool = False
    budget: str | None = None
    corpus: str = ""
    # the user's message for task=chat
    prompt: str = ""
    model: ModelSpec = ModelSpec()
    generate: GenerateConfig = GenerateConfig()
    logger: LoggerConfig = LoggerConfig()
    sparsity: ProfileConfig = ProfileConfig()
    relufy: RelufyConfig = RelufyConfig()
    predictor: PredictorTrainConfig = PredictorTrainConfig()
    index: IndexConfig = IndexConfig()
    hardware: HardwareConfig = HardwareConfig()
    sweep: SweepConfig = SweepConfig()
    simulate: SimulateConfig = SimulateConfig()
    bench: BenchConfig = BenchConfig()
    real_sparsity: RealSparsityConfig = RealSparsityConfig()


def check_budget_syntax(budget: str | None) -> None:
    """A budget that cannot be read ('banana', '-5', 'ffn:150%', a size beyond 2**63 bytes) fails here, one line."""
    if budget is None:
        return
    from pijax.index.budget import check_budget

    check_budget(budget)


def check_files(cfg: RunConfig) -> None:
    """model.path (unless a registered name) and corpus must be existing files: said now, not after minutes."""
    from pijax.io.registry import is_registry_name

    path = check_model_source(cfg.model.path, "model.path")
    if path and not is_registry_name(path) and not Path(path).expanduser().is_file():
        raise ConfigError(f"model.path {path!r}: no such file (give a GGUF file or a registered model name)")
    if cfg.corpus:
        corpus = Path(check_text(cfg.corpus, "corpus")).expanduser()
        if "\x00" in cfg.corpus or not corpus.is_file():
            raise ConfigError(f"corpus {cfg.corpus!r}: no such file (give a UTF-8 text file, or empty for TinyStories)")


def build_run_config(mapping: Mapping[str, Any]) -> RunConfig:
    from pijax.tasks import TASKS

    cfg = build(RunConfig, {k: v for k, v in mapping.items() if k != "hydra"})
    if cfg.task not in TASKS:
        raise ConfigError(f"unknown task {cfg.task!r}; choose one of {sorted(TASKS)}")
    check_budget_syntax(cfg.budget)
    check_files(cfg)
    return cfg
