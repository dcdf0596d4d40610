"""Access token for the API, the WebSocket and the page.

When a token is configured (``--api-token`` or ``$CHATLLM_API_TOKEN``), every
request must carry it, as PAI-EAS clients do: an ``Authorization`` header with
the raw token or ``Bearer <token>``.  A browser cannot set that header, so the
page also accepts ``?token=<token>`` once: the reply is a redirect to the same
address without the token, setting an HttpOnly cookie that authorises the page's
own later requests (the way Jupyter does it). The cookie holds a session value
derived from the token (HMAC), never the token itself; it lasts
:data:`COOKIE_MAX_AGE_S` and is ``Secure`` behind TLS. The access log shows
``token=***`` (:class:`MaskTokenFilter`). Only ``GET /health`` stays open, for
load balancers.
"""
from __future__ import annotations

import copy
import hashlib
import hmac
import json
import logging
import re
from http.cookies import SimpleCookie
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, urlencode

COOKIE = "chatllm_session"
#: How long the page's cookie lasts (seconds): a week, then open ``/?token=...`` again.
COOKIE_MAX_AGE_S = 7 * 24 * 3600
_TOKEN_IN_QUERY = re.compile(r"((?:^|[?&])token=)[^&\s\"]*")
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
    try:
        cookie = SimpleCookie(headers.get("cookie", ""))
    except Exception:  # noqa: BLE001 - a malformed Cookie header carries no session
        cookie = SimpleCookie()
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
        self.session = session_value(token)

    def _valid(self, presented: str) -> bool:
        return token_matches(presented, self.token)

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in OPEN_PATHS:
            return await self.app(scope, receive, send)
        token, from_query = presented_token(scope)
        if token is not None and self._valid(token):
            if from_query and scope["type"] == "http" and scope.get("method") == "GET":
                return await self._redirect_without_token(scope, send)
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

    async def _redirect_without_token(self, scope: Scope, send: Callable) -> None:
        """303 to the same address without ``token``, setting the session cookie: the token
        leaves the address bar and the browser's history."""
        query = [(k, v) for k, vs in parse_qs(scope.get("query_string", b"").decode("latin-1"),
                                               keep_blank_values=True).items() if k != "token" for v in vs]
        location = (scope.get("root_path", "") + scope.get("path", "/")) + (f"?{urlencode(query)}" if query else "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        secure = scope.get("scheme") == "https" or headers.get("x-forwarded-proto", "").lower() == "https"
        cookie = (f"{COOKIE}={self.session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={COOKIE_MAX_AGE_S}"
                  + ("; Secure" if secure else ""))
        await send({"type": "http.response.start", "status": 303, "headers": [
            (b"location", location.encode("latin-1", errors="replace")), (b"set-cookie", cookie.encode()),
            (b"content-length", b"0"), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": b""})


def session_value(token: str) -> str:
    """The page's cookie value for ``token``: HMAC-SHA256 of a fixed label keyed by the token
    (hex). It authorises like the token but does not reveal it; a new token ends all sessions."""
    return hmac.new(token.encode(), b"chatllm-webui page session", hashlib.sha256).hexdigest()


def token_matches(presented: str, token: str) -> bool:
    """Whether ``presented`` is ``token`` or its page-session value (:func:`session_value`),
    both compared in constant time."""
    return any([hmac.compare_digest(presented.encode(), t.encode()) for t in (token, session_value(token))])


def mask_token(text: str) -> str:
    """``text`` with every ``token=<value>`` of a query string as ``token=***``."""
    return _TOKEN_IN_QUERY.sub(r"\1***", text)


class MaskTokenFilter(logging.Filter):
    """Logging filter for uvicorn's access log: masks ``?token=`` in the logged path."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(mask_token(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = mask_token(record.msg)
        return True


def access_log_config(level: str = "INFO") -> dict:
    """uvicorn's logging configuration (``uvicorn.config.LOGGING_CONFIG``) with
    :class:`MaskTokenFilter` on the access log."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["mask_token"] = {"()": MaskTokenFilter}
    config["handlers"]["access"].setdefault("filters", []).append("mask_token")
    return config
