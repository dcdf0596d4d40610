"""Command line for bulk knowledge-base work: ``python -m rag COMMAND ...``.

Commands::

    python -m rag ingest PATH... --kb NAME     add files; folders are walked recursively
    python -m rag search "question" --kb NAME  show the best chunks (no generation)
    python -m rag list [--kb NAME]             the files of NAME (or, without --kb, the knowledge bases)
    python -m rag delete FILE... --kb NAME     remove files and their chunks
    python -m rag reindex --kb NAME            re-embed a base from its file copies (another model)
    python -m rag eval FILE.json               retrieval figures on a SQuAD-format file

Common flags: ``--knowledge-dir`` (default: the project's ``knowledge/``, as for
the server) and ``--embedding-model`` (default: the model the knowledge base
records; for a new one, the server's default with its offline fallback).
Exit status: 0 ok; 1 some files were refused; 2 bad arguments or a knowledge
base that cannot be opened (the message says why and what to do).

Layout: :mod:`rag.cli.parser` (the flags), :mod:`rag.cli.common` (opening a knowledge
base, collecting files, printing), and the commands by concern: :mod:`rag.cli.files`
(ingest, list, delete), :mod:`rag.cli.search` (search, eval), :mod:`rag.cli.maintenance`
(migrate, reindex).
"""
from __future__ import annotations

import logging
import sys
from typing import Sequence, TextIO

from .common import CliError, collect_files
from .files import cmd_delete, cmd_ingest, cmd_list
from .maintenance import cmd_migrate, cmd_reindex
from .parser import DEFAULT_KNOWLEDGE_DIR, build_parser
from .search import cmd_eval, cmd_search

COMMANDS = {"migrate": cmd_migrate, "reindex": cmd_reindex, "ingest": cmd_ingest, "search": cmd_search,
            "list": cmd_list, "delete": cmd_delete, "eval": cmd_eval}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run ``python -m rag`` with ``argv`` (default ``sys.argv[1:]``), printing to ``out``
    (default stdout). Returns the exit status (see the module docstring).

    Raises:
        SystemExit: from argparse, status 2, on bad arguments (with the usage).
    """
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    size, overlap = getattr(args, "chunk_size", None), getattr(args, "chunk_overlap", None)
    if (size is not None and size < 1) or (overlap is not None and not 0 <= overlap < (size or overlap + 1)):
        print(f"rag: error: need --chunk-size >= 1 and 0 <= --chunk-overlap < --chunk-size "
              f"(got {args.chunk_size}, {args.chunk_overlap})", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args, out)
    except CliError as exc:
        print(f"rag: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["DEFAULT_KNOWLEDGE_DIR", "build_parser", "collect_files", "main"]
