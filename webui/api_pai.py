"""The PAI-EAS ChatLLM protocol on ``/``: ``POST /`` (JSON or plain text) and a WebSocket.

Wire format (PAI-EAS ChatLLM-WebUI, and langchain-community's PaiEasEndpoint):
a reply is ``{"response": str, "history": [[user, assistant], ...]}`` with the
new round appended; streamed replies are such JSON objects each followed by a
NUL byte (``\\0``), ``response`` holding the text added since the previous one;
on the WebSocket each message is one request and the answer ends with ``<EOS>``.
"""
from __future__ import annotations

import json
import logging
from contextlib import aclosing
from typing import Any, AsyncIterator, Iterator

from fastapi import APIRouter, Depends, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from llm.base import GenerationParams
from llm.history import trim_history
from rag.registry import InvalidKnowledgeBaseName

from .api_common import (CLIENT_GONE, AdmissionGate, ApiError, GatedStreamingResponse, check_max_new_tokens,
                         close_iterator, coalesced_text, collect, generation_errors, get_gate,
                         get_service)
from .protocol import ErrorResponse, PaiChatRequest, PaiChatResponse, Source
from .services import ChatService

log = logging.getLogger(__name__)
router = APIRouter(tags=["PAI-EAS ChatLLM"])
EOS = "<EOS>"

_REQUEST_SCHEMA = {"content": {
    "application/json": {"schema": PaiChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")},
    "text/plain": {"schema": {"type": "string", "description": "the prompt itself"}},
}, "required": True}


def parse_request(body: bytes | str, content_type: str | None = None) -> PaiChatRequest:
    """A request from a raw body: a JSON object, or else plain text that is the prompt.

    Raises:
        ApiError: 422 naming the field and its limit when a JSON field is invalid,
            400 when the body is empty or not UTF-8.
    """
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "the request body is not UTF-8 text: send JSON or a UTF-8 prompt") from None
    text = body.strip()
    is_json = (content_type or "").split(";")[0].strip() == "application/json" or text.startswith("{")
    data: Any = text if text else {}  # an empty body is a request without a prompt
    if is_json and text:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"malformed JSON body ({exc.msg} at line {exc.lineno} column {exc.colno}): "
                                "send a JSON object such as {\"prompt\": \"...\"}") from None
        except RecursionError:
            raise ApiError(400, "the JSON body is nested too deeply: send a flat JSON object such as "
                                "{\"prompt\": \"...\"}") from None
        except ValueError as exc:  # e.g. an integer of more than 4300 digits (sys.get_int_max_str_digits)
            raise ApiError(400, f"the JSON body holds a value this server cannot read ({exc}); "
                                "send numbers of ordinary size") from None
    if isinstance(data, str):
        data = {"prompt": data}
    if not isinstance(data, dict):
        raise ApiError(422, f"the JSON body must be an object with a 'prompt' field, got {type(data).__name__}")
    try:
        return PaiChatRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(422, f"{field}: {first['msg']}", param=field) from None


def _params(service: ChatService, req: PaiChatRequest) -> GenerationParams:
    check_max_new_tokens(service.settings, req.max_new_tokens, "max_new_tokens")
    try:
        return service.settings.generation_params(
            max_new_tokens=req.max_new_tokens, temperature=req.temperature, top_k=req.top_k, top_p=req.top_p,
            do_sample=req.do_sample, stop=tuple(req.stop or ()))
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None


def answer_chunks(service: ChatService, req: PaiChatRequest, channel: str) -> tuple[list[Source] | None, Iterator[str]]:
    """Start answering ``req``: (sources or None, the answer's text pieces).

    The new round is exported when the pieces run out.

    Raises:
        ApiError: 404 unknown knowledge base, 400 prompt too long for the model (even with
            the oldest history rounds dropped) or other bad input, 422 a sampling value
            out of range (``max_new_tokens`` above ``--max-new-tokens-limit``).
    """
    params = _params(service, req)
    history = [tuple(h) for h in req.history]
    with generation_errors("prompt"):
        try:
            if req.langchain:
                answer = service.answer_from_knowledge(
                    req.prompt, history, top_k=req.retrieval_top_k, score_threshold=req.score_threshold,
                    system_prompt=req.system_prompt, params=params, kb=req.knowledge_base)
                sources, pieces = [Source(**r.to_dict()) for r in answer.sources], answer.pieces
            else:
                sources, pieces = None, service.stream_chat(req.prompt, history, system_prompt=req.system_prompt,
                                                            params=params)
        except KeyError as exc:  # unknown knowledge base
            raise ApiError(404, str(exc), type="not_found_error", param="knowledge_base") from None
        except InvalidKnowledgeBaseName as exc:
            raise ApiError(400, str(exc), param="knowledge_base") from None

    def recorded() -> Iterator[str]:
        text = []
        try:
            for piece in pieces:
                text.append(piece)
                yield piece
        finally:
            close_iterator(pieces)  # stops the model when the client went away
        service.record_round(channel, req.prompt, "".join(text), history, req.system_prompt,
                             **({"sources": [s.model_dump() for s in sources]} if sources is not None else {}))

    return sources, recorded()


def _reply(req: PaiChatRequest, answer: str, sources: list[Source] | None, delta: str | None = None,
           history: list | None = None) -> dict:
    history = list(req.history) + [(req.prompt, answer)] if history is None else history
    out = PaiChatResponse(response=answer if delta is None else delta, history=history, sources=sources)
    return out.model_dump(exclude_none=True)


