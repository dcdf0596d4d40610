"""Request and response models of the HTTP API (pydantic), kept apart from the routes.

Two wire protocols are spoken:

* the PAI-EAS ChatLLM protocol (``POST /`` and the WebSocket at ``/``), as the
  request scripts published with PAI-EAS and langchain-community's
  ``PaiEasEndpoint`` / ``PaiEasChatEndpoint`` send it: ``prompt``,
  ``system_prompt``, ``history`` as ``[user, assistant]`` pairs, sampling
  fields, ``use_stream_chat``; unknown fields and nulls are ignored and booleans
  may arrive as strings ("True");
* the OpenAI Chat Completions protocol (``/v1/chat/completions``, ``/v1/models``),
  field names and shapes as in OpenAI's API reference.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rag.types import MAX_QUERY_CHARS

#: Most earlier rounds a PAI-EAS request may carry in ``history`` (the model sees only the
#: last ``--max_round`` of them anyway); more is refused with 422 rather than echoed back.
MAX_HISTORY_ROUNDS = 256

# --------------------------------------------------------------------------- PAI-EAS


def check_unicode(text: str) -> str:
    """``text`` if it is valid Unicode text.

    Raises:
        ValueError: it holds a lone UTF-16 surrogate (JSON ``"\\ud800"``), which
            no tokenizer, reply or export file can encode.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"holds a lone UTF-16 surrogate at position {exc.start} (invalid Unicode): "
                         "send valid UTF-8 text") from None
    return text


def _NULLABLE_LIST(schema: dict) -> None:
    """JSON schema: the field may also be null (the protocol's clients send null for 'not given')."""
    if "anyOf" not in schema:
        schema["anyOf"] = [{k: schema.pop(k) for k in ("type", "items", "maxItems") if k in schema},
                           {"type": "null"}]


def _STOP_SCHEMA(schema: dict) -> None:
    """JSON schema of ``stop``: a list of strings, one string, or null."""
    schema.setdefault("anyOf", []).append({"type": "string"})


def _BOOL_OR_STRING(schema: dict) -> None:
    """JSON schema of a flag: PAI-EAS clients also send booleans as strings ("True", "0") or as
    0/1, and null for "not given"."""
    options = [o for o in (schema.pop("anyOf", None) or [{"type": schema.pop("type", "boolean")}])
               if o.get("type") != "null"]
    schema["anyOf"] = options + [{"type": "string", "description": "true/false, 1/0, yes/no"},
                                 {"type": "number", "enum": [0, 1]}, {"type": "null"}]


