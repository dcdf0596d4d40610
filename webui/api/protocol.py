"""Wire models every protocol shares (the error shape, token counts, a retrieved
chunk) and the field checks more than one protocol's models use.

Each protocol's own request and reply models live in its package
(:mod:`webui.api.pai.protocol`, :mod:`webui.api.openai.protocol`,
:mod:`webui.api.knowledge.protocol`).
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


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


def no_bool_number(value: Any) -> Any:
    """A ``mode="before"`` check for a number field: pydantic's lax mode reads true/false
    as 1/0, but a boolean there is a client's mistake.

    Raises:
        ValueError: ``value`` is a boolean.
    """
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


class Usage(BaseModel):
    """Token counts of one answer, as the model counted them (OpenAI's shape)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


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


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape, used by every route: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorBody
