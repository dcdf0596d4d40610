"""Sign-in for the page with ``--auth-file FILE`` (:mod:`webui.accounts`).

Gradio 6's ``gr.mount_gradio_app`` takes ``auth=`` (its own login form, checked by a
callable we could give it), but keeps its sessions in memory (all lost at each restart),
guards only the routes Gradio serves (not the API beside it) and has no sign-out link
on the page; its ``auth_dependency=`` only asks who a request's user is.  So the form
and the session cookie are ours: ``GET /signin`` (a form in English or Chinese), ``POST
/signin`` (sets a signed session cookie), ``GET /signout``; Gradio's ``auth_dependency``
reads the cookie (:meth:`Accounts.user_of`), so the page's handlers see ``gr.Request.username``.

Who may do what with ``--auth-file`` (:class:`AccountsMiddleware`):

* the page and everything Gradio serves (its queue, uploads, its own API): a signed-in
  user; anyone else is sent to ``/signin`` (a browser's GET) or answered 401;
* the API routes (``/v1/...``, PAI-EAS ``POST /`` and the WebSocket, ``/docs``): the
  ``--api-token`` as today, or a signed-in user's cookie; without ``--api-token`` only the latter;
* ``GET /health`` and the sign-in routes stay open.

The session cookie (``chatllm_user``) is ``<payload>.<HMAC-SHA256>``, the payload naming
the user, the expiry and a fingerprint of the user's password hash: changing the
password or removing the user ends their sessions; the key is kept in the data folder,
so sessions survive a restart.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import os
import threading
import time
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, parse_qsl, quote, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Match, Mount
from starlette.concurrency import run_in_threadpool

from .accounts import MAX_PASSWORD_CHARS, AuthFile
from .api.admission import WorkLimiter
from .api.errors import ApiError, error_response
from .auth import OPEN_PATHS, presented_token, token_matches
from .i18n import page_language, t

USER_COOKIE = "chatllm_user"
#: How long a sign-in lasts (seconds): a week, as the token's page cookie.
SESSION_MAX_AGE_S = 7 * 24 * 3600
SIGNIN_PATHS = frozenset({"/signin", "/signout"})
#: Sign-ins that may wait for one of the two password checks running at once; more get "busy".
SIGNIN_WAITING = 8

Scope = dict[str, Any]


class Accounts:
    """The auth file as the server sees it: re-read when it changes (``users add`` needs no
    restart), passwords verified off the event loop, two at a time (scrypt takes 128 MiB
    and ~0.6 s each), at most :data:`SIGNIN_WAITING` more waiting (so a flood of sign-ins
    holds at most 10 worker threads; beyond, "busy, try again").

    Args:
        path: the auth file (``--auth-file``).
        secret: the key sessions are signed with (see :func:`webui.ui_conversations.browser_state_secret`).

    Raises:
        webui.accounts.AuthFileError: the file is missing or is not an auth file.
    """

    def __init__(self, path: str | Path, secret: str):
        self.path = Path(path)
        self._key = hmac.new(secret.encode(), b"chatllm-webui sign-in sessions", hashlib.sha256).digest()
        self._lock = threading.Lock()
        self._hashing = WorkLimiter(running=2, waiting=SIGNIN_WAITING)
        self._stamp: tuple | None = None
        self._file = AuthFile.load(self.path, missing_ok=False)
        self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def current(self) -> AuthFile:
        """The users now: the file re-read when its time, size or inode changed; a file that became
        unreadable keeps the last good users (and is logged by the next sign-in)."""
        stamp = self._file_stamp()
        with self._lock:
            if stamp is not None and stamp != self._stamp:
                try:
                    self._file = AuthFile.load(self.path, missing_ok=False)
                except Exception:  # noqa: BLE001 - half-edited by hand: keep the last good users
                    import logging

                    logging.getLogger(__name__).exception("could not re-read the auth file %s", self.path)
                self._stamp = stamp
            return self._file

    def verify(self, name: str, password: str) -> bool:
        """Whether ``name``/``password`` sign in (constant-time comparison, the same cost for an
        unknown name). Blocks: call it from a worker thread.

        Raises:
            webui.api.errors.ApiError: 503, :data:`SIGNIN_WAITING` sign-ins are waiting already.
        """
        with self._hashing.slot():
            return self.current().verify(name, password)

    def _fingerprint(self, name: str) -> str | None:
        user = self.current().users.get(name)
        return hashlib.sha256(user.password.encode()).hexdigest()[:16] if user else None

    def session_cookie(self, name: str, now: float | None = None) -> str:
        """The cookie value signing ``name`` in until ``now + SESSION_MAX_AGE_S``."""
        payload = json.dumps({"u": name, "e": int((now or time.time()) + SESSION_MAX_AGE_S),
                              "f": self._fingerprint(name)}, ensure_ascii=False, separators=(",", ":"))
        body = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
        return f"{body}.{self._sign(body)}"

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def user_of_cookie(self, value: str | None, now: float | None = None) -> str | None:
        """The user a cookie value signs in, or None (forged, expired, password changed, user removed)."""
        body, _, signature = (value or "").partition(".")
        if not body or not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            return None
        try:
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            name, expires, fingerprint = payload["u"], payload["e"], payload["f"]
        except (ValueError, KeyError, TypeError):
            return None
        if expires < (now or time.time()) or fingerprint is None or fingerprint != self._fingerprint(name):
            return None
        return name

    def user_of(self, request: Request) -> str | None:
        """Gradio's ``auth_dependency``: the signed-in user of ``request``, or None."""
        return self.user_of_cookie(request.cookies.get(USER_COOKIE))


