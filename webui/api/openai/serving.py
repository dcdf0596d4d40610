"""The OpenAI protocol's side of the request lifecycle: a chat request read into the
model's messages and sampling parameters, and the completion on its wire (one
``chat.completion``, or server-sent ``chat.completion.chunk`` events ending in
``data: [DONE]``), shapes as in OpenAI's API reference."""
from __future__ import annotations

import json
import time

from llm.base import GenerationParams, Message

from ...services import ChatService
from ..errors import ApiError, check_max_new_tokens
from ..lifecycle import Encoder, Round
from ..protocol import Usage
from .protocol import (AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice,
                       ChunkChoice, Delta, completion_id)

#: The request fields of :data:`~webui.api.errors.ERROR_TABLE`'s roles.
FIELDS = {"prompt": "messages"}


def to_messages(req: ChatCompletionRequest) -> list[Message]:
    """OpenAI messages -> our :class:`Message` list (``developer`` becomes ``system``).

    Raises:
        ApiError: 400 for a non-text content part, or a last (user) message without text.
    """
    out: list[Message] = []
    for i, m in enumerate(req.messages):
        try:
            text = m.text()
        except ValueError as exc:
            raise ApiError(400, str(exc), param=f"messages.{i}.content") from None
        out.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    if not out[-1]["content"].strip():
        last = len(out) - 1
        raise ApiError(400, f"messages.{last}.content: the last user message is empty; send the question as its "
                            "content", param=f"messages.{last}.content")
    return out


def to_params(service: ChatService, req: ChatCompletionRequest) -> GenerationParams:
    """Request fields -> :class:`GenerationParams` (server defaults for what is left out).

    Raises:
        ApiError: 400 for ``max_tokens`` / ``max_completion_tokens`` above ``--max-new-tokens-limit``.
    """
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    limit = service.settings.max_new_tokens_limit
    check_max_new_tokens(limit, req.max_completion_tokens, "max_completion_tokens", status=400)
    check_max_new_tokens(limit, req.max_tokens, "max_tokens", status=400)
    return service.settings.generation_params(
        max_new_tokens=req.max_completion_tokens or req.max_tokens, temperature=req.temperature,
        top_p=req.top_p, stop=stop)


def check_model(service: ChatService, req: ChatCompletionRequest) -> str:
    """The served model's name.

    Raises:
        ApiError: 404 ``model_not_found`` when ``req.model`` names another model.
    """
    served = service.model.name
    if req.model not in (None, "", served):
        raise ApiError(404, f"the model {req.model!r} does not exist here: this server serves {served!r} "
                            "(see GET /v1/models)", type="not_found_error", param="model", code="model_not_found")
    return served


def begin(service: ChatService, messages: list[Message], params: GenerationParams) -> Round:
    """Start answering the conversation (blocking); exported as its last user message, the
    earlier user/assistant pairs and the system messages joined.

    Raises:
        PromptTooLongError: mapped by the error table (400 ``context_length_exceeded``).
    """
    system = "\n".join(m["content"] for m in messages if m["role"] == "system") or None
    turns = [m for m in messages if m["role"] != "system"]
    users = [m["content"] for m in turns[:-1] if m["role"] == "user"]
    answers = [m["content"] for m in turns[:-1] if m["role"] == "assistant"]
    gen = service.stream_messages(messages, params)
    return Round(gen, gen, "openai", turns[-1]["content"], list(zip(users, answers)), system)


class OpenAIEncoder(Encoder[str]):
    """OpenAI's chunk sequence as server-sent events: a role chunk, content chunks, a chunk with
    ``finish_reason``, a usage chunk when ``stream_options.include_usage``, then ``[DONE]``; a
    failure midway sends an ``error`` event before ``[DONE]``. Not streamed: a ``chat.completion``."""

    media_type = "text/event-stream"
    headers = {"Cache-Control": "no-cache"}

    def __init__(self, model: str, include_usage: bool = False):
        self.model, self.include_usage = model, include_usage
        self.id, self.created = completion_id(), int(time.time())

    def _event(self, choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)
        return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

    @staticmethod
    def _usage(round: Round) -> Usage:
        return round.usage() or Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)

    def opening(self, round: Round) -> list[str]:
        return [self._event([ChunkChoice(delta=Delta(role="assistant", content=""))])]

    def delta(self, round: Round, text: str, answer: str) -> str:
        return self._event([ChunkChoice(delta=Delta(content=text))])

    def closing(self, round: Round, answer: str) -> list[str]:
        events = [self._event([ChunkChoice(delta=Delta(), finish_reason=round.finish_reason())])]
        if self.include_usage:
            events.append(self._event([], usage=self._usage(round)))
        return events + ["data: [DONE]\n\n"]

    def failure(self, round: Round, error: ApiError) -> list[str]:
        return [f"data: {json.dumps(error.body().model_dump())}\n\n", "data: [DONE]\n\n"]

    def reply(self, round: Round, answer: str) -> ChatCompletion:
        return ChatCompletion(model=self.model, usage=self._usage(round), choices=[Choice(
            message=AssistantMessage(content=answer), finish_reason=round.finish_reason())])
