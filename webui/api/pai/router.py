"""The PAI-EAS ChatLLM protocol's routes on ``/``: ``POST /`` (JSON or plain text) and a
WebSocket; both go through the one request lifecycle (:mod:`webui.api.lifecycle`)."""
from __future__ import annotations

import asyncio
import json
import logging
from contextlib import aclosing, suppress
from functools import partial
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request, WebSocket, WebSocketDisconnect

from llm.history import trim_history

from ...services import ChatService
from ..admission import get_service
from ..errors import ApiError
from ..lifecycle import Round, collect, frames, serve_http, start, unless_gone
from ..protocol import ErrorResponse
from .protocol import PaiChatRequest, PaiChatResponse
from .serving import FIELDS, PaiEncoder, begin, generation_params, parse_request

log = logging.getLogger(__name__)
router = APIRouter(tags=["PAI-EAS ChatLLM"])
#: What ends each answer on the WebSocket.
EOS = "<EOS>"

_REQUEST_SCHEMA = {"content": {
    "application/json": {"schema": PaiChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")},
    "text/plain": {"schema": {"type": "string", "description": "the prompt itself"}},
}, "required": True}


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
                            (409, "the knowledge base cannot be read (another embedding model, corrupt files)"),
                            (422, "a field is invalid or out of range; the message names it and its limit"),
                            (500, "generation failed"),
                            (503, "too many requests in flight (--max-queue); retry after Retry-After seconds"))}})
async def pai_chat(request: Request, service: ChatService = Depends(get_service)):
    """Answer one request. JSON body (see schema) or a plain-text prompt. With
    ``use_stream_chat`` the reply streams as JSON objects each followed by ``\\0``.
    503 with ``Retry-After`` when ``--max-queue`` requests are already in flight."""
    req = parse_request(await request.body(), request.headers.get("content-type"))
    params = generation_params(service, req)
    return await serve_http(request, partial(begin, service, req, params, "pai"), PaiEncoder(req),
                            stream=req.use_stream_chat, **FIELDS)


def origin_allowed(ws: WebSocket) -> bool:
    """A browser's WebSocket must come from a page of this server (``Origin`` naming the
    address it connects to); clients that send no ``Origin`` (scripts, SDKs) are let in.
    Stops another web site from using a logged-in browser, or a DNS-rebinding page, to chat."""
    origin = ws.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == (ws.headers.get("host") or "").lower()


async def _read_frames(ws: WebSocket, incoming: asyncio.Queue) -> None:
    """Move every frame of the connection into ``incoming`` (the disconnect last), so the
    server hears a client leave while it is still answering."""
    while True:
        frame = await ws.receive()
        await incoming.put(frame)
        if frame["type"] == "websocket.disconnect":
            return


async def _send_answer(ws: WebSocket, service: ChatService, round: Round, req: PaiChatRequest) -> dict:
    """Send the answer to ``req`` (streamed replies, or one reply): the last reply dict."""
    encoder = PaiEncoder(req)
    if req.use_stream_chat:
        last: dict = {}
        async with aclosing(frames(service, round, encoder)) as replies:
            async for last in replies:
                await ws.send_text(json.dumps(last, ensure_ascii=False))
        return last
    try:
        last = encoder.reply(round, await collect(service, round))
    except ApiError as exc:  # the model failed: reported as a streamed answer's failure is
        [last] = encoder.failure(round, exc)
    await ws.send_text(json.dumps(last, ensure_ascii=False))
    return last


async def _refuse(ws: WebSocket, exc: ApiError) -> None:
    """A bad or refused request's answer: ``{"error", "param"}`` (with ``retry_after`` seconds
    when busy), then ``<EOS>``."""
    extra = {"retry_after": int(exc.headers["Retry-After"])} if "Retry-After" in exc.headers else {}
    await ws.send_json({"error": exc.message, "param": exc.param, **extra})
    await ws.send_text(EOS)


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
    if not origin_allowed(ws):
        log.warning("refused a WebSocket from origin %r (this server is %r)", ws.headers.get("origin"),
                    ws.headers.get("host"))
        await ws.close(code=1008, reason="cross-origin WebSocket refused")
        return
    await ws.accept()
    history: list[tuple[str, str]] = []
    incoming: asyncio.Queue = asyncio.Queue()
    reader = asyncio.create_task(_read_frames(ws, incoming))
    try:
        while True:
            frame = await incoming.get()
            if frame["type"] == "websocket.disconnect":
                return
            # a text frame, or a binary one holding UTF-8 (parse_request says so when it does not)
            message = frame["text"] if frame.get("text") is not None else frame.get("bytes") or b""
            try:
                req = parse_request(message)
                if not req.history and history:
                    req = req.model_copy(update={"history": history})
                params = generation_params(service, req)
                round, finish = await start(service, ws.app.state.gate,
                                             partial(begin, service, req, params, "websocket"), **FIELDS)
            except ApiError as exc:
                await _refuse(ws, exc)
                continue
            try:
                last = await unless_gone(_send_answer(ws, service, round, req), reader)
            finally:
                finish()
            if last is None:  # the client left mid-answer
                return
            if "error" not in last:
                history = trim_history([tuple(h) for h in last["history"]], service.settings.max_round)
            await ws.send_text(EOS)
    except (WebSocketDisconnect, RuntimeError):  # sending to a client that has just gone
        return
    finally:
        reader.cancel()
        with suppress(asyncio.CancelledError, Exception):
            await reader
