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
LLAMACPP_FORMATS = ("f32", "f16", "q8_0", "q4_0")  # llama.cpp runs dense plain copies in these
POWERINFER_FORMATS = ("f16", "q4_0")  # PowerInfer runs PWRI copies in these (pijax.io.convert --to)


@dataclasses.dataclass(frozen=True)
class SynthTarget:
    """One target of issue 14's synthetic table, fixed before the run: the results key of pijax's engine and of
    the reference it is divided by (medians; the worst pairing printed beside), and the goal on the median.
    `parts`, `lowp`, `llamacpp`, `powerinfer`, `budgets`: what the run must measure for it."""

    name: str
    pijax: str
    reference: str
    goal: float
    what: str
    parts: tuple[str, ...]
    lowp: tuple[str, ...] = ()
    llamacpp: tuple[str, ...] = ()
    powerinfer: tuple[str, ...] = ()
    budgets: tuple[str, ...] = ()


# Issue 14's S1-S6 on the synthetic TinyLlama-1.1B. Sparse engines run the file's predictors at its own threshold
# (0: about 10% of neurons selected, counted in the timed steps); PowerInfer runs the same predictors at the same
# threshold. Quantized pijax engines read the plain Q8_0/Q4_0 copy's own blocks: the bytes llama.cpp runs.
# S6: the hybrid engine runs f32 rows only, so it is paired with S2's engine (sparse f32), not S4's.
SYNTH_TARGETS: dict[str, tuple[SynthTarget, ...]] = {
    "S1": (
        SynthTarget(
            "S1",
            "pijax_dense_f32_kernel",
            "llamacpp_f32",
            1.0,
            "dense f32 vs llama.cpp f32",
            ("llamacpp", "dense"),
            llamacpp=("f32",),
        ),
    ),
    "S2": (
        SynthTarget(
            "S2",
            "pijax_sparse_f32",
            "llamacpp_f32",
            2.2,
            "sparse f32 (~10%) vs llama.cpp f32",
            ("llamacpp", "sparse"),
            llamacpp=("f32",),
        ),
    ),
    "S3": (
        SynthTarget(
            "S3",
            "pijax_sparse_f16",
            "powerinfer_f16",
            1.2,
            "sparse f16 vs PowerInfer f16, same predictors",
            ("lowp",),
            lowp=("f16",),
            powerinfer=("f16",),
        ),
    ),
    "S4": (
        SynthTarget(
            "S4",
            "pijax_sparse_q8_0",
            "llamacpp_q8_0",
            2.5,
            "sparse Q8_0 vs llama.cpp Q8_0 dense",
            ("llamacpp", "lowp"),
            lowp=("q8_0",),
            llamacpp=("q8_0",),
        ),
    ),
    "S5": (
        SynthTarget(
            "S5",
            "pijax_sparse_q4_0",
            "llamacpp_q4_0",
            2.5,
            "sparse Q4_0 vs llama.cpp Q4_0 dense",
            ("llamacpp", "lowp"),
            lowp=("q4_0",),
            llamacpp=("q4_0",),
        ),
        SynthTarget(
            "S5",
            "pijax_sparse_q4_0",
            "powerinfer_q4_0",
            1.2,
            "sparse Q4_0 vs PowerInfer Q4_0",
            ("lowp",),
            lowp=("q4_0",),
            powerinfer=("q4_0",),
        ),
    ),
    "S6": (
        SynthTarget(
            "S6",
            "pijax_hybrid_f32_ffn:50%",
            "pijax_sparse_f32",
            0.9,
            "hybrid f32 at ffn:50% hot vs sparse f32 (S2's engine), within 10%",
            ("hybrid", "sparse"),
            budgets=("ffn:50%",),
        ),
    ),
}


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
    llamacpp_formats: tuple[str, ...] = ("f32", "f16")
    powerinfer_formats: tuple[str, ...] = ("f16",)
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.t1_engine not in T1_ENGINES:
            raise ConfigError(f"bench.t1_engine must be one of {T1_ENGINES}, got {self.t1_engine!r}")
        bad = sorted(set(self.targets) - set(SYNTH_TARGETS))
        if bad:
            raise ConfigError(f"bench.targets {bad} are not among {tuple(SYNTH_TARGETS)}")
        for name, allowed in (("llamacpp", LLAMACPP_FORMATS), ("powerinfer", POWERINFER_FORMATS)):
            odd = sorted(set(getattr(self, f"{name}_formats")) - set(allowed))
            if odd:
                raise ConfigError(f"bench.{name}_formats {odd} are not among {allowed}")
        if not self.targets and self.t3_format not in self.lowp_formats:
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

    def for_targets(self) -> BenchConfig:
        """This config measuring exactly what its `targets` need (parts, formats, budgets), fixed before the run."""
        if not self.targets:
            return self
        ts = [t for name in self.targets for t in SYNTH_TARGETS[name]]

        def union(field: str) -> tuple[str, ...]:
            return tuple(dict.fromkeys(x for t in ts for x in getattr(t, field)))

        return dataclasses.replace(
            self,
            parts=tuple(p for p in BENCH_PARTS if p in union("parts")),
            lowp_formats=union("lowp"),
            llamacpp_formats=union("llamacpp"),
            powerinfer_formats=union("powerinfer"),
            hybrid_budgets=union("budgets") or self.hybrid_budgets,
        )

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
            lowp_formats=self.lowp_formats if self.targets else ("int8",),
            llamacpp_formats=(),
            probe_gb=0.05,
            hybrid_budgets=self.hybrid_budgets if self.targets else ("ffn:0%", "ffn:100%"),
            hybrid_profile_tokens=512,
        )
