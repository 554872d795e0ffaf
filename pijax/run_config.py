"""RunConfig: the whole run's configuration as one frozen dataclass, built once from the composed Hydra config."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pijax.config import GenerateConfig, LoggerConfig, ModelSpec
from pijax.configure import build


@dataclasses.dataclass(frozen=True)
class RunConfig:
    task: str = "generate"
    seed: int = 0
    smoke: bool = False
    budget: str | None = None
    corpus: str = ""
    model: ModelSpec = ModelSpec()
    generate: GenerateConfig = GenerateConfig()
    logger: LoggerConfig = LoggerConfig()


def build_run_config(mapping: Mapping[str, Any]) -> RunConfig:
    return build(RunConfig, {k: v for k, v in mapping.items() if k != "hydra"})
