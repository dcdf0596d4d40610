"""The PAI-EAS ChatLLM protocol on ``/``: ``POST /`` (JSON or plain text) and a WebSocket.

Wire format (PAI-EAS ChatLLM-WebUI, and langchain-community's PaiEasEndpoint):
a reply is ``{"response": str, "history": [[user, assistant], ...]}`` with the
new round appended; streamed replies are such JSON objects each followed by a
NUL byte (``\\0``), ``response`` holding the text added since the previous one;
on the WebSocket each message is one request and the answer ends with ``<EOS>``.
"""
from __future__ import annotations

import asyncio
import json
import logging
from contextlib import aclosing, suppress
from typing import Any, AsyncIterator, Iterator
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from llm.base import Generation, GenerationParams
from llm.history import trim_history

from .api_common import (CLIENT_GONE, AdmissionGate, ApiError, GatedStreamingResponse, check_max_new_tokens,
                         close_iterator, coalesced_text, collect, generation_errors, generation_record,
                         get_gate, get_service)
from .protocol import ErrorResponse, PaiChatRequest, PaiChatResponse, Source, Usage
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


def answer_chunks(service: ChatService, req: PaiChatRequest,
                  channel: str) -> tuple[list[Source] | None, Iterator[str], Generation | None]:
    """Start answering ``req``: (sources or None, the answer's text pieces, the model's
    :class:`~llm.base.Generation` -- its ``finish_reason`` and ``usage`` once the pieces ran
    out -- or None when the model is not called).

    The new round is exported when the pieces run out.

    Raises:
        ApiError: 404 unknown knowledge base, 400 prompt too long for the model (even with
            the oldest history rounds dropped) or other bad input, 422 a sampling value
            out of range (``max_new_tokens`` above ``--max-new-tokens-limit``).
    """
    params = _params(service, req)
    history = [tuple(h) for h in req.history]
    with generation_errors("prompt"):  # statuses by api_common.ERROR_TABLE
        if req.langchain:
            answer = service.answer_from_knowledge(
                req.prompt, history, top_k=req.retrieval_top_k, score_threshold=req.score_threshold,
                system_prompt=req.system_prompt, params=params, kb=req.knowledge_base)
            sources, pieces = [Source(**r.to_dict()) for r in answer.sources], answer.pieces
            gen = answer.generation
        else:
            sources = None
            pieces = gen = service.stream_chat(req.prompt, history, system_prompt=req.system_prompt,
                                               params=params)

    def recorded() -> Iterator[str]:
        text = []
        try:
            for piece in pieces:
                text.append(piece)
                yield piece
        finally:
            close_iterator(pieces)  # stops the model when the client went away
            close_iterator(gen)  # the same, when ``pieces`` is a chain in front of it
        service.record_round(channel, req.prompt, "".join(text), history, req.system_prompt,
                             **({"sources": [s.model_dump() for s in sources]} if sources is not None else {}),
                             **generation_record(gen))

    return sources, recorded(), gen


def _ending(gen: Generation | None) -> dict:
    """``finish_reason`` and ``usage`` of the last reply, from the model's own report."""
    if gen is None:
        return {"finish_reason": "stop"}
    usage = gen.usage()
    return {"finish_reason": "length" if gen.finish_reason == "length" else "stop",
            "usage": None if usage is None else Usage(prompt_tokens=usage.prompt_tokens,
                                                      completion_tokens=usage.completion_tokens,
                                                      total_tokens=usage.total_tokens)}


def _reply(req: PaiChatRequest, answer: str, sources: list[Source] | None, delta: str | None = None,
           history: list | None = None, gen: Generation | None = None, ended: bool = False) -> dict:
    history = list(req.history) + [(req.prompt, answer)] if history is None else history
    out = PaiChatResponse(response=answer if delta is None else delta, history=history, sources=sources,
                          **(_ending(gen) if ended else {}))
    return out.model_dump(exclude_none=True)


def _partial_reply(req: PaiChatRequest, answer: str, delta: str, sources: list[Source] | None) -> dict:
    """A streamed reply before the last: ``history`` holds only the round so far, not the
    earlier rounds again (repeating them in every chunk turned a 1.1 MB request into a
    428 MB reply); the last reply carries the whole history."""
    return PaiChatResponse(response=delta, history=[(req.prompt, answer)], sources=sources).model_dump(
        exclude_none=True)


