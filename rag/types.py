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


#: Longest query a search takes, in characters. BM25 tokenising (jieba) grows faster than
#: linearly with the text: 64,000 characters took 17 s, 128,000 took 72 s (issue 16), while
#: a question is rarely over a few hundred; 4,096 takes well under 0.1 s.
MAX_QUERY_CHARS = 4096

#: Retrieval modes of :meth:`rag.store.KnowledgeBase.search`.
RETRIEVAL_MODES = ("hybrid", "dense", "bm25")


@dataclass
class SearchResult:
    """A chunk retrieved for a query.

    Attributes:
        chunk: the retrieved chunk.
        score: the score the results are ranked by; higher is better. What it
            is depends on ``retriever``:

            * ``"dense"``: cosine similarity of the query and chunk embeddings, in [-1, 1];
            * ``"bm25"``: the BM25 score, >= 0 and unbounded (grows with the
              query's length); compares chunks of one query only;
            * ``"hybrid"``: the fused score in [0, 1] (:func:`rag.fusion.convex_combination`);
              compares chunks of one query only;
            * ``"<mode>+rerank"``: the cross-encoder's score (its own scale, e.g.
              a probability in [0, 1] for bge-reranker).
        scores: every score known for this chunk, by name: ``"cosine"`` (always
            present; the score threshold applies to it), ``"bm25"``, ``"hybrid"``,
            ``"rerank"`` where computed.
        retriever: how it was ranked: ``"dense"``, ``"bm25"``, ``"hybrid"``,
            optionally followed by ``"+rerank"``.
    """

    chunk: Chunk
    score: float
    scores: dict[str, float] = field(default_factory=dict)
    retriever: str = "dense"

    @property
    def cosine(self) -> float:
        """Cosine similarity of query and chunk (``scores["cosine"]``; ``score`` for a dense result)."""
        return float(self.scores.get("cosine", self.score))

    def to_dict(self) -> dict[str, Any]:
        """JSON shape used by the page and the API: text, score, source, page, metadata,
        plus ``scores`` (name -> value, see the class) and ``retriever``."""
        d = asdict(self.chunk)
        d.pop("id")
        d["score"] = round(float(self.score), 4)
        d["scores"] = {k: round(float(v), 4) for k, v in (self.scores or {"cosine": self.score}).items()}
        d["retriever"] = self.retriever
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
