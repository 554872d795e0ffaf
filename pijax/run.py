"""Hydra entry point: `python -m pijax.run +experiment=NAME [overrides]`.

Thin by design: compose the config, build the frozen RunConfig once, dispatch on `task`. All work lives in the
pipeline's library functions (see pijax/tasks/). Errors a user can fix are printed as one line, exit code 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pijax.errors import PijaxError
from pijax.run_config import build_run_config
from pijax.tasks import get_task

log = logging.getLogger("pijax")


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        run_cfg = build_run_config(OmegaConf.to_container(cfg, resolve=True))
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        result = get_task(run_cfg.task)(run_cfg, out_dir)
    except PijaxError as e:
        print(f"pijax: error: {e}", file=sys.stderr)
        sys.exit(2)
    return result if isinstance(result, float) else None


if __name__ == "__main__":
    main()
