"""The Milvus backend through ``pymilvus.MilvusClient``: one collection per knowledge base
holding each chunk's id, text, file name and dense vector, plus a sparse BM25 field that
Milvus fills itself from the text (a ``Function`` of type BM25 over a jieba analyzer), so
keyword and hybrid queries run inside Milvus.

``uri`` is a file path (Milvus Lite runs in this process, from the ``milvus-lite`` package)
or ``http(s)://host:19530`` (a Milvus standalone server or cluster, same code). Checked
with pymilvus 3.0.2 and milvus-lite 3.2.2 (``../shared/offline-models.md``); the analyzer
needs the ``jieba`` package; Milvus Lite lacks the ``"chinese"`` analyzer type.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any, Sequence

import numpy as np

from .base import QueryMode, StoredChunk, VectorStoreQuery, VectorStoreResult

logger = logging.getLogger(__name__)

#: Longest chunk text and file name Milvus keeps (VARCHAR max_length, in bytes).
MAX_TEXT_BYTES = 65_535
MAX_SOURCE_BYTES = 1_024
#: Milvus returns at most this many rows per query call (its ``limit`` cap).
_PAGE = 16_384
#: The reciprocal-rank-fusion constant of hybrid queries (Milvus's RRFRanker default).
RRF_K = 60
_COLLECTION_NAME = re.compile(r"[^A-Za-z0-9_]")


def collection_name(prefix: str, knowledge_base: str) -> str:
    """A valid Milvus collection name for ``knowledge_base``: letters, digits and '_' only
    (others as ``_``), plus a short hash of the real name so two names never collide."""
    import hashlib

    digest = hashlib.sha1(knowledge_base.encode("utf-8")).hexdigest()[:8]
    return f"{prefix}_{_COLLECTION_NAME.sub('_', knowledge_base)[:180]}_{digest}"


class MilvusVectorStore:
    """:class:`rag.stores.base.VectorStore` on one Milvus collection (created when missing).

    Args:
        uri: a Milvus Lite file path, or ``http(s)://host:19530``.
        collection: the collection's name (see :func:`collection_name`).
        dim: the vectors' dimension (an existing collection must have it).
        token: Milvus credentials (``user:password`` or an API key), if the server wants them.
        client: an open ``MilvusClient`` to share (one per process and uri is enough).

    Raises:
        ImportError: ``pymilvus`` (or, for a file uri, ``milvus-lite``) is not installed.
        ValueError: the collection exists with another dimension.
    """

    name = "milvus"
    stores_text = True
    native_keyword = True

    def __init__(self, uri: str, collection: str, dim: int, token: str | None = None, client: Any = None):
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:  # pragma: no cover - pymilvus is a dependency
            raise ImportError("the Milvus vector store needs pymilvus (and milvus-lite for a file uri): "
                              "pip install pymilvus milvus-lite") from exc
        self.uri, self.collection, self.dim = str(uri), collection, dim
        if "://" not in self.uri:
            # Milvus Lite answers pymilvus's AllocTimestamp call with "not implemented", which
            # its in-process gRPC server logs as an ERROR with a traceback on every insert;
            # pymilvus then goes on without it. Those lines say nothing to a user.
            logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
        self.client = client or MilvusClient(self.uri, **({"token": token} if token else {}))
        if self.client.has_collection(collection):
            found = self._dim_of_collection()
            if found is not None and found != dim:
                raise ValueError(f"Milvus collection {collection!r} holds {found}-dimensional vectors, not {dim}: "
                                 "it was built with another embedding model; use another knowledge base")
            self.client.load_collection(collection)  # a collection from an earlier run starts released
        else:
            self._create()

    def _create(self) -> None:
        from pymilvus import DataType, Function, FunctionType

        schema = self.client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES, enable_analyzer=True,
                         analyzer_params={"tokenizer": "jieba"})
        schema.add_field("source", DataType.VARCHAR, max_length=MAX_SOURCE_BYTES)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(Function(name="bm25", function_type=FunctionType.BM25,
                                     input_field_names=["text"], output_field_names=["sparse"]))
        index = self.client.prepare_index_params()
        index.add_index("dense", index_type="FLAT", metric_type="IP")
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        self.client.create_collection(self.collection, schema=schema, index_params=index)
        logger.info("created Milvus collection %s (%d-dimensional vectors) at %s", self.collection, self.dim, self.uri)

    def _dim_of_collection(self) -> int | None:
        for f in self.client.describe_collection(self.collection).get("fields", []):
            if f.get("name") == "dense":
                return int((f.get("params") or {}).get("dim", 0)) or None
        return None

    # ------------------------------------------------------------ the protocol

    def add(self, ids: np.ndarray, vectors: np.ndarray, chunks: Sequence[StoredChunk] | None = None) -> None:
        """Insert one row per chunk (one call: all of a file's chunks at once).

        Raises:
            ValueError: ``chunks`` missing or not matching ``ids``.
        """
        if chunks is None or len(chunks) != len(ids):
            raise ValueError("the Milvus store keeps chunk text: give one StoredChunk per id")
        rows = [{"id": int(i), "text": _clip(c.text, MAX_TEXT_BYTES), "source": _clip(c.source, MAX_SOURCE_BYTES),
                 "dense": np.asarray(v, dtype=np.float32).tolist()} for i, v, c in zip(ids, vectors, chunks)]
        if rows:
            self.client.insert(self.collection, rows)

    def delete(self, ids: Sequence[int]) -> None:
        """Remove ``ids``."""
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), _PAGE):
            self.client.delete(self.collection, ids=ids[start:start + _PAGE])

    def query(self, query: VectorStoreQuery) -> VectorStoreResult:
        """Dense (inner product), keyword (Milvus's BM25) or hybrid (both, fused by
        reciprocal rank, :data:`RRF_K`) search, optionally only in ``query.sources``.

        Raises:
            ValueError: a dense or hybrid query without a vector, or a keyword one without text.
        """
        where = _source_filter(query.sources)
        if query.mode is QueryMode.DENSE:
            if query.vector is None:
                raise ValueError("a dense query needs a vector")
            hits = self.client.search(self.collection, data=[_vector(query.vector)], anns_field="dense",
                                      limit=query.top_k, filter=where, output_fields=["id"],
                                      search_params={"metric_type": "IP"})[0]
            return _result(hits)
        if query.mode is QueryMode.KEYWORD:
            if not query.text:
                raise ValueError("a keyword query needs text")
            hits = self.client.search(self.collection, data=[query.text], anns_field="sparse", limit=query.top_k,
                                      filter=where, output_fields=["id"], search_params={"metric_type": "BM25"})[0]
            # Milvus Lite reports BM25 as a negative distance (more negative = better)
            return _result(hits, transform=abs)
        from pymilvus import AnnSearchRequest, RRFRanker

        if query.vector is None or not query.text:
            raise ValueError("a hybrid query needs a vector and text")
        requests = [AnnSearchRequest(data=[_vector(query.vector)], anns_field="dense", param={"metric_type": "IP"},
                                     limit=query.top_k, expr=where or None),
                    AnnSearchRequest(data=[query.text], anns_field="sparse", param={"metric_type": "BM25"},
                                     limit=query.top_k, expr=where or None)]
        hits = self.client.hybrid_search(self.collection, requests, ranker=RRFRanker(RRF_K), limit=query.top_k,
                                         output_fields=["id"])[0]
        return _result(hits)

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of ``ids`` in that order.

        Raises:
            KeyError: an id that is not stored.
        """
        ids = [int(i) for i in ids]
        if not ids:
            return np.zeros((0, self.dim), np.float32)
        rows = {int(r["id"]): r["dense"] for r in self.client.get(self.collection, ids=ids, output_fields=["dense"])}
        missing = [i for i in ids if i not in rows]
        if missing:
            raise KeyError(f"ids {missing[:5]} are not in Milvus collection {self.collection!r}")
        return np.asarray([rows[i] for i in ids], dtype=np.float32)

    def chunks(self, ids: Sequence[int]) -> list[StoredChunk]:
        """The stored text and file name of ``ids`` (those found, in that order)."""
        ids = [int(i) for i in ids]
        if not ids:
            return []
        rows = {int(r["id"]): r for r in self.client.get(self.collection, ids=ids, output_fields=["text", "source"])}
        return [StoredChunk(id=i, text=rows[i]["text"], source=rows[i]["source"]) for i in ids if i in rows]

    def ids(self) -> np.ndarray:
        """Every stored id (paged through Milvus's query limit)."""
        out: list[int] = []
        last = -1
        while True:
            rows = self.client.query(self.collection, filter=f"id > {last}", output_fields=["id"], limit=_PAGE)
            if not rows:
                break
            batch = sorted(int(r["id"]) for r in rows)
            out += batch
            last = batch[-1]
            if len(rows) < _PAGE:
                break
        return np.asarray(out, dtype=np.int64)

    def count(self) -> int:
        """How many chunks the collection holds (``count(*)``, as Milvus counts them)."""
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def drop(self) -> None:
        """Delete the whole collection (the knowledge base is deleted)."""
        if self.client.has_collection(self.collection):
            self.client.drop_collection(self.collection)

    def close(self) -> None:
        """Close the client."""
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing must not hide what the caller is doing
            logger.debug("closing the Milvus client failed", exc_info=True)


def _clip(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", errors="ignore")


def _vector(v: np.ndarray) -> list[float]:
    return np.asarray(v, dtype=np.float32).reshape(-1).tolist()


def _source_filter(sources: Sequence[str] | None) -> str:
    return "" if sources is None else f"source in {json.dumps(list(sources), ensure_ascii=False)}"


def _result(hits: Sequence[dict], transform=float) -> VectorStoreResult:
    return VectorStoreResult(ids=[int(h["id"]) for h in hits], scores=[float(transform(h["distance"])) for h in hits])
