"""The OpenAI protocol: ``GET /v1/models`` and ``POST /v1/chat/completions``
(streamed as server-sent events ending in ``data: [DONE]``), shapes as in
OpenAI's API reference, so the ``openai`` client and LangChain's ``ChatOpenAI`` work."""
from __future__ import annotations

import json
import logging
import time
from contextlib import aclosing
from typing import AsyncIterator

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from llm.base import Generation, GenerationParams, Message

from .api_common import (CLIENT_GONE, AdmissionGate, ApiError, GatedStreamingResponse, check_max_new_tokens,
                         close_iterator, coalesced_text, collect, generation_errors, generation_record,
                         get_gate, get_service)
from .protocol import (AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice,
                       ChunkChoice, Delta, ErrorResponse, ModelCard, ModelList, Usage, completion_id)
from .services import ChatService

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["OpenAI"])
ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}}
GENERATION_ERRORS = {**ERRORS, 500: {"model": ErrorResponse},
                     503: {"model": ErrorResponse, "description": "too many requests in flight (--max-queue); "
                                                                  "retry after the Retry-After header's seconds"}}


@router.get("/models", response_model=ModelList, responses=ERRORS)
def list_models(service: ChatService = Depends(get_service)) -> ModelList:
    """The one model this server serves."""
    return ModelList(data=[ModelCard(id=service.model.name)])


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
    """Request fields -> :class:`GenerationParams` (server defaults for what is left out)."""
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    check_max_new_tokens(service.settings, req.max_completion_tokens, "max_completion_tokens", status=400)
    check_max_new_tokens(service.settings, req.max_tokens, "max_tokens", status=400)
    return service.settings.generation_params(
        max_new_tokens=req.max_completion_tokens or req.max_tokens, temperature=req.temperature,
        top_p=req.top_p, stop=stop)


def _check_model(service: ChatService, req: ChatCompletionRequest) -> str:
    served = service.model.name
    if req.model not in (None, "", served):
        raise ApiError(404, f"the model {req.model!r} does not exist here: this server serves {served!r} "
                            "(see GET /v1/models)", type="not_found_error", param="model", code="model_not_found")
    return served


def _usage(gen: Generation) -> Usage:
    """The OpenAI usage object from the model's own counts (:meth:`llm.base.Generation.usage`)."""
    usage = gen.usage()
    prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _finish_reason(gen: Generation) -> str:
    """How the model says it stopped: ``stop`` or ``length`` (an ``error`` is raised, never finished)."""
    return "length" if gen.finish_reason == "length" else "stop"


@router.post("/chat/completions", response_model=ChatCompletion, responses=GENERATION_ERRORS)
async def chat_completions(req: ChatCompletionRequest, request: Request, service: ChatService = Depends(get_service),
                           gate: AdmissionGate = Depends(get_gate)):
    """Answer a conversation; with ``stream`` the reply is SSE chunks ending in ``data: [DONE]``.
    503 with ``Retry-After`` when ``--max-queue`` requests are already in flight."""
    model = _check_model(service, req)
    messages = to_messages(req)
    params = to_params(service, req)
    release = gate.enter()
    try:
        with generation_errors("messages"):
            pieces = await run_in_threadpool(service.stream_messages, messages, params)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            events = _sse(service, model, messages, params, pieces, include_usage)
            response = GatedStreamingResponse(events, release, media_type="text/event-stream",
                                              headers={"Cache-Control": "no-cache"})
            release = None  # the response gives the place back when it ends
            return response
        answer = await collect(request, pieces)
    finally:
        if release is not None:
            release()
    if answer is None:
        return CLIENT_GONE
    await run_in_threadpool(_export, service, messages, answer, pieces)  # the export's fsync: off the loop
    return ChatCompletion(model=model, usage=_usage(pieces), choices=[Choice(
        message=AssistantMessage(content=answer), finish_reason=_finish_reason(pieces))])


def _export(service: ChatService, messages: list[Message], answer: str, gen: Generation) -> None:
    system = "\n".join(m["content"] for m in messages if m["role"] == "system") or None
    turns = [m for m in messages if m["role"] != "system"]
    users = [m["content"] for m in turns[:-1] if m["role"] == "user"]
    answers = [m["content"] for m in turns[:-1] if m["role"] == "assistant"]
    service.record_round("openai", turns[-1]["content"], answer, list(zip(users, answers)), system,
                         **generation_record(gen))


async def _sse(service: ChatService, model: str, messages: list[Message], params: GenerationParams,
               pieces: Generation, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events of a streamed completion, OpenAI's chunk sequence: a role
    chunk, content chunks (the text generated since the previous chunk, at most one
    chunk per ``--stream-interval-ms``; the first at once), a chunk
    with ``finish_reason``, optionally a usage chunk, then ``[DONE]``. A failure
    mid-stream sends an ``error`` event before ``[DONE]``."""
    cid, created = completion_id(), int(time.time())

    def event(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        chunk = ChatCompletionChunk(id=cid, created=created, model=model, choices=choices, usage=usage)
        return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

    try:
        yield event([ChunkChoice(delta=Delta(role="assistant", content=""))])
        answer = ""
        try:
            # closing the texts stops the model
            async with aclosing(coalesced_text(pieces, service.settings.stream_interval)) as texts:
                async for text in texts:
                    answer += text
                    yield event([ChunkChoice(delta=Delta(content=text))])
        except Exception as exc:  # noqa: BLE001 - the status is sent already; report in-band
            log.exception("generation failed")
            err = {"error": {"message": f"generation failed: {type(exc).__name__}: {exc}", "type": "server_error",
                             "param": None, "code": None}}
            yield f"data: {json.dumps(err)}\n\n"
            yield "data: [DONE]\n\n"
            return
    finally:
        close_iterator(pieces)  # a client gone before the first token: stop the model (else a no-op)

    await run_in_threadpool(_export, service, messages, answer, pieces)  # the export's fsync: off the event loop
    yield event([ChunkChoice(delta=Delta(), finish_reason=_finish_reason(pieces))])
    if include_usage:
        yield event([], usage=_usage(pieces))
    yield "data: [DONE]\n\n"
