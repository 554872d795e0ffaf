"""Hydra entry point: `python -m pijax.run +experiment=NAME [overrides]`.

Thin by design: compose the config, build the frozen RunConfig once (which validates every key), dispatch on
`task`. All work lives in the pipeline's library functions (see pijax/tasks/).

Exit codes: 0 on success; 2 on a user error (a bad override or config value, a bad file, an unknown model, a
budget that does not fit: one line `pijax: error: ...` on stderr, no traceback); 1 on a bug (any other exception,
with its full traceback).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pijax.errors import PijaxError, one_line
from pijax.run_config import build_run_config
from pijax.tasks import get_task

log = logging.getLogger("pijax")
USER_ERROR = 2


def user_error(message: str) -> None:
    """Print one line on stderr and exit with status 2."""
    print(f"pijax: error: {one_line(message, 600)}", file=sys.stderr)
    sys.exit(USER_ERROR)


def hydra_message(err: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages as one line (their 'full_key: ...' detail lines dropped)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    lines = [
        ln
        for ln in lines
        if not ln.startswith(
            ("full_key:", "object_type=", "reference_type=", "Set the env", "provider=", "Config search path")
        )
    ]
    cause = err.__cause__
    if cause is not None and str(cause).strip() and str(cause).splitlines()[0].strip() not in lines:
        lines.append(str(cause).splitlines()[0].strip())
    return one_line(" ".join(lines) or type(err).__name__, 600)


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        run_cfg = build_run_config(OmegaConf.to_container(cfg, resolve=True))
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        result = get_task(run_cfg.task)(run_cfg, out_dir)
    except PijaxError as e:
        user_error(str(e))
    except OmegaConfBaseException as e:  # e.g. an interpolation in an override that does not resolve
        user_error(f"config: {hydra_message(e)}")
    return result if isinstance(result, float) else None


def cli() -> None:
    """`python -m pijax.run`: Hydra's own errors (a malformed override, an unknown config group or key) exit with 2
    and one line too; Hydra would print several lines and exit with 1, the code of a bug."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing, so that they reach us
    try:
        main()
    except (HydraException, OmegaConfBaseException) as e:
        user_error(f"config: {hydra_message(e)}")


if __name__ == "__main__":
    cli()
