"""Several named knowledge bases under one folder (``knowledge/<name>/``).

The page and the API ask the registry for a knowledge base by name; it opens
each one once and hands the same :class:`~rag.store.KnowledgeBase` object to
every caller, so all threads share one lock per knowledge base.
"""
from __future__ import annotations

import logging
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from .persistence import folder_lock
from .store import KnowledgeBase

if TYPE_CHECKING:
    from .embeddings import Embedder

logger = logging.getLogger(__name__)

#: Letters (any script), digits, '_', '-', '.'; 1-64 characters; not starting with '.' or '-'
#: (matched whole: ``fullmatch``, so no trailing newline slips through).
_NAME = re.compile(r"\w[\w.-]{0,63}")
#: Longest name in UTF-8 bytes: the folder ``.deleted-<name>-<8 hex>`` must stay within the
#: 255 bytes most file systems allow for one name (64 four-byte characters would not).
MAX_NAME_BYTES = 192
_MANIFEST = "manifest.json"


class InvalidKnowledgeBaseName(ValueError):
    """A knowledge-base name that could escape the folder or is not a plain name."""


class UnknownKnowledgeBase(KeyError):
    """No knowledge base of that name exists (nothing was uploaded to it yet)."""

    def __str__(self) -> str:  # KeyError quotes its message; this one is a sentence
        return str(self.args[0]) if self.args else ""


def _valid(name: object) -> bool:
    return (isinstance(name, str) and _NAME.fullmatch(name) is not None and ".." not in name
            and len(name.encode("utf-8", errors="replace")) <= MAX_NAME_BYTES)


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid knowledge-base name.

    Raises:
        InvalidKnowledgeBaseName: with the rule, e.g. for ``"../x"`` or ``""``.
    """
    if not _valid(name):
        raise InvalidKnowledgeBaseName(
            f"invalid knowledge base name {name!r}: use 1-64 letters, digits, '_', '-' or '.' "
            f"(at most {MAX_NAME_BYTES} bytes in UTF-8), starting with a letter or digit "
            "(e.g. 'default', 'manuals-2024')")
    return name


def knowledge_base_names(root: str | Path) -> list[str]:
    """Names of the knowledge bases under ``root`` (folders with a manifest and a valid name), sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / _MANIFEST).is_file() and _valid(p.name))


def knowledge_base_exists(root: str | Path, name: str) -> bool:
    """True when a knowledge base ``name`` exists under ``root``."""
    return _valid(name) and (Path(root) / name / _MANIFEST).is_file()


