"""task=generate: load a model, generate a story, print it with prompt and decode speed."""

from __future__ import annotations

from pathlib import Path

from pijax.api import load_model
from pijax.run_config import RunConfig


def run(cfg: RunConfig, out_dir: Path) -> float:
    from pijax.tasks.generate_hybrid import hybrid_requested, run_hybrid

    if hybrid_requested(cfg):  # a budget: hot rows on the accelerators, cold ones on the host
        return run_hybrid(cfg, out_dir)
    model = load_model(cfg.model.resolved_path(), ffn_act=cfg.model.ffn_act)
    g = cfg.generate
    res = model.generate(
        g.prompt, max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p, seed=g.seed
    )
    print(g.prompt + res.text)
    print(
        f"\n[{model.config.name or 'model'}] prompt {len(res.prompt_ids)} tokens at {res.prefill_tok_s:.1f} tok/s, "
        f"decode {len(res.new_ids)} tokens at {res.decode_tok_s:.1f} tok/s"
    )
    return res.decode_tok_s
