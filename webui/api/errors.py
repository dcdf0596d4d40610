"""The API's errors: the one error shape (OpenAI's), the one table that maps
exceptions to status codes, and the app's exception handlers.

Every route answers an error as ``{"error": {"message", "type", "param", "code"}}``
(:class:`~webui.api.protocol.ErrorResponse`), PAI-EAS and knowledge routes included.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm.budget import AnswerTooLongError, PromptTooLongError
from llm.budget import check_max_new_tokens as budget_check
from rag.persistence import FolderBusyError
from rag.registry import InvalidKnowledgeBaseName, UnknownKnowledgeBase
from rag.store import (EmbeddingMismatchError, KnowledgeBaseClosedError, KnowledgeBaseCorruptError, UnknownFile,
                       VectorStoreMismatchError)

from .protocol import ErrorBody, ErrorResponse

log = logging.getLogger(__name__)

#: Where an invalid body is a 400, as OpenAI answers it (elsewhere FastAPI's 422).
OPENAI_400_PREFIX = "/v1/chat/"


class ApiError(Exception):
    """An error answered in the API's error shape.

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

    def body(self) -> ErrorResponse:
        """The error shape, as a model."""
        return ErrorResponse(error=ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code))

    def response(self) -> JSONResponse:
        """The error as a JSON response."""
        return JSONResponse(self.body().model_dump(), status_code=self.status, headers=self.headers or None)


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": {"message", "type", "param", "code"}}`` with ``status``."""
    return ApiError(status, message, type, param, code, headers).response()


#: What an exception raised by the model or the knowledge bases means on the wire: the first row
#: whose class matches wins. Columns: exception class, HTTP status, OpenAI error type, OpenAI error
#: code, and the role of the request field at fault ("prompt": the field holding the prompt,
#: "knowledge_base": the one naming the knowledge base, "file": the one naming a file). A row
#: applies only where the route names a field for its role (:func:`api_errors`): a ValueError is a
#: 400 where a prompt is read, a 500 (a bug) in the knowledge-base routes. Anything no row matches
#: is a logged 500 ``server_error`` -- a bare ``KeyError`` from deep inside retrieval included: only
#: the registry's own ``UnknownKnowledgeBase`` and ``UnknownFile`` are 404s.
ERROR_TABLE: tuple[tuple[type[BaseException], int, str, str | None, str], ...] = (
    (PromptTooLongError, 400, "invalid_request_error", "context_length_exceeded", "prompt"),
    (UnknownKnowledgeBase, 404, "not_found_error", None, "knowledge_base"),
    (UnknownFile, 404, "not_found_error", None, "file"),
    (InvalidKnowledgeBaseName, 400, "invalid_request_error", None, "knowledge_base"),
    # built with another embedding model or vector store, unreadable, deleted meanwhile, or
    # another process writing it
    *((kind, 409, "conflict_error", None, "knowledge_base") for kind in (
        EmbeddingMismatchError, VectorStoreMismatchError, KnowledgeBaseCorruptError, KnowledgeBaseClosedError,
        FolderBusyError)),
    (ValueError, 400, "invalid_request_error", None, "prompt"),
)


def api_error_for(exc: BaseException, fields: dict[str, str]) -> ApiError | None:
    """The :class:`ApiError` for ``exc`` by :data:`ERROR_TABLE`; ``fields`` maps the table's field
    roles to this route's field names (e.g. ``{"prompt": "messages"}``); rows of other roles do
    not apply. An :class:`ApiError` is returned as it is; None when no row maps ``exc``."""
    if isinstance(exc, ApiError):
        return exc
    for kind, status, type_, code, role in ERROR_TABLE:
        if role in fields and isinstance(exc, kind):
            return ApiError(status, str(exc), type=type_, code=code, param=fields[role])
    return None


@contextmanager
def api_errors(**fields: str) -> Iterator[None]:
    """Turn what the block raises into :class:`ApiError` by :data:`ERROR_TABLE`; each keyword
    names this route's field for a role, e.g. ``api_errors(prompt="messages")``. What no row
    maps goes on as it is (the app answers it 500 ``server_error`` and logs it)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - mapped by the table; the rest goes on
        error = api_error_for(exc, fields)
        if error is None:
            raise
        raise error from None


def generation_failed(exc: BaseException) -> ApiError:
    """The 500 ``server_error`` for a model (or anything else) that failed; logged here with
    its traceback. Its message is also what a stream reports in-band."""
    log.error("generation failed", exc_info=exc)
    return ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error")


def check_max_new_tokens(limit: int, value: int | None, field: str, status: int = 422) -> None:
    """Refuse a requested answer length above ``limit`` (``--max-new-tokens-limit``;
    :func:`llm.budget.check_max_new_tokens`).

    Raises:
        ApiError: ``status`` (422; OpenAI's routes 400) naming ``field``, the value and the limit.
    """
    try:
        budget_check(value, limit, field)
    except AnswerTooLongError as exc:
        raise ApiError(status, str(exc), param=field) from None


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":  # loc is ("body", character position)
        where = first.get("loc", ("body", "?"))[-1]
        detail = (first.get("ctx") or {}).get("error", "not JSON")
        return (f"malformed JSON body ({detail} at character {where}): send a JSON object "
                "(see /docs for its fields)"), None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc) or None
    if field is None and first.get("type") == "missing":
        return "the request body is missing: send a JSON object (see /docs for its fields)", None
    if field is None and first.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        return "the request body must be a JSON object (see /docs for its fields)", None
    return (f"{field}: {first['msg']}" if field else first["msg"]), field


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error in the API's error shape: :class:`ApiError`, invalid bodies
    (400 on OpenAI's routes, else 422), Starlette's HTTP errors, too deep a body (400),
    and anything unexpected (500, logged by Starlette)."""
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        status = 400 if request.url.path.startswith(OPENAI_400_PREFIX) else 422
        message, field = _validation_message(exc)
        return error_response(status, message, param=field)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception):
        # anything no route turned into an ApiError: still the documented error shape (and logged)
        return error_response(500, f"internal server error ({type(exc).__name__}); see the server log",
                              type="server_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        kind = {401: "authentication_error", 404: "not_found_error"}
        default = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(exc.status_code, str(exc.detail), type=kind.get(exc.status_code, default),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(RecursionError)
    async def too_deep(_: Request, exc: RecursionError):
        return error_response(400, "the request body is nested too deeply: send a flat JSON object "
                                   "(see /docs for its fields)")