def cookie_user(accounts: Accounts, scope: Scope) -> str | None:
    """The signed-in user of an ASGI request (HTTP or WebSocket), or None."""
    raw = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"cookie"), "")
    try:
        jar = SimpleCookie(raw)
    except Exception:  # noqa: BLE001 - a malformed Cookie header signs no one in
        return None
    return accounts.user_of_cookie(jar[USER_COOKIE].value) if USER_COOKIE in jar else None


class AccountsMiddleware:
    """Pure ASGI middleware enforcing the rules in the module docs.

    Args:
        app: the next ASGI app.
        accounts: the users.
        is_api: whether a request goes to an API route (:func:`api_route_matcher`).
        token: ``--api-token``, accepted on API routes (None: only signed-in users).
    """

    def __init__(self, app, accounts: Accounts, is_api: Callable[[Scope], bool], token: str | None = None):
        self.app = app
        self.accounts = accounts
        self.is_api = is_api
        self.token = token

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in OPEN_PATHS | SIGNIN_PATHS:
            return await self.app(scope, receive, send)
        if cookie_user(self.accounts, scope) is not None:
            return await self.app(scope, receive, send)
        api = self.is_api(scope)
        if api and self.token:
            # the token, or the page-session value a browser's ?token= used to set (webui.auth)
            presented, _ = presented_token(scope)
            if presented is not None and token_matches(presented, self.token):
                return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008, "reason": "sign in or send the API token"})
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not api and scope.get("method") == "GET" and "text/html" in headers.get("accept", ""):
            # back to the same address after signing in, less any ?token= (never into the sign-in URL or the log)
            query = urlencode([(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                                                            keep_blank_values=True) if k != "token"])
            target = scope.get("path", "/") + (f"?{query}" if query else "")
            location = f"{scope.get('root_path', '')}/signin?next={quote(target, safe='')}"
            return await RedirectResponse(location, status_code=303)(scope, receive, send)
        how = ("sign in at /signin, or send the header 'Authorization: <token>'" if api and self.token
               else "sign in at /signin")
        await error_response(401, f"not signed in: {how}", type="authentication_error",
                             code="invalid_api_key" if api else None,
                             headers={"WWW-Authenticate": "Bearer"} if api and self.token else None)(
            scope, receive, send)


def api_route_matcher(router) -> Callable[[Scope], bool]:
    """Whether a request fully matches one of ``router``'s own routes (the API, ``/docs``),
    not the Gradio page mounted beside them. Matched at request time, so routes added later count."""
    def is_api(scope: Scope) -> bool:
        return any(not isinstance(route, Mount) and route.matches(scope)[0] == Match.FULL
                   for route in router.routes)
    return is_api


