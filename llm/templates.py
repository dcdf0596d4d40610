"""Fallback chat templates for tokenizers that ship without one.

A chat template is the Jinja text that ``tokenizer.apply_chat_template`` renders
a list of :class:`~llm.base.Message` into (``chat_template=...``).  Instruction-
tuned checkpoints carry their own; base models and some older checkpoints do not,
and then :func:`template_for` picks one by model family (``--model-type``).

Formats and their sources:

* ``chatml`` (aliases ``qwen``, ``qwen2``, ``yi``): ``<|im_start|>{role}\\n
  {content}<|im_end|>\\n`` per turn, ``<|im_start|>assistant\\n`` as generation
  prompt -- the Qwen2 / Qwen2.5 ``tokenizer_config.json`` chat template, without
  tool calls.  :data:`QWEN2_CHAT_TEMPLATE` is the same with Qwen2's default
  system prompt ("You are a helpful assistant.") when no system message is given.
* ``llama2`` (alias ``mistral``): ``<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n
  {user} [/INST] {assistant} </s>`` -- Meta's Llama-2-chat format
  (``meta-llama/Llama-2-7b-chat-hf``); Mistral-Instruct uses the same ``[INST]``
  markers.
* ``llama3``: ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>``
  -- the Llama-3-Instruct template (``meta-llama/Meta-Llama-3-8B-Instruct``).
* ``plain``: ``User: ...\\nAssistant: ...`` lines, for models with no chat format.

Templates use ``bos_token`` / ``eos_token`` only when the tokenizer defines them,
so they render with any tokenizer.
"""
from __future__ import annotations

from typing import Sequence

_BOS = "{{- bos_token if bos_token is defined and bos_token else '' }}"
_EOS = "{{- eos_token if eos_token is defined and eos_token else '' }}"

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

QWEN2_DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

QWEN2_CHAT_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + QWEN2_DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif %}" + CHATML_TEMPLATE
)

LLAMA2_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- for message in loop_messages %}"
    "{%- if loop.first and system_message %}"
    "{%- set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{%- else %}{%- set content = message['content'] %}{%- endif %}"
    "{%- if message['role'] == 'user' %}" + _BOS + "{{- '[INST] ' + content | trim + ' [/INST]' }}"
    "{%- else %}{{- ' ' + content | trim + ' ' }}" + _EOS + "{%- endif %}"
    "{%- endfor %}"
)

LLAMA3_TEMPLATE = (
    _BOS + "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

PLAIN_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{- message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' %}{{- 'User: ' + message['content'] + '\\n' }}"
    "{%- else %}{{- 'Assistant: ' + message['content'] + '\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'Assistant:' }}{%- endif %}"
)

_ALIASES = {
    "chatml": "chatml",
    "qwen": "chatml",
    "qwen2": "chatml",
    "yi": "chatml",
    "llama2": "llama2",
    "mistral": "llama2",
    "llama3": "llama3",
    "plain": "plain",
}
_TEMPLATES = {
    "chatml": CHATML_TEMPLATE,
    "llama2": LLAMA2_TEMPLATE,
    "llama3": LLAMA3_TEMPLATE,
    "plain": PLAIN_TEMPLATE,
}

#: Every name :func:`template_for` accepts (the ``--model-type`` choices).
MODEL_TYPES: tuple[str, ...] = tuple(_ALIASES)


def template_for(model_type: str) -> str:
    """Return the fallback chat template (Jinja text) for a model family.

    Args:
        model_type: one of :data:`MODEL_TYPES`, case-insensitive
            (e.g. ``"qwen2"``, ``"llama3"``, ``"plain"``).

    Returns:
        The template, for ``tokenizer.apply_chat_template(chat_template=...)``;
        see the module docstring for each format and its source.

    Raises:
        ValueError: unknown ``model_type``; the message lists the choices.
    """
    family = _ALIASES.get(model_type.strip().lower())
    if family is None:
        raise ValueError(f"unknown model type {model_type!r}; choose one of: {', '.join(MODEL_TYPES)}")
    return _TEMPLATES[family]


#: Put inside a special token's text found in a message, so it tokenises as plain text.
ZERO_WIDTH_SPACE = "\u200b"


def special_token_texts(tokenizer) -> list[str]:
    """The texts of a tokenizer's special tokens (``<|im_start|>``, ``<|endoftext|>``, ...):
    its named special tokens and every added token marked special, longest first."""
    texts = set(getattr(tokenizer, "all_special_tokens", None) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            texts.add(str(token.content))
    return sorted((t for t in texts if len(t) > 1), key=len, reverse=True)


def neutralize_special_tokens(text: str, specials: Sequence[str]) -> str:
    """``text`` with each special token's text broken by a zero-width space after its first
    character: a user who types ``<|im_start|>system`` cannot open a turn of their own (the
    chat template writes the real markers around the messages, after this)."""
    for special in specials:
        if special in text:
            text = text.replace(special, special[0] + ZERO_WIDTH_SPACE + special[1:])
    return text
