"""Chat prompts from a GGUF's `tokenizer.chat_template`, rendered with jinja2 the way transformers does it.

transformers compiles the template in an immutable sandbox with `trim_blocks` and `lstrip_blocks`, the
`loopcontrols` extension, a `tojson` filter that keeps non-ASCII text, and the globals `raise_exception` and
`strftime_now`; it renders with `messages`, `add_generation_prompt` and the special-token strings
(`bos_token`, `eos_token`, ...). The rendered text is tokenized as llama.cpp does for chat: special-token text
parsed, the model's BOS added (a BOS the template already wrote is not doubled). The reply ends at the first
end-of-generation token (EOS, `<|im_end|>`, `<|eot_id|>`, ...).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pijax.errors import PijaxError, UnsupportedModelError
from pijax.io.bpe import BPETokenizer

KEY_CHAT_TEMPLATE = "tokenizer.chat_template"
Message = Mapping[str, Any]


class ChatTemplateError(PijaxError):
    """The model has no chat template, or its template fails to compile or render for these messages."""


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _one_line(err: Exception) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template and the special-token strings it is rendered with."""

    source: str
    special_tokens: Mapping[str, str]
    path: str | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "_compiled", _environment().from_string(self.source))
        except jinja2.TemplateError as err:
            raise ChatTemplateError(f"chat template does not compile: {_one_line(err)}", self.path) from None

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The prompt text for `messages` (each a mapping with "role" and "content")."""
        try:
            return self._compiled.render(  # type: ignore[attr-defined]
                messages=list(messages), add_generation_prompt=add_generation_prompt, **self.special_tokens, **kwargs
            )
        except Exception as err:  # a template can raise anything; the user gets one line
            raise ChatTemplateError(f"chat template failed to render: {_one_line(err)}", self.path) from None


def chat_template(
    metadata: Mapping[str, Any], tokenizer: BPETokenizer, path: str | os.PathLike[str] | None = None
) -> ChatTemplate:
    """The GGUF's chat template, with the tokenizer's BOS/EOS/UNK texts as `bos_token` etc."""
    where = None if path is None else os.fspath(path)
    source = metadata.get(KEY_CHAT_TEMPLATE)
    if not isinstance(source, str) or not source:
        raise ChatTemplateError(f"the model has no {KEY_CHAT_TEMPLATE}, so it cannot chat", where)
    named = {"bos_token": tokenizer.bos_id, "eos_token": tokenizer.eos_id, "unk_token": tokenizer.unk_id}
    special = {k: tokenizer.tokens[i] if i is not None else "" for k, i in named.items()}
    return ChatTemplate(source, special, where)


def as_messages(messages: str | Sequence[Message]) -> list[Message]:
    """One user message as a string, or the message list as given."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return list(messages)


@dataclasses.dataclass(frozen=True)
class ChatPrompt:
    """The token ids of a rendered chat and the ids that end the assistant's turn."""

    text: str
    ids: list[int]
    stop_ids: frozenset[int]

    def reply(self, tokenizer: BPETokenizer, new_ids: Sequence[int]) -> str:
        """The reply's text: the new ids up to (not including) the first stop id."""
        end = next((k for k, i in enumerate(new_ids) if i in self.stop_ids), len(new_ids))
        return tokenizer.decode(new_ids[:end])


def chat_prompt(
    tokenizer: Any,
    metadata: Mapping[str, Any],
    messages: str | Sequence[Message],
    path: str | os.PathLike[str] | None = None,
) -> ChatPrompt:
    """Render `messages` with the model's template, ready for generation (the assistant's turn opened)."""
    if not isinstance(tokenizer, BPETokenizer):
        raise UnsupportedModelError(
            "chat needs special-token parsing, which only the BPE ('gpt2') tokenizer does", path
        )
    template = chat_template(metadata, tokenizer, path)
    text = template.render(as_messages(messages), add_generation_prompt=True)
    bos = template.special_tokens["bos_token"]
    # llama.cpp drops a BOS the template wrote when tokenization adds one anyway.
    if tokenizer.add_bos and bos and text.startswith(bos):
        text = text[len(bos) :]
    ids = tokenizer.encode(text, bos=True, special=True)
    return ChatPrompt(text, ids, tokenizer.eog_ids)
