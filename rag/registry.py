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

from .store import KnowledgeBase

if TYPE_CHECKING:
    from .embeddings import Embedder

logger = logging.getLogger(__name__)

#: Letters (any script), digits, '_', '-', '.'; 1-64 characters; not starting with '.' or '-'.
_NAME = re.compile(r"^\w[\w.-]{0,63}$")
_MANIFEST = "manifest.json"


class InvalidKnowledgeBaseName(ValueError):
    """A knowledge-base name that could escape the folder or is not a plain name."""


class UnknownKnowledgeBase(KeyError):
    """No knowledge base of that name exists (nothing was uploaded to it yet)."""

    def __str__(self) -> str:  # KeyError quotes its message; this one is a sentence
        return str(self.args[0]) if self.args else ""


def _valid(name: object) -> bool:
    return isinstance(name, str) and _NAME.match(name) is not None and ".." not in name


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid knowledge-base name.

    Raises:
        InvalidKnowledgeBaseName: with the rule, e.g. for ``"../x"`` or ``""``.
    """
    if not _valid(name):
        raise InvalidKnowledgeBaseName(
            f"invalid knowledge base name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit (e.g. 'default', 'manuals-2024')")
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
    """

    def __init__(self, root: str | Path, embedder: "Embedder", *, chunk_size: int | None = None,
                 chunk_overlap: int | None = None, chunk_unit: str | None = None):
        self.root = Path(root)
        self.embedder = embedder
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self.chunk_unit = chunk_unit
        self._open: dict[str, KnowledgeBase] = {}
        self._lock = threading.Lock()

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
                        f"(existing: {', '.join(self.names()) or 'none'})")
                kb = KnowledgeBase.open(self.root / name, self.embedder, chunk_size=self.chunk_size,
                                        chunk_overlap=self.chunk_overlap, chunk_unit=self.chunk_unit)
                self._open[name] = kb
            return kb

    def delete(self, name: str) -> None:
        """Delete the knowledge base ``name`` and everything in its folder.

        The folder is first renamed out of the way (atomic), then removed, so a
        crash never leaves a half-deleted knowledge base under its name.

        Raises:
            InvalidKnowledgeBaseName, UnknownKnowledgeBase: as for :meth:`get`.
        """
        check_name(name)
        with self._lock:
            if not self.exists(name):
                raise UnknownKnowledgeBase(f"no knowledge base named {name!r}")
            self._open.pop(name, None)
            trash = self.root / f".deleted-{name}-{uuid.uuid4().hex[:8]}"
            (self.root / name).rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        logger.info("deleted knowledge base %s", name)
