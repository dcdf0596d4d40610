"""The commands that rebuild a knowledge base: ``migrate`` (to another vector store,
without re-embedding) and ``reindex`` (re-embed from its file copies) (see :mod:`rag.cli`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from ..registry import InvalidKnowledgeBaseName, UnknownKnowledgeBase
from ..store import KnowledgeBaseCorruptError
from . import common
from .common import CliError, check_exists, chunks_progress, open_kb, print_reports


def cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    """``migrate --kb NAME --to BACKEND``: copy chunks and vectors, then switch (rag.migrate)."""
    from tqdm import tqdm

    from ..migrate import migrate
    from ..stores import make_store
    from ..stores.milvus import collection_name

    args.vector_store = None  # open it on the backend it records
    kb = open_kb(args, create=False)
    root = Path(args.knowledge_dir)
    if args.to == "milvus":
        uri = args.milvus_uri or str(root / "milvus.db")

        def factory(dim: int):
            return make_store("milvus", uri=uri, collection=collection_name("kb", kb.directory.name), dim=dim,
                              token=args.milvus_token)
    else:
        factory = None
    target = factory(kb._store.dim) if factory else make_store("faiss", dim=kb._store.dim)
    with tqdm(total=len(kb), unit="chunks", disable=args.no_progress, file=sys.stderr) as bar:
        try:
            moved = migrate(kb, target, factory, progress=lambda done, total: bar.update(done - bar.n))
        except (ValueError, RuntimeError) as exc:
            raise CliError(str(exc)) from exc
    print(f"{kb.directory.name}: {moved} chunk(s) moved to {args.to}", file=out)
    return 0


def cmd_reindex(args: argparse.Namespace, out: TextIO) -> int:
    """``reindex``: :meth:`KnowledgeBase.reindex` with files and chunks bars; exit 1 when a file was left out."""
    from tqdm import tqdm

    from ..store import KnowledgeBase

    root = Path(args.knowledge_dir)
    try:
        name = check_exists(root, args.kb)
    except (InvalidKnowledgeBaseName, UnknownKnowledgeBase) as exc:
        raise CliError(str(exc)) from exc
    embedder = common.load_model(args.embedding_model)
    disable = True if args.no_progress else None
    files_bar = tqdm(total=0, desc="files", unit="file", position=0, disable=disable)
    chunks_bar = tqdm(total=0, desc="chunks", unit="chunk", position=1, leave=False, disable=disable)

    def on_file(fname: str, i: int, n: int) -> None:
        if files_bar.total != n:
            files_bar.reset(total=n)
        files_bar.update(i - files_bar.n)
        files_bar.set_postfix_str(fname[:40])

    on_chunks = chunks_progress(chunks_bar)

    try:
        kb, reports = KnowledgeBase.reindex(root / name, embedder, chunk_size=args.chunk_size,
                                            chunk_overlap=args.chunk_overlap, chunk_unit=args.chunk_unit,
                                            progress=on_file, on_chunks=on_chunks)
        files_bar.update(files_bar.total - files_bar.n)
    except (KnowledgeBaseCorruptError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    finally:
        chunks_bar.close()
        files_bar.close()
    print_reports(reports, out)
    refused = sum(r.status == "refused" for r in reports)
    print(f"knowledge base {name!r} reindexed with {kb.embedding_model}: {len(kb.files())} files, {len(kb)} chunks"
          + (f"; {refused} file(s) left out (see above)" if refused else ""), file=out)
    return 1 if refused else 0
