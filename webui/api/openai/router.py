"""The OpenAI protocol's routes: ``GET /v1/models`` and ``POST /v1/chat/completions``
(through the one request lifecycle, :mod:`webui.api.lifecycle`), so the ``openai``
client and LangChain's ``ChatOpenAI`` work."""
from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Depends, FastAPI, Request

from ...services import ChatService
from ..admission import get_service
from ..errors import OPENAI_400_PREFIX
from ..lifecycle import serve_http
from ..protocol import ErrorResponse
from .protocol import ChatCompletion, ChatCompletionRequest, ModelCard, ModelList
from .serving import FIELDS, OpenAIEncoder, begin, check_model, to_messages, to_params

router = APIRouter(prefix="/v1", tags=["OpenAI"])
ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}}
GENERATION_ERRORS = {**ERRORS, 500: {"model": ErrorResponse},
                     503: {"model": ErrorResponse, "description": "too many requests in flight (--max-queue); "
                                                                  "retry after the Retry-After header's seconds"}}


@router.get("/models", response_model=ModelList, responses=ERRORS)
def list_models(service: ChatService = Depends(get_service)) -> ModelList:
    """The one model this server serves."""
    return ModelList(data=[ModelCard(id=service.model.name)])


@router.post("/chat/completions", response_model=ChatCompletion, responses=GENERATION_ERRORS)
async def chat_completions(req: ChatCompletionRequest, request: Request, service: ChatService = Depends(get_service)):
    """Answer a conversation; with ``stream`` the reply is SSE chunks ending in ``data: [DONE]``.
    503 with ``Retry-After`` when ``--max-queue`` requests are already in flight."""
    model = check_model(service, req)
    messages = to_messages(req)
    params = to_params(service, req)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return await serve_http(request, partial(begin, service, messages, params), OpenAIEncoder(model, include_usage),
                            stream=req.stream, **FIELDS)


def document_validation_status(app: FastAPI) -> None:
    """The OpenAI routes answer an invalid body with 400, as OpenAI does (see
    :func:`~webui.api.errors.install_error_handlers`), not FastAPI's 422: drop the 422
    FastAPI adds to their OpenAPI operations (their 400 is documented by the route)."""
    default_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = default_openapi()
            for path, operations in schema.get("paths", {}).items():
                if path.startswith(OPENAI_400_PREFIX):
                    for operation in operations.values():
                        operation.get("responses", {}).pop("422", None)
        return app.openapi_schema

    app.openapi = openapi
