"""Retrieval evaluation on a SQuAD-format file (``python -m rag eval FILE``).

Each article becomes one ``.txt`` document (its paragraphs' contexts joined by
blank lines, named after its title) and goes through the real ingestion
pipeline (:meth:`rag.store.KnowledgeBase.add_files`: loader, splitter with the
server's default chunking, tokenizer, embedding model, FAISS). Then every
question is asked in each retrieval mode **with the server's score threshold**
(:data:`rag.fusion.DEFAULT_SCORE_THRESHOLD`, unless told otherwise), and a
retrieved chunk counts as a hit when it contains one of the question's gold
answer texts (exact substring), as in the CMRC 2018 / SQuAD answer spans.
Reported per mode: hit@1, hit@5, MRR@10 (mean of 1/rank of the first hit within
the top 10, 0 when none), the same hit@1/hit@5 without the threshold, the share
of questions left with no passage, and the refusals: the share of questions the
base cannot answer (``unanswerable``, e.g. DeepSpeed questions of a CMRC base)
and of these questions asked of a base of other documents (``foreign_docs``)
that correctly get no passage. "hybrid" is the server's pipeline; "rrf",
"convex" and "convex-bound" are the hybrid with another fusion
(:data:`rag.fusion.FUSIONS`). Each question is embedded once (timed separately)
and the vector is reused by every mode, so the modes' times compare retrieval alone.

Format (SQuAD v1.1, https://rajpurkar.github.io/SQuAD-explorer/):
``{"data": [{"title": str, "id"?: str, "paragraphs": [{"context": str,
"qas": [{"question": str, "id": str, "answers": [{"text": str, ...}]}]}]}]}``.
"""
from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .fusion import DEFAULT_DENSE_WEIGHT, DEFAULT_SCORE_THRESHOLD, FUSIONS
from .persistence import safe_file_name
from .types import SearchResult

if TYPE_CHECKING:
    from .embeddings import Embedder
    from .rerank import Reranker
    from .store import KnowledgeBase

#: Modes ``evaluate`` knows: the three retrievers, the hybrid reranked, and the hybrid with
#: each fusion of :data:`rag.fusion.FUSIONS` (for comparing them).
EVAL_MODES = ("dense", "bm25", "hybrid", "hybrid+rerank", "rrf", "convex", "convex-bound")
#: Depth of the ranking scored (MRR@10).
RANK_DEPTH = 10


class EvalFormatError(ValueError):
    """The evaluation file is not SQuAD-format JSON; the message names the file and what is wrong."""


@dataclass
class Article:
    """One document of the evaluation: ``name`` (the file name to store), ``text``."""

    id: str
    name: str
    text: str


@dataclass
class Question:
    """One evaluation question: its text, its gold answer texts, its article's id."""

    id: str
    text: str
    answers: list[str]
    article_id: str


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


def _document_name(title: str, used: set[str], article_id: str, by: str) -> str:
    base = article_id if by == "id" or not title.strip() else title
    base = re.sub(r"[\\/:*?\"<>|]", "_", base).strip() or article_id
    name = safe_file_name(f"{base}.txt")
    if name in used:
        name = safe_file_name(f"{base} ({article_id}).txt")
    used.add(name)
    return name


