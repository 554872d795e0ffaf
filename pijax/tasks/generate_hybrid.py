"""task=generate in hybrid mode: a budget (and an index that is not disabled) puts hot FFN rows on the accelerators
and cold ones on the host; `sparsity=predictor` gates both sides with the model file's predictors.

    python -m pijax.run task=generate sparsity=predictor index=powerinfer budget=9.6MB \\
        model.path=tests/data/powerinfer_model_tiny/stories260K_relu.powerinfer.gguf [hardware=cpu2|gpu]

Prints the placement, the gpuidx used, resident accelerator bytes against the budget, the story and its speed, and
writes the same figures to `<output dir>/hybrid.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

from pijax.model.generate import SamplingConfig
from pijax.run_config import RunConfig


def hybrid_requested(cfg: RunConfig) -> bool:
    """Hybrid execution is what a budget asks for, unless the index is disabled (PowerInfer's --disable-gpu-index)."""
    index = getattr(cfg, "index", None)
    return cfg.budget is not None and index is not None and not index.disable


def run_hybrid(cfg: RunConfig, out_dir: Path) -> float:
    from pijax.api import load_model
    from pijax.engine.pipeline import prepare_hybrid
    from pijax.layout.devices import setup_devices
    from pijax.layout.memory import bytes_in_use, engine_temp_bytes

    placement = setup_devices(cfg.hardware)  # first: it may still have to create the virtual CPU devices
    with jax.default_device(placement.host):  # the dense model is only read from, on the host
        model = load_model(cfg.model.resolved_path(), ffn_act=cfg.model.ffn_act)
    source = "predictor" if getattr(cfg.sparsity, "mode", "") == "predictor" else "dense"
    max_tokens = getattr(cfg.sparsity, "max_tokens", None)
    setup = prepare_hybrid(
        model,
        cfg.budget,
        index_cfg=cfg.index,
        hardware=cfg.hardware,
        placement=placement,
        source=source,
        corpus_path=cfg.corpus or None,
        profile_tokens=min(32_768, max_tokens or 32_768),
    )
    print(setup.summary())
    g = cfg.generate
    ids = model.tokenizer.encode(g.prompt, bos=True)
    sampling = SamplingConfig(float(g.temperature), int(g.top_k), float(g.top_p))
    out = setup.engine.generate(ids, g.max_new_tokens, sampling, seed=g.seed, eos_id=model.tokenizer.eos_id)
    text = b"".join(model.tokenizer.piece_bytes(i) for i in out.new_ids).decode("utf-8", errors="replace")
    tok_s = out.decode_steps / out.decode_s if out.decode_s > 0 and out.decode_steps else 0.0
    in_use = {str(d): bytes_in_use(d) for d in placement.accelerators}
    plan = setup.plan  # the report again, now that the engine has compiled: planned against compiled temporaries
    report = setup.engine.resident_report(plan.budget_bytes)
    report = report.with_compute(plan.compute_buffer_bytes, plan.compute_source, engine_temp_bytes(setup.engine))
    print(report.summary())
    print(g.prompt + text)
    print(
        f"\n[{model.config.name or 'model'} hybrid, {source}] prompt {len(ids)} tokens, decode {len(out.new_ids)} "
        f"tokens at {tok_s:.1f} tok/s; resident {setup.report.total:,d} B of a {setup.plan.budget_bytes:,d} B budget "
        f"on {placement.n_accel} x {placement.accelerators[0].device_kind}"
    )
    record = {
        "device_kind": placement.accelerators[0].device_kind,
        "n_accel": placement.n_accel,
        "process": f"{jax.process_index()} of {jax.process_count()}",
        "source": source,
        "budget_bytes": setup.plan.budget_bytes,
        "resident_bytes": setup.report.total,
        "resident_per_device": setup.report.per_device,
        "compute_planned_bytes": report.compute_planned,
        "compute_compiled_bytes": report.compute_measured,
        "bytes_in_use_after": in_use,
        "hot_neurons": setup.engine.hybrid.n_hot,
        "hot_share": setup.hot_share,
        "decode_tok_s": tok_s,
        "new_ids": out.new_ids,
        "gpuidx": str(setup.index_path),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "hybrid.json").write_text(json.dumps(record, indent=2))
    return tok_s
