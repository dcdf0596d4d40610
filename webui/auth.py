"""Access token for the API, the WebSocket and the page.

When a token is configured (``--api-token`` or ``$CHATLLM_API_TOKEN``), every
request must carry it, as PAI-EAS clients do: an ``Authorization`` header with
the raw token or ``Bearer <token>``.  A browser cannot set that header, so the
page also accepts ``?token=<token>`` once: the reply sets an HttpOnly cookie
that authorises the page's own later requests (the way Jupyter does it).
Only ``GET /health`` stays open, for load balancers.
"""
from __future__ import annotations

import hmac
import json
from http.cookies import SimpleCookie
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

COOKIE = "chatllm_token"
OPEN_PATHS = frozenset({"/health"})
ENV_VAR = "CHATLLM_API_TOKEN"

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


def presented_token(scope: Scope) -> tuple[str | None, bool]:
    """The token a request carries and whether it came in the query string.

    Looks at, in order: ``Authorization`` (``<token>`` or ``Bearer <token>``), the
    ``chatllm_token`` cookie, the ``token`` query parameter.
    """
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    auth = headers.get("authorization", "").strip()
    if auth:
        scheme, _, rest = auth.partition(" ")
        return (rest.strip() if scheme.lower() == "bearer" and rest else auth), False
    cookie = SimpleCookie(headers.get("cookie", ""))
    if COOKIE in cookie:
        return cookie[COOKIE].value, False
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0], True
    return None, False


class TokenAuthMiddleware:
    """Pure ASGI middleware (HTTP and WebSocket) requiring ``token`` on every path
    but :data:`OPEN_PATHS`. A missing or wrong token gets 401 (HTTP, OpenAI error
    shape) or a refused handshake (WebSocket, close code 1008)."""

    def __init__(self, app: ASGIApp, token: str):
        if not token:
            raise ValueError("TokenAuthMiddleware needs a non-empty token")
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in OPEN_PATHS:
            return await self.app(scope, receive, send)
        token, from_query = presented_token(scope)
        if token is not None and hmac.compare_digest(token.encode(), self.token.encode()):
            if from_query and scope["type"] == "http":
                send = self._setting_cookie(send)
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "invalid or missing token"})
            return
        body = json.dumps({"error": {
            "message": "invalid or missing access token: send the header 'Authorization: <token>' "
                       "(or 'Bearer <token>'); in a browser open the page once as /?token=<token>",
            "type": "authentication_error", "param": None, "code": "invalid_api_key"}}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _setting_cookie(self, send: Callable) -> Callable:
        cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode()

        async def wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = dict(message, headers=list(message.get("headers", [])) + [(b"set-cookie", cookie)])
            await send(message)

        return wrapped
