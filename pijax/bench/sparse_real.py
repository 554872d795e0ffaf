"""Sparse decode targets on a real model (issue 13 part 6, issue 14 R4): calibration, the sparse engines at each
precision, the sparsity rule, and the fidelity line beside each speed.

A sparse target is fixed before the run by `SparseSpec`: the selector (mode "predictor" with the shipped oracle
predictors, or mode "threshold" with criterion "cats": skip a neuron when |SiLU(gate)| <= t_l) and its target
sparsity. Its per-layer cut-offs are calibrated ONCE, on the f32 model (the file's weights dequantized) and the
corpus' training split (`Model.sparse`, `calibration_tokens` from the start of that split), and the same cut-offs
serve every precision: `sparse_engine` loads the file at f32, Q8_0 or Q4_1 rows (down_t rows re-quantized from the
file's down matrix, as `pijax.model.load_blocks` does for a sparse FFN; predictors int8 for the block formats)
with every FFN on the kernels (`pijax.kernels.cats` for CATS). The bytes a timed step reads come from the
kernel's own per-token counts (`pijax.bench.decode_timing.CountingEngine`).

The sparsity of a target "at <= +2% perplexity" is chosen by `choose_sparsity` on VALIDATION windows of the
training split (the windows after the calibration tokens); the held-out split is never used for a choice. Its
documented fallback, when no grid point is within the bound: the issue's stated sparsity (40%), reported as such.
`heldout_fidelity` is the one line of fidelity printed beside a speed: perplexity on the first windows of the
held-out split (TinyStories, the last 10% of the stories, as experiments/real_sparsity), dense and sparse.

`python -m pijax.bench.sparse_real choose` prints the validation table behind the fixed sparsities.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pijax.errors import ConfigError

PREDICTORS_FILE = Path(__file__).resolve().parents[1] / "assets" / "smollm2_135m_oracle_predictors.gguf"
MAX_PPL_INCREASE = 0.02
FALLBACK_SPARSITY = 0.40  # issue 14's R4: "about 40%, from the real-sparsity issue", when no grid point is within
CALIBRATION_TOKENS = 16_384
SEQ_LEN = 128


@dataclasses.dataclass(frozen=True)
class SparseSpec:
    """A sparse selector fixed before a run: mode "predictor" or "threshold" (criterion "cats") at `sparsity`."""

    mode: str
    sparsity: float
    criterion: str = "oracle"

    def __post_init__(self) -> None:
        if self.mode not in ("predictor", "threshold") or (self.mode == "threshold") != (self.criterion == "cats"):
            raise ConfigError(f"sparse target {self}: mode 'predictor', or mode 'threshold' with criterion 'cats'")
        if not 0.0 < self.sparsity < 1.0:
            raise ConfigError(f"sparse target sparsity {self.sparsity} must be in (0, 1)")

    @property
    def label(self) -> str:
        return f"{'predictor' if self.mode == 'predictor' else 'CATS'} {self.sparsity:.0%}"


def _sparse_options(spec: SparseSpec) -> dict[str, Any]:
    opts: dict[str, Any] = {"sparsity": spec.sparsity, "calibration_tokens": CALIBRATION_TOKENS, "seq_len": SEQ_LEN}
    return opts | ({"criterion": "cats"} if spec.mode == "threshold" else {})


def _cache_file(model: Any, spec: SparseSpec) -> Path:
    root = os.environ.get("PIJAX_CACHE")
    src = Path(model.checkpoint.gguf.path)
    key = hashlib.sha256(f"{src.name}:{src.stat().st_size}:{spec}:{CALIBRATION_TOKENS}:{SEQ_LEN}".encode())
    return (Path(root) if root else Path.home() / ".cache" / "pijax") / "bench" / f"cutoffs-{key.hexdigest()[:16]}.json"


def calibrate(model_f32: Any, spec: SparseSpec) -> np.ndarray:
    """Per-layer cut-offs [L] of `spec` on the f32 model and the training split (cached under $PIJAX_CACHE/bench:
    the calibration is deterministic, and reruns of a benchmark need not repeat it)."""
    path = _cache_file(model_f32, spec)
    if path.is_file():
        return np.asarray(json.loads(path.read_text())["cutoffs"], np.float32)
    setup = model_f32.sparse(spec.mode, **_sparse_options(spec)).setup
    cut = np.asarray(setup.act_thresholds, np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"spec": dataclasses.asdict(spec), "cutoffs": cut.tolist()}) + "\n")
    return cut


def sparse_module(model_f32: Any, spec: SparseSpec, cutoffs: np.ndarray) -> Any:
    """The f32 model under `spec` with the given cut-offs (for the fidelity line; shares model_f32's weights)."""
    if spec.mode == "predictor":
        return model_f32.sparse("predictor", pred_threshold=[float(c) for c in cutoffs])
    from flax import nnx

    from pijax.api import Model
    from pijax.model.sparse_ffn import sparsify

    out = Model(model_f32.checkpoint, model_f32.tokenizer, nnx.clone(model_f32.module))
    sparsify(out, mode="threshold", act_thresholds=cutoffs, criterion="cats")
    return out


def sparse_engine(path: Path, dtype: str, spec: SparseSpec, cutoffs: np.ndarray) -> Any:
    """A pijax Model over `path` with its FFNs stored in `dtype` ("f32", or a block format "q8_0" / "q4_1" /
    "native") on the kernels, selecting rows by `spec` with `cutoffs`. `path` must be the file the shipped
    predictors were made for (or an F32 copy of it: same weights, same fingerprint); a Q8_0 engine is this file
    loaded as "q8_0" (llama.cpp's quantizer on the same values, as the Q8_0 copy is made)."""
    from pijax.api import Model
    from pijax.io.checkpoint import load_checkpoint
    from pijax.io.vocab import load_tokenizer
    from pijax.model.convert import load_llama
    from pijax.model.sparse_ffn import sparsify

    module = load_llama(path, dtype, predictors_from=PREDICTORS_FILE, progress=False)
    preds = [b.ffn.predictor for b in module.layers]
    if spec.mode == "predictor":
        sparsify(module, mode="predictor", predictors=preds, pred_threshold=[float(c) for c in cutoffs])
    else:
        sparsify(module, mode="threshold", act_thresholds=cutoffs, criterion="cats", backend="kernels")
    ckpt = load_checkpoint(path, lazy=True)
    return Model(ckpt, load_tokenizer(ckpt.metadata, path), module)


def skippable_row_bytes(module: Any, spec: SparseSpec) -> list[int]:
    """Per layer, the bytes a skipped neuron saves: its gate, up and down_t rows (predictor), or up and down_t
    (CATS: the gate is read in full to decide)."""
    from pijax.kernels.formats import row_bytes

    out = []
    for b in module.layers:
        f = b.ffn
        ws = [f.w_up_fd[...], f.w_down_fd[...]]
        if spec.mode == "predictor" and f.w_gate_fd is not None:
            ws.append(f.w_gate_fd[...])
        out.append(sum(row_bytes(w) for w in ws))
    return out


def validation_windows(model: Any, n: int) -> np.ndarray:
    """n windows of the training split that follow the calibration tokens (never calibrated on, never held out)."""
    from pijax.corpus import load_corpus, token_windows

    train, _ = load_corpus(None).split(0.1)
    first = CALIBRATION_TOKENS // SEQ_LEN
    w = token_windows(model.tokenizer, train.docs, SEQ_LEN, max_tokens=(first + n) * SEQ_LEN)
    if len(w) < first + n:
        raise ConfigError(f"the training split has {len(w)} windows; calibration and validation need {first + n}")
    return w[first:]


def heldout_windows(model: Any, n: int) -> np.ndarray:
    """The first n windows of the corpus' held-out split (as experiments/real_sparsity evaluates)."""
    from pijax.corpus import split_windows

    return split_windows(model.tokenizer, None, "held_out", SEQ_LEN, n * SEQ_LEN)


def perplexity(module: Any, windows: np.ndarray) -> float:
    from pijax.eval import module_logits_fn, perplexity

    return perplexity(module_logits_fn(getattr(module, "module", module)), windows, batch_size=8)


def choose_sparsity(
    model_f32: Any, mode: str, grid: Sequence[float], *, windows: int = 16, criterion: str = "oracle"
) -> dict[str, Any]:
    """The largest grid sparsity whose validation perplexity is within MAX_PPL_INCREASE of dense; when none is,
    FALLBACK_SPARSITY (with `fallback: True`). Every grid point's figures are returned."""
    win = validation_windows(model_f32, windows)
    dense = perplexity(model_f32, win)
    rows = []
    for s in sorted(grid):
        spec = SparseSpec(mode, s, criterion)
        ppl = perplexity(sparse_module(model_f32, spec, calibrate(model_f32, spec)), win)
        rows.append({"sparsity": s, "ppl": ppl, "increase": ppl / dense - 1.0})
        print(
            f"{spec.label}: validation perplexity {ppl:.3f} ({ppl / dense - 1.0:+.1%} vs dense {dense:.3f})", flush=True
        )
    ok = [r["sparsity"] for r in rows if r["increase"] <= MAX_PPL_INCREASE]
    chosen = max(ok) if ok else FALLBACK_SPARSITY
    return {
        "mode": mode,
        "criterion": criterion,
        "dense_ppl": dense,
        "windows": len(win),
        "grid": rows,
        "chosen": chosen,
        "fallback": not ok,
    }


def heldout_fidelity(
    model_f32: Any, spec: SparseSpec, cutoffs: np.ndarray, windows: np.ndarray, dense_ppl: float
) -> dict[str, float]:
    """Held-out perplexity of `spec` beside dense on the same windows."""
    ppl = perplexity(sparse_module(model_f32, spec, cutoffs), windows)
    return {"heldout_ppl": ppl, "heldout_dense_ppl": dense_ppl, "heldout_increase": ppl / dense_ppl - 1.0}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pijax.bench.sparse_real", description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["choose"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--windows", type=int, default=16, help="validation windows of 128 tokens")
    ap.add_argument("--predictor-grid", default="0.05,0.1,0.2,0.3,0.4")
    ap.add_argument("--cats-grid", default="0.1,0.2,0.3,0.4")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    import pijax

    m = pijax.load_model(a.model)
    res = [
        choose_sparsity(m, "predictor", [float(x) for x in a.predictor_grid.split(",")], windows=a.windows),
        choose_sparsity(
            m, "threshold", [float(x) for x in a.cats_grid.split(",")], windows=a.windows, criterion="cats"
        ),
    ]
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
