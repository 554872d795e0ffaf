"""SweepConfig and SimulateConfig: the `sweep` and `simulate` config groups (task=sweep, task=simulate).

Kept free of jax imports so that `pijax.run_config` can hold them without starting a backend. `smoke()` gives the
shrunken settings every task uses under `smoke=true` (tests, CI).
"""

from __future__ import annotations

import dataclasses

from pijax.errors import ConfigError

MASK_SOURCES = ("auto", "predictor", "oracle", "dense")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """One throughput-vs-VRAM measurement (task=sweep); a Hydra multirun over `index` x `budget` is the sweep.

    name: results go to `<results_dir>/results.csv` and `<results_dir>/tok_s_vs_vram_<model>.png`; results_dir ""
      means `experiments/<name>` (under smoke=true: the run's folder, or the multirun's, so tests never write into
      experiments/).
    synthetic: a `pijax.bench.synth` preset (e.g. tinyllama-1.1b): run on that SYNTHETIC model instead of
      model.path; under smoke=true `smoke_synthetic` is used instead.
    source: where the per-token masks come from: predictor (the file's predictors, PowerInfer's path), oracle (true
      activity), dense (every row), auto (predictor when the file has predictors, else oracle).
    n_ctx: the KV cache the budget plans for (and the engine serves). prompt_tokens / new_tokens: one timed
      generation; `warmup` untimed ones first, then the median over `repeats`.
    calibration_tokens: text tokens for the gather capacities (pijax.layout.capacity); profile_tokens: text tokens
      for the activation statistics that choose the hot sets. eval_windows x eval_seq_len: held-out tokens for
      fidelity (top-1 agreement, mean KL against the dense model; each window teacher-forced through the engine's
      decode path, one cached step per token) and predictor recall/precision; eval_seq_len <= n_ctx.
    trace_tokens: per-token masks kept for the cost model's prediction on `simulate_profile` (a
      pijax.index.hardware preset; "" skips it).
    dense_baseline: also time the dense engine (once per process and model) for a speed-up column.
    sparsity: for a model gated by predictors, the share of FFN rows they skip, their per-layer cut-offs calibrated
      on the corpus' training split; None: the predictors' own cut-offs (a SiLU model's oracle predictors: chosen
      in training, pijax.engine.predictor_choice; a model file's: its threshold).
    """

    name: str = "sweep"
    results_dir: str = ""
    synthetic: str = ""
    smoke_synthetic: str = "tiny"
    source: str = "auto"
    n_ctx: int = 256
    prompt_tokens: int = 64
    new_tokens: int = 64
    warmup: int = 1
    repeats: int = 5
    profile_tokens: int = 16384
    calibration_tokens: int = 8192
    capacity_quantile: float | None = 1.0
    eval_windows: int = 8
    eval_seq_len: int = 64
    trace_tokens: int = 256
    simulate_profile: str = "cpu"
    dense_baseline: bool = True
    sparsity: float | None = None

    def __post_init__(self) -> None:
        if self.source not in MASK_SOURCES:
            raise ConfigError(f"sweep.source must be one of {MASK_SOURCES}, got {self.source!r}")
        small = {k: getattr(self, k) for k in ("prompt_tokens", "new_tokens", "repeats", "profile_tokens", "n_ctx")}
        bad = [k for k, v in small.items() if v < 1]
        if bad or self.warmup < 0 or self.eval_windows < 0 or self.trace_tokens < 0:
            raise ConfigError(f"sweep: {bad or 'warmup/eval_windows/trace_tokens'} must be positive")
        if self.sparsity is not None and (
            isinstance(self.sparsity, bool) or not isinstance(self.sparsity, int | float) or not 0 <= self.sparsity < 1
        ):
            raise ConfigError(f"sweep.sparsity must be null or a share in [0, 1), got {self.sparsity!r}")
        if self.eval_seq_len > self.n_ctx or self.eval_seq_len < 2:
            raise ConfigError(f"sweep.eval_seq_len must be in [2, n_ctx={self.n_ctx}], got {self.eval_seq_len}")
        if self.prompt_tokens + self.new_tokens > self.n_ctx:
            raise ConfigError(
                f"sweep: prompt_tokens + new_tokens = {self.prompt_tokens + self.new_tokens} exceed n_ctx {self.n_ctx}"
            )

    def smoke(self) -> SweepConfig:
        """A few seconds per run: tiny texts, two timed repeats, no dense baseline."""
        return dataclasses.replace(
            self,
            n_ctx=min(self.n_ctx, 64),
            prompt_tokens=min(self.prompt_tokens, 16),
            new_tokens=min(self.new_tokens, 8),
            warmup=min(self.warmup, 1),
            repeats=min(self.repeats, 2),
            profile_tokens=min(self.profile_tokens, 1024),
            calibration_tokens=min(self.calibration_tokens, 512),
            eval_windows=min(self.eval_windows, 2),
            eval_seq_len=min(self.eval_seq_len, 32),
            trace_tokens=min(self.trace_tokens, 32),
            dense_baseline=False,
        )


@dataclasses.dataclass(frozen=True)
class SimulateConfig:
    """Simulated hardware (task=simulate): tokens/s against VRAM from a measured activation trace.

    profiles: pijax.index.hardware presets. policies: index policies compared. ffn_fractions: budgets, as the dense
    part plus this share of all FFN rows. weight_dtype: how the simulated GPU stores weights (f16, as PowerInfer
    runs). profile_tokens: train-split tokens whose activation counts choose the hot sets; trace_tokens: held-out
    tokens of per-token masks. check_csv: a sweep results.csv whose rows (measured on this
    machine, with the cost model's prediction for the same hot sets) give the error of the model; "" = the
    sweep_policies results if present.
    """

    profiles: tuple[str, ...] = ("rtx4090", "a100_80gb", "h100", "laptop")
    policies: tuple[str, ...] = ("powerinfer", "neuron_greedy", "uniform", "layers")
    ffn_fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    weight_dtype: str = "f16"
    n_ctx: int = 2048
    profile_tokens: int = 16384
    trace_tokens: int = 512
    seq_len: int = 128
    synthetic: str = ""
    smoke_synthetic: str = "tiny"
    source: str = "auto"
    results_dir: str = ""
    check_csv: str = ""

    def __post_init__(self) -> None:
        if self.source not in MASK_SOURCES:
            raise ConfigError(f"simulate.source must be one of {MASK_SOURCES}, got {self.source!r}")
        if not self.profiles or not self.policies or not self.ffn_fractions:
            raise ConfigError("simulate: profiles, policies and ffn_fractions must not be empty")
        if any(not 0.0 <= f <= 1.0 for f in self.ffn_fractions):
            raise ConfigError(f"simulate.ffn_fractions must lie in [0, 1], got {self.ffn_fractions}")

    def smoke(self) -> SimulateConfig:
        return dataclasses.replace(
            self,
            profile_tokens=min(self.profile_tokens, 1024),
            trace_tokens=min(self.trace_tokens, 64),
            seq_len=min(self.seq_len, 32),
            ffn_fractions=(0.0, 0.5, 1.0),
        )
