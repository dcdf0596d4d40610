"""The ASGI app: FastAPI serving the API, with the Gradio page mounted at ``/``.

The loaded model and knowledge bases arrive ready-made in a
:class:`~webui.services.ChatService` and are kept in ``app.state.service``;
routes and page handlers read them from there, never from module globals.
On ``/`` the API's ``POST`` and WebSocket routes come first; every other
request on ``/`` (the page, its assets, its own queue) goes to Gradio.
"""
from __future__ import annotations

from contextlib import asynccontextmanager

import gradio as gr
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from . import api_knowledge, api_openai, api_pai
from .api_common import AdmissionGate, ApiError, WorkLimiter, error_response
from .auth import TokenAuthMiddleware
from .signin import Accounts, AccountsMiddleware, api_route_matcher, install_signin_routes
from .limits import BodyLimitMiddleware
from .i18n import I18N
from .services import ChatService
from .ui import build_blocks
from .ui_conversations import browser_state_secret

PAGE_CSS = "#demo-banner { background: #fff3cd; border: 1px solid #f0c36d; padding: 0.5em 1em; border-radius: 6px; }"


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


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        # OpenAI answers 400 for any invalid parameter; elsewhere 422 (FastAPI's convention).
        status = 400 if request.url.path.startswith("/v1/chat/") else 422
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


def _document_openai_validation_status(app: FastAPI) -> None:
    """The OpenAI routes answer an invalid body with 400, as OpenAI does (see the
    validation handler), not FastAPI's 422: drop the 422 FastAPI adds to their OpenAPI
    operations (their 400 is documented by the route)."""
    default_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = default_openapi()
            for path, operations in schema.get("paths", {}).items():
                if path.startswith("/v1/chat/"):
                    for operation in operations.values():
                        operation.get("responses", {}).pop("422", None)
        return app.openapi_schema

    app.openapi = openapi


def _answer_unknown_api_paths(app: FastAPI) -> None:
    """404 (no such path) or 405 (path known, method not) under ``/v1`` in the API's error
    shape, not in Gradio's: without this the page mounted at ``/`` answers them."""
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

    @app.api_route("/v1/{rest:path}", methods=methods, include_in_schema=False)
    async def unknown_api_path(request: Request, rest: str):
        allowed = set()
        routes = [r for r in app.router.routes
                  if getattr(r, "endpoint", None) is not unknown_api_path and not isinstance(r, Mount)]
        for method in methods:  # which methods another route takes on this path
            probe = {**request.scope, "method": method}
            if any(route.matches(probe)[0] == Match.FULL for route in routes):
                allowed.add(method)
        if allowed:
            return error_response(405, f"{request.method} is not allowed on {request.url.path}: use "
                                       f"{', '.join(sorted(allowed))} (see /docs)",
                                  headers={"Allow": ", ".join(sorted(allowed))})
        return error_response(404, f"no API route {request.url.path}: see /docs for the routes",
                              type="not_found_error")


def create_app(service: ChatService) -> FastAPI:
    """Build the app: the API (unless ``--no-api``), the page (unless ``--api-only``),
    ``GET /health``, the access-token check when a token is configured, and with
    ``--auth-file`` the sign-in (:mod:`webui.signin`: the page needs a signed-in user, API
    routes the token or a signed-in user).

    Args:
        service: the loaded model and knowledge bases, with the server settings.

    Returns:
        A FastAPI app for uvicorn; its OpenAPI schema is at ``/openapi.json``.
    """
    settings = service.settings

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        close = getattr(service.model, "close", None)  # e.g. stop the batching loop
        if close is not None:
            close()

    app = FastAPI(title="chatllm-webui", version="0.1.0", lifespan=lifespan,
                  summary="Chat with a local model and document knowledge bases: PAI-EAS ChatLLM and OpenAI "
                          "protocols, knowledge-base endpoints.",
                  docs_url="/docs" if not settings.no_api else None)
    app.state.service = service
    app.state.gate = AdmissionGate(settings.max_queue)
    # searches and uploads: two at once (the CPU left to generation), the rest wait their turn
    app.state.retrieval = WorkLimiter(running=2, waiting=settings.max_queue)
    _install_error_handlers(app)
    accounts = None
    if settings.auth_file is not None:  # before the page is mounted at "/", which would take these paths
        accounts = Accounts(settings.auth_file, browser_state_secret(settings.data_folder, "signin-secret"))
        app.state.accounts = accounts
        install_signin_routes(app, accounts)

    @app.get("/health", tags=["server"])
    def health() -> dict:
        """Liveness and what is loaded: model name, demo flag, default knowledge base, and the
        API's generation requests in flight (``active`` of ``max_queue``; ``refused`` with 503 so far)."""
        svc: ChatService = app.state.service
        name = svc.settings.knowledge_base
        # never (re-)creates the default base: a deleted one stays deleted until used
        kb = svc.knowledge_bases.get(name) if svc.knowledge_bases.exists(name) else None
        return {"status": "ok", "model": svc.model.name, "demo": svc.model.is_demo,
                "knowledge_base": {"name": name, "chunks": len(kb) if kb is not None else 0,
                                   "embedding_model": svc.knowledge_bases.embedder.name},
                "generation": app.state.gate.stats()}

    if not settings.no_api:
        app.include_router(api_openai.router)
        app.include_router(api_knowledge.router)
        app.include_router(api_pai.router)
        _document_openai_validation_status(app)
        _answer_unknown_api_paths(app)
        api_knowledge.clear_stale_uploads(settings.knowledge_dir)
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(settings.max_request_mb * (1 << 20)))
    # No cross-origin reads: with a CORSMiddleware of ours, Gradio leaves CORS to it (its own
    # would give any http://localhost:* page credentialed access to a server on localhost).
    app.add_middleware(CORSMiddleware, allow_origins=[], allow_credentials=False)
    # added last, so it runs first: no body is read for a client without the token or a sign-in
    if accounts is not None:
        app.add_middleware(AccountsMiddleware, accounts=accounts, is_api=api_route_matcher(app.router),
                           token=settings.api_token)
    elif settings.api_token:
        app.add_middleware(TokenAuthMiddleware, token=settings.api_token)
    if settings.api_only:
        return app
    page = build_blocks(service)
    # Beyond --max-queue waiting events, Gradio answers "queue is full" instead of piling them up.
    page.queue(default_concurrency_limit=4, max_size=settings.max_queue)
    # Gradio accepts a client-named FileData path only when it is in its upload folder, but
    # checks that only for apps it launched itself (processing_utils._check_allowed); a
    # mounted app must say it runs, or any server file could be fed to the page (issue 16).
    page.has_launched = True
    return gr.mount_gradio_app(app, page, path="/", css=PAGE_CSS, footer_links=["api", "settings"],
                               max_file_size=f"{settings.max_upload_mb}mb", i18n=I18N,
                               auth_dependency=accounts.user_of if accounts is not None else None)
