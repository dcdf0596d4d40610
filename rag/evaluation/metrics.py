"""Scoring retrieval: ask every question in one mode and measure hit@1, hit@5 and MRR@10
(a hit is a chunk containing a gold answer text), with and without the score threshold,
and the share of questions a base cannot answer that correctly get no passage."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Sequence

from ..fusion import DEFAULT_DENSE_WEIGHT, DEFAULT_SCORE_THRESHOLD, FUSIONS
from ..types import SearchResult
from .data import Question
from .report import ModeResult

if TYPE_CHECKING:
    from ..rerank import Reranker
    from ..store import KnowledgeBase

#: Modes ``evaluate`` knows: the three retrievers, the hybrid reranked, and the hybrid with
#: each fusion of :data:`rag.fusion.FUSIONS` (for comparing them).
EVAL_MODES = ("dense", "bm25", "hybrid", "hybrid+rerank", "rrf", "convex", "convex-bound")
#: Depth of the ranking scored (MRR@10).
RANK_DEPTH = 10


def _first_hit(results: Sequence[SearchResult], answers: Sequence[str]) -> int | None:
    for rank, r in enumerate(results, start=1):
        if any(a in r.chunk.text for a in answers):
            return rank
    return None


def _search(kb: "KnowledgeBase", text: str, mode: str, threshold: float | None, reranker, dense_weight: float,
            top_k: int = RANK_DEPTH) -> list[SearchResult]:
    if mode in FUSIONS:
        return kb.search(text, top_k=top_k, score_threshold=threshold, mode="hybrid", fusion=mode,
                         dense_weight=dense_weight)
    return kb.search(text, top_k=top_k, score_threshold=threshold, mode=mode.split("+")[0],
                     reranker=reranker if mode == "hybrid+rerank" else None)  # the server's own fusion


def _refused(kb: "KnowledgeBase | None", questions: Sequence[str], mode: str, threshold: float | None, reranker,
             dense_weight: float) -> float | None:
    if kb is None or not questions:
        return None
    return sum(not _search(kb, q, mode, threshold, reranker, dense_weight, top_k=1) for q in questions) / len(questions)


def evaluate_mode(kb: "KnowledgeBase", questions: Sequence[Question], mode: str, *,
                  reranker: "Reranker | None" = None, dense_weight: float = DEFAULT_DENSE_WEIGHT,
                  score_threshold: float | None = DEFAULT_SCORE_THRESHOLD, unanswerable: Sequence[str] = (),
                  foreign_kb: "KnowledgeBase | None" = None, foreign_questions: Sequence[str] = (),
                  label: str | None = None, on_question: Callable[[], None] | None = None) -> ModeResult:
    """Ask every question in one mode and score the rankings, with and without the threshold.

    Args:
        kb: the knowledge base holding the articles.
        questions: the questions.
        mode: one of :data:`EVAL_MODES`.
        reranker: needed for ``"hybrid+rerank"``.
        dense_weight: the hybrid weight of convex fusions (see :mod:`rag.fusion`).
        score_threshold: the least relevance (see :meth:`rag.store.KnowledgeBase.search`);
            None applies none.
        unanswerable: questions ``kb`` cannot answer: the share left with no passage is
            :attr:`ModeResult.refused_unanswerable`.
        foreign_kb, foreign_questions: a base of other documents and questions it cannot
            answer (:attr:`ModeResult.refused_foreign`).
        label: the row's name (default ``mode``).
        on_question: called after each question (progress bars).

    Raises:
        ValueError: unknown mode, or ``"hybrid+rerank"`` without a reranker.
    """
    if mode not in EVAL_MODES:
        raise ValueError(f"unknown eval mode {mode!r}: use one of {', '.join(EVAL_MODES)}")
    if mode == "hybrid+rerank" and reranker is None:
        raise ValueError("mode 'hybrid+rerank' needs a reranker (--reranker-model)")
    hit1 = hit5 = hit1_all = hit5_all = empty = 0
    rr = 0.0
    elapsed = 0.0
    for q in questions:
        start = time.perf_counter()
        results = _search(kb, q.text, mode, score_threshold, reranker, dense_weight)
        elapsed += time.perf_counter() - start
        empty += not results
        rank = _first_hit(results, q.answers)
        if rank is not None:
            hit1 += rank == 1
            hit5 += rank <= 5
            rr += 1.0 / rank
        if score_threshold is not None:
            rank = _first_hit(_search(kb, q.text, mode, None, reranker, dense_weight), q.answers)
        hit1_all += rank == 1 if rank is not None else 0
        hit5_all += rank <= 5 if rank is not None else 0
        if on_question is not None:
            on_question()
    n = max(len(questions), 1)
    return ModeResult(mode=label or mode, questions=len(questions), hit1=hit1 / n, hit5=hit5 / n, mrr=rr / n,
                      query_ms=1000 * elapsed / n, hit1_all=hit1_all / n, hit5_all=hit5_all / n, no_passage=empty / n,
                      refused_unanswerable=_refused(kb, unanswerable, mode, score_threshold, reranker, dense_weight),
                      refused_foreign=_refused(foreign_kb, foreign_questions, mode, score_threshold, reranker,
                                               dense_weight))
