"""Token budgeting, in one place: how long an answer may be and what of a conversation
fits in the model's context. Every caller (the page, the APIs, the backends) uses these.

A context of ``C`` tokens holds the prompt and the answer. The prompt may use at most
``C - 1`` tokens (one is kept for the answer); the answer gets what is left, at most
``max_new_tokens``. When history is droppable, old rounds go first until the prompt
leaves room for ``min(max_new_tokens, C // 2)`` answer tokens: half the context, so
that a large ``max_new_tokens`` cannot push every past round out.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

from llm.base import Message

logger = logging.getLogger(__name__)


class PromptTooLongError(ValueError):
    """The prompt does not fit in the model's context (with all droppable history
    dropped); the message names the prompt's size and the limit.

    Attributes:
        tokens: the prompt's size in tokens.
        limit: the most prompt tokens the model accepts (``context_length - 1``).
    """

    def __init__(self, message: str, tokens: int, limit: int):
        super().__init__(message)
        self.tokens, self.limit = tokens, limit


class AnswerTooLongError(ValueError):
    """A request asked for more answer tokens than the server allows (``--max-new-tokens-limit``).

    Attributes:
        field: the request field that asked (``max_new_tokens``, ``max_tokens`` ...).
        value, limit: what was asked and the most allowed.
    """

    def __init__(self, field: str, value: int, limit: int):
        super().__init__(f"{field}: must be <= {limit} (this server's --max-new-tokens-limit), got {value}; "
                         "ask for fewer tokens, or start the server with a larger --max-new-tokens-limit")
        self.field, self.value, self.limit = field, value, limit


def check_max_new_tokens(value: int | None, limit: int, field: str = "max_new_tokens") -> None:
    """Refuse an answer length above ``limit`` (None means "the server's default": allowed).

    Raises:
        AnswerTooLongError: ``value > limit``; the message names ``field``, the value and the limit.
    """
    if value is not None and value > limit:
        raise AnswerTooLongError(field, value, limit)


def prompt_limit(context_length: int) -> int:
    """The most prompt tokens a model of ``context_length`` tokens accepts: one is kept for the answer."""
    return context_length - 1


def check_prompt_fits(tokens: int, context_length: int, name: str,
                      what: str = "the question, the history or the retrieved context", dropped: int = 0) -> None:
    """Raise when a prompt of ``tokens`` tokens does not fit in the context.

    Raises:
        PromptTooLongError: ``tokens > context_length - 1``; the message names both numbers,
            the model ``name`` and ``what`` to shorten.
    """
    limit = prompt_limit(context_length)
    if tokens > limit:
        raise PromptTooLongError(
            f"the prompt has {tokens} tokens{' even with all history dropped' if dropped else ''}, more than the "
            f"{limit} that fit in the context of {name!r} ({context_length} tokens, one kept for the answer): "
            f"shorten {what}", tokens, limit)


def clamp_max_new_tokens(max_new_tokens: int, prompt_tokens: int, context_length: int) -> int:
    """The answer length the model may actually generate: ``max_new_tokens``, cut to what is
    left of the context after the prompt (>= 1 once :func:`check_prompt_fits` passed)."""
    return max(1, min(max_new_tokens, context_length - prompt_tokens))


def fit_messages(messages: Sequence[Message], *, count_prompt_tokens: Callable[[Sequence[Message]], int],
                 context_length: int, max_new_tokens: int, name: str, drop_history: bool = True) -> list[Message]:
    """The conversation cut to fit the context.

    With ``drop_history``, history rounds (a user and an assistant message after the
    system prompt) are dropped, oldest first, until the prompt leaves room for
    ``min(max_new_tokens, context_length // 2)`` answer tokens; the system prompt and
    the last message are always kept.

    Args:
        messages: the conversation, oldest first, ending with the user's turn.
        count_prompt_tokens: the model's prompt counter (:meth:`ChatModel.count_prompt_tokens`).
        context_length, max_new_tokens: in tokens.
        name: the model's name, for the messages.
        drop_history: False for callers that sent every message themselves (the OpenAI API).

    Raises:
        PromptTooLongError: the prompt (after dropping) still has more than
            ``context_length - 1`` tokens.
    """
    messages = list(messages)
    room = context_length - min(max_new_tokens, context_length // 2)
    head = 1 if messages and messages[0]["role"] == "system" else 0
    tokens = count_prompt_tokens(messages)
    dropped = 0
    while drop_history and tokens > room and len(messages) - head >= 3:
        del messages[head:head + 2]
        dropped += 1
        tokens = count_prompt_tokens(messages)
    if dropped:
        logger.info("dropped the %d oldest history round(s) to fit the context of %r (%d tokens): "
                    "the prompt now has %d tokens", dropped, name, context_length, tokens)
    what = "the question, the system prompt or the retrieved context" if drop_history else \
        "the messages (drop the oldest ones)"
    check_prompt_fits(tokens, context_length, name, what, dropped)
    return messages
