"""What the ``python -m rag`` commands share: the user-facing error, opening a knowledge
base from the parsed flags (with its recorded embedding model and vector store), expanding
paths into files, and printing reports and progress."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Sequence, TextIO

from ..embeddings import EmbeddingLoadError, load_embedder
from ..loaders import SUPPORTED_EXTENSIONS
from ..persistence import safe_file_name
from ..registry import (InvalidKnowledgeBaseName, KnowledgeBaseRegistry, UnknownKnowledgeBase, check_name,
                        knowledge_base_exists, knowledge_base_names)
from ..store import EmbeddingMismatchError, KnowledgeBaseCorruptError, recorded_embedding_model
from ..types import FileReport

SNIPPET_CHARS = 200


class CliError(Exception):
    """A user-facing failure: printed as ``rag: error: <message>``, exit status 2."""


class RecordedEmbedder:
    """Stands in for the embedding model a knowledge base records, for commands
    that never embed (list, delete): opening it then costs no model load."""

    def __init__(self, name: str, dim: int):
        self.name = name
        self.dim = dim

    def embed_documents(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False):
        raise RuntimeError("this command does not load the embedding model; use `python -m rag ingest`")

    def embed_query(self, text: str):
        raise RuntimeError("this command does not load the embedding model; use `python -m rag search`")


def embedder_for(directory: Path, requested: str | None):
    """The embedding model to open ``directory`` with: ``requested``, else the one it records,
    else the server's default (:func:`rag.load_embedder`).

    Raises:
        CliError: the model cannot be loaded.
    """
    if requested is None:
        recorded = recorded_embedding_model(directory)
        if recorded is not None:
            requested = recorded[0]
    return load_model(requested)


def load_model(name: str | None):
    """:func:`rag.load_embedder` on the default device, its failure as a :class:`CliError`."""
    try:
        return load_embedder(name, device=None)
    except EmbeddingLoadError as exc:
        raise CliError(str(exc)) from exc


def recorded_store(directory: Path) -> str:
    """The vector store a knowledge base records in its manifest ("faiss" when none)."""
    try:
        return str(json.loads((directory / "manifest.json").read_text(encoding="utf-8")).get("vector_store", "faiss"))
    except (OSError, ValueError, AttributeError):
        return "faiss"


def check_exists(root: Path, name: str, hint: str = "") -> str:
    """``name`` checked (:func:`rag.registry.check_name`) and present in ``root``.

    Raises:
        InvalidKnowledgeBaseName, UnknownKnowledgeBase: the message lists the existing ones.
    """
    name = check_name(name)
    if not knowledge_base_exists(root, name):
        raise UnknownKnowledgeBase(f"no knowledge base named {name!r} in {root} "
                                   f"(existing: {', '.join(knowledge_base_names(root)) or 'none'}){hint}")
    return name


def open_kb(args: argparse.Namespace, *, create: bool, embedder=None):
    """The knowledge base ``--kb`` in ``--knowledge-dir`` on its recorded (or the asked) vector store.

    Raises:
        CliError: a bad or unknown name, another embedding model or backend, a corrupt base.
    """
    root = Path(args.knowledge_dir)
    try:
        name = check_name(args.kb) if create else check_exists(
            root, args.kb, "; create it with `python -m rag ingest PATH --kb NAME`")
        if embedder is None:
            embedder = embedder_for(root / name, getattr(args, "embedding_model", None))
        backend = getattr(args, "vector_store", None) or recorded_store(root / name)
        registry = KnowledgeBaseRegistry(root, embedder, chunk_size=getattr(args, "chunk_size", None),
                                         chunk_overlap=getattr(args, "chunk_overlap", None),
                                         chunk_unit=getattr(args, "chunk_unit", None), vector_store=backend,
                                         milvus_uri=getattr(args, "milvus_uri", None),
                                         milvus_token=getattr(args, "milvus_token", None))
        return registry.get(name, create=create)
    except (InvalidKnowledgeBaseName, UnknownKnowledgeBase, EmbeddingMismatchError,
            KnowledgeBaseCorruptError, ValueError) as exc:
        raise CliError(str(exc)) from exc


def open_recorded(args: argparse.Namespace):
    """Open an existing knowledge base without loading its embedding model."""
    directory = Path(args.knowledge_dir) / args.kb
    recorded = recorded_embedding_model(directory)
    if recorded is None:
        return open_kb(args, create=False, embedder=RecordedEmbedder("none", 1))  # raises the clear error
    return open_kb(args, create=False, embedder=RecordedEmbedder(*recorded))


def collect_files(paths: Sequence[str | Path]) -> tuple[list[Path], list[FileReport]]:
    """Expand ``paths`` into the files to ingest.

    Folders are walked recursively (sorted; hidden files and folders skipped;
    only :data:`rag.loaders.SUPPORTED_EXTENSIONS`). A file named explicitly is
    kept whatever its extension (ingestion then refuses it with the reason).

    Returns:
        (files, refused): ``refused`` reports paths that do not exist, and files
        whose stored name is already taken by an earlier file of the batch (a
        knowledge base stores files by name, without folders).
    """
    files, refused, seen = [], [], {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file():
            found = [path]
        else:
            refused.append(FileReport(name=str(raw), status="refused",
                                      reason=f"{raw}: no such file or folder; check the path"))
            continue
        for f in found:
            key = safe_file_name(f.name)
            if key in seen:
                refused.append(FileReport(name=str(f), status="refused", reason=(
                    f"{f}: another file of this batch is also named {key!r} ({seen[key]}); a knowledge base "
                    "stores files by name, so rename one or ingest it into another --kb")))
                continue
            seen[key] = f
            files.append(f)
    return files, refused



def print_reports(reports: Sequence[FileReport], out: TextIO) -> None:
    """One line per file: status, name, and its chunks or the reason."""
    for r in reports:
        detail = f"{r.chunks} chunks" if r.status == "added" else (r.reason or "")
        print(f"{r.status:8} {r.name}  {detail}", file=out)


def snippet(text: str) -> str:
    """``text`` on one line, cut to :data:`SNIPPET_CHARS` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET_CHARS else flat[:SNIPPET_CHARS] + "…"


def chunks_progress(bar) -> Callable[[str, int, int], None]:
    """An ``on_chunks(name, embedded, n_chunks)`` callback (see :meth:`KnowledgeBase.add_files`)
    that moves the tqdm ``bar``, reset at each file."""
    def on_chunks(name: str, done: int, total: int) -> None:
        if done == 0:
            bar.reset(total=total)
        bar.update(done - bar.n)
    return on_chunks
