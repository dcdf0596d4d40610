"""Request-body limits: a body larger than ``--max-request-mb`` gets 413 naming the limit
(before the route reads it, from ``Content-Length``, or as soon as a streamed body passes
it), and a client that stops sending its body for :data:`BODY_READ_TIMEOUT_S` gets 408.

Uploads (``POST /v1/knowledge/{kb}/files`` and Gradio's ``/gradio_api/upload``) are not
held to the JSON limit: each file is checked against ``--max-upload-mb`` as it arrives.
"""
from __future__ import annotations

import json
import re
from typing import Any, Awaitable, Callable

import anyio
from starlette.exceptions import HTTPException

#: Seconds the server waits for the next part of a request body before answering 408.
BODY_READ_TIMEOUT_S = 30.0
_UPLOAD_PATHS = re.compile(r"^/v1/knowledge/[^/]+/files/?$|^/gradio_api/upload/?$")

Scope = dict[str, Any]


class BodyTooLarge(HTTPException):
    """A body over the limit (413); raised from ``receive`` so the route never sees it all."""


class BodyLimitMiddleware:
    """Pure ASGI middleware: at most ``max_bytes`` of request body on every HTTP route but
    the upload routes; 408 when the body stalls for ``read_timeout`` seconds.

    Args:
        app: the ASGI app.
        max_bytes: the limit (from ``--max-request-mb``), > 0.
        read_timeout: seconds allowed between two parts of a body.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int,
                 read_timeout: float = BODY_READ_TIMEOUT_S):
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.app, self.max_bytes, self.read_timeout = app, max_bytes, read_timeout

    def _message(self) -> str:
        mb = self.max_bytes / (1 << 20)
        return (f"the request body is larger than this server's limit of {mb:g} MB (--max-request-mb): "
                "send less (upload documents with POST /v1/knowledge/{kb}/files), or start the server "
                "with a larger --max-request-mb")

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload = _UPLOAD_PATHS.match(scope.get("path", "")) is not None
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if not upload and length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send, 413, self._message())
        received = 0
        started = False
        body_done = False

        async def limited_receive() -> dict:
            nonlocal received, body_done
            if body_done:  # the body is all in: this waits for the disconnect, as long as the answer takes
                return await receive()
            try:
                with anyio.fail_after(self.read_timeout):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(408, f"the request body stalled for {self.read_timeout:g} s: "
                                         "send the whole body without pausing") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            if message["type"] == "http.request" and not upload:
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(413, self._message())
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:  # raised past the app's own handlers (e.g. by Gradio's routes)
            if started or exc.status_code not in (408, 413):
                raise
            await self._refuse(send, exc.status_code, str(exc.detail))

    @staticmethod
    async def _refuse(send: Callable, status: int, message: str) -> None:
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                     "code": "request_too_large" if status == 413 else "request_timeout"}}).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