def _safe_next(value: str | None) -> str:
    """Where to go after signing in: a path on this server only (no ``//host`` or ``http://``)."""
    value = value or "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _same_origin(request: Request) -> bool:
    """A sign-in form posted from this server (or by a client sending no Origin), not from another
    site: the ``Origin`` names the ``Host`` (or, behind a proxy, the ``X-Forwarded-Host``) asked."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    hosts = {request.headers.get("host", ""), request.headers.get("x-forwarded-host", "").split(",")[0].strip()}
    return urlsplit(origin).netloc in hosts - {""}


def signin_page(lang: str, next_url: str, error: str | None = None, name: str = "") -> str:
    """The sign-in form in ``lang`` (en / zh-CN); ``error`` shown above it; HTML-escaped throughout."""
    e = html.escape
    message = f'<p class="error" role="alert" id="signin-error">{e(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="{e(lang)}"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(t(lang, "signin_title"))} · ChatLLM-WebUI</title>
<style>body{{font-family:system-ui,sans-serif;background:#f6f6f7;display:flex;justify-content:center;padding-top:12vh}}
form{{background:#fff;padding:2em;border-radius:10px;box-shadow:0 1px 6px #0002;width:20em}}
label{{display:block;margin-top:1em}}input{{width:100%;box-sizing:border-box;padding:.5em;margin-top:.3em}}
button{{margin-top:1.5em;width:100%;padding:.6em;background:#f97316;color:#fff;border:0;border-radius:6px}}
.error{{color:#b91c1c;background:#fee2e2;padding:.5em;border-radius:6px}}</style></head>
<body><form method="post" action="signin" id="signin-form">
<h2>ChatLLM-WebUI</h2><p>{e(t(lang, "signin_prompt"))}</p>{message}
<input type="hidden" name="next" value="{e(next_url)}">
<label>{e(t(lang, "signin_name"))}<input name="username" id="signin-name" autocomplete="username" required
 value="{e(name)}" autofocus></label>
<label>{e(t(lang, "signin_password"))}<input name="password" id="signin-password" type="password"
 autocomplete="current-password" maxlength="{MAX_PASSWORD_CHARS}" required></label>
<button type="submit" id="signin-submit">{e(t(lang, "signin_button"))}</button></form></body></html>"""


def install_signin_routes(app, accounts: Accounts) -> None:
    """``GET/POST /signin`` and ``GET /signout`` on ``app`` (before the page is mounted at ``/``)."""

    def language(request: Request) -> str:
        return page_language(request.query_params.get("lang"), request.headers.get("accept-language"))

    @app.get("/signin", include_in_schema=False)
    def signin_form(request: Request) -> Response:
        return HTMLResponse(signin_page(language(request), _safe_next(request.query_params.get("next"))),
                            headers={"Cache-Control": "no-store"})

    @app.post("/signin", include_in_schema=False)
    async def signin(request: Request) -> Response:
        lang = language(request)
        if not _same_origin(request):
            return HTMLResponse(signin_page(lang, "/", t(lang, "signin_other_site")), status_code=403)
        form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
        name = (form.get("username") or [""])[0].strip()
        password = (form.get("password") or [""])[0][:MAX_PASSWORD_CHARS]
        next_url = _safe_next((form.get("next") or ["/"])[0])
        try:
            good = bool(name and password) and await run_in_threadpool(accounts.verify, name, password)
        except ApiError:  # too many sign-ins at once
            return HTMLResponse(signin_page(lang, next_url, t(lang, "signin_busy"), name), status_code=503,
                                headers={"Cache-Control": "no-store", "Retry-After": "5"})
        if not good:
            # one message for a wrong name and a wrong password: it tells neither apart
            return HTMLResponse(signin_page(lang, next_url, t(lang, "signin_failed"), name), status_code=401,
                                headers={"Cache-Control": "no-store"})
        response = RedirectResponse(request.scope.get("root_path", "") + next_url, status_code=303)
        secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"
        response.set_cookie(USER_COOKIE, accounts.session_cookie(name), max_age=SESSION_MAX_AGE_S, path="/",
                            httponly=True, samesite="lax", secure=secure)
        return response

    @app.get("/signout", include_in_schema=False)
    def signout(request: Request) -> Response:
        response = RedirectResponse(request.scope.get("root_path", "") + "/signin", status_code=303)
        response.delete_cookie(USER_COOKIE, path="/")
        return response
