"""The state of a knowledge base on disk and in memory: loading a generation,
committing a new one (a vector store that keeps its own vectors is kept in step by
:mod:`rag.kb_sync`), and the lifecycle rules (one writer at a time across processes,
loading what another process committed, never writing again once deleted). Mixed into
:class:`rag.store.KnowledgeBase`; the layout and its crash safety are in :mod:`rag.persistence`."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from . import persistence as disk
from .kb_sync import StoreSync
from .keywords import TOKENIZER_ID, KeywordIndex, chunk_tokens
from .splitter import searchable_text
from .stores import VectorStore
from .stores.faiss import FaissVectorStore
from .types import Chunk

if TYPE_CHECKING:
    from .embeddings import Embedder

logger = logging.getLogger("rag.store")


class EmbeddingMismatchError(ValueError):
    """A knowledge base was opened with an embedding model (name or dim) other
    than the one its vectors were made with; the message names both and the fix."""


def embedding_mismatch(name: str, recorded_name: Any, recorded_dim: Any,
                       embedder: "Embedder") -> EmbeddingMismatchError:
    """The error for knowledge base ``name``, built with ``recorded_name`` (``recorded_dim``),
    opened with ``embedder``: it names both models and the three fixes."""
    return EmbeddingMismatchError(
        f"knowledge base {name!r} was built with embedding model {recorded_name!r} (dim {recorded_dim}), but "
        f"{embedder.name!r} (dim {embedder.dim}) is loaded. Start with --embedding-model {recorded_name}, "
        f"or re-embed it with the loaded model: `python -m rag reindex --kb {name}` "
        "(add --embedding-model NAME for another; it keeps the base's files), or use another "
        "knowledge-base folder (or delete this one) and upload the documents again")


class VectorStoreMismatchError(ValueError):
    """The knowledge base was built on another vector store backend than the one configured."""


class KnowledgeBaseClosedError(RuntimeError):
    """The knowledge base was deleted (or is being deleted): this object can never write again."""


class UnknownFile(KeyError):
    """No file of that name in the knowledge base; the message lists the files it has.
    A :class:`KeyError` for callers that catch that, but its own class, so the API maps
    it to 404 and a stray ``KeyError`` from a bug stays a 500."""

    def __str__(self) -> str:  # KeyError quotes its message; this one is a sentence
        return str(self.args[0]) if self.args else ""


class KnowledgeBaseCorruptError(RuntimeError):
    """The files of a knowledge base are unreadable or disagree with each other
    (not caused by a crash, which the layout survives); the message names the folder."""


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def recorded_embedding_model(directory: str | Path) -> tuple[str, int] | None:
    """The (embedding model name, dim) a knowledge-base folder records in its
    manifest, or None when the folder holds no readable knowledge base."""
    try:
        manifest = disk.read_json(Path(directory) / disk.MANIFEST_NAME)
        return str(manifest["embedding_model"]), int(manifest["dim"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class KnowledgeBaseState(StoreSync):
    """Loading, committing and the write lifecycle of :class:`rag.store.KnowledgeBase`
    (a mixin: the attributes are set by its ``__init__``); a backend that keeps its own
    vectors is kept in step by :class:`rag.kb_sync.StoreSync`."""

    def _new_store(self, dim: int) -> VectorStore:
        if self._store_factory is None:
            return FaissVectorStore(dim, self._approximate_from)
        return self._store_factory(dim)

    def _manifest_stamp(self) -> tuple[int, int] | None:
        try:
            st = (self._directory / disk.MANIFEST_NAME).stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    def _read_manifest(self) -> dict[str, Any]:
        path = self._directory / disk.MANIFEST_NAME
        try:
            self._stamp = self._manifest_stamp()
            manifest = disk.read_json(path)
        except (OSError, ValueError) as exc:
            raise KnowledgeBaseCorruptError(
                f"{path}: unreadable manifest ({exc}); restore the folder from a backup "
                "or move it away and re-upload the documents") from exc
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > disk.FORMAT_VERSION:
            raise KnowledgeBaseCorruptError(
                f"{path}: format version {version!r} is not supported by this program "
                f"(it reads up to {disk.FORMAT_VERSION}); upgrade the program or use another folder")
        return manifest

    def _load(self) -> None:
        """Replace the in-memory state by the one the manifest names."""
        manifest = self._read_manifest()
        gen_name = str(manifest.get("generation"))
        gen_dir = self._directory / gen_name
        try:
            if disk.generation_number(gen_name) is None:
                raise ValueError(f"manifest names {gen_name!r}, not a generation folder")
            backend = manifest.get("vector_store", "faiss")
            if backend != self._store.name:
                raise VectorStoreMismatchError(
                    f"knowledge base {self._directory.name!r} keeps its vectors in {backend}, but the server uses "
                    f"{self._store.name}: start with --vector-store {backend}, or use another knowledge base")
            chunk_data = disk.read_json(gen_dir / "chunks.json")
            file_data = disk.read_json(gen_dir / "files.json")
            chunks = {int(c["id"]): Chunk(**c) for c in chunk_data["chunks"]}
            if backend == "faiss":
                store = FaissVectorStore.from_bytes(np.fromfile(gen_dir / "index.faiss", dtype=np.uint8),
                                                    self._approximate_from)
            else:
                store = self._store
                file_data, chunks = self._reconcile(store, file_data, chunks)
            ids = set(store.ids().tolist()) if store.count() else set()
        except VectorStoreMismatchError:
            raise
        except Exception as exc:
            raise KnowledgeBaseCorruptError(
                f"{gen_dir}: cannot read the knowledge base state ({type(exc).__name__}: {exc}); "
                "restore the folder from a backup or move it away and re-upload the documents") from exc
        if ids != set(chunks) or store.count() != len(chunks) or (chunks and store.dim != manifest.get("dim")):
            raise KnowledgeBaseCorruptError(
                f"{gen_dir}: the index ({store.count()} vectors of dim {store.dim}) does not match chunks.json "
                f"({len(chunks)} chunks) and the manifest (dim {manifest.get('dim')}); "
                "move the folder away and re-upload the documents")

        recorded_name, recorded_dim = manifest.get("embedding_model"), manifest.get("dim")
        if (recorded_name, recorded_dim) != (self._embedder.name, self._embedder.dim):
            if chunks:
                raise embedding_mismatch(self._directory.name, recorded_name, recorded_dim, self._embedder)
            logger.info("empty knowledge base at %s: switching its embedding model from %s to %s",
                        self._directory, recorded_name, self._embedder.name)
            store = self._new_store(self._embedder.dim) if backend == "faiss" else store

        recorded_chunking = (manifest.get("chunk_size"), manifest.get("chunk_overlap"),
                             manifest.get("chunk_unit", "chars"))
        if recorded_chunking != (self._chunk_size, self._chunk_overlap, self._chunk_unit):
            logger.info("knowledge base at %s: files added from now on use chunk_size=%d, chunk_overlap=%d %s "
                        "(was %s, %s %s)", self._directory, self._chunk_size, self._chunk_overlap, self._chunk_unit,
                        *recorded_chunking)
        self._store = store
        self._stale_ids = []  # the saved state names them again, if they were pending
        self._chunks = chunks
        self._keywords = self._load_keywords(gen_dir, chunks)
        self._files = {f["name"]: f for f in file_data}
        self._next_id = int(chunk_data["next_id"])
        self._generation = gen_dir.name
        self._created_at = manifest.get("created_at", self._created_at)
        if (recorded_name, recorded_dim) != (self._embedder.name, self._embedder.dim):
            self._commit()  # record the adopted model
        logger.info("opened knowledge base at %s: %d files, %d chunks (%s)",
                    self._directory, len(self._files), len(self._chunks), self._generation)

    def _load_keywords(self, gen_dir: Path, chunks: dict[int, Chunk]) -> KeywordIndex:
        """The BM25 tokens saved with a generation; recomputed from the chunk texts
        when the file is missing (older knowledge bases), unreadable, made by
        another tokenizer, or does not cover exactly the chunks."""
        index = KeywordIndex()
        path = gen_dir / disk.KEYWORDS_NAME
        try:
            data = disk.read_json(path)
            tokens = {int(k): v for k, v in data["tokens"].items()}
            if data.get("tokenizer") != TOKENIZER_ID or set(tokens) != set(chunks):
                raise ValueError(f"tokenizer {data.get('tokenizer')!r}, {len(tokens)} token lists "
                                 f"for {len(chunks)} chunks")
            for cid, toks in tokens.items():
                if not isinstance(toks, list):
                    raise ValueError(f"tokens of chunk {cid} are not a list")
                index.add(cid, toks)
            return index
        except FileNotFoundError:
            reason = "none saved"
        except Exception as exc:  # noqa: BLE001 - derived data: recompute rather than fail
            reason = f"{type(exc).__name__}: {exc}"
        if chunks:
            logger.info("knowledge base at %s: recomputing the BM25 tokens of %d chunks (%s)",
                        self._directory, len(chunks), reason)
        for cid, chunk in chunks.items():
            index.add(cid, chunk_tokens(searchable_text(chunk.text), chunk.source))
        return index

    def _tidy_file_copies(self) -> None:
        """Remove leftovers of interrupted adds/deletes: partial uploads in
        ``incoming/`` and copies in ``files/`` of files no longer stored."""
        incoming = self._directory / disk.INCOMING_DIR
        if incoming.is_dir():
            for part in incoming.glob("*.part"):
                part.unlink(missing_ok=True)
        files_dir = self._directory / disk.FILES_DIR
        if files_dir.is_dir():
            for copy in files_dir.iterdir():
                if copy.is_file() and copy.name not in self._files:
                    logger.info("removing %s: not part of the knowledge base (left by an interrupted delete)", copy)
                    copy.unlink(missing_ok=True)
        missing = [n for n in self._files if not (files_dir / n).is_file()]
        if missing:
            logger.warning("knowledge base at %s: no stored copy of %s (interrupted while saving); "
                           "its chunks are searchable, upload the file again to restore the copy",
                           self._directory, ", ".join(missing))

    # ---------------------------------------------------------------- commit

    def _commit(self) -> None:
        """Persist the in-memory state as a new generation (see :mod:`rag.persistence`)."""
        if self._closed:
            raise KnowledgeBaseClosedError(f"knowledge base {self._directory.name!r} was deleted")
        if self._generation is not None:
            on_disk = self._manifest_generation()
            if on_disk != self._generation:  # never replace a state this object did not load
                raise KnowledgeBaseClosedError(
                    f"knowledge base {self._directory.name!r} changed on disk while it was being written "
                    f"(it holds {on_disk or 'nothing'}, this copy {self._generation}); add the files again")
        existing = disk.existing_generations(self._directory)
        current = disk.generation_number(self._generation) if self._generation else None
        number = max(existing + ([current] if current is not None else []), default=0) + 1
        gen_name = disk.generation_name(number)
        gen_dir = self._directory / gen_name
        gen_dir.mkdir()
        if isinstance(self._store, FaissVectorStore):  # other backends keep their vectors themselves
            disk.write_bytes_durably(gen_dir / "index.faiss", self._store.to_bytes())
        disk.write_json_durably(gen_dir / "chunks.json", {
            "next_id": self._next_id,
            "chunks": [vars(c) for c in self._chunks.values()],
        })
        disk.write_json_durably(gen_dir / "files.json", list(self._files.values()))
        disk.write_json_durably(gen_dir / disk.KEYWORDS_NAME, {
            "tokenizer": TOKENIZER_ID,
            "tokens": {str(cid): toks for cid, toks in self._keywords.tokens().items()},
        })
        disk.fsync_dir(gen_dir)
        disk.fsync_dir(self._directory)
        disk.replace_json_atomically(self._directory / disk.MANIFEST_NAME, {
            # 1 while the index is flat, so that older versions keep reading it
            "format_version": disk.FORMAT_VERSION if self.index_kind == "ivf" else 1,
            "generation": gen_name,
            "embedding_model": self._embedder.name,
            "dim": self._embedder.dim,
            "vector_store": self._store.name,
            "chunk_size": self._chunk_size,
            "chunk_overlap": self._chunk_overlap,
            "chunk_unit": self._chunk_unit,
            "files": len(self._files),
            "chunks": len(self._chunks),
            "created_at": self._created_at,
            "updated_at": _utc_now(),
        })
        self._generation = gen_name
        self._stamp = self._manifest_stamp()
        self._delete_stale()
        disk.remove_generations_except(self._directory, gen_name)

    def _manifest_generation(self) -> str | None:
        """The generation the manifest on disk names now (None: no readable manifest)."""
        try:
            return str(disk.read_json(self._directory / disk.MANIFEST_NAME).get("generation"))
        except (OSError, ValueError, AttributeError):
            return None

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Be the one writer of the folder: this object's writers one at a time, then the
        folder lock against other processes, then load what another process committed.

        Raises:
            KnowledgeBaseClosedError: the knowledge base was deleted.
            rag.persistence.FolderBusyError: another process held the folder too long.
        """
        with self._write_lock:
            self._check_open()
            with disk.folder_lock(self._directory):
                with self._lock:
                    self._check_open()
                    if self._manifest_generation() != self._generation:
                        logger.info("knowledge base at %s was changed by another process; loading its state",
                                    self._directory)
                        self._load()
                yield

    def _check_open(self) -> None:
        if self._closing.is_set() or self._closed:
            raise KnowledgeBaseClosedError(
                f"knowledge base {self._directory.name!r} was deleted; upload the files again to create it anew")

    def _refresh(self) -> None:
        """Load the state another process committed since this one was read (a cheap
        ``stat`` when nothing changed; skipped while this object itself is writing)."""
        if self._closed or self._write_lock.locked() or self._manifest_stamp() == self._stamp:
            return
        try:
            with disk.folder_lock(self._directory, shared=True, timeout=10), self._lock:
                if not self._closed and self._manifest_generation() not in (None, self._generation):
                    logger.info("knowledge base at %s was changed by another process; loading its state",
                                self._directory)
                    self._load()
                self._stamp = self._manifest_stamp()
        except (disk.FolderBusyError, OSError):
            logger.warning("knowledge base at %s: could not load a newer state; searching the one loaded",
                           self._directory)

    def close(self) -> None:
        """Stop writing for good (the knowledge base is being deleted): a running
        :meth:`add_files` stops before its next file or embedding batch and reports the
        rest refused; waits for it; later writes raise :class:`KnowledgeBaseClosedError`."""
        self._closing.set()
        with self._write_lock, self._lock:
            self._closed = True

    def _commit_or_reload(self) -> None:
        """Commit; if that fails, go back to the last committed state and re-raise."""
        try:
            self._commit()
        except KnowledgeBaseClosedError:
            raise
        except BaseException:
            logger.exception("could not save the knowledge base at %s; reloading its last saved state",
                             self._directory)
            self._load()
            raise
