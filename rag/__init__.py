"""Document knowledge base: load files, split them into chunks, embed them,
store the vectors in FAISS and the chunks' words in a BM25 index, retrieve the
chunks that best answer a question (dense, BM25 or hybrid, optionally reranked
by a cross-encoder) and build the prompt that hands them to the chat model.

Typical use::

    from rag import KnowledgeBase, load_embedder, build_rag_prompt

    kb = KnowledgeBase.open("knowledge/default", load_embedder())
    reports = kb.add_files(["README.md"])
    results = kb.search("How do I install DeepSpeed?", top_k=3, mode="hybrid")
    prompt = build_rag_prompt("How do I install DeepSpeed?", results)

From the shell: ``python -m rag ingest|search|list|delete|eval`` (:mod:`rag.cli`).

Importing this package is cheap: torch, sentence-transformers, faiss, jieba,
bm25s, pypdf and python-docx are imported only when first needed.
"""
from .embeddings import (
    BUNDLED_EMBEDDING_MODEL,
    DEFAULT_EMBEDDING_MODEL,
    Embedder,
    EmbeddingLoadError,
    load_embedder,
)
from .loaders import SUPPORTED_EXTENSIONS, DocumentLoadError, load_file
from .fusion import DEFAULT_DENSE_WEIGHT, convex_combination, reciprocal_rank_fusion
from .keywords import KeywordIndex, tokenize
from .prompt import build_rag_prompt
from .rerank import Reranker, load_reranker
from .splitter import make_text_splitter, split_documents
from .store import EmbeddingMismatchError, KnowledgeBase, KnowledgeBaseCorruptError
from .types import RETRIEVAL_MODES, Chunk, FileReport, SearchResult

__all__ = [
    "BUNDLED_EMBEDDING_MODEL",
    "DEFAULT_DENSE_WEIGHT",
    "DEFAULT_EMBEDDING_MODEL",
    "RETRIEVAL_MODES",
    "SUPPORTED_EXTENSIONS",
    "Chunk",
    "DocumentLoadError",
    "Embedder",
    "EmbeddingLoadError",
    "EmbeddingMismatchError",
    "FileReport",
    "KeywordIndex",
    "KnowledgeBase",
    "KnowledgeBaseCorruptError",
    "Reranker",
    "SearchResult",
    "build_rag_prompt",
    "convex_combination",
    "load_embedder",
    "load_file",
    "load_reranker",
    "make_text_splitter",
    "reciprocal_rank_fusion",
    "split_documents",
    "tokenize",
]
