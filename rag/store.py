"""The knowledge base: files -> chunks -> embeddings in a vector store, plus search.

A :class:`KnowledgeBase` is a folder (its layout and crash safety in :mod:`rag.persistence`)
and a vector store (:mod:`rag.stores`: FAISS in the folder, or Milvus). Its parts live in
one module each: the on-disk state and write lifecycle (:mod:`rag.kb_state`), a Milvus store
kept in step with it (:mod:`rag.kb_sync`), adding and deleting files (:mod:`rag.ingest`),
search (:mod:`rag.retrieval`). Chunk text and metadata
live beside the vectors in JSON, found by chunk id, and so do each chunk's BM25 tokens
(:mod:`rag.keywords`).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import persistence as disk
from .ingest import EMBED_BATCH, UNCHANGED_REASON, Ingestion  # noqa: F401
from .kb_state import (EmbeddingMismatchError, KnowledgeBaseClosedError, KnowledgeBaseCorruptError,  # noqa: F401
                       KnowledgeBaseState, UnknownFile, VectorStoreMismatchError, _utc_now, embedding_mismatch,
                       recorded_embedding_model)
from .keywords import KeywordIndex
from .retrieval import HYBRID_CANDIDATES, Retrieval  # noqa: F401
from .splitter import chunk_settings, make_text_splitter
from .stores import VectorStore
from .stores.faiss import (APPROXIMATE_INDEX_MIN_CHUNKS, IVF_NPROBE, FaissVectorStore, build_index,  # noqa: F401
                           empty_index, index_ids, ivf_lists)
from .types import Chunk

if TYPE_CHECKING:
    from .embeddings import Embedder

logger = logging.getLogger(__name__)


class KnowledgeBase(KnowledgeBaseState, Ingestion, Retrieval):
    """A folder of documents, chunked, embedded and searchable.

    Create or load one with :meth:`open`. All methods are thread-safe: a lock
    serialises mutation and search; the slow parts of adding a file (reading,
    splitting, embedding) run outside it, so searches are not blocked for long.

    Writers (adding and deleting files) take turns, also across processes: each holds
    the folder's lock (:func:`rag.persistence.folder_lock`) and first loads whatever
    another process (``python -m rag ingest``, a second server) committed meanwhile, so
    no one's files are lost; searches load such a newer state too. After :meth:`close`
    (the knowledge base is deleted) the object never writes again.
    """

    def __init__(self, directory: Path, embedder: "Embedder", chunk_size: int | None, chunk_overlap: int | None,
                 approximate_from: int = APPROXIMATE_INDEX_MIN_CHUNKS,
                 store_factory: "Callable[[int], VectorStore] | None" = None, chunk_unit: str | None = None):
        """Use :meth:`open`; this only sets up an empty, unsaved state."""
        if isinstance(approximate_from, bool) or not isinstance(approximate_from, int) or approximate_from < 1:
            raise ValueError(f"approximate_from must be an integer >= 1, got {approximate_from!r}")
        self._store_factory = store_factory
        self._directory = directory
        self._embedder = embedder
        chunk_size, chunk_overlap, chunk_unit = chunk_settings(embedder, chunk_size, chunk_overlap, chunk_unit)
        self._splitter = make_text_splitter(chunk_size, chunk_overlap, chunk_unit,
                                            getattr(embedder, "tokenizer", None))
        self._chunk_size = chunk_size
        self._chunk_overlap = chunk_overlap
        self._chunk_unit = chunk_unit
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()  # one writer of this object at a time (see _writing)
        self._closing = threading.Event()  # set by close(): running writes stop at the next file/batch
        self._closed = False
        self._stamp: tuple[int, int] | None = None  # the manifest's (inode, mtime_ns) when last read
        self._approximate_from = approximate_from
        self._store: VectorStore = self._new_store(embedder.dim)
        self._stale_ids: list[int] = []  # rows to delete from a self-storing store after the next commit
        self._chunks: dict[int, Chunk] = {}
        self._keywords = KeywordIndex()
        self._files: dict[str, dict[str, Any]] = {}
        self._next_id = 0
        self._generation: str | None = None
        self._created_at = _utc_now()

    # ------------------------------------------------------------------ open

    @classmethod
    def open(cls, directory: str | Path, embedder: "Embedder", *, chunk_size: int | None = None,
             chunk_overlap: int | None = None, approximate_from: int = APPROXIMATE_INDEX_MIN_CHUNKS,
             store_factory: "Callable[[int], VectorStore] | None" = None,
             chunk_unit: str | None = None) -> "KnowledgeBase":
        """Open the knowledge base in ``directory``, creating it if missing.

        Args:
            directory: its folder; created (with parents) if missing.
            embedder: the embedding model (see :func:`rag.load_embedder`); must
                be the one the knowledge base was built with.
            chunk_size, chunk_overlap, chunk_unit: splitter settings for files added
                from now on; None picks the embedder's defaults (:func:`rag.splitter.chunk_settings`:
                tokens of its tokenizer, as many as it embeds).
            approximate_from: chunks from which dense search uses an IVF index
                (:func:`build_index`); it switches when files are added or deleted
                (back to flat below half of it), not on opening. FAISS only.
            store_factory: makes the vector store for a dimension (see :mod:`rag.stores`);
                None: FAISS, saved with the generations.

        Raises:
            EmbeddingMismatchError: the knowledge base holds chunks embedded by
                another model (name or dim). An empty one adopts ``embedder``.
            VectorStoreMismatchError: it was built on another vector store backend.
            KnowledgeBaseCorruptError: its files are unreadable or inconsistent.
            ValueError: bad chunk settings or ``approximate_from``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if store_factory is not None:
            _check_recorded_model(directory, embedder, store_factory)
        kb = cls(directory, embedder, chunk_size, chunk_overlap, approximate_from, store_factory, chunk_unit)
        manifest_path = directory / disk.MANIFEST_NAME
        with disk.folder_lock(directory), kb._lock:
            if manifest_path.exists():
                kb._load()
                kb._tidy_file_copies()
            else:
                logger.info("creating knowledge base at %s (embedding model %s, dim %d)",
                            directory, embedder.name, embedder.dim)
                kb._commit()
        return kb

    def files(self) -> list[dict[str, Any]]:
        """The stored files, oldest first: dicts with "name", "chunks" (count),
        "size" (bytes of the original file), "added_at" (ISO-8601 UTC) and "sha256" (hex)."""
        self._refresh()
        with self._lock:
            return [{k: f[k] for k in ("name", "chunks", "size", "added_at", "sha256")}
                    for f in self._files.values()]

    def __len__(self) -> int:
        """Number of chunks stored."""
        with self._lock:
            return len(self._chunks)

    @property
    def directory(self) -> Path:
        """The knowledge base's folder."""
        return self._directory

    @property
    def index_kind(self) -> str:
        """"flat" (exact) or "ivf" (approximate): the FAISS index dense search uses now; for
        other backends their name (e.g. "milvus")."""
        return getattr(self._store, "kind", self._store.name)

    @property
    def index_description(self) -> str:
        """The index type with its parameters, e.g. "flat (exact)" or "IVF-flat, 1264 lists, nprobe 16"."""
        with self._lock:
            return getattr(self._store, "description", f"{self._store.name} ({getattr(self._store, 'uri', '')})")

    @property
    def embedding_model(self) -> str:
        """Name of the embedding model its vectors were made with."""
        return self._embedder.name


