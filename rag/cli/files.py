"""The commands that change or list a knowledge base's files: ``ingest``, ``list`` and
``delete`` (see :mod:`rag.cli`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from ..loaders import configure, ocr_progress
from ..registry import knowledge_base_names
from ..store import UnknownFile
from .common import CliError, chunks_progress, collect_files, open_kb, open_recorded, print_reports


def cmd_ingest(args: argparse.Namespace, out: TextIO) -> int:
    """``ingest``: add files with a files bar, a chunks bar and an OCR pages bar; exit 1 when any file was refused."""
    from tqdm import tqdm

    if args.commit_every < 1:
        raise CliError(f"--commit-every must be >= 1, got {args.commit_every}")
    configure(ocr=args.ocr)
    files, refused = collect_files(args.paths)
    kb = open_kb(args, create=True)
    disable = True if args.no_progress else None  # None: tqdm shows bars on a terminal only
    files_bar = tqdm(total=len(files), desc="files", unit="file", position=0, disable=disable)
    chunks_bar = tqdm(total=0, desc="chunks", unit="chunk", position=1, leave=False, disable=disable)
    pages_bar = tqdm(total=0, desc="OCR pages", unit="page", position=2, leave=False, disable=disable)

    def on_file(name: str, i: int, n: int) -> None:
        files_bar.update(i - files_bar.n)
        files_bar.set_postfix_str(name[:40])

    on_chunks = chunks_progress(chunks_bar)

    def on_ocr(name: str, done: int, total: int) -> None:
        if done == 0:
            pages_bar.reset(total=total)
        pages_bar.update(done - pages_bar.n)

    try:
        with ocr_progress(on_ocr):
            reports = kb.add_files(files, progress=on_file, on_chunks=on_chunks, commit_every=args.commit_every)
        files_bar.update(len(files) - files_bar.n)
    finally:
        pages_bar.close()
        chunks_bar.close()
        files_bar.close()
    reports = list(reports) + refused
    print_reports(reports, out)
    counts = {s: sum(r.status == s for r in reports) for s in ("added", "skipped", "refused")}
    print(f"knowledge base {args.kb!r}: {counts['added']} added ({sum(r.chunks for r in reports)} chunks), "
          f"{counts['skipped']} unchanged, {counts['refused']} refused; now {len(kb.files())} files, "
          f"{len(kb)} chunks (embedding model {kb.embedding_model})", file=out)
    return 1 if counts["refused"] else 0


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    """``list``: the files of ``--kb`` (name, size, chunks, added), or all knowledge bases."""
    if args.kb is None:
        from ..persistence import MANIFEST_NAME, read_json

        root = Path(args.knowledge_dir)
        rows = []
        for name in knowledge_base_names(root):
            m: dict[str, Any] = read_json(root / name / MANIFEST_NAME)
            rows.append({"name": name, "files": m.get("files"), "chunks": m.get("chunks"),
                         "embedding_model": m.get("embedding_model"), "updated_at": m.get("updated_at")})
        if args.json:
            print(json.dumps(rows, ensure_ascii=False, indent=1), file=out)
        elif not rows:
            print(f"no knowledge bases in {args.knowledge_dir}", file=out)
        for r in rows if not args.json else []:
            print(f"{r['name']}  {r['files']} files  {r['chunks']} chunks  {r['embedding_model']}", file=out)
        return 0
    kb = open_recorded(args)
    files = kb.files()
    if args.json:
        print(json.dumps(files, ensure_ascii=False, indent=1), file=out)
        return 0
    print(f"knowledge base {args.kb!r}: {len(files)} files, {len(kb)} chunks, embedding model {kb.embedding_model}",
          file=out)
    for f in files:
        print(f"{f['name']}  {f['size']} bytes  {f['chunks']} chunks  added {f['added_at']}", file=out)
    return 0


def cmd_delete(args: argparse.Namespace, out: TextIO) -> int:
    """``delete``: remove each named file; exit 2 when one is not in the knowledge base (the others are deleted)."""
    kb = open_recorded(args)
    status = 0
    for name in args.files:
        try:
            removed = kb.delete_file(name)
        except UnknownFile as exc:
            print(f"rag: error: {exc.args[0]}", file=sys.stderr)
            status = 2
            continue
        print(f"deleted {name} ({removed} chunks)", file=out)
    return status
