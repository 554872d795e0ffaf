"""Make tests/data/kquants/: a tiny synthetic LLaMA quantized by llama.cpp to Q2_K, Q3_K, Q4_K, Q5_K and Q6_K.

`gguf.quants` (the Python package) dequantizes the K-quants but cannot quantize them, and their blocks need rows
that are multiples of 256, which stories260K (n_embd 64) does not have. So the model here is synthetic, every
matrix's rows a multiple of 256, its weights drawn from `numpy.random.RandomState(SEED)` (the legacy generator,
whose stream numpy keeps fixed across versions), so the test rebuilds the f32 original itself and only the
quantized files are stored. Each was written once by llama.cpp's own quantizer (`llama_model_quantize` from
llama-cpp-python, `pure`: every matrix in the one type, norms f32).

Run from the repository root (needs `pip install -e '.[bench]'`): `python tests/data/make_kquants.py`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

SEED = 20251207
OUT = Path(__file__).with_name("kquants")
SHAPE = {"n_vocab": 256, "n_embd": 256, "n_ff": 512, "n_layer": 1, "n_head": 4, "n_head_kv": 2, "n_ctx": 256}
# llama_ftype whose `pure` quantization puts every matrix in the named type.
FTYPES = {"Q2_K": 10, "Q3_K": 12, "Q4_K": 15, "Q5_K": 17, "Q6_K": 18}
WEIGHT_STD = 0.05


def synthetic_tensors() -> list[tuple[str, np.ndarray]]:
    """The f32 model's tensors (numpy shape, llama.cpp's names and layout), the same on every machine."""
    s = SHAPE
    rng = np.random.RandomState(SEED)
    d, f, hd = s["n_embd"], s["n_ff"], s["n_embd"] // s["n_head"]

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * WEIGHT_STD).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    tensors = [("token_embd.weight", (rng.standard_normal((s["n_vocab"], d)) * 0.5).astype(np.float32))]
    tensors.append(("output_norm.weight", norm(d)))
    tensors.append(("output.weight", mat(s["n_vocab"], d)))
    for i in range(s["n_layer"]):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", norm(d)),
            (p + "attn_q.weight", mat(s["n_head"] * hd, d)),
            (p + "attn_k.weight", mat(s["n_head_kv"] * hd, d)),
            (p + "attn_v.weight", mat(s["n_head_kv"] * hd, d)),
            (p + "attn_output.weight", mat(d, s["n_head"] * hd)),
            (p + "ffn_norm.weight", norm(d)),
            (p + "ffn_gate.weight", mat(f, d)),
            (p + "ffn_up.weight", mat(f, d)),
            (p + "ffn_down.weight", mat(d, f)),
        ]
    return tensors


def synthetic_metadata() -> dict[str, object]:
    from pijax.io.gguf import VT, Meta

    s = SHAPE
    u32 = VT.UINT32
    return {
        "general.architecture": "llama",
        "general.name": "pijax-kquant-tiny (synthetic, random weights)",
        "general.file_type": Meta(0, u32),
        "llama.vocab_size": Meta(s["n_vocab"], u32),
        "llama.context_length": Meta(s["n_ctx"], u32),
        "llama.embedding_length": Meta(s["n_embd"], u32),
        "llama.feed_forward_length": Meta(s["n_ff"], u32),
        "llama.block_count": Meta(s["n_layer"], u32),
        "llama.attention.head_count": Meta(s["n_head"], u32),
        "llama.attention.head_count_kv": Meta(s["n_head_kv"], u32),
        "llama.rope.dimension_count": Meta(s["n_embd"] // s["n_head"], u32),
        "llama.rope.freq_base": Meta(10000.0, VT.FLOAT32),
        "llama.attention.layer_norm_rms_epsilon": Meta(1e-5, VT.FLOAT32),
    }


def write_f32(path: str | Path) -> Path:
    from pijax.io.gguf import write_gguf

    write_gguf(path, synthetic_metadata(), synthetic_tensors())
    return Path(path)


def main() -> int:
    import llama_cpp

    OUT.mkdir(exist_ok=True)
    made = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = write_f32(Path(tmp) / "tiny_f32.gguf")
        for name, ftype in FTYPES.items():
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = ftype
            params.pure = True
            params.nthread = 1
            dst = OUT / f"tiny_{name.lower()}.gguf"
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
            if rc != 0:
                print(f"llama_model_quantize failed for {name}: {rc}", file=sys.stderr)
                return 1
            made[dst.name] = {"type": name, "llama_ftype": ftype, "bytes": dst.stat().st_size}
    prov = {
        "made_by": f"llama-cpp-python {llama_cpp.__version__} llama_model_quantize (pure=True, nthread=1)",
        "source": "tests/data/make_kquants.py synthetic_tensors() (numpy RandomState seed "
        f"{SEED}, numpy {np.__version__})",
        "shape": SHAPE,
        "date": date.today().isoformat(),
        "command": "python tests/data/make_kquants.py",
        "files": made,
    }
    (OUT / "PROVENANCE.json").write_text(json.dumps(prov, indent=1) + "\n")
    print(json.dumps(prov, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
