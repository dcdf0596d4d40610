"""The FAISS backend: vectors only, in process, saved with the knowledge base's
generations (``index.faiss``, see :mod:`rag.persistence`); keyword search is done beside
it (:mod:`rag.keywords`, BM25 over jieba tokens).

An exact ``IndexIDMap2`` over ``IndexFlatIP`` up to ``approximate_from`` vectors, an
``IndexIVFFlat`` from there on (:func:`build_index`). Not thread-safe: the knowledge base's
lock serialises calls.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np

from .base import QueryMode, StoredChunk, VectorStoreQuery, VectorStoreResult

logger = logging.getLogger(__name__)

#: From this many chunks on, dense search uses an approximate IVF index instead of the exact
#: flat one. Measured on 2 CPU cores with all-MiniLM-L6-v2 (docs/benchmarks.md, "Retrieval
#: latency"): embedding the query takes ~12 ms; searching one query flat takes 1.5 ms at 10k
#: chunks, 3.0 ms at 20k, 6.9 ms at 50k and 14 ms at 100k, IVF 0.2-0.35 ms at 20k-100k with
#: recall@10 0.993-0.9995 (nprobe 32). HNSW reached only 0.87 at 100k and cannot delete.
#: Flat therefore stays (exact) while it adds at most ~25% to the query's latency.
APPROXIMATE_INDEX_MIN_CHUNKS = 20_000
#: Inverted lists an IVF index probes per query (recall@10 >= 0.993 from 20k to 100k chunks,
#: measured; 16 probes gave 0.98 at 20k).
IVF_NPROBE = 32


def ivf_lists(n: int) -> int:
    """Inverted lists of an IVF index over ``n`` vectors: 4 sqrt(n) (FAISS' guideline is
    4-16 sqrt(n)), at most n / 39 (k-means wants 39 training points per list), at least 1."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def build_index(vectors: np.ndarray, ids: np.ndarray, dim: int, approximate: bool):
    """A FAISS inner-product index holding ``vectors`` (float32, shape (n, dim)) under ``ids``
    (int64, shape (n,)).

    Returns:
        ``approximate`` False: ``IndexIDMap2(IndexFlatIP)`` (exact). True: an
        ``IndexIVFFlat`` with :func:`ivf_lists` lists trained on ``vectors`` (k-means;
        seconds for tens of thousands of vectors), :data:`IVF_NPROBE` probes (all lists
        when there are fewer) and a hash-table direct map, so that ``remove_ids`` and
        ``reconstruct`` by chunk id work as on the flat index.
    """
    import faiss

    if not approximate or len(ids) == 0:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    else:
        nlist = ivf_lists(len(ids))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(IVF_NPROBE, nlist)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
    return index


def empty_index(dim: int):
    """An empty exact index (``IndexIDMap2(IndexFlatIP)``) for ``dim``-dimensional vectors."""
    return build_index(np.zeros((0, dim), np.float32), np.zeros(0, np.int64), dim, approximate=False)


