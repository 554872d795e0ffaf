"""Property-based fuzzing of the values pijax is given: every config key of every experiment, tokenizer inputs and
generate arguments (issue 15).

- Config: for the root config and each experiment in configs/experiment, one key at a time (every leaf key of the
  composed config) gets a random value: strings, ints (negative, huge), floats (nan, inf, huge), booleans, null,
  lists, budget-like and interpolation-like strings; and, separately, random override text through Hydra's own
  override parser. The RunConfig is then built; no model runs, so this is validation only.
- Tokenizers (stories260K's SentencePiece, SmolLM2's BPE vocabulary): arbitrary Unicode (lone surrogates
  included), bytes, None, numbers.
- generate: on stories260K with at most 3 new tokens; valid sampling settings come from two fixed sets, so that
  jax compiles twice, not once per example.

The property: it works, or it raises a PijaxError (or Hydra's / OmegaConf's own config error) whose message is one
line; nothing else escapes, and no shipped model or data file changes (tests/test_fuzz_files.py checks the hashes
too). A config that builds is well typed: every value matches its field's type. Seeded and bounded;
`pytest --hypothesis-show-statistics tests/test_fuzz_inputs.py` prints the number of cases per target.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import math
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import pijax
from pijax.errors import PijaxError
from pijax.run import hydra_message
from pijax.run_config import RunConfig, build_run_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
EXPERIMENTS = ["", *sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))]
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SHIPPED = sorted(p for d in ("pijax/assets", "tests/data") for p in (REPO / d).rglob("*") if p.is_file())


def assert_one_line(msg: str) -> None:
    assert msg and "\n" not in msg and "\r" not in msg and msg.isprintable() and len(msg) < 1000, repr(msg)


@pytest.fixture(scope="module", autouse=True)
def shipped_files_unchanged():
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in SHIPPED}
    yield
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in SHIPPED} == digest


# ---- config ------------------------------------------------------------------------------------------------------


@functools.cache
def composed(experiment: str) -> DictConfig:
    overrides = [f"+experiment={experiment}"] if experiment else []
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=overrides)


def leaf_keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, DictConfig):
        return [k for key in node for k in leaf_keys(node._get_node(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


BUDGETISH = [
    "0",
    "-5",
    "banana",
    "ffn:150%",
    "ffn:-1%",
    "ffn:30%",
    "99999999999999999999999TiB",
    "1e999",
    "6GiB",
    "5 XB",
]
VALUES = st.one_of(
    st.text(max_size=24),
    st.integers(),
    st.integers(-(2**80), 2**80),
    st.floats(),
    st.booleans(),
    st.none(),
    st.sampled_from([*BUDGETISH, "${seed}", "${nope}", "", "pijax", "/nonexistent", "relu", "auto", "powerinfer"]),
    st.lists(st.one_of(st.integers(-5, 300), st.floats(-2, 2), st.text(max_size=4)), max_size=4),
)


def well_typed(value: Any, tp: Any) -> bool:
    """Whether a built value matches its field's type hint (the layer must never let 'banana' into an int)."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return True
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return isinstance(value, tp) and all(
            well_typed(getattr(value, f.name), hints[f.name]) for f in dataclasses.fields(tp)
        )
    if origin in (typing.Union, types.UnionType):
        return any(well_typed(value, arm) for arm in typing.get_args(tp))
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(well_typed(v, args[0]) for v in value)
        return len(args) == len(value) and all(well_typed(v, a) for v, a in zip(value, args, strict=True))
    if tp is type(None):
        return value is None
    if tp is float:
        return type(value) is float and math.isfinite(value)
    if tp is int:
        return type(value) is int
    return type(value) is tp


def build_with(experiment: str, key: str, value: Any) -> None:
    cfg = composed(experiment).copy()
    try:
        OmegaConf.update(cfg, key, value, merge=False)
        run_cfg = build_run_config(OmegaConf.to_container(cfg, resolve=True))
    except PijaxError as e:
        assert_one_line(str(e))
        return
    except (HydraException, OmegaConfBaseException) as e:
        assert_one_line(hydra_message(e))
        return
    assert well_typed(run_cfg, RunConfig), (key, value)


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=[e or "root" for e in EXPERIMENTS])
@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_fuzz_config_values(experiment, data):
    key = data.draw(st.sampled_from(leaf_keys(composed(experiment))), label="key")
    build_with(experiment, key, data.draw(VALUES, label="value"))


HOSTILE = ["banana", -(2**70), math.nan, None]


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=[e or "root" for e in EXPERIMENTS])
def test_every_key_of_every_experiment_with_hostile_values(experiment):
    """Not sampled: every leaf key, each of a string, a huge negative int, nan and null. Counted in the report."""
    base = OmegaConf.to_container(composed(experiment), resolve=True)
    keys = leaf_keys(composed(experiment))
    for key in keys:
        for value in HOSTILE:
            mapping = copy.deepcopy(base)
            node = mapping
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
            try:
                run_cfg = build_run_config(mapping)
            except PijaxError as e:
                assert_one_line(str(e))
                continue
            assert well_typed(run_cfg, RunConfig), (key, value)
    assert len(keys) > 100


