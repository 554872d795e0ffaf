"""ReLU-fication: turn a SiLU (SwiGLU) LLaMA into a ReGLU one by fine-tuning, and measure what it costs.

The student starts from the teacher's weights with the FFN activation switched to relu(gate)*up (`act="relu"`) or
relu(gate)*relu(up) (`act="drelu"`, TurboSparse's dReLU) and is trained with optax AdamW on a corpus' train split. Loss = kd_weight * T^2 KL(teacher_T || student_T) (distillation from the
frozen SiLU teacher's logits) + lm_weight * next-token cross-entropy + l1 * mean relu(gate) (ProSparse's activation
L1, ramped up from `l1_start` over `l1_ramp_steps` steps). Penalising relu(gate) rather than relu(gate)*up pushes
gate pre-activations below zero, which is what makes outputs exactly zero; shrinking `up` would not.

Sparsity is the share of exactly-zero relu(gate)*up outputs, per layer, over held-out tokens. The corpus' held-out
part (`Corpus.split(held_out)`) is used only for the before/after measurements; the training curves are measured
on a validation slice carved from the end of the train split, so the recipe was never tuned on held-out text
(`eval_held` adds the held-out perplexity and sparsity to every evaluation, for the curve against tokens trained).
Runs with checkpoints are resumable; the state on disk is `pijax.sparsity.relufy_checkpoint`'s.
Dimension legend: see `pijax.model.layers`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from pijax.api import Model
from pijax.config import ModelConfig
from pijax.corpus import Corpus
from pijax.errors import DataError
from pijax.io.checkpoint import save_checkpoint, tokenizer_metadata
from pijax.io.weights import LayerWeights, LlamaWeights
from pijax.model.llama import Llama
from pijax.sparsity.relufy_checkpoint import TrainState, checkpoint_dir, load_state, run_key, save_state
from pijax.sparsity.relufy_config import RelufyConfig

META_PREFIX = "pijax.relufy."
__all__ = [
    "RelufyConfig",
    "RelufyResult",
    "layer_sparsity",
    "module_weights",
    "plot_history",
    "relufy",
    "save_relufied",
]


@dataclasses.dataclass(frozen=True)
class RelufyResult:
    config: ModelConfig
    weights: LlamaWeights
    recipe: RelufyConfig
    history: list[dict[str, float]]  # one row per evaluation: step, train/val losses, val ppl, val sparsity
    ppl_teacher: float  # held-out perplexity of the SiLU teacher
    ppl_relu_untrained: float  # held-out perplexity with ReLU swapped in, before fine-tuning
    ppl_student: float  # held-out perplexity after fine-tuning
    sparsity_before: list[float]  # per layer, ReLU swapped in before fine-tuning
    sparsity_after: list[float]  # per layer, after fine-tuning
    held_out_tokens: int
    train_tokens: int
    wall_s: float
    source_sha256: str
    corpus_sha256: str
    steps: int = 0  # optimizer steps done (all sessions)
    total_steps: int = 0  # the budget's steps
    tokens_trained: int = 0
    checkpoint: str = ""  # the checkpoint folder ("" when not checkpointing)

    @property
    def finished(self) -> bool:
        return self.steps >= self.total_steps

    @property
    def sparsity(self) -> float:
        return float(np.mean(self.sparsity_after))

    @property
    def ppl_increase(self) -> float:
        return self.ppl_student / self.ppl_teacher - 1.0

    def summary(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "total_steps": self.total_steps,
            "tokens_trained": self.tokens_trained,
            "finished": self.finished,
            "checkpoint": self.checkpoint,
            "ppl_teacher": self.ppl_teacher,
            "ppl_relu_untrained": self.ppl_relu_untrained,
            "ppl_student": self.ppl_student,
            "ppl_increase": self.ppl_increase,
            "sparsity": self.sparsity,
            "sparsity_per_layer": [round(s, 4) for s in self.sparsity_after],
            "sparsity_before_per_layer": [round(s, 4) for s in self.sparsity_before],
            "held_out_tokens": self.held_out_tokens,
            "train_tokens": self.train_tokens,
            "wall_s": self.wall_s,
        }


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def module_weights(module: Llama) -> LlamaWeights:
    """The module's current parameters as numpy LlamaWeights (the inverse of `Llama(cfg, weights)`)."""

    def a(p: nnx.Param) -> np.ndarray:
        return np.asarray(p[...], dtype=np.float32)

    layers = []
    for blk in module.layers:
        ffn = blk.ffn
        layers.append(
            LayerWeights(
                attn_norm=a(blk.attn_norm.weight),
                wq=a(blk.attn.w_q_nd),
                wk=a(blk.attn.w_k_nd),
                wv=a(blk.attn.w_v_nd),
                wo=a(blk.attn.w_o_dn),
                ffn_norm=a(blk.ffn_norm.weight),
                up=a(ffn.w_up_fd),
                gate=None if ffn.w_gate_fd is None else a(ffn.w_gate_fd),
                down_t=a(ffn.w_down_fd),
            )
        )
    embd = a(module.token_embd_vd)
    out = embd if module.w_out_vd is None else a(module.w_out_vd)
    return LlamaWeights(token_embd=embd, output_norm=a(module.output_norm.weight), output=out, layers=layers)


