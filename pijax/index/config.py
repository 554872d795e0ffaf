"""IndexConfig: how the gpuidx is chosen and cached (Hydra's `index` group fills it).

`group_size=None` means the policy's own default (256 for `powerinfer` and `cost_model`, 1 for
`neuron_greedy`). `recall`, `precision` and `n_tokens` feed only the `cost_model` policy, `seed` only `random`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from typing import Any

from pijax.errors import ConfigError
from pijax.index.policies import get_policy, policy_param_names


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """policy: a name in `pijax.index.POLICIES`. powerinfer_compat: write PWRI + type id 18 and use PowerInfer's
    capacity rounding. reset: rebuild even if a valid file exists. disable: no FFN split (no index at all).
    allow_all_cold: when the dense part alone exceeds the budget, build an all-cold index instead of failing.
    path: explicit index file (default `<model>.generated.gpuidx`)."""

    policy: str = "powerinfer"
    group_size: int | None = None
    seed: int = 0
    powerinfer_compat: bool = False
    reset: bool = False
    disable: bool = False
    allow_all_cold: bool = False
    recall: float = 0.9
    precision: float = 0.6
    n_tokens: int | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        get_policy(self.policy)
        if self.group_size is not None and self.group_size < 1:
            raise ConfigError(f"index.group_size must be >= 1, got {self.group_size}")

    def policy_params(self, **derived: Any) -> dict[str, Any]:
        """The keyword arguments `solve` gets: the policy's defaults, overridden by this config and `derived`
        (values the caller computes, e.g. bytes_per_neuron, hardware)."""
        fn = get_policy(self.policy)
        names = policy_param_names(self.policy)
        sig = inspect.signature(fn).parameters
        own = {
            "group_size": self.group_size,
            "seed": self.seed,
            "recall": self.recall,
            "precision": self.precision,
            "n_tokens": self.n_tokens,
        }
        out: dict[str, Any] = {}
        for name in names:
            if name in derived:
                out[name] = derived[name]
            elif own.get(name) is not None:
                out[name] = own[name]
            else:
                out[name] = sig[name].default
        return out


def params_json(params: dict[str, Any]) -> str:
    """Canonical JSON of a policy's parameters as recorded in the file (objects such as the hardware profile are
    left out: the hardware fingerprint covers them)."""
    plain = {k: v for k, v in params.items() if v is None or isinstance(v, bool | int | float | str)}
    return json.dumps(plain, sort_keys=True, separators=(",", ":"))
