"""task=chat: one chat turn; `prompt` is the user's message, rendered with the model's GGUF chat template."""

from __future__ import annotations

import time
from pathlib import Path

from pijax.api import load_model
from pijax.errors import ConfigError
from pijax.run_config import RunConfig


def run(cfg: RunConfig, out_dir: Path) -> str:
    if not cfg.prompt:
        raise ConfigError('task=chat needs a message: prompt="..."')
    model = load_model(cfg.model.resolved_path(), ffn_act=cfg.model.ffn_act)
    g = cfg.generate
    t0 = time.perf_counter()
    reply = model.chat(
        cfg.prompt,
        max_new_tokens=g.max_new_tokens,
        temperature=g.temperature,
        top_k=g.top_k,
        top_p=g.top_p,
        seed=g.seed,
    )
    seconds = time.perf_counter() - t0
    print(f"user: {cfg.prompt}\nassistant: {reply}")
    print(f"\n[{model.config.name or 'model'}] reply in {seconds:.1f} s (compilation included)")
    return reply
