"""What the API routers share: the service from app state, the error shape,
the admission gate for generation requests, and streaming a blocking iterator
without holding the event loop."""
from __future__ import annotations

import logging
import threading
from contextlib import aclosing
from typing import Any, AsyncIterator, Callable, Iterator, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from .protocol import ErrorBody, ErrorResponse
from .services import ChatService
from .settings import Settings

T = TypeVar("T")
_DONE = object()
log = logging.getLogger(__name__)

#: Seconds a client refused by a full queue is told to wait (``Retry-After``).
RETRY_AFTER_S = 5
#: What a non-streamed request whose client went away gets (nobody reads it; 499 as nginx logs it).
CLIENT_GONE = Response(status_code=499)


class ApiError(Exception):
    """An error answered in the OpenAI error shape (used by every API route).

    Args:
        status: HTTP status code (400 bad request, 404 not found, ...).
        message: what is wrong and how to fix it.
        type: OpenAI error type, e.g. ``invalid_request_error``, ``not_found_error``.
        param: the request field at fault, if any.
        code: a machine-readable code (OpenAI's, e.g. ``context_length_exceeded``).
        headers: extra response headers (e.g. ``Retry-After``).
    """

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        """The error as a JSON response."""
        reply = error_response(self.status, self.message, self.type, self.param, self.code)
        reply.headers.update(self.headers)
        return reply


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    """``{"error": {"message", "type", "param", "code"}}`` with ``status``."""
    body = ErrorResponse(error=ErrorBody(message=message, type=type, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status)


def get_service(request: Request) -> ChatService:
    """FastAPI dependency: the :class:`ChatService` built at start-up (``app.state.service``)."""
    return request.app.state.service


def check_max_new_tokens(settings: Settings, value: int | None, field: str, status: int = 422) -> None:
    """Refuse a requested answer length above ``--max-new-tokens-limit``.

    Raises:
        ApiError: ``status`` naming ``field``, the value and the limit.
    """
    limit = settings.max_new_tokens_limit
    if value is not None and value > limit:
        raise ApiError(status, f"{field}: must be <= {limit} (this server's --max-new-tokens-limit), got {value}; "
                               "ask for fewer tokens, or start the server with a larger --max-new-tokens-limit",
                       param=field)


class AdmissionGate:
    """At most ``limit`` generation requests in flight (running or waiting for the
    model) per server; one more is refused at once with 503 and ``Retry-After``
    rather than piling up (``--max-queue``).  Thread-safe.

    Args:
        limit: most requests admitted at once (>= 1).
        retry_after: seconds suggested to a refused client.
    """

    def __init__(self, limit: int, retry_after: int = RETRY_AFTER_S):
        if limit < 1:
            raise ValueError(f"the queue limit must be >= 1, got {limit}")
        self.limit = limit
        self.retry_after = retry_after
        self.active = 0
        self.refused = 0
        self._lock = threading.Lock()

    def enter(self) -> Callable[[], None]:
        """Take a place; returns the function that gives it back (idempotent).

        Raises:
            ApiError: 503 ``server_busy`` with ``Retry-After`` when ``limit`` requests are in flight.
        """
        with self._lock:
            if self.active >= self.limit:
                self.refused += 1
                raise ApiError(503, f"the server is busy: {self.limit} generation requests are already queued or "
                                    f"running (--max-queue); retry in {self.retry_after} s",
                               type="server_error", code="server_busy",
                               headers={"Retry-After": str(self.retry_after)})
            self.active += 1
        released = threading.Event()

        def leave() -> None:
            with self._lock:
                if not released.is_set():
                    released.set()
                    self.active -= 1

        return leave

    def stats(self) -> dict[str, int]:
        """``{"active", "max_queue", "refused"}`` for ``/health``."""
        with self._lock:
            return {"active": self.active, "max_queue": self.limit, "refused": self.refused}


def get_gate(request: Request) -> AdmissionGate:
    """The app's :class:`AdmissionGate` (``app.state.gate``)."""
    return request.app.state.gate


def close_iterator(it: Any) -> None:
    """Close a generator (or anything with ``close``); other iterators are left alone."""
    close = getattr(it, "close", None)
    if close is not None:
        close()


async def iterate_in_thread(items: Iterator[T]) -> AsyncIterator[T]:
    """Iterate a blocking iterator from async code, one ``next`` per worker-thread call.

    When the consumer stops early (the client went away and the response task
    is cancelled), the iterator is closed, which stops the model's generation;
    the close is shielded from that cancellation, so it always runs.
    """
    it = iter(items)
    try:
        while True:
            item = await run_in_threadpool(next, it, _DONE)
            if item is _DONE:
                return
            yield item
    finally:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(close_iterator, it)


class GatedStreamingResponse(StreamingResponse):
    """A streaming response that, however it ends (finished, client gone, error),
    closes its body iterator and then calls ``release`` (the admission gate's place)."""

    def __init__(self, content: AsyncIterator[Any], release: Callable[[], None], **kwargs: Any):
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope, receive, send) -> None:  # noqa: D102 - Starlette's ASGI entry point
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                aclose = getattr(self.body_iterator, "aclose", None)
                if aclose is not None:
                    try:
                        await aclose()
                    except Exception:  # noqa: BLE001 - closing must not hide the original outcome
                        log.exception("could not close a streamed response")
            self._release()


async def collect(request: Request, pieces: Iterator[str]) -> str | None:
    """The whole answer for a non-streamed reply, generated in a worker thread.

    Returns:
        The answer; None when the client went away meanwhile: generation is then
        stopped at once (the iterator is closed) and the round is not exported.
    """
    text = []
    async with aclosing(iterate_in_thread(pieces)) as stream:
        async for piece in stream:
            text.append(piece)
            if await request.is_disconnected():
                log.info("client went away: stopped generating after %d piece(s)", len(text))
                return None
    return "".join(text)
