"""Vector-store backends behind one interface (:mod:`rag.stores.base`), one module each,
chosen by name (``--vector-store``); a backend's module is imported only when used.

========  ==========================================================================
faiss     in-process FAISS index, saved with the knowledge base's generations (default)
milvus    Milvus through ``pymilvus.MilvusClient``: Milvus Lite from a file path, or a
          Milvus standalone server / cluster at ``http(s)://host:19530``
========  ==========================================================================
"""
from __future__ import annotations

import importlib
from typing import Any

from .base import QueryMode, StoredChunk, VectorStore, VectorStoreQuery, VectorStoreResult

#: Backend name -> "module:factory" (imported lazily).
BACKENDS = {"faiss": "rag.stores.faiss:FaissVectorStore", "milvus": "rag.stores.milvus:MilvusVectorStore"}


def make_store(backend: str, **options: Any) -> VectorStore:
    """A new store of ``backend`` (see :data:`BACKENDS`) made with ``options``.

    Raises:
        ValueError: an unknown backend; the message lists the known ones.
        ImportError: the backend's package is missing; the message names what to install.
    """
    try:
        target = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown vector store {backend!r}: use one of {', '.join(BACKENDS)}") from None
    module, _, factory = target.partition(":")
    return getattr(importlib.import_module(module), factory)(**options)


__all__ = ["BACKENDS", "QueryMode", "StoredChunk", "VectorStore", "VectorStoreQuery", "VectorStoreResult",
           "make_store"]
