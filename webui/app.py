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
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from .api import include_api
from .api.admission import AdmissionGate, WorkLimiter
from .api.errors import install_error_handlers
from .auth import TokenAuthMiddleware
from .signin import Accounts, AccountsMiddleware, api_route_matcher, install_signin_routes
from .limits import BodyLimitMiddleware
from .i18n import I18N
from .services import ChatService
from .ui import build_blocks
from .ui_conversations import browser_state_secret

PAGE_CSS = "#demo-banner { background: #fff3cd; border: 1px solid #f0c36d; padding: 0.5em 1em; border-radius: 6px; }"


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
    install_error_handlers(app)
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
        include_api(app)
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
