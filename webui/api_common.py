"""What the API routers share: the service from app state, the error shape,
and streaming a blocking iterator without holding the event loop."""
from __future__ import annotations

from typing import AsyncIterator, Iterator, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .protocol import ErrorBody, ErrorResponse
from .services import ChatService

T = TypeVar("T")
_DONE = object()


class ApiError(Exception):
    """An error answered in the OpenAI error shape (used by every API route).

    Args:
        status: HTTP status code (400 bad request, 404 not found, ...).
        message: what is wrong and how to fix it.
        type: OpenAI error type, e.g. ``invalid_request_error``, ``not_found_error``.
        param: the request field at fault, if any.
    """

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        """The error as a JSON response."""
        return error_response(self.status, self.message, self.type, self.param, self.code)


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    """``{"error": {"message", "type", "param", "code"}}`` with ``status``."""
    body = ErrorResponse(error=ErrorBody(message=message, type=type, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status)


def get_service(request: Request) -> ChatService:
    """FastAPI dependency: the :class:`ChatService` built at start-up (``app.state.service``)."""
    return request.app.state.service


async def iterate_in_thread(items: Iterator[T]) -> AsyncIterator[T]:
    """Iterate a blocking iterator from async code, one ``next`` per worker-thread call.

    When the consumer stops early (the client went away and the response task
    is cancelled), the iterator is closed, which stops the model's generation.
    """
    it = iter(items)
    try:
        while True:
            item = await run_in_threadpool(next, it, _DONE)
            if item is _DONE:
                return
            yield item
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            await run_in_threadpool(close)
