"""Where a SiLU model's oracle predictors come from: shipped with pijax, cached, or trained on first use.

`predictors_for(model)` looks, in order, at the files shipped in pijax/assets (`paths.SMOLLM2_PREDICTORS`), then
at `$PIJAX_CACHE/predictors/<fingerprint>.oracle.gguf`; a file counts only if its recorded model fingerprint is
this model's (`weights_fingerprint`). Otherwise it trains them (`oracle_predictors.train_oracle_predictors`, with
progress bars; the work folder next to the cached file makes an interrupted training resume) and caches the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pijax.io.fingerprint import PREDICTOR_FINGERPRINT_KEY, weights_fingerprint
from pijax.io.gguf import read_gguf
from pijax.io.registry import cache_root
from pijax.paths import SMOLLM2_PREDICTORS
from pijax.sparsity.oracle_predictors import (
    OraclePredictorConfig,
    OraclePredictors,
    load_oracle_predictors,
    save_oracle_predictors,
    train_oracle_predictors,
)

SHIPPED: tuple[Path, ...] = (SMOLLM2_PREDICTORS,)


def cache_path(fingerprint: str) -> Path:
    return cache_root() / "predictors" / f"{fingerprint.replace(':', '-')}.oracle.gguf"


def _recorded_fingerprint(path: Path) -> str | None:
    try:
        return read_gguf(path).metadata.get(PREDICTOR_FINGERPRINT_KEY)
    except Exception:  # an unreadable candidate is simply not this model's file
        return None


def find_predictors(model: Any) -> Path | None:
    """The shipped or cached predictors file made for this model, if any."""
    fp = weights_fingerprint(model.checkpoint.weights)
    for path in (*SHIPPED, cache_path(fp)):
        if path.is_file() and _recorded_fingerprint(path) == fp:
            return path
    return None


def predictors_for(model: Any, cfg: OraclePredictorConfig | None = None, *, progress: bool = True) -> OraclePredictors:
    """This model's oracle predictors: shipped, cached, or trained now (then cached)."""
    found = find_predictors(model)
    if found is not None:
        return load_oracle_predictors(found, model)
    fp = weights_fingerprint(model.checkpoint.weights)
    dest = cache_path(fp)
    if progress:
        print(f"pijax: training oracle predictors for this model once (cached at {dest})", flush=True)
    preds = train_oracle_predictors(model, cfg or OraclePredictorConfig(), dest.with_suffix(".work"), progress=progress)
    save_oracle_predictors(dest, preds)
    return preds