def load_squad(path: str | Path, *, doc_names: str = "title") -> tuple[list[Article], list[Question]]:
    """Read a SQuAD-format file into articles (one document each) and questions.

    Args:
        path: the JSON file.
        doc_names: ``"title"`` names each document after its article's title
            (as a user's file would be named), ``"id"`` after the article id.

    Returns:
        (articles, questions) in file order. Questions without an answer text are left out.

    Raises:
        EvalFormatError: unreadable JSON or a missing field; FileNotFoundError: no such file.
    """
    path = Path(path)
    if doc_names not in ("title", "id"):
        raise ValueError(f"doc_names must be 'title' or 'id', got {doc_names!r}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise EvalFormatError(f"{path}: not readable JSON ({exc}); give a SQuAD-format .json file") from exc
    articles, questions, used = [], [], set()
    try:
        for i, item in enumerate(data["data"]):
            article_id = str(item.get("id", f"article-{i}"))
            contexts = [p["context"] for p in item["paragraphs"]]
            name = _document_name(str(item.get("title", "")), used, article_id, doc_names)
            articles.append(Article(id=article_id, name=name, text="\n\n".join(contexts)))
            for p in item["paragraphs"]:
                for qa in p["qas"]:
                    answers = sorted({a["text"] for a in qa.get("answers", []) if a.get("text", "").strip()})
                    if answers:
                        questions.append(Question(id=str(qa.get("id", "")), text=qa["question"],
                                                  answers=answers, article_id=article_id))
    except (KeyError, TypeError, AttributeError) as exc:
        raise EvalFormatError(
            f"{path}: not SQuAD format (missing or wrong field: {exc!r}); expected "
            '{"data": [{"title", "paragraphs": [{"context", "qas": [{"question", "answers": [{"text"}]}]}]}]}'
        ) from exc
    if not articles:
        raise EvalFormatError(f"{path}: no articles under \"data\"")
    return articles, questions


class _PrecomputedQueries:
    """An embedder whose ``embed_query`` answers from vectors computed beforehand
    (falling back to the model); everything else is the wrapped embedder's."""

    def __init__(self, embedder: "Embedder"):
        self.embedder = embedder
        self.name = embedder.name
        self.dim = embedder.dim
        self.vectors: dict[str, np.ndarray] = {}

    def __getattr__(self, name: str):  # tokenizer, max_seq_length, token_overhead, batch_size, ...
        return getattr(self.embedder, name)

    def embed_documents(self, texts: Sequence[str], batch_size: int | None = None,
                        show_progress: bool = False) -> np.ndarray:
        return self.embedder.embed_documents(texts, batch_size=batch_size, show_progress=show_progress)

    def embed_query(self, text: str) -> np.ndarray:
        vector = self.vectors.get(text)
        return vector if vector is not None else self.embedder.embed_query(text)


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


def load_questions(path: str | Path) -> list[str]:
    """Questions from a text file, one per line (blank lines and lines starting with # skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def run_eval(path: str | Path, embedder: "Embedder", *, modes: Sequence[str] = ("dense", "bm25", "hybrid"),
             reranker: "Reranker | None" = None, reranker_name: str | None = None,
             dense_weights: Sequence[float] = (DEFAULT_DENSE_WEIGHT,), limit: int | None = None,
             max_articles: int | None = None, chunk_size: int | None = None, chunk_overlap: int | None = None,
             chunk_unit: str | None = None, score_threshold: float | None = DEFAULT_SCORE_THRESHOLD,
             unanswerable: Sequence[str] = (), foreign_docs: Sequence[str | Path] = (), foreign_limit: int = 100,
             doc_names: str = "title", workdir: str | Path | None = None, reuse: bool = False, skip: int = 0,
             commit_every: int = 100, progress: bool = False) -> EvalReport:
    """Ingest a SQuAD file's articles into a fresh knowledge base and evaluate retrieval.

    Args:
        path: the SQuAD-format file.
        embedder: the embedding model.
        modes: modes to measure (:data:`EVAL_MODES`); the convex fusions ("convex",
            "convex-bound") are measured once per weight in ``dense_weights``.
        reranker: the loaded reranker for ``"hybrid+rerank"``; when that mode is
            asked for without one, its row says why it was not measured
            (``reranker_name`` names the model that failed to load).
        limit: ask only the first ``limit`` questions (of the ingested articles, after ``skip``).
        skip: leave out the first ``skip`` questions (e.g. those a setting was tuned on).
        max_articles: ingest only the first ``max_articles`` articles.
        chunk_size, chunk_overlap, chunk_unit: the splitter settings; None = the
            server's defaults for ``embedder`` (:func:`rag.splitter.chunk_settings`).
        score_threshold: the least relevance (the server's default; None: no threshold).
        unanswerable: questions the articles cannot answer (refusal figures).
        foreign_docs: files for a second base; the first ``foreign_limit`` questions are
            asked of it (refusal figures).
        doc_names: see :func:`load_squad`.
        workdir: where to build the knowledge base (kept); default a temporary
            folder, deleted afterwards.
        reuse: with ``workdir``, open the knowledge base already built there (by an
            earlier run with the same articles and embedder) instead of ingesting.
        commit_every: files added between two saves (see :meth:`KnowledgeBase.add_files`).
        progress: show tqdm progress bars on stderr.

    Returns:
        The :class:`EvalReport`.

    Raises:
        EvalFormatError, FileNotFoundError: see :func:`load_squad`.
        ValueError: unknown mode, limit/max_articles < 1, or a folder ``workdir`` that already
            holds files (without ``reuse``).
    """
    from tqdm import tqdm

    from .store import KnowledgeBase

    for m in modes:
        if m not in EVAL_MODES:
            raise ValueError(f"unknown eval mode {m!r}: use one of {', '.join(EVAL_MODES)}")
    for value, flag in ((limit, "--limit"), (max_articles, "--articles")):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    articles, questions = load_squad(path, doc_names=doc_names)
    if max_articles is not None:
        articles = articles[:max_articles]
        kept = {a.id for a in articles}
        questions = [q for q in questions if q.article_id in kept]
    questions = questions[skip:]
    if limit is not None:
        questions = questions[:limit]

    with tempfile.TemporaryDirectory(prefix="rag-eval-") as tmp:
        docs_dir = Path(tmp) / "docs"
        docs_dir.mkdir()
        paths = []
        for a in articles:
            p = docs_dir / a.name
            p.write_text(a.text, encoding="utf-8")
            paths.append(p)
        if workdir is not None:
            kb_dir = Path(workdir)
            if kb_dir.exists() and any(kb_dir.iterdir()) and not reuse:
                raise ValueError(f"{kb_dir} is not empty: give a new folder for --keep-kb")
        else:
            kb_dir = Path(tmp) / "kb"
        cached = _PrecomputedQueries(embedder)
        kb = KnowledgeBase.open(kb_dir, cached, chunk_size=chunk_size, chunk_overlap=chunk_overlap,
                                chunk_unit=chunk_unit)
        bar = tqdm(total=len(paths), desc="ingesting articles", unit="doc", disable=not progress)
        start = time.perf_counter()

        def on_file(name: str, i: int, n: int) -> None:
            bar.update(i - bar.n)
            bar.set_postfix_str(name[:30])

        reports = [] if reuse and len(kb) else kb.add_files(paths, progress=on_file, commit_every=commit_every)
        bar.update(len(paths) - bar.n)
        bar.close()
        ingest_s = time.perf_counter() - start
        foreign_kb = None
        if foreign_docs:
            foreign_kb = KnowledgeBase.open(Path(tmp) / "foreign", cached, chunk_size=chunk_size,
                                            chunk_overlap=chunk_overlap, chunk_unit=chunk_unit)
            foreign_kb.add_files(list(foreign_docs))
        foreign_questions = [q.text for q in questions[:foreign_limit]] if foreign_kb is not None else []
        qbar = tqdm(total=len(questions) + len(unanswerable), desc="embedding questions", unit="q",
                    disable=not progress)
        start = time.perf_counter()
        for text in [q.text for q in questions] + list(unanswerable):
            cached.vectors[text] = embedder.embed_query(text)
            qbar.update(1)
        qbar.close()
        embed_ms = 1000 * (time.perf_counter() - start) / max(len(questions) + len(unanswerable), 1)
        report = EvalReport(source=str(path), articles=len(articles), chunks=len(kb), questions=len(questions),
                            embedding_model=embedder.name, chunk_size=kb._chunk_size, chunk_overlap=kb._chunk_overlap,
                            chunk_unit=kb._chunk_unit, score_threshold=score_threshold, ingest_s=ingest_s,
                            embed_query_ms=embed_ms, unanswerable=len(unanswerable),
                            foreign_chunks=len(foreign_kb) if foreign_kb is not None else 0,
                            ingest_refused=[f"{r.name}: {r.reason}" for r in reports if r.status == "refused"])
        for mode in modes:
            weights = dense_weights if mode in ("convex", "convex-bound") else [DEFAULT_DENSE_WEIGHT]
            for w in weights:
                label = mode if len(weights) == 1 else f"{mode} (w={w:g})"
                if mode == "hybrid+rerank" and reranker is None:
                    why = (f"reranker {reranker_name!r} could not be loaded" if reranker_name
                           else "no --reranker-model given")
                    report.results.append(ModeResult(mode=mode, note=f"not measured: {why}"))
                    continue
                qbar = tqdm(total=len(questions), desc=f"questions ({label})", unit="q", disable=not progress)
                report.results.append(evaluate_mode(
                    kb, questions, mode, reranker=reranker, dense_weight=w, score_threshold=score_threshold,
                    unanswerable=unanswerable, foreign_kb=foreign_kb, foreign_questions=foreign_questions,
                    label=label, on_question=lambda: qbar.update(1)))
                qbar.close()
    return report


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def format_report(report: EvalReport) -> str:
    """The report as Markdown: a header with the data and ingestion, then one table row per mode."""
    threshold = "none" if report.score_threshold is None else f"{report.score_threshold:g}"
    lines = [
        f"Evaluation of {report.source}: {report.articles} documents -> {report.chunks} chunks "
        f"(chunk_size {report.chunk_size}, overlap {report.chunk_overlap} {report.chunk_unit}), "
        f"{report.questions} questions; embedding model {report.embedding_model}; score threshold {threshold}.",
        f"Ingestion: {report.ingest_s:.1f} s ({report.articles / max(report.ingest_s, 1e-9):.1f} documents/s)"
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
