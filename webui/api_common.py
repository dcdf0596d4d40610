"""What the API routers share: the service from app state, the error shape,
the admission gate for generation requests, and streaming a blocking iterator
without holding the event loop."""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from contextlib import aclosing, contextmanager
from typing import Any, AsyncIterator, Callable, Iterator, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llm.budget import AnswerTooLongError, PromptTooLongError
from llm.budget import check_max_new_tokens as budget_check
from rag.registry import InvalidKnowledgeBaseName, UnknownKnowledgeBase

from .protocol import ErrorBody, ErrorResponse
from .services import ChatService
from .settings import Settings

T = TypeVar("T")
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
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": {"message", "type", "param", "code"}}`` with ``status``."""
    body = ErrorResponse(error=ErrorBody(message=message, type=type, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


#: What an exception raised while starting a request means on the wire: the first row whose class
#: matches wins; anything not here is a 500 ``server_error`` (:func:`generation_failed`) -- a bare
#: ``KeyError`` from deep inside retrieval included. Columns: exception class, HTTP status, OpenAI
#: error type, OpenAI error code, and which request field is at fault ("prompt": the field holding
#: the prompt, "knowledge_base": the one naming the knowledge base).
ERROR_TABLE: tuple[tuple[type[BaseException], int, str, str | None, str], ...] = (
    (PromptTooLongError, 400, "invalid_request_error", "context_length_exceeded", "prompt"),
    (UnknownKnowledgeBase, 404, "not_found_error", None, "knowledge_base"),
    (InvalidKnowledgeBaseName, 400, "invalid_request_error", None, "knowledge_base"),
    (ValueError, 400, "invalid_request_error", None, "prompt"),
)


def api_error_for(exc: BaseException, fields: dict[str, str]) -> ApiError:
    """The :class:`ApiError` for ``exc`` by :data:`ERROR_TABLE`; ``fields`` maps the table's field
    roles to this protocol's names (e.g. ``{"prompt": "messages"}``). An :class:`ApiError` is
    returned as it is; an exception not in the table is a logged 500."""
    if isinstance(exc, ApiError):
        return exc
    for kind, status, type_, code, role in ERROR_TABLE:
        if isinstance(exc, kind):
            return ApiError(status, str(exc), type=type_, code=code, param=fields.get(role, role))
    return generation_failed(exc)


def generation_failed(exc: BaseException) -> ApiError:
    """The 500 ``server_error`` for a model that failed (logged here with its traceback)."""
    log.error("generation failed", exc_info=exc)
    return ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error")


@contextmanager
def generation_errors(param: str, kb_param: str = "knowledge_base") -> Iterator[None]:
    """Turn what starting a generation raises into API errors by :data:`ERROR_TABLE`
    (:func:`api_error_for`); ``param`` is the request field holding the prompt, ``kb_param``
    the one naming the knowledge base."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - mapped by the table; the rest is a 500
        raise api_error_for(exc, {"prompt": param, "knowledge_base": kb_param}) from None


def generation_record(gen: Any) -> dict[str, Any]:
    """The export fields of a finished generation: ``{"finish_reason", "usage": {"prompt_tokens",
    "completion_tokens"}}`` as the model reported them; ``{}`` when ``gen`` is None (no model call)."""
    if gen is None:
        return {}
    usage = gen.usage()
    return {"finish_reason": gen.finish_reason,
            "usage": None if usage is None else {"prompt_tokens": usage.prompt_tokens,
                                                 "completion_tokens": usage.completion_tokens}}


def get_service(request: Request) -> ChatService:
    """FastAPI dependency: the :class:`ChatService` built at start-up (``app.state.service``)."""
    return request.app.state.service


def check_max_new_tokens(settings: Settings, value: int | None, field: str, status: int = 422) -> None:
    """Refuse a requested answer length above ``--max-new-tokens-limit``
    (:func:`llm.budget.check_max_new_tokens`).

    Raises:
        ApiError: ``status`` naming ``field``, the value and the limit.
    """
    try:
        budget_check(value, settings.max_new_tokens_limit, field)
    except AnswerTooLongError as exc:
        raise ApiError(status, str(exc), param=field) from None


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


class WorkLimiter:
    """At most ``running`` retrieval jobs (searches, uploads being embedded) run at once,
    at most ``waiting`` more wait for a turn; beyond that 503 with ``Retry-After``. Keeps
    many search or upload clients (jieba and the embedder hold the GIL) from starving
    generation. Thread-safe; :meth:`slot` blocks, so call it from a worker thread.

    Args:
        running: jobs at once (>= 1).
        waiting: most jobs admitted beyond ``running`` (>= 1), as ``--max-queue``.
    """

    def __init__(self, running: int, waiting: int):
        if running < 1:
            raise ValueError(f"running must be >= 1, got {running}")
        self.gate = AdmissionGate(running + waiting)
        self._turns = threading.BoundedSemaphore(running)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Wait for a turn and hold it.

        Raises:
            ApiError: 503 ``server_busy`` when ``running + waiting`` jobs are in already.
        """
        leave = self.gate.enter()
        try:
            with self._turns:
                yield
        finally:
            leave()


def get_gate(request: Request) -> AdmissionGate:
    """The app's :class:`AdmissionGate` (``app.state.gate``)."""
    return request.app.state.gate


def close_iterator(it: Any) -> None:
    """Close a generator (or anything with ``close``); other iterators are left alone."""
    close = getattr(it, "close", None)
    if close is not None:
        close()


async def ready_batches(items: Iterator[T], min_interval: float = 0.0) -> AsyncIterator[list[T]]:
    """Iterate a blocking iterator from async code, yielding everything it produced since
    the previous yield as one list (never empty).

    One pump thread runs ``items`` and hands each item to the event loop; when the
    consumer is slower than the model (many streams, a busy CPU), the pieces that
    arrived meanwhile come together, so one network event carries several tokens
    instead of one event (and one thread hop) per token.

    With ``min_interval`` (seconds) > 0, a batch is taken at most that often (the first
    at once): the server then does its per-event work (JSON, HTTP) once per interval
    rather than once per token, which on a busy CPU is time taken from generation.

    When the consumer stops early (the client went away and the response task is
    cancelled), the pump stops at the next item and closes the iterator in its own
    thread, which stops the model's generation; that wait is shielded from the
    cancellation, so it always completes. An exception raised by ``items`` is raised
    here after the items produced before it.
    """
    loop = asyncio.get_running_loop()
    ready: deque[T] = deque()
    wake = asyncio.Event()
    finished = asyncio.Event()
    stop = threading.Event()
    failure: list[BaseException] = []

    def deliver(item: T) -> None:  # on the loop
        ready.append(item)
        wake.set()

    def end(error: BaseException | None) -> None:  # on the loop
        if error is not None:
            failure.append(error)
        finished.set()
        wake.set()

    def pump() -> None:  # in the pump thread
        it = iter(items)
        error: BaseException | None = None
        try:
            for item in it:
                if stop.is_set():
                    break
                loop.call_soon_threadsafe(deliver, item)
        except RuntimeError as exc:
            if not loop.is_closed():
                error = exc
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            error = exc
        finally:
            try:
                close_iterator(it)
            except Exception:  # noqa: BLE001 - closing must not hide the outcome
                log.exception("could not close a stream")
            try:
                loop.call_soon_threadsafe(end, error)
            except RuntimeError:  # the event loop is closed (the server stopped): nobody is waiting
                pass

    threading.Thread(target=pump, name="stream-pump", daemon=True).start()
    try:
        while True:
            await wake.wait()
            wake.clear()
            if ready:
                batch = list(ready)
                ready.clear()
                yield batch
                if min_interval > 0 and not finished.is_set():
                    await asyncio.sleep(min_interval)
            if finished.is_set() and not ready:
                if failure:
                    raise failure[0]
                return
    finally:
        stop.set()
        with anyio.CancelScope(shield=True):
            await finished.wait()


async def coalesced_text(pieces: Iterator[str], min_interval: float = 0.0) -> AsyncIterator[str]:
    """The text pieces of a blocking iterator (a model's stream), those that arrived
    together joined into one string (see :func:`ready_batches`)."""
    async with aclosing(ready_batches(pieces, min_interval)) as batches:
        async for batch in batches:
            yield "".join(batch)


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

    Raises:
        ApiError: 500 when the model fails (:func:`generation_failed`).
    """
    text = []
    try:
        async with aclosing(coalesced_text(pieces, get_service(request).settings.stream_interval)) as stream:
            async for piece in stream:
                text.append(piece)
                if await request.is_disconnected():
                    log.info("client went away: stopped generating after %d character(s)", sum(map(len, text)))
                    return None
    except Exception as exc:
        raise generation_failed(exc) from None
    return "".join(text)
