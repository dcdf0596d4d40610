"""The HTTP API, one package per protocol in the style of vLLM's ``entrypoints``:

* :mod:`.lifecycle` -- the one lifecycle of a generation request (admission, starting the
  model off the event loop, streaming or collecting, stopping when the client goes away,
  export, in-band errors), used by every protocol;
* :mod:`.errors` -- the error shape and the one table mapping exceptions to status codes;
* :mod:`.admission` -- the generation queue limit and the retrieval work limiter;
* :mod:`.streaming` -- a blocking iterator streamed from async code;
* :mod:`.protocol` -- the wire models the protocols share;
* :mod:`.pai`, :mod:`.openai`, :mod:`.knowledge` -- each protocol's wire models
  (``protocol``), its encoder and request reading (``serving``) and its routes (``router``).
"""
from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.routing import Match, Mount

from .errors import error_response
from .knowledge.router import clear_stale_uploads
from .knowledge.router import router as knowledge_router
from .openai.router import document_validation_status
from .openai.router import router as openai_router
from .pai.router import router as pai_router


def include_api(app: FastAPI) -> None:
    """Add the API's routes to ``app`` (whose ``state`` holds ``service``, ``gate`` and
    ``retrieval``): OpenAI under ``/v1``, knowledge bases under ``/v1/knowledge``, PAI-EAS on
    ``/``, and the API's own 404/405 for any other ``/v1`` path. Removes the uploads a killed
    server left behind."""
    app.include_router(openai_router)
    app.include_router(knowledge_router)
    app.include_router(pai_router)
    document_validation_status(app)
    _answer_unknown_api_paths(app)
    clear_stale_uploads(app.state.service.settings.knowledge_dir)


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
