"""Optional cross-encoder reranking of retrieved chunks.

A cross-encoder (sentence-transformers ``CrossEncoder``, e.g.
``BAAI/bge-reranker-v2-m3``) reads the question and a chunk together and
scores their relevance; it is slower than the retrievers but more accurate, so
it re-orders only the best candidates. It is off unless ``--reranker-model``
names one, and a model that cannot be loaded turns it off with a warning
instead of stopping the program.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: How many of the best fused candidates the reranker re-scores (at least top_k).
RERANK_CANDIDATES = 20


class PairScorer(Protocol):
    """What :class:`Reranker` needs from a model: ``CrossEncoder.predict``'s shape."""

    def predict(self, inputs: Sequence[tuple[str, str]], **kwargs: Any) -> Any:
        """One relevance score per (query, passage) pair."""


class Reranker:
    """A cross-encoder that re-scores (question, chunk) pairs.

    Attributes:
        model: anything with ``predict(pairs) -> scores`` (a ``CrossEncoder``,
            or a stand-in in tests).
        name: the model's name, shown in the page and the logs.
    """

    def __init__(self, model: PairScorer, name: str):
        """Wrap a loaded model; see :func:`load_reranker`."""
        self.model = model
        self.name = name

    def __repr__(self) -> str:
        return f"Reranker(name={self.name!r})"

    def score(self, query: str, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """Relevance of each text to ``query``.

        Returns:
            float array of shape (len(texts),), higher = more relevant; the scale
            is the model's own (``CrossEncoder.predict`` with its default
            activation: a sigmoid probability in [0, 1] for one-label rerankers
            such as bge-reranker). Empty for no texts.

        Raises:
            ValueError: the model returned another number of scores.
        """
        if len(texts) == 0:
            return np.zeros(0, dtype=np.float32)
        pairs = [(query, t) for t in texts]
        raw = self.model.predict(pairs, batch_size=batch_size, show_progress_bar=False)
        scores = np.asarray(raw, dtype=np.float32).reshape(-1)
        if scores.shape[0] != len(texts):
            raise ValueError(f"reranker {self.name} returned {scores.shape[0]} scores for {len(texts)} passages; "
                             "use a cross-encoder with one output label")
        return scores


def load_reranker(model_name: str | None, device: str | None = None) -> Reranker | None:
    """Load a cross-encoder reranker, or None when none is wanted or it cannot be loaded.

    Args:
        model_name: a Hugging Face id (e.g. ``"BAAI/bge-reranker-v2-m3"``) or a
            local folder; None or "" means no reranker.
        device: "cpu", "cuda", ...; None lets sentence-transformers pick.

    Returns:
        The :class:`Reranker`, or None. A model that cannot be loaded (not
        cached and offline, a wrong name, not a cross-encoder) logs a warning
        naming the model and the fix, and returns None: retrieval then runs
        without reranking. The local cache is tried before the hub, as for
        embedding models.
    """
    if not model_name:
        return None
    try:
        from sentence_transformers import CrossEncoder

        local = Path(model_name).expanduser()
        if local.is_dir():
            model = CrossEncoder(str(local), device=device)
        else:
            try:
                model = CrossEncoder(model_name, device=device, local_files_only=True)
            except Exception:
                from .embeddings import _env_flag

                if _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE"):
                    raise
                model = CrossEncoder(model_name, device=device)
    except Exception as exc:  # noqa: BLE001 - any failure means "no reranker", loudly
        logger.warning(
            "could not load the reranker %r (%s: %s); continuing WITHOUT reranking. Check the name or folder; "
            "offline, download it elsewhere (`hf download <model-id> --local-dir <folder>`), copy it here and "
            "pass --reranker-model <folder>.", model_name, type(exc).__name__, exc)
        return None
    logger.info("loaded reranker %s", model_name)
    return Reranker(model, str(model_name))