async def stream_replies(req: PaiChatRequest, sources: list[Source] | None, pieces: Iterator[str],
                         interval: float = 0.0) -> AsyncIterator[dict]:
    """Reply dicts as the answer grows: ``response`` = the text generated since the previous
    reply (at most one reply per ``interval`` seconds, the first at once), ``history`` with
    the round so far. A failure mid-stream ends it with a reply carrying ``error``.
    Closing it stops the model."""
    answer = ""
    first = True
    try:
        async with aclosing(coalesced_text(pieces, interval)) as texts:
            async for text in texts:
                answer += text
                yield _reply(req, answer, sources if first else None, delta=text)
                first = False
        if first:  # nothing generated: still one reply, so the client sees the round
            yield _reply(req, answer, sources, delta="")
    except Exception as exc:  # noqa: BLE001 - the status is sent already; report in-band
        log.exception("generation failed")
        yield {**_reply(req, answer, None, delta="", history=list(req.history)),
               "error": f"generation failed: {type(exc).__name__}: {exc}"}
    finally:
        close_iterator(pieces)  # a client gone before the first token: stop the model (else a no-op)


@router.post("/", summary="Chat (PAI-EAS ChatLLM protocol)", openapi_extra={"requestBody": _REQUEST_SCHEMA},
             responses={200: {"model": PaiChatResponse,
                              "description": "JSON reply; with use_stream_chat, NUL-delimited JSON chunks",
                              "content": {"text/plain": {"schema": {
                                  "type": "string", "description": "use_stream_chat: JSON replies (the text added "
                                                                   "since the previous one), each followed by NUL"}}}},
                        **{status: {"model": ErrorResponse, "description": what} for status, what in (
                            (400, "malformed body, empty prompt, or a prompt too long for the model's context"),
                            (401, "missing or wrong access token"),
                            (404, "unknown knowledge base"),
                            (422, "a field is invalid or out of range; the message names it and its limit"),
                            (500, "generation failed"),
                            (503, "too many requests in flight (--max-queue); retry after Retry-After seconds"))}})
async def pai_chat(request: Request, service: ChatService = Depends(get_service),
                   gate: AdmissionGate = Depends(get_gate)):
    """Answer one request. JSON body (see schema) or a plain-text prompt. With
    ``use_stream_chat`` the reply streams as JSON objects each followed by ``\\0``.
    503 with ``Retry-After`` when ``--max-queue`` requests are already in flight."""
    req = parse_request(await request.body(), request.headers.get("content-type"))
    release = gate.enter()
    try:
        sources, pieces = await run_in_threadpool(answer_chunks, service, req, "pai")
        if req.use_stream_chat:
            async def body():
                async with aclosing(stream_replies(req, sources, pieces, service.settings.stream_interval)) as replies:
                    async for reply in replies:
                        yield json.dumps(reply, ensure_ascii=False).encode("utf-8") + b"\0"
            response = GatedStreamingResponse(body(), release, media_type="text/plain; charset=utf-8")
            release = None  # the response gives the place back when it ends
            return response
        answer = await collect(request, pieces)
        if answer is None:
            return CLIENT_GONE
        return JSONResponse(_reply(req, answer, sources))
    finally:
        if release is not None:
            release()


@router.websocket("/")
async def pai_websocket(ws: WebSocket):
    """One conversation per connection: each message is a request (JSON as for
    ``POST /``, or a plain-text prompt); the answer comes as JSON reply messages
    (streamed when ``use_stream_chat``), then the text ``<EOS>``.  The server keeps
    the connection's history (up to ``--max_round`` rounds) unless a request
    brings its own non-empty ``history``.  A bad request, or one beyond ``--max-queue``,
    gets ``{"error", "param"}`` (with ``retry_after`` seconds when busy), then ``<EOS>``;
    the connection stays open."""
    service: ChatService = ws.app.state.service
    gate: AdmissionGate = ws.app.state.gate
    await ws.accept()
    history: list[tuple[str, str]] = []
    try:
        while True:
            frame = await ws.receive()
            if frame["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(frame.get("code", 1000))
            # a text frame, or a binary one holding UTF-8 (parse_request says so when it does not)
            message = frame["text"] if frame.get("text") is not None else frame.get("bytes") or b""
            release = None
            try:
                req = parse_request(message)
                if not req.history and history:
                    req = req.model_copy(update={"history": history})
                release = gate.enter()
                sources, pieces = await run_in_threadpool(answer_chunks, service, req, "websocket")
            except ApiError as exc:
                if release is not None:
                    release()
                extra = {"retry_after": int(exc.headers["Retry-After"])} if "Retry-After" in exc.headers else {}
                await ws.send_json({"error": exc.message, "param": exc.param, **extra})
                await ws.send_text(EOS)
                continue
            try:
                async with aclosing(stream_replies(req, sources, pieces, service.settings.stream_interval)) as replies:
                    if req.use_stream_chat:
                        last = {}
                        async for last in replies:
                            await ws.send_text(json.dumps(last, ensure_ascii=False))
                    else:
                        collected = [r async for r in replies]
                        last = dict(collected[-1])
                        if "error" not in last:
                            last = {**last, "response": "".join(r["response"] for r in collected)}
                        await ws.send_text(json.dumps(last, ensure_ascii=False))
            finally:
                release()
            if "error" not in last:
                history = trim_history([tuple(h) for h in last["history"]], service.settings.max_round)
            await ws.send_text(EOS)
    except WebSocketDisconnect:
        return
