"""Chat history -> chat messages.

The page keeps the history as (user, assistant) text pairs, Gradio's "tuples"
chat history shape; the model takes :class:`~llm.base.Message` dicts.  ``max_round``
is the PAI-EAS ChatLLM-WebUI "history rounds" setting: how many past rounds the
model sees.
"""
from __future__ import annotations

from typing import Sequence

from llm.base import Message


def trim_history(history: Sequence[tuple[str, str]], max_round: int | None) -> list[tuple[str, str]]:
    """Keep the last ``max_round`` rounds of a chat history.

    Args:
        history: past rounds, oldest first, each a ``(user, assistant)`` pair of texts.
        max_round: how many of the latest rounds to keep; ``None`` keeps all,
            ``0`` keeps none.

    Returns:
        A new list of at most ``max_round`` pairs, oldest first.

    Raises:
        ValueError: ``max_round`` is negative.
    """
    if max_round is None:
        return [tuple(pair) for pair in history]  # type: ignore[misc]
    if max_round < 0:
        raise ValueError(f"max_round must be >= 0 or None, got {max_round}")
    if max_round == 0:
        return []
    return [tuple(pair) for pair in history[-max_round:]]  # type: ignore[misc]


def build_messages(
    prompt: str,
    history: Sequence[tuple[str, str]] = (),
    *,
    system_prompt: str | None = None,
    max_round: int | None = None,
) -> list[Message]:
    """Build the conversation for one answer.

    Args:
        prompt: the user's new question (the last ``user`` message).
        history: past ``(user, assistant)`` rounds, oldest first.
        system_prompt: the system prompt; ``None`` or blank adds no system message
            (the chat template may then add its own default one).
        max_round: history rounds kept, see :func:`trim_history`.

    Returns:
        ``[system?] + [user, assistant] * rounds + [user]`` messages, oldest first:
        length ``2 * rounds + 1`` (``+ 1`` with a system prompt).

    Raises:
        ValueError: ``max_round`` is negative.
    """
    messages: list[Message] = []
    if system_prompt and system_prompt.strip():
        messages.append({"role": "system", "content": system_prompt})
    for user, assistant in trim_history(history, max_round):
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": assistant})
    messages.append({"role": "user", "content": prompt})
    return messages