async def stream_replies(req: PaiChatRequest, sources: list[Source] | None, pieces: Iterator[str],
                         interval: float = 0.0, gen: Generation | None = None) -> AsyncIterator[dict]:
    """Reply dicts as the answer grows: ``response`` = the text generated since the previous
    reply (at most one reply per ``interval`` seconds, the first at once); ``history`` holds
    the round so far in every reply but the last, which holds the whole history with the
    new round, and ``finish_reason`` and ``usage`` from ``gen`` (and has ``response`` "" :
    it only closes the stream). A failure mid-stream
    ends it with a reply carrying ``error``. Closing it stops the model."""
    answer = ""
    first = True
    try:
        async with aclosing(coalesced_text(pieces, interval)) as texts:
            async for text in texts:
                answer += text
                yield _partial_reply(req, answer, text, sources if first else None)
                first = False
        yield _reply(req, answer, sources if first else None, delta="", gen=gen, ended=True)
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
        sources, pieces, gen = await run_in_threadpool(answer_chunks, service, req, "pai")
        if req.use_stream_chat:
            async def body():
                async with aclosing(stream_replies(req, sources, pieces, service.settings.stream_interval,
                                                   gen)) as replies:
                    async for reply in replies:
                        yield json.dumps(reply, ensure_ascii=False).encode("utf-8") + b"\0"
            response = GatedStreamingResponse(body(), release, media_type="text/plain; charset=utf-8")
            release = None  # the response gives the place back when it ends
            return response
        answer = await collect(request, pieces)
        if answer is None:
            return CLIENT_GONE
        return JSONResponse(_reply(req, answer, sources, gen=gen, ended=True))
    finally:
        if release is not None:
            release()


def origin_allowed(ws: WebSocket) -> bool:
    """A browser's WebSocket must come from a page of this server (``Origin`` naming the
    address it connects to); clients that send no ``Origin`` (scripts, SDKs) are let in.
    Stops another web site from using a logged-in browser, or a DNS-rebinding page, to chat."""
    origin = ws.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == (ws.headers.get("host") or "").lower()


async def _read_frames(ws: WebSocket, frames: asyncio.Queue) -> None:
    """Move every frame of the connection into ``frames`` (the disconnect last), so the
    server hears a client leave while it is still answering."""
    while True:
        frame = await ws.receive()
        await frames.put(frame)
        if frame["type"] == "websocket.disconnect":
            return


async def _answer(ws: WebSocket, req: PaiChatRequest, sources, pieces, interval: float, gen=None) -> dict:
    """Send the answer to ``req`` (streamed replies, or one reply): the last reply dict."""
    async with aclosing(stream_replies(req, sources, pieces, interval, gen)) as replies:
        if req.use_stream_chat:
            last = {}
            async for last in replies:
                await ws.send_text(json.dumps(last, ensure_ascii=False))
            return last
        collected = [r async for r in replies]
        last = dict(collected[-1])
        if "error" not in last:
            last = {**last, "response": "".join(r["response"] for r in collected)}
        await ws.send_text(json.dumps(last, ensure_ascii=False))
        return last


@router.websocket("/")
async def pai_websocket(ws: WebSocket):
    """One conversation per connection: each message is a request (JSON as for
    ``POST /``, or a plain-text prompt); the answer comes as JSON reply messages
    (streamed when ``use_stream_chat``), then the text ``<EOS>``.  The server keeps
    the connection's history (up to ``--max_round`` rounds) unless a request
    brings its own non-empty ``history``.  A bad request, or one beyond ``--max-queue``,
    gets ``{"error", "param"}`` (with ``retry_after`` seconds when busy), then ``<EOS>``;
    the connection stays open. A client that leaves mid-answer stops the generation at
    once, streamed or not. A browser connecting from another site's page (``Origin``) is
    refused (close code 1008)."""
    service: ChatService = ws.app.state.service
    gate: AdmissionGate = ws.app.state.gate
    if not origin_allowed(ws):
        log.warning("refused a WebSocket from origin %r (this server is %r)", ws.headers.get("origin"),
                    ws.headers.get("host"))
        await ws.close(code=1008, reason="cross-origin WebSocket refused")
        return
    await ws.accept()
    history: list[tuple[str, str]] = []
    frames: asyncio.Queue = asyncio.Queue()
    reader = asyncio.create_task(_read_frames(ws, frames))
    try:
        while True:
            frame = await frames.get()
            if frame["type"] == "websocket.disconnect":
                return
            # a text frame, or a binary one holding UTF-8 (parse_request says so when it does not)
            message = frame["text"] if frame.get("text") is not None else frame.get("bytes") or b""
            release = None
            try:
                req = parse_request(message)
                if not req.history and history:
                    req = req.model_copy(update={"history": history})
                release = gate.enter()
                sources, pieces, gen = await run_in_threadpool(answer_chunks, service, req, "websocket")
            except ApiError as exc:
                if release is not None:
                    release()
                extra = {"retry_after": int(exc.headers["Retry-After"])} if "Retry-After" in exc.headers else {}
                await ws.send_json({"error": exc.message, "param": exc.param, **extra})
                await ws.send_text(EOS)
                continue
            work = asyncio.create_task(_answer(ws, req, sources, pieces, service.settings.stream_interval, gen))
            try:
                await asyncio.wait({work, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not work.done():  # the client left mid-answer: stop generating now
                    log.info("WebSocket client went away mid-answer: generation stopped")
                    work.cancel()
                    with suppress(asyncio.CancelledError, Exception):
                        await work
                    return
                last = work.result()
            finally:
                release()
            if "error" not in last:
                history = trim_history([tuple(h) for h in last["history"]], service.settings.max_round)
            await ws.send_text(EOS)
    except (WebSocketDisconnect, RuntimeError):  # sending to a client that has just gone
        return
    finally:
        reader.cancel()
        with suppress(asyncio.CancelledError, Exception):
            await reader