def _gates(module: Llama, records: list[dict[str, jax.Array]]) -> list[jax.Array]:
    """Gate pre-activations [B, T, F] per layer, recomputed from the traced FFN inputs."""
    return [
        jnp.einsum("btd,fd->btf", blk.ffn_norm(r["ffn_in"]), blk.ffn.w_gate_fd[...])
        for blk, r in zip(module.layers, records, strict=True)
    ]


def _losses(
    module: Llama, teacher_logits: jax.Array, tokens_bt: jax.Array, temperature: float, l1_on: str
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(kd, lm, l1, per-layer sparsity [L]) of the student on one batch."""
    logits, records = module.trace(tokens_bt)
    t = temperature
    lp_s = jax.nn.log_softmax(logits / t, axis=-1)
    lp_t = jax.nn.log_softmax(teacher_logits / t, axis=-1)
    kd = (t * t) * jnp.mean(jnp.sum(jnp.exp(lp_t) * (lp_t - lp_s), axis=-1))
    lp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    lm = -jnp.mean(jnp.take_along_axis(lp, tokens_bt[:, 1:, None], axis=-1))
    if l1_on == "gate":
        l1 = jnp.mean(jnp.stack([jnp.mean(jax.nn.relu(g)) for g in _gates(module, records)]))
    else:
        l1 = jnp.mean(jnp.stack([jnp.mean(jnp.abs(r["act"])) for r in records]))
    sparsity = jnp.stack([jnp.mean(r["act"] == 0) for r in records])
    return kd, lm, l1, sparsity


def layer_sparsity(module: Llama, windows: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Share of exactly-zero act(gate)*up outputs per layer over all tokens of `windows`: float64 [L]."""
    return _held_eval(module, windows, batch_size)[1]


def heldout_ppl(module: Llama, windows: np.ndarray, *, batch_size: int = 32) -> float:
    """Perplexity (next-token, all positions after the first of each window) of the module on `windows`."""
    return _held_eval(module, windows, batch_size)[0]


class _Batches:
    """Random windows of seq_len tokens at random offsets of the train stream (a fresh cut every batch)."""

    def __init__(self, stream: np.ndarray, batch: int, seq_len: int, seed: int):
        if len(stream) < seq_len + 1:
            raise DataError(f"train split has {len(stream)} tokens, fewer than one window of {seq_len}")
        self.stream, self.batch, self.seq_len = stream, batch, seq_len
        self.rng = np.random.default_rng(seed)

    def __next__(self) -> np.ndarray:
        starts = self.rng.integers(0, len(self.stream) - self.seq_len + 1, self.batch)
        return self.stream[starts[:, None] + np.arange(self.seq_len)[None, :]]


def _stream(model: Model, corpus: Corpus) -> np.ndarray:
    ids: list[int] = []
    for doc in corpus.docs:
        ids.extend(model.tokenizer.encode(doc, bos=True))
    return np.asarray(ids, np.int32)


def _make_step(gd: nnx.GraphDef, tgd: nnx.GraphDef, cfg: RelufyConfig, opt: optax.GradientTransformation) -> Callable:
    def loss_fn(params: nnx.State, rest: nnx.State, tstate: nnx.State, tok: jax.Array, l1w: jax.Array):
        t_logits = jax.lax.stop_gradient(nnx.merge(tgd, tstate)(tok))
        kd, lm, l1, sp = _losses(nnx.merge(gd, params, rest), t_logits, tok, cfg.temperature, cfg.l1_on)
        loss = cfg.kd_weight * kd + cfg.lm_weight * lm + l1w * l1
        return loss, {"loss": loss, "kd": kd, "lm": lm, "l1": l1, "sparsity": jnp.mean(sp)}

    @jax.jit
    def step(params, opt_state, rest, tstate, tok, l1w):
        grads, metrics = jax.grad(loss_fn, has_aux=True)(params, rest, tstate, tok, l1w)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    @jax.jit
    def evaluate(params, rest, tstate, tok):
        t_logits = nnx.merge(tgd, tstate)(tok)
        kd, lm, l1, sp = _losses(nnx.merge(gd, params, rest), t_logits, tok, cfg.temperature, cfg.l1_on)
        return {"kd": kd, "lm": lm, "l1": l1, "sparsity": jnp.mean(sp)}

    return step, evaluate


def _optimizer(cfg: RelufyConfig) -> optax.GradientTransformation:
    warmup = min(cfg.warmup_steps, max(1, cfg.steps - 1))
    sched = optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, warmup, max(cfg.steps, warmup + 1), end_value=cfg.lr * cfg.min_lr_ratio
    )

    # Norm weights are scales around 1: decaying them towards 0 would fight the model, so only matrices decay.
    def decay_mask(params: Any) -> Any:
        return jax.tree.map(lambda p: p.ndim >= 2, params)

    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(sched, weight_decay=cfg.weight_decay, mask=decay_mask),
    )


