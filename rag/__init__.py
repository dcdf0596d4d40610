"""Document knowledge base: load files, split them into chunks, embed them,
store the vectors in FAISS, retrieve the chunks closest to a question and
build the prompt that hands them to the chat model.

Typical use::

    from rag import KnowledgeBase, load_embedder, build_rag_prompt

    kb = KnowledgeBase.open("knowledge/default", load_embedder())
    reports = kb.add_files(["README.md"])
    results = kb.search("How do I install DeepSpeed?", top_k=3)
    prompt = build_rag_prompt("How do I install DeepSpeed?", results)

Importing this package is cheap: torch, sentence-transformers, faiss, pypdf
and python-docx are imported only when first needed.
"""
from .embeddings import (
    BUNDLED_EMBEDDING_MODEL,
    DEFAULT_EMBEDDING_MODEL,
    Embedder,
    EmbeddingLoadError,
    load_embedder,
)
from .loaders import SUPPORTED_EXTENSIONS, DocumentLoadError, load_file
from .prompt import build_rag_prompt
from .splitter import make_text_splitter, split_documents
from .store import EmbeddingMismatchError, KnowledgeBase, KnowledgeBaseCorruptError
from .types import Chunk, FileReport, SearchResult

__all__ = [
    "BUNDLED_EMBEDDING_MODEL",
    "DEFAULT_EMBEDDING_MODEL",
    "SUPPORTED_EXTENSIONS",
    "Chunk",
    "DocumentLoadError",
    "Embedder",
    "EmbeddingLoadError",
    "EmbeddingMismatchError",
    "FileReport",
    "KnowledgeBase",
    "KnowledgeBaseCorruptError",
    "SearchResult",
    "build_rag_prompt",
    "load_embedder",
    "load_file",
    "make_text_splitter",
    "split_documents",
]