class KnowledgeBaseRegistry:
    """The knowledge bases under ``root``, all embedded with one embedding model.

    Args:
        root: the folder holding one sub-folder per knowledge base (``--knowledge-dir``).
        embedder: the embedding model every knowledge base is opened with.
        chunk_size, chunk_overlap, chunk_unit: splitter settings for new files; None picks
            the embedder's defaults (:func:`rag.splitter.chunk_settings`).
        vector_store: the backend that keeps the vectors (:data:`rag.stores.BACKENDS`):
            ``"faiss"`` (in the folder) or ``"milvus"`` (one collection per knowledge base).
        milvus_uri: Milvus Lite file or ``http(s)://host:19530`` (default
            ``<root>/milvus.db``); milvus_token: its credentials.

    Raises:
        ValueError: an unknown ``vector_store``.
    """

    def __init__(self, root: str | Path, embedder: "Embedder", *, chunk_size: int | None = None,
                 chunk_overlap: int | None = None, chunk_unit: str | None = None,
                 vector_store: str = "faiss", milvus_uri: str | None = None, milvus_token: str | None = None):
        from .stores import BACKENDS

        if vector_store not in BACKENDS:
            raise ValueError(f"unknown vector store {vector_store!r}: use one of {', '.join(BACKENDS)}")
        self.root = Path(root)
        self.embedder = embedder
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self.chunk_unit = chunk_unit
        self.vector_store = vector_store
        self.milvus_uri = milvus_uri or str(self.root / "milvus.db")
        self.milvus_token = milvus_token
        self._milvus_client = None
        self._open: dict[str, KnowledgeBase] = {}
        self._lock = threading.Lock()

    def _store_factory(self, name: str):
        """How knowledge base ``name`` makes its vector store (None: FAISS in its folder)."""
        if self.vector_store == "faiss":
            return None
        from .stores import make_store
        from .stores.milvus import collection_name

        def make(dim: int):
            store = make_store("milvus", uri=self.milvus_uri, collection=collection_name("kb", name), dim=dim,
                               token=self.milvus_token, client=self._milvus_client)
            self._milvus_client = store.client  # one client per server
            return store

        return make

    def names(self) -> list[str]:
        """Names of the existing knowledge bases, sorted."""
        return knowledge_base_names(self.root)

    def exists(self, name: str) -> bool:
        """True when a knowledge base ``name`` exists on disk."""
        return knowledge_base_exists(self.root, name)

    def get(self, name: str, *, create: bool = False) -> KnowledgeBase:
        """The knowledge base ``name``, opened once and shared.

        Args:
            name: see :func:`check_name`.
            create: make it when it does not exist yet.

        Raises:
            InvalidKnowledgeBaseName: the name is not valid.
            UnknownKnowledgeBase: it does not exist and ``create`` is False.
            rag.store.EmbeddingMismatchError: it was built with another embedding model.
        """
        check_name(name)
        with self._lock:
            kb = self._open.get(name)
            if kb is None:
                if not create and not self.exists(name):
                    raise UnknownKnowledgeBase(
                        f"no knowledge base named {name!r}: upload files to it first "
                        "(GET /v1/knowledge or the page's picker lists the existing ones)")
                self.root.mkdir(parents=True, exist_ok=True)
                kb = KnowledgeBase.open(self.root / name, self.embedder, chunk_size=self.chunk_size,
                                        chunk_overlap=self.chunk_overlap, chunk_unit=self.chunk_unit,
                                        store_factory=self._store_factory(name))
                self._open[name] = kb
            return kb

    def delete(self, name: str) -> None:
        """Delete the knowledge base ``name`` and everything in its folder.

        The folder is first renamed out of the way (atomic), then removed, so a
        crash never leaves a half-deleted knowledge base under its name. A running
        upload to it is stopped first (:meth:`KnowledgeBase.close`): its remaining files
        are reported refused, and nothing of it comes back when the name is used again.

        Raises:
            InvalidKnowledgeBaseName, UnknownKnowledgeBase: as for :meth:`get`.
            rag.persistence.FolderBusyError: another process kept writing it too long.
        """
        check_name(name)
        with self._lock:
            if not self.exists(name):
                raise UnknownKnowledgeBase(f"no knowledge base named {name!r}")
            kb = self._open.pop(name, None)
            if kb is not None:
                kb.close()  # a running upload stops at its next file or batch; it never commits again
                kb.drop_store()
            elif self.vector_store != "faiss":  # not opened by this process: its collection all the same
                self._drop_collection(name)
            trash = self._move_to_trash(name)
        shutil.rmtree(trash, ignore_errors=True)
        logger.info("deleted knowledge base %s", name)

    def _move_to_trash(self, name: str) -> Path:
        """Rename the folder of ``name`` out of the way (atomic; under the registry's lock and
        the folder's, so not while another process writes it): the folder to remove."""
        trash = self.root / f".deleted-{name}-{uuid.uuid4().hex[:8]}"
        with folder_lock(self.root / name):
            (self.root / name).rename(trash)
        return trash

    def _drop_collection(self, name: str) -> None:
        """Drop the Milvus collection of ``name`` if there is one (whatever its dimension)."""
        from pymilvus import MilvusClient

        from .stores.milvus import collection_name

        client = self._milvus_client or MilvusClient(self.milvus_uri, **(
            {"token": self.milvus_token} if self.milvus_token else {}))
        self._milvus_client = client
        if client.has_collection(collection_name("kb", name)):
            client.drop_collection(collection_name("kb", name))

    def discard_if_empty(self, name: str) -> bool:
        """Remove knowledge base ``name`` if it holds no file and nobody is writing it (an
        upload that created it had every file refused): True when removed."""
        with self._lock:
            kb = self._open.get(name)
            if kb is None or not self.exists(name) or not kb._write_lock.acquire(blocking=False):
                return False
            try:
                if kb._files or kb._closing.is_set():
                    return False
                kb._closing.set()
                kb._closed = True
                kb.drop_store()
                self._open.pop(name, None)
                trash = self._move_to_trash(name)
            finally:
                kb._write_lock.release()
        shutil.rmtree(trash, ignore_errors=True)
        logger.info("removed knowledge base %s again: the upload that created it added no file", name)
        return True