class PaiChatRequest(BaseModel):
    """One ChatLLM request (``POST /`` body, or one WebSocket message).

    ``history`` holds earlier rounds as ``[user, assistant]`` pairs, oldest first.
    Sampling fields left out (or null) take the server's defaults (the flags).
    ``langchain`` answers from the knowledge base ``knowledge_base`` (default:
    the server's default one) and adds ``sources`` to the reply.
    """

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, description="the user's message")
    system_prompt: str | None = None
    history: list[tuple[str, str]] = Field(default_factory=list, max_length=MAX_HISTORY_ROUNDS,
                                           description="earlier rounds as [user, assistant] pairs (null: none)",
                                           json_schema_extra=_NULLABLE_LIST)
    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    do_sample: bool | None = Field(None, json_schema_extra=_BOOL_OR_STRING)
    use_cache: bool | None = Field(None, description="accepted for compatibility; the KV cache is always used",
                                   json_schema_extra=_BOOL_OR_STRING)
    use_stream_chat: bool = Field(False, json_schema_extra=_BOOL_OR_STRING)
    langchain: bool = Field(False, json_schema_extra=_BOOL_OR_STRING)
    stop: list[str] | None = Field(None, description="strings that end the answer (one string is taken as [it])",
                                   json_schema_extra=_STOP_SCHEMA)
    knowledge_base: str | None = Field(None, description="knowledge base for langchain mode")
    retrieval_top_k: int | None = Field(None, ge=1, le=100, description="chunks retrieved in langchain mode")
    score_threshold: float | None = Field(None, ge=-1, le=1, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        # LangChain sends "stop": null and "stop_sequences": []: a null means "not given".
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @field_validator("max_new_tokens", "temperature", "top_k", "top_p", "retrieval_top_k", "score_threshold",
                     mode="before")
    @classmethod
    def _no_bool_numbers(cls, v: Any) -> Any:
        # pydantic's lax mode reads true/false as 1/0; a boolean here is a client's mistake
        if isinstance(v, bool):
            raise ValueError("must be a number, not true/false")
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("history", mode="before")
    @classmethod
    def _pairs(cls, v: Any) -> Any:
        """Accept ``[[u, a], ...]`` (the protocol) and ``[{"role", "content"}, ...]`` (OpenAI style)."""
        if isinstance(v, list) and v and all(isinstance(m, dict) for m in v):
            users = [m.get("content", "") for m in v if m.get("role") == "user"]
            answers = [m.get("content", "") for m in v if m.get("role") == "assistant"]
            return list(zip(users, answers))
        return v


class Source(BaseModel):
    """A retrieved chunk shown with an answer: file, page (PDFs), score, text.

    ``score`` is what the results are ranked by (cosine for dense, BM25 for bm25, the
    fused 0-1 score for hybrid, the cross-encoder's for reranked); ``scores`` holds every
    score computed (always ``cosine``); ``retriever`` names the one that ranked them.
    """

    source: str
    page: int | None = None
    score: float
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    scores: dict[str, float] = Field(default_factory=dict)
    retriever: str | None = None


class Usage(BaseModel):
    """Token counts of one answer, as the model counted them (OpenAI's shape)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class PaiChatResponse(BaseModel):
    """The reply: the answer (or, when streaming, the text added since the last
    chunk) and the history with this round appended."""

    response: str
    history: list[tuple[str, str]]
    sources: list[Source] | None = None
    #: In the last reply only: how the model stopped (``stop`` or ``length``) and its token counts.
    finish_reason: Literal["stop", "length"] | None = None
    usage: Usage | None = None


# --------------------------------------------------------------------------- OpenAI


class ContentPart(BaseModel):
    """A part of a message's content; only text parts are understood."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One message of an OpenAI chat request. ``developer`` counts as ``system``."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    @field_validator("content")
    @classmethod
    def _valid_unicode(cls, v: Any) -> Any:
        texts = [v] if isinstance(v, str) else [p.text for p in v or [] if p.text]
        for text in texts:
            check_unicode(text)
        return v

    def text(self) -> str:
        """The message's text; list content has its text parts joined.

        Raises:
            ValueError: a non-text part (image, audio): this server serves text models.
        """
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text":
                raise ValueError(f"content part of type {part.type!r} is not supported: send text parts only")
            parts.append(part.text or "")
        return "".join(parts)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` body (OpenAI API reference; unknown fields ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="only one choice per request is generated")
    seed: int | None = None

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if v[-1].role != "user":
            raise ValueError(f"the last message must come from the user, got role {v[-1].role!r}")
        return v


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


def completion_id() -> str:
    """A fresh ``chatcmpl-…`` id."""
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletion(BaseModel):
    """``POST /v1/chat/completions`` reply when ``stream`` is false."""

    id: str = Field(default_factory=completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed completion (``data: {...}``)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "chatllm-webui"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorBody


# --------------------------------------------------------------------------- knowledge


class FileReportModel(BaseModel):
    """What happened to one uploaded file."""

    name: str
    status: Literal["added", "skipped", "refused"]
    chunks: int = 0
    reason: str | None = None


class UploadReply(BaseModel):
    knowledge_base: str
    files: list[FileReportModel]


class FileInfo(BaseModel):
    name: str
    chunks: int
    size: int = Field(description="bytes")
    added_at: str = Field(description="ISO-8601, UTC")
    sha256: str


class FileList(BaseModel):
    knowledge_base: str
    files: list[FileInfo]


class KnowledgeBaseDeleteReply(BaseModel):
    knowledge_base: str
    deleted: bool = True
    files: int
    chunks: int


class DeleteReply(BaseModel):
    knowledge_base: str
    deleted: str
    chunks_removed: int


class SearchRequest(BaseModel):
    """``POST /v1/knowledge/{kb}/search``; ``mode`` defaults to the server's ``--retrieval-mode``."""

    model_config = ConfigDict(extra="ignore")
    mode: Literal["hybrid", "dense", "bm25"] | None = None
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    top_k: int = Field(3, ge=1, le=100)
    score_threshold: float | None = Field(None, ge=-1, le=1, allow_inf_nan=False)


class SearchReply(BaseModel):
    results: list[Source]


class KnowledgeBaseInfo(BaseModel):
    name: str
    files: int
    chunks: int
    embedding_model: str


class KnowledgeBaseList(BaseModel):
    knowledge_bases: list[KnowledgeBaseInfo]
