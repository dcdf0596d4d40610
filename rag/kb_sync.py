"""Keeping a vector store that holds its own vectors (Milvus) in step with the knowledge
base's saved state. FAISS needs none of this: its index is saved inside each generation.

The rule: the saved state (the generation the manifest names) is the truth, and the
backend may only hold *more* rows than it names, never fewer, at any moment a process can
die. So a file's new rows go in before the commit that names them (until then they are
extras), and the rows of a replaced or deleted file go out only after the commit that
stops naming them. At the next start :meth:`StoreSync._reconcile` deletes the extras.
Mixed into :class:`rag.store.KnowledgeBase`."""
from __future__ import annotations

import logging

from .stores import VectorStore
from .stores.faiss import FaissVectorStore
from .types import Chunk

logger = logging.getLogger("rag.store")


class StoreSync:
    """Reconciling and deferred deletes for :class:`rag.store.KnowledgeBase` (a mixin: the
    attributes ``_store``, ``_directory`` and ``_stale_ids`` are set by its ``__init__``)."""

    def _reconcile(self, store: VectorStore, file_data: list[dict], chunks: dict[int, Chunk]
                   ) -> tuple[list[dict], dict[int, Chunk]]:
        """Make a backend that keeps its own vectors agree with the saved state: rows no
        saved chunk names (an upload killed before its commit, or a replaced or deleted
        file's rows killed before their delete) are deleted from the store; a file with
        chunks missing from the store (lost by the backend) is dropped."""
        stored = set(store.ids().tolist())
        extra = stored - set(chunks)
        if extra:
            logger.info("knowledge base %s: removing %d chunk(s) no saved file names (an interrupted upload "
                        "or delete) from %s", self._directory.name, len(extra), store.name)
            store.delete(sorted(extra))
        broken = {c.source for cid, c in chunks.items() if cid not in stored}
        if broken:
            logger.warning("knowledge base %s: %s lost chunks in %s (interrupted); removed, upload again",
                           self._directory.name, ", ".join(sorted(broken)), store.name)
            store.delete([cid for cid, c in chunks.items() if c.source in broken and cid in stored])
            chunks = {cid: c for cid, c in chunks.items() if c.source not in broken}
            file_data = [f for f in file_data if f["name"] not in broken]
        return file_data, chunks

    def _forget_vectors(self, ids: list[int]) -> None:
        """Drop the rows of a replaced or deleted file: from FAISS now (the index is saved
        with the next generation), from a backend that keeps them itself once the next
        commit no longer names them (:meth:`_delete_stale`)."""
        if isinstance(self._store, FaissVectorStore):
            self._store.delete(ids)
        else:
            self._stale_ids.extend(ids)

    def _delete_stale(self) -> None:
        """After a commit: delete the rows it stopped naming. A failure only leaves extras,
        which :meth:`_reconcile` removes at the next start, so it is logged, not raised."""
        stale, self._stale_ids = self._stale_ids, []
        if stale:
            try:
                self._store.delete(stale)
            except Exception:  # noqa: BLE001 - the commit stands; the rows are unnamed extras
                logger.exception("knowledge base %s: could not delete %d replaced chunk(s) from %s; "
                                 "they are removed at the next start", self._directory.name, len(stale),
                                 self._store.name)

    def drop_store(self) -> None:
        """Remove what the vector store keeps outside the folder (a Milvus collection); the
        registry calls it when the knowledge base is deleted."""
        drop = getattr(self._store, "drop", None)
        if drop is not None:
            drop()
