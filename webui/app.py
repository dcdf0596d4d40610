"""The ASGI app: FastAPI with the Gradio page mounted at ``/``.

The loaded model and knowledge base arrive ready-made in a
:class:`~webui.services.ChatService` and are kept in ``app.state.service``;
routes and page handlers read them from there, never from module globals.
"""
from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from .services import ChatService
from .ui import build_blocks

PAGE_CSS = "#demo-banner { background: #fff3cd; border: 1px solid #f0c36d; padding: 0.5em 1em; border-radius: 6px; }"


def create_app(service: ChatService) -> FastAPI:
    """Build the FastAPI app serving the page at ``/`` and ``GET /health``.

    Args:
        service: the loaded model and knowledge base, with the server settings.

    Returns:
        A FastAPI app for uvicorn (``uvicorn.run(app, host=..., port=...)``).
    """
    app = FastAPI(title="chatllm-webui", summary="Chat with a local model and a document knowledge base.")
    app.state.service = service

    @app.get("/health", tags=["server"])
    def health() -> dict:
        """Liveness and what is loaded: model name, demo flag, knowledge-base size in chunks."""
        svc: ChatService = app.state.service
        kb = svc.knowledge_base()
        return {"status": "ok", "model": svc.model.name, "demo": svc.model.is_demo,
                "knowledge_base": {"name": kb.directory.name, "chunks": len(kb),
                                   "embedding_model": kb.embedding_model}}

    page = build_blocks(service)
    # One generation at a time per event; the model itself serialises generate calls.
    page.queue(default_concurrency_limit=4)
    return gr.mount_gradio_app(app, page, path="/", css=PAGE_CSS, footer_links=["api", "settings"])
