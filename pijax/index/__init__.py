"""pijax.index: which FFN neurons live on the accelerator (the gpuidx), and how that choice is cached.

budget (accelerator-memory accounting) -> policies (registry: powerinfer, neuron_greedy, uniform, layers, random, all,
none, cost_model) -> gpuidx (the `<model>.generated.gpuidx` file) -> cache (`get_or_build_index`).
Importing this package does not import jax or scipy.
"""

from pijax.index import cost_model as _cost_model  # noqa: F401  (registers the cost_model policy)
from pijax.index.budget import BudgetPlan, dtype_bytes, parse_bytes, plan_budget
from pijax.index.cache import get_or_build_index
from pijax.index.config import IndexConfig
from pijax.index.fingerprint import model_fingerprint, stats_fingerprint
from pijax.index.gpuidx import GpuIndex, default_path, load_gpuidx, write_gpuidx
from pijax.index.hardware import (
    PRESETS,
    HardwareProfile,
    current_hardware_fingerprint,
    default_budget_bytes,
    detect_hardware,
    get_preset,
)
from pijax.index.policies import POLICIES, hot_share, masks_from_buckets, solve
from pijax.index.table import format_index_table

__all__ = [
    "POLICIES",
    "PRESETS",
    "BudgetPlan",
    "GpuIndex",
    "HardwareProfile",
    "IndexConfig",
    "current_hardware_fingerprint",
    "default_budget_bytes",
    "default_path",
    "detect_hardware",
    "dtype_bytes",
    "format_index_table",
    "get_or_build_index",
    "get_preset",
    "hot_share",
    "load_gpuidx",
    "masks_from_buckets",
    "model_fingerprint",
    "parse_bytes",
    "plan_budget",
    "solve",
    "stats_fingerprint",
    "write_gpuidx",
]
