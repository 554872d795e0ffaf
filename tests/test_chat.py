"""Tests of pijax.io.chat: chat templates rendered as transformers does, chat prompts tokenized as llama.cpp
does, replies cut at end-of-turn tokens, one-line template errors; and a real chat turn with SmolLM2."""

from __future__ import annotations

import pytest
from vocab_data import vocab_metadata

from pijax import paths
from pijax.errors import UnsupportedModelError
from pijax.io.chat import ChatTemplate, ChatTemplateError, chat_prompt
from pijax.io.gguf import read_gguf
from pijax.io.vocab import load_tokenizer

SMOLLM_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


@pytest.fixture(scope="module")
def smollm(tmp_path_factory: pytest.TempPathFactory):
    md = vocab_metadata("smollm", tmp_path_factory.mktemp("vocab"))
    return md, load_tokenizer(md, "smollm.gguf")


def render(source: str, messages: list[dict], **kw) -> str:
    return ChatTemplate(source, {"bos_token": "<s>", "eos_token": "</s>"}).render(messages, **kw)


def test_smollm2_template_renders_chatml(smollm) -> None:
    md, tok = smollm
    prompt = chat_prompt(tok, md, "What is 2+2?")
    assert prompt.text == SMOLLM_SYSTEM + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    # Special-token text is parsed: the turn markers are single ids, and no BOS (add_bos_token is false).
    im_start, im_end = tok.token_id("<|im_start|>"), tok.token_id("<|im_end|>")
    assert prompt.ids[0] == im_start and prompt.ids.count(im_start) == 3 and prompt.ids.count(im_end) == 2
    assert prompt.ids == tok.encode(prompt.text, special=True)
    assert {im_end, tok.eos_id} <= prompt.stop_ids


def test_system_message_replaces_the_default(smollm) -> None:
    md, tok = smollm
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = chat_prompt(tok, md, messages).text
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_reply_ends_at_the_first_end_of_turn(smollm) -> None:
    md, tok = smollm
    prompt = chat_prompt(tok, md, "Hi")
    new = tok.encode("Hello! 👋<|im_end|>\n<|im_start|>user", special=True)
    assert prompt.reply(tok, new) == "Hello! 👋"
    assert prompt.reply(tok, tok.encode("no stop")) == "no stop"


def test_template_options_match_transformers() -> None:
    # trim_blocks drops the newline after a block tag, lstrip_blocks the indentation before one.
    source = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}"
    assert render(source, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "[a]\n[b]\n"
    source = "{{ bos_token }}{% for m in messages %}{{ m.content | tojson }}{% endfor %}"
    source += "{% if add_generation_prompt %}>{% endif %}{{ eos_token }}"
    assert render(source, [{"role": "user", "content": "café"}]) == '<s>"café"></s>'
    assert render(source, [{"role": "user", "content": "x"}], add_generation_prompt=False) == '<s>"x"</s>'
    loop = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}"
    assert render(loop, [{"role": "user", "content": "1"}, {"role": "user", "content": "2"}]) == "1"


def test_template_errors_are_one_line() -> None:
    raising = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError) as err:
        ChatTemplate(raising, {}, "m.gguf").render([{"role": "assistant", "content": "x"}])
    assert str(err.value) == "m.gguf: chat template failed to render: TemplateError: Conversation must start with user"
    with pytest.raises(ChatTemplateError, match="does not compile") as err:
        ChatTemplate("{% for m in messages %}\n{{ m.content }", {}, "m.gguf")
    assert "\n" not in str(err.value)
    with pytest.raises(ChatTemplateError, match="failed to render") as err:
        render("{{ messages[0].content.upper() + 1 }}", [{"role": "user", "content": "x"}])
    assert "\n" not in str(err.value)
    # The sandbox refuses to reach Python internals.
    with pytest.raises(ChatTemplateError, match="failed to render"):
        render("{{ messages.__class__.__mro__[1].__subclasses__() }}", [])


def test_a_model_without_a_template_cannot_chat(smollm) -> None:
    md, tok = smollm
    no_template = {k: v for k, v in md.items() if k != "tokenizer.chat_template"}
    with pytest.raises(ChatTemplateError, match=r"m\.gguf: the model has no tokenizer\.chat_template"):
        chat_prompt(tok, no_template, "Hi", "m.gguf")
    stories = read_gguf(paths.STORIES260K).metadata
    with pytest.raises(UnsupportedModelError, match="chat needs special-token parsing"):
        chat_prompt(load_tokenizer(stories), {**stories, "tokenizer.chat_template": "x"}, "Hi")