def index_ids(index) -> np.ndarray:
    """The ids stored in an index made by :func:`build_index` (int64, any order)."""
    import faiss

    if not isinstance(index, faiss.IndexIVF):
        return faiss.vector_to_array(index.id_map)
    lists = index.invlists
    parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
             for i in range(index.nlist) if lists.list_size(i)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class FaissVectorStore:
    """:class:`rag.stores.base.VectorStore` over a FAISS index.

    Args:
        dim: the vectors' dimension.
        approximate_from: vectors from which the index becomes IVF (it switches as vectors
            are added or deleted, back to flat below half of it); an integer >= 1.
        index: an index to start from (:meth:`from_bytes`), default empty.

    Raises:
        ValueError: a bad ``approximate_from``.
    """

    name = "faiss"
    stores_text = False
    native_keyword = False

    def __init__(self, dim: int, approximate_from: int = APPROXIMATE_INDEX_MIN_CHUNKS, index=None):
        if isinstance(approximate_from, bool) or not isinstance(approximate_from, int) or approximate_from < 1:
            raise ValueError(f"approximate_from must be an integer >= 1, got {approximate_from!r}")
        self.dim = dim
        self.approximate_from = approximate_from
        self.index = empty_index(dim) if index is None else index

    # ------------------------------------------------------------ persistence

    def to_bytes(self) -> bytes:
        """The index serialised (``faiss.serialize_index``)."""
        import faiss

        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | np.ndarray, approximate_from: int = APPROXIMATE_INDEX_MIN_CHUNKS
                   ) -> "FaissVectorStore":
        """A store over a serialised index (:meth:`to_bytes`)."""
        import faiss

        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data)
        return cls(index.d, approximate_from, index)

    # ------------------------------------------------------------ the protocol

    def add(self, ids: np.ndarray, vectors: np.ndarray, chunks: Sequence[StoredChunk] | None = None) -> None:
        """Add ``vectors`` (n, dim) under ``ids`` (n,), then fit the index type to the size."""
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
        self.fit()

    def delete(self, ids: Sequence[int]) -> None:
        """Remove ``ids``, then fit the index type to the size."""
        if len(ids):
            self.index.remove_ids(np.asarray(list(ids), dtype=np.int64))
            self.fit()

    def query(self, query: VectorStoreQuery) -> VectorStoreResult:
        """Dense search only (``native_keyword`` is False).

        Raises:
            ValueError: a keyword or hybrid query, or no ``vector``.
        """
        if query.mode is not QueryMode.DENSE or query.vector is None:
            raise ValueError("the FAISS store runs dense queries only: give a vector, mode DENSE")
        k = min(query.top_k, self.index.ntotal)
        if k <= 0:
            return VectorStoreResult()
        sims, ids = self.index.search(np.asarray(query.vector, dtype=np.float32).reshape(1, -1), k)
        pairs = [(int(i), float(s)) for s, i in zip(sims[0].tolist(), ids[0].tolist()) if i >= 0]
        return VectorStoreResult(ids=[i for i, _ in pairs], scores=[s for _, s in pairs])

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of ``ids`` in that order; KeyError (from FAISS's RuntimeError) for an unknown id."""
        if not len(ids):
            return np.zeros((0, self.dim), np.float32)
        try:
            return np.stack([self.index.reconstruct(int(i)) for i in ids])
        except RuntimeError as exc:
            raise KeyError(f"an id of {list(ids)[:5]}... is not stored") from exc

    def ids(self) -> np.ndarray:
        """Every stored id."""
        return index_ids(self.index) if self.index.ntotal else np.zeros(0, np.int64)

    def count(self) -> int:
        """How many vectors are stored."""
        return int(self.index.ntotal)

    def close(self) -> None:
        """Nothing to release."""

    # ------------------------------------------------------------ index type

    @property
    def kind(self) -> str:
        """"flat" (exact) or "ivf" (approximate)."""
        import faiss

        return "ivf" if isinstance(self.index, faiss.IndexIVF) else "flat"

    @property
    def description(self) -> str:
        """E.g. "flat (exact)" or "IVF-flat, 1264 lists, nprobe 32"."""
        if self.kind == "ivf":
            return f"IVF-flat, {self.index.nlist} lists, nprobe {self.index.nprobe}"
        return "flat (exact)"

    def fit(self) -> None:
        """Switch the index to the type for the current size: IVF from ``approximate_from``
        vectors on, retrained when they have grown fourfold (twice the lists are due), flat
        again below half of ``approximate_from``. If the rebuild fails, the current index
        (which holds every vector) stays and the error is logged."""
        n = self.count()
        if self.kind == "ivf":
            if n >= self.approximate_from // 2 and ivf_lists(n) < 2 * self.index.nlist:
                return
            approximate = n >= self.approximate_from // 2
        else:
            if n < self.approximate_from:
                return
            approximate = True
        try:
            ids = np.sort(self.ids())
            vectors = self.index.reconstruct_batch(ids) if n else np.zeros((0, self.dim), np.float32)
            index = build_index(vectors, ids, self.dim, approximate)
        except Exception:  # noqa: BLE001 - the current index still holds every vector: keep searching it
            logger.exception("could not rebuild the FAISS index for %d vectors; keeping %s", n, self.description)
            return
        self.index = index
        logger.info("%d vectors: dense search now uses %s", n, self.description)
