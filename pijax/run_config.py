"""RunConfig: the whole run's configuration as one frozen dataclass, built once from the composed Hydra config."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pijax.bench.config import SimulateConfig, SweepConfig
from pijax.bench.decode_config import BenchConfig
from pijax.config import GenerateConfig, LoggerConfig, ModelSpec
from pijax.configure import build
from pijax.index.config import IndexConfig
from pijax.layout.config import HardwareConfig
from pijax.sparsity.config import ProfileConfig
from pijax.sparsity.predictor_config import PredictorTrainConfig
from pijax.sparsity.real_config import RealSparsityConfig
from pijax.sparsity.relufy_config import RelufyConfig


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


def build_run_config(mapping: Mapping[str, Any]) -> RunConfig:
    return build(RunConfig, {k: v for k, v in mapping.items() if k != "hydra"})