OVERRIDE_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=16)


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=[e or "root" for e in EXPERIMENTS])
@settings(FUZZ, max_examples=30)
@given(data=st.data())
def test_fuzz_config_override_text(experiment, data):
    """The text after `key=` as a user types it, read by Hydra's own override parser."""
    key = data.draw(st.sampled_from(leaf_keys(composed(experiment))), label="key")
    text = data.draw(st.one_of(OVERRIDE_TEXT, st.sampled_from([*BUDGETISH, "[1,2]", "null", "nan", "-inf", "1e400"])))
    try:
        value = OverridesParser.create().parse_override(f"{key}={text}").value()
    except HydraException as e:
        assert_one_line(hydra_message(e))
        return
    build_with(experiment, key, value)


# ---- tokenizer ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> pijax.Model:
    return pijax.load_model()


TEXTS = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec=None, min_codepoint=0xD7F0, max_codepoint=0xE010), max_size=6),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.binary(max_size=16),
    st.none(),
    st.integers(),
    st.floats(),
    st.lists(st.integers(0, 600), max_size=3),
)


@settings(FUZZ, max_examples=300)
@given(text=TEXTS, bos=st.one_of(st.booleans(), st.sampled_from([0, 1, None, "yes"])))
def test_fuzz_tokenizer_encode(model, text, bos):
    tok = model.tokenizer
    try:
        ids = tok.encode(text, bos=bos)
    except PijaxError as e:
        assert_one_line(str(e))
        return
    assert isinstance(text, str) and isinstance(bos, bool)
    assert all(isinstance(i, int) and 0 <= i < model.config.n_vocab for i in ids)
    assert isinstance(tok.decode(ids), str)


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory):
    """SmolLM2's BPE vocabulary (tests/data/vocab, no model weights needed)."""
    from vocab_data import vocab_metadata

    from pijax.io.vocab import load_tokenizer

    return load_tokenizer(vocab_metadata("smollm", tmp_path_factory.mktemp("vocab")))


@settings(FUZZ, max_examples=200)
@given(
    text=TEXTS,
    bos=st.one_of(st.booleans(), st.sampled_from([0, None])),
    special=st.one_of(st.booleans(), st.just("on")),
)
def test_fuzz_bpe_tokenizer_encode(bpe_tokenizer, text, bos, special):
    try:
        ids = bpe_tokenizer.encode(text, bos=bos, special=special)
    except PijaxError as e:
        assert_one_line(str(e))
        return
    assert isinstance(text, str) and isinstance(bos, bool) and isinstance(special, bool)
    assert all(isinstance(i, int) and i >= 0 for i in ids)
    assert isinstance(bpe_tokenizer.decode(ids), str)


# ---- generate ----------------------------------------------------------------------------------------------------

SAMPLINGS = [(0.0, 0, 1.0), (0.8, 40, 0.95)]
"""The valid sampling settings drawn: jax compiles the sampler per setting."""
GARBAGE = st.one_of(
    st.text(max_size=4),
    st.none(),
    st.booleans(),
    st.floats(max_value=-1e-9) | st.sampled_from([math.nan, math.inf, -math.inf]),
    st.integers(max_value=-1),
    st.integers(min_value=2**32),
    st.lists(st.integers(0, 3), max_size=2),
)

BAD_PROMPTS = st.one_of(
    st.none(),
    st.binary(max_size=4),
    st.integers(),
    st.floats(),
    st.text(alphabet=st.characters(codec=None, min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
    st.sampled_from([[], [-1], [1, "x"], [1, 2.5], [[1, 2]], [10**9]]),
)
"""Prompts that must fail (valid ones come from a fixed set, so that no example compiles a new prompt length)."""


@settings(FUZZ, max_examples=100)
@given(
    data=st.data(),
    sampling=st.sampled_from(SAMPLINGS),
    bad=st.lists(st.sampled_from(["temperature", "top_k", "top_p", "max_new_tokens", "seed", "prompt"]), max_size=2),
)
def test_fuzz_generate_arguments(model, data, sampling, bad):
    kwargs: dict[str, Any] = dict(zip(("temperature", "top_k", "top_p"), sampling, strict=True))
    kwargs["max_new_tokens"] = data.draw(st.integers(0, 3), label="max_new_tokens")
    kwargs["seed"] = data.draw(st.integers(0, 2**32 - 1), label="seed")
    prompt: Any = data.draw(st.sampled_from(["Once upon a time", "", "Lily", [1, 300, 42]]), label="prompt")
    for name in bad:
        value = data.draw(BAD_PROMPTS if name == "prompt" else GARBAGE, label=name)
        if name == "prompt":
            prompt = value
        else:
            kwargs[name] = value
    try:
        out = model.generate(prompt, **kwargs)
    except PijaxError as e:
        assert_one_line(str(e))
        return
    assert len(out.new_ids) <= kwargs["max_new_tokens"] and isinstance(out.text, str)


MESSAGES = st.one_of(
    TEXTS,
    st.lists(
        st.one_of(
            st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]), "content": TEXTS}),
            st.dictionaries(st.text(max_size=8), TEXTS, max_size=3),
            TEXTS,
        ),
        max_size=3,
    ),
)


@settings(FUZZ, max_examples=100)
@given(messages=MESSAGES, max_new_tokens=st.one_of(st.integers(0, 2), GARBAGE))
def test_fuzz_chat_arguments(model, messages, max_new_tokens):
    """stories260K has no chat template: every call ends in a PijaxError, and it must be one line."""
    with pytest.raises(PijaxError) as e:
        model.chat(messages, max_new_tokens=max_new_tokens)
    assert_one_line(str(e.value))
