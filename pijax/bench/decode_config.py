"""BenchConfig: the `bench` settings of task=bench (decode speed against llama.cpp, bounds, scaling, FFN layer).

Kept free of jax imports so that `pijax.run_config` can hold it without starting a backend.
"""

from __future__ import annotations

import dataclasses

from pijax.errors import ConfigError
from pijax.index.budget import ffn_share

BENCH_PARTS = (
    "llamacpp",
    "dense",
    "dense_xla",
    "sparse",
    "hybrid",
    "layers",
    "lowp",
    "sweep",
    "size",
    "ffn",
    "profile",
)
T1_ENGINES = ("pijax_dense_f32_kernel", "pijax_dense_f32_xla")
HYBRID_BUDGETS = ("ffn:0%", "ffn:20%", "ffn:50%", "ffn:80%", "ffn:100%")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What `python -m pijax.run +experiment=bench_decode` measures.

    preset / synth_overrides: the SYNTHETIC model (`pijax.bench.synth`), a registered model name (smollm2-135m)
      or the path of a GGUF (e.g. pijax/assets/stories260K_relu_predictors.gguf); the llama.cpp-loadable f32 and f16 copies are written
      next to a synthetic model, into the synthetic cache for a path.
    hybrid_budgets / hybrid_policy / hybrid_profile_tokens: parts `hybrid` (neurons placed by hybrid_policy) and
      `layers` (whole layers, llama.cpp -ngl): the hybrid engine at each budget (pijax.bench.decode_hybrid). parts: which measurements run (see BENCH_PARTS; `ffn` and `size` use the 7B-shaped
      layer stack `size_preset` with `size_layers` layers; `dense_xla` is the XLA dense engine alone, the
      all-on-accelerator baseline of a GPU run).
    threads: llama.cpp's n_threads and the kernels' thread count (XLA:CPU uses every core it is given).
    n_prompt / n_new: prompt length (prefill, one batch) and decoded tokens per repeat; `repeats` timed repeats
      after one warm-up, medians reported with min and max. Sweeps use `sweep_new` tokens per repeat.
    lowp_formats: low-precision weight formats measured (target 3 reports `t3_format`).
    sweep_fractions: predicted-active fractions for the scaling plot, per format in `sweep_formats`.
    probe_gb: size of the read-bandwidth probe's array; it must exceed the L3 cache (480 MB on this machine).
    out_dir: results (JSON, CSV, PNG, targets.md); "" means experiments/bench (smoke: always the run folder).
    t1_engine / t3_format / t4_case: the engine, format and FFN-layer case each target reports, fixed before the
      run (the report never picks the faster of two after it): T1 dense decode and prefill, T3's low-precision
      sparse format, T4's sparse case (`pijax.bench.ffn_kernel` names; the rows-alone case is printed beside it).
    powerinfer_bin / powerinfer_args: a user-built PowerInfer `main` (and extra arguments), timed `repeats` times on
      an f16 copy of the PWRI file (PowerInfer's CPU path reads ffn_down_t as f16); "" skips it.
    """

    preset: str = "tinyllama-1.1b"
    synth_overrides: tuple[tuple[str, object], ...] = ()
    parts: tuple[str, ...] = tuple(p for p in BENCH_PARTS if p != "dense_xla")  # dense measures it too
    threads: int = 2
    n_prompt: int = 128
    n_new: int = 128
    repeats: int = 5
    lowp_formats: tuple[str, ...] = ("f16", "int8")
    sweep_fractions: tuple[float, ...] = (0.05, 0.10, 0.25, 0.50, 1.0)
    sweep_formats: tuple[str, ...] = ("f32", "int8")
    sweep_new: int = 64
    size_preset: str = "llama2-7b"
    size_layers: int = 4
    ffn_repeats: int = 30
    probe_gb: float = 1.2
    hybrid_budgets: tuple[str, ...] = HYBRID_BUDGETS
    hybrid_policy: str = "powerinfer"
    hybrid_profile_tokens: int = 4096
    out_dir: str = ""
    t1_engine: str = "pijax_dense_f32_kernel"
    t3_format: str = "int8"
    t4_case: str = "sparse f32 (int8 predictor)"
    powerinfer_bin: str = ""
    powerinfer_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.t1_engine not in T1_ENGINES:
            raise ConfigError(f"bench.t1_engine must be one of {T1_ENGINES}, got {self.t1_engine!r}")
        if self.t3_format not in self.lowp_formats:
            raise ConfigError(f"bench.t3_format {self.t3_format!r} is not among lowp_formats {self.lowp_formats}")
        bad = sorted(set(self.parts) - set(BENCH_PARTS))
        if bad:
            raise ConfigError(f"bench.parts {bad} are not among {BENCH_PARTS}")
        if self.repeats < 1 or self.n_new < 2 or self.n_prompt < 1 or self.threads < 1:
            raise ConfigError("bench needs repeats >= 1, n_new >= 2, n_prompt >= 1, threads >= 1")
        for b in self.hybrid_budgets:
            if ffn_share(b) is None:
                raise ConfigError(f"bench.hybrid_budgets are written like 'ffn:50%', got {b!r}")
        if any(not 0 < f <= 1 for f in self.sweep_fractions):
            raise ConfigError(f"bench.sweep_fractions must be in (0, 1], got {self.sweep_fractions}")

    def smoke(self) -> BenchConfig:
        """A seconds-long run on the tiny preset (tests, CI): no llama.cpp, no 7B-shaped stack."""
        return dataclasses.replace(
            self,
            preset="tiny",
            parts=tuple(p for p in self.parts if p not in ("llamacpp", "size", "ffn")),
            n_prompt=8,
            n_new=4,
            repeats=1,
            sweep_new=3,
            sweep_fractions=(0.1, 1.0),
            sweep_formats=("f32",),
            lowp_formats=("int8",),
            probe_gb=0.05,
            hybrid_budgets=("ffn:0%", "ffn:100%"),
            hybrid_profile_tokens=512,
        )
