"""Searching a knowledge base: dense (the vector store), BM25 (:mod:`rag.keywords`) or
hybrid (both, fused by :mod:`rag.fusion`), the score threshold, the optional reranker.
Mixed into :class:`rag.store.KnowledgeBase`."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .fusion import (DEFAULT_FUSION, FUSIONS, bm25_upper_bound, check_weight,
                     convex_combination, fusion_for, keyword_coverage, reciprocal_rank_fusion, relevance)
from .keywords import tokenize
from .rerank import RERANK_CANDIDATES
from .stores import QueryMode, VectorStoreQuery
from .types import MAX_QUERY_CHARS, RETRIEVAL_MODES, Chunk, SearchResult

if TYPE_CHECKING:
    from .rerank import Reranker

logger = logging.getLogger("rag.store")

#: Candidates each retriever contributes to a hybrid search (at least top_k).
HYBRID_CANDIDATES = 50


class Retrieval:
    """Search over :class:`rag.store.KnowledgeBase` (a mixin)."""


    def search(self, query: str, top_k: int = 3, score_threshold: float | None = None, *,
               mode: str = "dense", reranker: "Reranker | None" = None,
               dense_weight: float | None = None, fusion: str | None = None) -> list[SearchResult]:
        """Retrieve the chunks that best answer ``query`` (the retriever).

        Args:
            query: the user's question.
            top_k: most results to return (>= 1).
            score_threshold: if given, the question gets no passage ([]) unless some
                candidate chunk reaches this **relevance** (:func:`rag.fusion.relevance`,
                in [0, 1]: the larger of its calibrated cosine and the question's keyword
                coverage), in every mode. It says "the knowledge base has nothing on
                this"; it does not thin out the ranking: when one chunk passes, the best
                ``top_k`` are returned in ranking order, so a chunk ranked first on strong
                keyword evidence is never cut for a low cosine. Below 0 keeps everything.
            mode: ``"dense"`` (FAISS, cosine; the default, for compatibility),
                ``"bm25"`` (keywords; only chunks sharing a word with the query),
                or ``"hybrid"`` (the best :data:`HYBRID_CANDIDATES` of each,
                fused by ``fusion``; what the server uses).
            reranker: if given, the best ``max(top_k, RERANK_CANDIDATES)`` chunks
                of ``mode`` are re-ordered by it (see :mod:`rag.rerank`).
            dense_weight: the weight of the dense score in convex hybrid fusion, in [0, 1];
                None: the embedding model's default (:func:`rag.fusion.fusion_for`).
            fusion: one of :data:`rag.fusion.FUSIONS`; None: the model's default (likewise).

        Returns:
            Up to ``top_k`` :class:`SearchResult`, best first: ``score`` is the
            score they are ranked by (cosine, BM25, hybrid or rerank score; see
            :class:`SearchResult`), ``scores`` holds every score known, always
            including ``"cosine"``, ``"coverage"`` and ``"relevance"``. [] for an empty
            knowledge base, and in bm25 mode when no chunk shares a word with the query.

        Raises:
            ValueError: ``top_k`` < 1, an unknown ``mode`` or ``fusion``, a bad ``dense_weight``, or a
                query longer than :data:`rag.types.MAX_QUERY_CHARS` characters.
        """
        if len(query) > MAX_QUERY_CHARS:
            raise ValueError(f"the query is {len(query)} characters long; a search takes at most "
                             f"{MAX_QUERY_CHARS}: ask a shorter question")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
        if mode not in RETRIEVAL_MODES:
            raise ValueError(f"unknown retrieval mode {mode!r}: use one of {', '.join(RETRIEVAL_MODES)}")
        default_fusion, default_weight = fusion_for(self._embedder.name)
        fusion = default_fusion if fusion is None else fusion
        dense_weight = default_weight if dense_weight is None else dense_weight
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}: use one of {', '.join(FUSIONS)}")
        dense_weight = check_weight(dense_weight)
        top_k = int(top_k)
        self._refresh()
        if len(self) == 0:
            return []
        query_vector = self._embedder.embed_query(query).reshape(1, -1)
        query_tokens = list(dict.fromkeys(tokenize(query)))
        # How many ranked candidates to carry out of the lock (the reranker's pool),
        # and how deep to look for one that passes the threshold.
        wanted = max(top_k, RERANK_CANDIDATES) if reranker is not None else top_k
        depth = wanted if score_threshold is None else max(wanted, HYBRID_CANDIDATES)
        with self._lock:
            idf = self._keywords.idf(query_tokens)
            ranked, scores = self._rank(query_vector, query_tokens, mode, dense_weight, depth, fusion, idf)
            for cid, _ in ranked:
                s = scores[cid]
                s["coverage"] = keyword_coverage(idf, self._keywords.chunk_token_set(cid))
                s["relevance"] = relevance(s["cosine"], s["coverage"], self._embedder.name)
            if score_threshold is not None and max((scores[c]["relevance"] for c, _ in ranked), default=-1.0) \
                    < score_threshold:
                return []
            candidates = []
            for cid, rank_score in ranked[:wanted]:
                c = self._chunks[cid]
                chunk = Chunk(id=c.id, text=c.text, source=c.source, page=c.page, metadata=dict(c.metadata))
                candidates.append(SearchResult(chunk=chunk, score=float(rank_score), scores=scores[cid],
                                               retriever=mode))
        if reranker is not None and candidates:
            candidates = self._rerank(query, candidates, reranker)
        return candidates[:top_k]

    def _rank(self, query_vector: np.ndarray, query_tokens: list[str], mode: str, dense_weight: float,
              depth: int, fusion: str = DEFAULT_FUSION, idf: dict[str, float] | None = None,
              ) -> tuple[list[tuple[int, float]], dict[int, dict[str, float]]]:
        """Rank chunks for a query (under the lock): ``([(chunk id, score), ...] best
        first, {chunk id: {"cosine": .., "bm25": .., "hybrid": ..}})``; ``depth`` =
        how many ranked chunks are needed at most."""
        n_total = self._store.count()
        if mode == "dense":
            k = min(depth, n_total)
            sims, ids = self._dense(query_vector, k)
            ranked = [(int(cid), float(sim)) for sim, cid in zip(sims[0].tolist(), ids[0].tolist())
                      if cid >= 0 and cid in self._chunks]
            return ranked, {cid: {"cosine": sim} for cid, sim in ranked}

        bm25_ids, bm25_scores = self._keywords.scores(query_tokens)  # every chunk, ids ascending
        order = np.lexsort((bm25_ids, -bm25_scores)) if len(bm25_scores) else np.zeros(0, dtype=np.int64)
        if mode == "bm25":
            ranked = [(int(bm25_ids[i]), float(bm25_scores[i])) for i in order[:depth] if bm25_scores[i] > 0]
            cosine = self._cosines(query_vector, [cid for cid, _ in ranked])
            return ranked, {cid: {"cosine": cosine[cid], "bm25": s} for cid, s in ranked}

        pool = max(HYBRID_CANDIDATES, depth)
        sims, ids = self._dense(query_vector, min(pool, n_total))
        cosine = {int(cid): float(sim) for sim, cid in zip(sims[0].tolist(), ids[0].tolist())
                  if cid >= 0 and cid in self._chunks}
        dense_order = list(cosine)
        bm25_order = [int(bm25_ids[i]) for i in order[:pool] if bm25_scores[i] > 0]
        keyword_only = [cid for cid in bm25_order if cid not in cosine]
        cosine.update(self._cosines(query_vector, keyword_only))
        candidates = np.fromiter(cosine, dtype=np.int64, count=len(cosine))
        positions = np.minimum(np.searchsorted(bm25_ids, candidates), max(len(bm25_ids) - 1, 0))
        found = (bm25_ids[positions] == candidates) if len(bm25_ids) else np.zeros(len(candidates), dtype=bool)
        values = np.where(found, bm25_scores[positions] if len(bm25_scores) else 0.0, 0.0)
        bm25 = dict(zip(candidates.tolist(), values.astype(float).tolist()))
        if fusion == "rrf":
            fused = reciprocal_rank_fusion([dense_order, bm25_order])
        else:
            bound = bm25_upper_bound(idf or {}, self._keywords.k1) if fusion == "convex-bound" else None
            fused = convex_combination(cosine, bm25, dense_weight, bm25_bound=bound or None)
        ranked = fused[:depth]
        return ranked, {cid: {"cosine": cosine[cid], "bm25": bm25[cid], "hybrid": f} for cid, f in ranked}

    def _cosines(self, query_vector: np.ndarray, ids: Sequence[int]) -> dict[int, float]:
        """Cosine similarity of the query and the stored vectors of ``ids`` (under the lock)."""
        if not ids:
            return {}
        vectors = self._store.vectors([int(cid) for cid in ids])
        sims = vectors @ query_vector.reshape(-1)
        return {int(cid): float(sim) for cid, sim in zip(ids, sims.tolist())}

    @staticmethod
    def _rerank(query: str, candidates: list[SearchResult], reranker: "Reranker") -> list[SearchResult]:
        """Re-order candidates by the reranker's score (ties keep the earlier order)."""
        rerank_scores = reranker.score(query, [r.chunk.text for r in candidates])
        out = []
        for r, s in zip(candidates, rerank_scores.tolist()):
            scores = dict(r.scores)
            scores["rerank"] = float(s)
            out.append(SearchResult(chunk=r.chunk, score=float(s), scores=scores, retriever=f"{r.retriever}+rerank"))
        order = sorted(range(len(out)), key=lambda i: -out[i].score)
        return [out[i] for i in order]


    def _dense(self, query_vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Dense search in the store, as FAISS shapes it: (similarities (1, k), ids (1, k))."""
        found = self._store.query(VectorStoreQuery(vector=query_vector.reshape(-1), top_k=max(k, 1),
                                                   mode=QueryMode.DENSE))
        return (np.asarray([found.scores], dtype=np.float32).reshape(1, -1),
                np.asarray([found.ids], dtype=np.int64).reshape(1, -1))
