"""The vector-store interface every backend implements (in the manner of llama_index's
``vector_stores/types.py``): add chunks with their vectors, delete by ids, query, count,
persist and close; capability flags say what a backend does itself.

Vectors are float32, L2-normalised, shape ``(n, dim)``; ids are the knowledge base's int64
chunk ids; scores are inner products (= cosine) for dense queries and BM25 for keyword ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


class QueryMode(str, Enum):
    """How a :class:`VectorStoreQuery` ranks: by the embedding, by keywords, or both."""

    DENSE = "dense"
    KEYWORD = "bm25"
    HYBRID = "hybrid"


@dataclass
class VectorStoreQuery:
    """One query.

    Attributes:
        vector: the query embedding, float32, shape ``(dim,)`` (dense and hybrid).
        text: the query text (keyword and hybrid; for backends with ``native_keyword``).
        top_k: most results (>= 1).
        mode: see :class:`QueryMode`.
        sources: if given, only chunks of these file names.
    """

    vector: np.ndarray | None = None
    text: str | None = None
    top_k: int = 10
    mode: QueryMode = QueryMode.DENSE
    sources: Sequence[str] | None = None


@dataclass
class VectorStoreResult:
    """Ids best first, with their scores (same length)."""

    ids: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


@dataclass
class StoredChunk:
    """What a backend with ``stores_text`` keeps of a chunk beside its vector."""

    id: int
    text: str
    source: str


@runtime_checkable
class VectorStore(Protocol):
    """A vector store behind one knowledge base.

    Attributes:
        name: the backend's name as ``--vector-store`` spells it (``"faiss"``, ``"milvus"``).
        dim: the vectors' dimension.
        stores_text: the backend keeps chunk text itself (Milvus), not only vectors (FAISS).
        native_keyword: the backend runs keyword (BM25) and hybrid queries itself.
    """

    name: str
    dim: int
    stores_text: bool
    native_keyword: bool

    def add(self, ids: np.ndarray, vectors: np.ndarray, chunks: Sequence[StoredChunk] | None = None) -> None:
        """Store ``vectors`` (n, dim) under ``ids`` (n,); ``chunks`` for backends that keep text."""

    def delete(self, ids: Sequence[int]) -> None:
        """Remove these ids (unknown ids are ignored)."""

    def query(self, query: VectorStoreQuery) -> VectorStoreResult:
        """The best ``query.top_k`` ids for ``query``.

        Raises:
            ValueError: a mode the backend cannot run (keyword without ``native_keyword``).
        """

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of ``ids``, shape ``(len(ids), dim)``, in that order.

        Raises:
            KeyError: an id that is not stored.
        """

    def ids(self) -> np.ndarray:
        """Every stored id (int64, any order)."""

    def count(self) -> int:
        """How many vectors are stored."""

    def close(self) -> None:
        """Release the backend's resources (connections, files)."""