def _check_recorded_model(directory: Path, embedder: "Embedder",
                          store_factory: "Callable[[int], VectorStore]") -> None:
    """Before a self-storing backend (Milvus) opens the collection with ``embedder``'s dimension:
    a base whose chunks another model embedded is refused as on FAISS, and an empty one's
    collection of another dimension is dropped, so it adopts ``embedder``.

    Raises:
        EmbeddingMismatchError: the manifest records chunks of another model.
    """
    try:
        manifest = disk.read_json(directory / disk.MANIFEST_NAME)
        recorded_name, recorded_dim = manifest["embedding_model"], int(manifest["dim"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # no manifest yet, or one that _load reports as corrupt
    if (recorded_name, recorded_dim) == (embedder.name, embedder.dim):
        return
    if manifest.get("chunks", 1):
        raise embedding_mismatch(directory.name, recorded_name, recorded_dim, embedder)
    if recorded_dim != embedder.dim:
        store_factory(recorded_dim).drop()


__all__ = ["APPROXIMATE_INDEX_MIN_CHUNKS", "EMBED_BATCH", "HYBRID_CANDIDATES", "IVF_NPROBE", "UNCHANGED_REASON",
           "EmbeddingMismatchError", "FaissVectorStore", "KnowledgeBase", "KnowledgeBaseClosedError",
           "KnowledgeBaseCorruptError", "VectorStoreMismatchError", "build_index", "empty_index", "index_ids",
           "ivf_lists", "recorded_embedding_model"]
