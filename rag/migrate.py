"""Move a knowledge base's vectors to another vector-store backend without re-embedding:
``python -m rag migrate --kb NAME --to milvus`` (and ``--to faiss`` back).

The chunks and their vectors are copied in batches into the new store while the old one
keeps serving searches; only when every chunk is in does a commit switch the manifest to
the new backend (atomic, :mod:`rag.persistence`). A crash before that leaves the knowledge
base on its old backend, untouched; the old backend's copy (a Milvus collection) is
removed after the switch.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from .store import KnowledgeBase
from .stores import StoredChunk, VectorStore

logger = logging.getLogger(__name__)

#: Chunks copied per batch (vectors of 1,000 x 1,024 floats = 4 MB).
MIGRATE_BATCH = 1000


def migrate(kb: KnowledgeBase, target: VectorStore, factory: Callable[[int], VectorStore] | None = None,
            progress: Callable[[int, int], None] | None = None) -> int:
    """Copy ``kb``'s chunks and vectors into ``target`` and switch ``kb`` to it.

    Args:
        kb: an open knowledge base (any backend).
        target: an empty store of the new backend with the same dimension (leftovers of an
            earlier interrupted migration are removed first).
        factory: how ``kb`` makes a store of the new backend later (None: FAISS).
        progress: called as ``progress(copied, total)`` after each batch.

    Returns:
        The number of chunks copied.

    Raises:
        ValueError: ``target`` is the backend ``kb`` already uses, or another dimension.
        RuntimeError: the copy came out incomplete (nothing is switched).
    """
    source = kb._store
    if target.name == source.name:
        raise ValueError(f"knowledge base {kb.directory.name!r} already keeps its vectors in {source.name}")
    if target.dim != source.dim:
        raise ValueError(f"the new store holds {target.dim}-dimensional vectors, the knowledge base {source.dim}")
    with kb._writing():
        if target.count():
            target.delete(target.ids().tolist())
        with kb._lock:
            ids = sorted(kb._chunks)
        for start in range(0, len(ids), MIGRATE_BATCH):
            part = ids[start:start + MIGRATE_BATCH]
            with kb._lock:
                vectors = source.vectors(part)
                chunks = [StoredChunk(cid, kb._chunks[cid].text, kb._chunks[cid].source) for cid in part]
            target.add(np.asarray(part, dtype=np.int64), vectors, chunks if target.stores_text else None)
            if progress is not None:
                progress(min(start + MIGRATE_BATCH, len(ids)), len(ids))
        if target.count() != len(ids):
            raise RuntimeError(f"only {target.count()} of {len(ids)} chunks arrived in {target.name}; "
                               f"the knowledge base stays on {source.name}: run the migration again")
        with kb._lock:
            kb._store, kb._store_factory = target, factory
            try:
                kb._commit()
            except BaseException:
                kb._store, kb._store_factory = source, kb._store_factory
                raise
    logger.info("knowledge base %s: %d chunk(s) moved from %s to %s", kb.directory.name, len(ids), source.name,
                target.name)
    drop = getattr(source, "drop", None)
    if drop is not None:
        drop()
    return len(ids)
