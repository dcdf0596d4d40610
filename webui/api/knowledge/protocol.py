"""Wire models of the knowledge-base endpoints under ``/v1/knowledge``."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rag.types import MAX_QUERY_CHARS

from ..protocol import Source


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