def _held_eval(module: Llama, windows: np.ndarray, batch_size: int, states: tuple[nnx.State, ...] | None = None):
    """(perplexity, per-layer exact-zero share) of `module` (or its graph with `states`) on `windows`, one pass."""
    gd, *own = nnx.split(module, nnx.Param, ...)
    states = tuple(own) if states is None else states
    nll, zeros = 0.0, np.zeros(module.cfg.n_layer, np.float64)
    for s in range(0, len(windows), batch_size):
        n, z = _trace_stats(gd, states, jnp.asarray(windows[s : s + batch_size]))
        nll += float(n)
        zeros += np.asarray(z, np.float64)
    count = windows.shape[0] * (windows.shape[1] - 1)
    return float(np.exp(nll / count)), zeros / (windows.size * module.cfg.n_ff)


@functools.partial(jax.jit, static_argnums=0)
def _trace_stats(gd: nnx.GraphDef, states: tuple[nnx.State, ...], tok: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits, records = nnx.merge(gd, *states).trace(tok)
    lp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(lp, tok[:, 1:, None], axis=-1).sum()
    return nll, jnp.stack([jnp.sum(r["act"] == 0) for r in records])


def _windows(model: Model, part: Corpus, cfg: RelufyConfig, n: int) -> np.ndarray:
    n = 8 * cfg.eval_batch if cfg.smoke and not n else n
    w = part.windows(model.tokenizer, cfg.seq_len, max_tokens=n * cfg.seq_len if n else None)
    return w[:n] if n else w


def relufy(teacher: Model, corpus: Corpus, cfg: RelufyConfig, *, progress: bool = True) -> RelufyResult:
    """Fine-tune a ReLU-activation copy of `teacher` (all weights) on `corpus`' train split; see the module doc.

    With `cfg.checkpoint_every` > 0 the run is resumable (`pijax.sparsity.relufy_checkpoint`): it continues from
    the checkpoint of the same run when one exists, with the step, optimizer, data position and history carried
    over, and it may stop early (`session_steps`, `max_minutes`); the result is then the model where it stopped.
    """
    cfg.check()
    t0 = time.perf_counter()
    train, held = corpus.split(cfg.held_out)
    fit, val = train.split(cfg.val_fraction)
    held_w = _windows(teacher, held, cfg, cfg.held_windows)
    val_w = _windows(teacher, val, cfg, cfg.val_windows)
    stream = _stream(teacher, fit)
    batches = _Batches(stream, cfg.batch_size, cfg.seq_len, cfg.seed)
    source_sha = file_sha256(teacher.checkpoint.gguf.path)
    key = run_key(source_sha, corpus.sha256, cfg)
    ck_dir = checkpoint_dir(cfg, key) if cfg.checkpoint_every else None

    tmod = teacher.module
    student = Llama(tmod.cfg.replace(ffn_act=cfg.act), module_weights(tmod), rngs=nnx.Rngs(cfg.seed))
    gd, params, rest = nnx.split(student, nnx.Param, ...)
    tgd, tstate = nnx.split(tmod)
    opt = _optimizer(cfg)
    opt_state = opt.init(params)
    step_fn, eval_fn = _make_step(gd, tgd, cfg, opt)
    saved = load_state(ck_dir, key, params, opt_state) if ck_dir is not None and cfg.resume else None

    if saved is not None:
        params, opt_state = saved.params, saved.opt_state
        batches.rng.bit_generator.state = saved.rng_state
        before = saved.before
    else:
        ppl_untrained, sp_before = _held_eval(student, held_w, cfg.eval_batch)
        before = {
            "ppl_teacher": _held_eval(tmod, held_w, cfg.eval_batch)[0],
            "ppl_relu_untrained": ppl_untrained,
            "sparsity_before": [float(x) for x in sp_before],
        }
    tokens_per_step = cfg.batch_size * cfg.seq_len

    def validate(step: int, train_m: dict[str, float]) -> dict[str, float]:
        sums: dict[str, float] = {}
        n = 0
        for s in range(0, len(val_w), cfg.eval_batch):
            tok = jnp.asarray(val_w[s : s + cfg.eval_batch])
            m = eval_fn(params, rest, tstate, tok)
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(tok)
            n += len(tok)
        row = {"step": step, "tokens": step * tokens_per_step}
        row["l1_weight"] = cfg.l1_at(max(step - 1, 0)) if step else 0.0
        row |= {f"train_{k}": v for k, v in train_m.items()}
        row |= {f"val_{k}": v / n for k, v in sums.items()}
        row["val_ppl"] = float(np.exp(row["val_lm"]))
        if cfg.eval_held:
            ppl, sp = _held_eval(student, held_w, cfg.eval_batch, (params, rest))
            row |= {"held_ppl": ppl, "held_sparsity": float(np.mean(sp))}
        return row

    total = cfg.total_steps
    step0 = saved.step if saved else 0
    history = saved.history if saved else [validate(0, {})]
    acc: dict[str, float] = dict(saved.acc) if saved else {}
    n_acc = saved.n_acc if saved else 0
    wall_before = saved.wall_s if saved else 0.0
    last = step0
    end = total if not cfg.session_steps else min(total, step0 + cfg.session_steps)
    bar = tqdm(range(step0 + 1, end + 1), initial=step0, total=total, desc="relufy", unit="step", disable=not progress)
    t_train = time.perf_counter()

    def state_now() -> TrainState:
        return TrainState(
            last, params, opt_state, batches.rng.bit_generator.state, history, acc, n_acc,
            wall_before + time.perf_counter() - t_train, before,
        )  # fmt: skip

    for step in bar:
        tok = jnp.asarray(next(batches))
        params, opt_state, m = step_fn(params, opt_state, rest, tstate, tok, jnp.float32(cfg.l1_at(step - 1)))
        m = {k: float(v) for k, v in m.items()}
        if not np.isfinite(m["loss"]):
            raise DataError(f"relufy diverged at step {step} (loss {m['loss']}); lower relufy.lr")
        for k, v in m.items():
            acc[k] = acc.get(k, 0.0) + v
        n_acc += 1
        last = step
        bar.set_postfix(loss=f"{m['loss']:.3f}", ppl=f"{np.exp(m['lm']):.2f}", sparsity=f"{m['sparsity']:.3f}")
        out_of_time = cfg.max_minutes > 0 and time.perf_counter() - t_train > 60 * cfg.max_minutes
        if step % cfg.eval_interval == 0 or step == total or (out_of_time and n_acc):
            history.append(validate(step, {k: v / n_acc for k, v in acc.items()}))
            acc, n_acc = {}, 0
        if ck_dir is not None and (step % cfg.checkpoint_every == 0 or step == end or out_of_time):
            save_state(ck_dir, key, state_now())
        if out_of_time:
            break
    bar.close()

    nnx.update(student, params)
    ppl_student, sp_after = _held_eval(student, held_w, cfg.eval_batch)
    return RelufyResult(
        config=student.cfg,
        weights=module_weights(student),
        recipe=cfg,
        history=history,
        ppl_teacher=before["ppl_teacher"],
        ppl_relu_untrained=before["ppl_relu_untrained"],
        ppl_student=ppl_student,
        sparsity_before=before["sparsity_before"],
        sparsity_after=[float(s) for s in sp_after],
        held_out_tokens=int(held_w.size),
        train_tokens=len(stream),
        wall_s=time.perf_counter() - t0,
        source_sha256=source_sha,
        corpus_sha256=corpus.sha256,
        steps=last,
        total_steps=total,
        tokens_trained=last * tokens_per_step,
        checkpoint=str(ck_dir) if ck_dir is not None else "",
    )


def save_relufied(path: str | Path, result: RelufyResult, teacher: Model) -> Path:
    """Write the ReLU-fied model as a plain GGUF (pijax.ffn_activation set) with how it was made in metadata."""
    r = result
    md: dict[str, Any] = {
        META_PREFIX + "recipe": json.dumps(dataclasses.asdict(r.recipe), sort_keys=True),
        META_PREFIX + "steps": int(r.steps),
        META_PREFIX + "tokens_trained": int(r.tokens_trained),
        META_PREFIX + "seed": int(r.recipe.seed),
        META_PREFIX + "source_sha256": r.source_sha256,
        META_PREFIX + "corpus_sha256": r.corpus_sha256,
        META_PREFIX + "ppl_teacher": float(r.ppl_teacher),
        META_PREFIX + "ppl_heldout": float(r.ppl_student),
        META_PREFIX + "sparsity_heldout": float(r.sparsity),
    }
    cfg = r.config.replace(name=f"{Path(teacher.checkpoint.gguf.path).stem}-{r.config.ffn_act}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, cfg, r.weights, tokenizer_metadata(teacher.checkpoint.gguf), extra_metadata=md)


def plot_history(history: list[dict[str, float]], path: str | Path, *, title: str = "ReLU-fication") -> Path:
    """Training curves against tokens trained: perplexity (left; held-out too when measured) and FFN sparsity and
    the L1 weight (right)."""
    # The Agg canvas is used directly, never pyplot, so a notebook's backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history:
        raise DataError("nothing to plot: empty training history", path)
    x = [h.get("tokens", h["step"]) for h in history]
    xlabel = "tokens trained" if "tokens" in history[0] else "step"
    fig = Figure(figsize=(10, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    curves = [("val_ppl", "validation ppl (train-split slice)")]
    if "held_ppl" in history[0]:
        curves.append(("held_ppl", "held-out ppl"))
    for key, label in curves:
        ax1.plot(x, [h[key] for h in history], marker="o", label=label)
    # The untrained start is often far worse than the rest: a log axis keeps both readable.
    ax1.set_yscale("log")
    ax1.set_xlabel(xlabel)
    ax1.set_ylabel("perplexity (log scale)")
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize="small")
    ax2.plot(x, [h["val_sparsity"] for h in history], marker="o", color="tab:green", label="FFN sparsity (val)")
    if "held_sparsity" in history[0]:
        ax2.plot(
            x, [h["held_sparsity"] for h in history], marker="s", color="tab:olive", label="FFN sparsity (held-out)"
        )
    ax2.set_ylim(0, 1)
    ax2.set_xlabel(xlabel)
    ax2.set_ylabel("share of exact zeros")
    ax2.grid(True, alpha=0.3)
    twin = ax2.twinx()
    twin.plot(x, [h["l1_weight"] for h in history], color="tab:gray", ls="--", label="L1 weight")
    twin.set_ylabel("L1 weight")
    lines = ax2.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax2.legend(lines, [ln.get_label() for ln in lines], fontsize="small", loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
