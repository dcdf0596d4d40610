"""The figures of an evaluation (:class:`ModeResult` per mode, :class:`EvalReport` for
the run) and their Markdown table (:func:`format_report`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModeResult:
    """Figures of one retrieval mode.

    Attributes:
        mode: the mode's label (e.g. ``"hybrid"``, ``"hybrid (w=0.3)"``).
        questions: questions asked.
        hit1, hit5: share of questions with a hit at rank 1 / in the top 5, in [0, 1].
        mrr: mean reciprocal rank of the first hit in the top 10, in [0, 1].
        query_ms: mean wall time of the search per question in milliseconds
            (with the question's embedding precomputed by :func:`run_eval`; see
            :attr:`EvalReport.embed_query_ms`).
        hit1_all, hit5_all: hit@1 / hit@5 without the score threshold.
        no_passage: share of the questions the threshold left with no passage.
        refused_unanswerable: share of the unanswerable questions left with no passage
            (None when none were given).
        refused_foreign: share of the questions, asked of a base of other documents, left
            with no passage (None when no foreign documents were given).
        note: why a mode was not measured ("" when it was).
    """

    mode: str
    questions: int = 0
    hit1: float = 0.0
    hit5: float = 0.0
    mrr: float = 0.0
    query_ms: float = 0.0
    hit1_all: float = 0.0
    hit5_all: float = 0.0
    no_passage: float = 0.0
    refused_unanswerable: float | None = None
    refused_foreign: float | None = None
    note: str = ""


@dataclass
class EvalReport:
    """Everything ``python -m rag eval`` prints: the data, the ingestion and each mode's figures."""

    source: str
    articles: int
    chunks: int
    questions: int
    embedding_model: str
    chunk_size: int
    chunk_overlap: int
    ingest_s: float
    chunk_unit: str = "tokens"
    vector_store: str = "faiss"
    reused: bool = False
    score_threshold: float | None = None
    unanswerable: int = 0
    foreign_chunks: int = 0
    embed_query_ms: float = 0.0
    ingest_refused: list[str] = field(default_factory=list)
    results: list[ModeResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the report."""
        d = dict(vars(self))
        d["results"] = [vars(r) for r in self.results]
        return d



def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def format_report(report: EvalReport) -> str:
    """The report as Markdown: a header with the data and ingestion, then one table row per mode."""
    threshold = "none" if report.score_threshold is None else f"{report.score_threshold:g}"
    lines = [
        f"Evaluation of {report.source}: {report.articles} documents -> {report.chunks} chunks "
        f"(chunk_size {report.chunk_size}, overlap {report.chunk_overlap} {report.chunk_unit}), "
        f"{report.questions} questions; embedding model {report.embedding_model}; vector store "
        f"{report.vector_store}; score threshold {threshold}.",
        ("Ingestion: none (the knowledge base kept by an earlier run was reused)" if report.reused else
         f"Ingestion: {report.ingest_s:.1f} s ({report.articles / max(report.ingest_s, 1e-9):.1f} documents/s)")
        + (f"; refused: {len(report.ingest_refused)}" if report.ingest_refused else "")
        + f". Embedding a question: {report.embed_query_ms:.1f} ms (once, shared by the modes).",
        f"Refusals: {report.unanswerable} questions the documents cannot answer; the first questions asked of a "
        f"base of other documents ({report.foreign_chunks} chunks).",
        "",
        "| mode | hit@1 | hit@5 | MRR@10 | no passage | refused: unanswerable | refused: other base "
        "| hit@1 / hit@5 without threshold | search time (ms/question) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.results:
        if r.note:
            lines.append(f"| {r.mode} | – | – | – | – | – | – | – | {r.note} |")
        else:
            lines.append(f"| {r.mode} | {r.hit1:.4f} | {r.hit5:.4f} | {r.mrr:.4f} | {r.no_passage:.3f} | "
                         f"{_share(r.refused_unanswerable)} | {_share(r.refused_foreign)} | "
                         f"{r.hit1_all:.4f} / {r.hit5_all:.4f} | {r.query_ms:.1f} |")
    return "\n".join(lines)
