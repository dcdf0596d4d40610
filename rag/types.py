"""Plain data types shared by the knowledge-base code, the page and the API.

In the manner of llama_index's ``vector_stores/types.py``: FAISS holds vectors
only; a :class:`Chunk` (text + metadata) lives beside it, found by its id.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass
class Chunk:
    """One piece of a document, as stored in a knowledge base.

    Attributes:
        id: position-independent integer id; the FAISS index maps vectors to it.
        text: the chunk's text.
        source: the file name it came from (no folder), e.g. ``"README.md"``.
        page: 1-based page number for PDFs, else None.
        metadata: anything else the loader recorded (e.g. ``{"chunk_index": 3}``).
    """

    id: int
    text: str
    source: str
    page: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchResult:
    """A chunk retrieved for a query.

    Attributes:
        chunk: the retrieved chunk.
        score: cosine similarity of the query and chunk embeddings, in [-1, 1];
            higher is closer.
    """

    chunk: Chunk
    score: float

    def to_dict(self) -> dict[str, Any]:
        """JSON shape used by the page and the API: text, score, source, page, metadata."""
        d = asdict(self.chunk)
        d.pop("id")
        d["score"] = round(float(self.score), 4)
        return d


@dataclass
class FileReport:
    """What happened to one uploaded file.

    Attributes:
        name: the file name as uploaded.
        status: ``"added"`` (chunks stored), ``"skipped"`` (nothing new to store)
            or ``"refused"`` (could not be used; see ``reason``).
        chunks: number of chunks added.
        reason: why the file was refused or skipped, in words that name the fix.
    """

    name: str
    status: Literal["added", "skipped", "refused"]
    chunks: int = 0
    reason: str | None = None
