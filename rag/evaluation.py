"""Retrieval evaluation on a SQuAD-format file (``python -m rag eval FILE``).

Each article becomes one ``.txt`` document (its paragraphs' contexts joined by
blank lines, named after its title) and goes through the real ingestion
pipeline (:meth:`rag.store.KnowledgeBase.add_files`: loader, splitter,
tokenizer, embedding model, FAISS). Then every question is asked in each
retrieval mode and a retrieved chunk counts as a hit when it contains one of
the question's gold answer texts (exact substring), as in the CMRC 2018 /
SQuAD answer spans. Reported per mode: hit@1, hit@5, MRR@10 (mean of 1/rank
of the first hit within the top 10, 0 when none) and mean retrieval time per
question. Each question is embedded once (timed separately) and the vector is
reused by every mode, so the modes' times compare retrieval alone.

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

from .fusion import DEFAULT_DENSE_WEIGHT, reciprocal_rank_fusion
from .persistence import safe_file_name
from .types import SearchResult

if TYPE_CHECKING:
    from .embeddings import Embedder
    from .rerank import Reranker
    from .store import KnowledgeBase

#: Modes ``evaluate`` knows: the three retrievers, the hybrid reranked, and
#: reciprocal rank fusion of dense and BM25 (for comparison with the convex fusion).
EVAL_MODES = ("dense", "bm25", "hybrid", "hybrid+rerank", "rrf")
#: Depth of the ranking scored (MRR@10, and the candidates RRF fuses per retriever use 50).
RANK_DEPTH = 10
RRF_DEPTH = 50


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
        note: why a mode was not measured ("" when it was).
    """

    mode: str
    questions: int = 0
    hit1: float = 0.0
    hit5: float = 0.0
    mrr: float = 0.0
    query_ms: float = 0.0
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

    def embed_documents(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        return self.embedder.embed_documents(texts, batch_size=batch_size, show_progress=show_progress)

    def embed_query(self, text: str) -> np.ndarray:
        vector = self.vectors.get(text)
        return vector if vector is not None else self.embedder.embed_query(text)


def _first_hit(results: Sequence[SearchResult], answers: Sequence[str]) -> int | None:
    for rank, r in enumerate(results, start=1):
        if any(a in r.chunk.text for a in answers):
            return rank
    return None


def evaluate_mode(kb: "KnowledgeBase", questions: Sequence[Question], mode: str, *,
                  reranker: "Reranker | None" = None, dense_weight: float = DEFAULT_DENSE_WEIGHT,
                  label: str | None = None, on_question: Callable[[], None] | None = None) -> ModeResult:
    """Ask every question in one mode and score the rankings (no score threshold).

    Args:
        kb: the knowledge base holding the articles.
        questions: the questions.
        mode: one of :data:`EVAL_MODES`.
        reranker: needed for ``"hybrid+rerank"``.
        dense_weight: the hybrid weight (see :mod:`rag.fusion`).
        label: the row's name (default ``mode``).
        on_question: called after each question (progress bars).

    Raises:
        ValueError: unknown mode, or ``"hybrid+rerank"`` without a reranker.
    """
    if mode not in EVAL_MODES:
        raise ValueError(f"unknown eval mode {mode!r}: use one of {', '.join(EVAL_MODES)}")
    if mode == "hybrid+rerank" and reranker is None:
        raise ValueError("mode 'hybrid+rerank' needs a reranker (--reranker-model)")
    hit1 = hit5 = 0
    rr = 0.0
    start = time.perf_counter()
    for q in questions:
        if mode == "rrf":
            dense = kb.search(q.text, top_k=RRF_DEPTH, mode="dense")
            bm25 = kb.search(q.text, top_k=RRF_DEPTH, mode="bm25")
            by_id = {r.chunk.id: r for r in dense + bm25}
            fused = reciprocal_rank_fusion([[r.chunk.id for r in dense], [r.chunk.id for r in bm25]])
            results = [by_id[cid] for cid, _ in fused[:RANK_DEPTH]]
        else:
            results = kb.search(q.text, top_k=RANK_DEPTH, mode=mode.split("+")[0],
                                reranker=reranker if mode == "hybrid+rerank" else None, dense_weight=dense_weight)
        rank = _first_hit(results, q.answers)
        if rank is not None:
            hit1 += rank == 1
            hit5 += rank <= 5
            rr += 1.0 / rank
        if on_question is not None:
            on_question()
    elapsed = time.perf_counter() - start
    n = len(questions)
    return ModeResult(mode=label or mode, questions=n, hit1=hit1 / n if n else 0.0, hit5=hit5 / n if n else 0.0,
                      mrr=rr / n if n else 0.0, query_ms=1000 * elapsed / n if n else 0.0)


def run_eval(path: str | Path, embedder: "Embedder", *, modes: Sequence[str] = ("dense", "bm25", "hybrid"),
             reranker: "Reranker | None" = None, reranker_name: str | None = None,
             dense_weights: Sequence[float] = (DEFAULT_DENSE_WEIGHT,), limit: int | None = None,
             max_articles: int | None = None, chunk_size: int = 500, chunk_overlap: int = 50,
             doc_names: str = "title", workdir: str | Path | None = None, commit_every: int = 100,
             progress: bool = False) -> EvalReport:
    """Ingest a SQuAD file's articles into a fresh knowledge base and evaluate retrieval.

    Args:
        path: the SQuAD-format file.
        embedder: the embedding model.
        modes: modes to measure (:data:`EVAL_MODES`); ``"hybrid"`` is measured
            once per weight in ``dense_weights``.
        reranker: the loaded reranker for ``"hybrid+rerank"``; when that mode is
            asked for without one, its row says why it was not measured
            (``reranker_name`` names the model that failed to load).
        limit: ask only the first ``limit`` questions (of the ingested articles).
        max_articles: ingest only the first ``max_articles`` articles.
        chunk_size, chunk_overlap: the splitter settings (characters).
        doc_names: see :func:`load_squad`.
        workdir: where to build the knowledge base (kept); default a temporary
            folder, deleted afterwards.
        commit_every: files added between two saves (see :meth:`KnowledgeBase.add_files`).
        progress: show tqdm progress bars on stderr.

    Returns:
        The :class:`EvalReport`.

    Raises:
        EvalFormatError, FileNotFoundError: see :func:`load_squad`.
        ValueError: unknown mode, limit/max_articles < 1, or a folder ``workdir`` that already holds files.
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
            if kb_dir.exists() and any(kb_dir.iterdir()):
                raise ValueError(f"{kb_dir} is not empty: give a new folder for --keep-kb")
        else:
            kb_dir = Path(tmp) / "kb"
        cached = _PrecomputedQueries(embedder)
        kb = KnowledgeBase.open(kb_dir, cached, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
        bar = tqdm(total=len(paths), desc="ingesting articles", unit="doc", disable=not progress)
        start = time.perf_counter()

        def on_file(name: str, i: int, n: int) -> None:
            bar.update(i - bar.n)
            bar.set_postfix_str(name[:30])

        reports = kb.add_files(paths, progress=on_file, commit_every=commit_every)
        bar.update(len(paths) - bar.n)
        bar.close()
        ingest_s = time.perf_counter() - start
        qbar = tqdm(total=len(questions), desc="embedding questions", unit="q", disable=not progress)
        start = time.perf_counter()
        for q in questions:
            cached.vectors[q.text] = embedder.embed_query(q.text)
            qbar.update(1)
        qbar.close()
        embed_ms = 1000 * (time.perf_counter() - start) / max(len(questions), 1)
        report = EvalReport(source=str(path), articles=len(articles), chunks=len(kb), questions=len(questions),
                            embedding_model=embedder.name, chunk_size=chunk_size, chunk_overlap=chunk_overlap,
                            ingest_s=ingest_s, embed_query_ms=embed_ms,
                            ingest_refused=[f"{r.name}: {r.reason}" for r in reports if r.status == "refused"])
        for mode in modes:
            weights = dense_weights if mode == "hybrid" else [DEFAULT_DENSE_WEIGHT]
            for w in weights:
                label = mode if mode != "hybrid" or list(dense_weights) == [DEFAULT_DENSE_WEIGHT] else f"hybrid (w={w:g})"
                if mode == "hybrid+rerank" and reranker is None:
                    why = (f"reranker {reranker_name!r} could not be loaded" if reranker_name
                           else "no --reranker-model given")
                    report.results.append(ModeResult(mode=mode, note=f"not measured: {why}"))
                    continue
                qbar = tqdm(total=len(questions), desc=f"questions ({label})", unit="q", disable=not progress)
                report.results.append(evaluate_mode(kb, questions, mode, reranker=reranker, dense_weight=w,
                                                    label=label, on_question=lambda: qbar.update(1)))
                qbar.close()
    return report


def format_report(report: EvalReport) -> str:
    """The report as Markdown: a header with the data and ingestion, then one table row per mode."""
    lines = [
        f"Evaluation of {report.source}: {report.articles} documents -> {report.chunks} chunks "
        f"(chunk_size {report.chunk_size}, overlap {report.chunk_overlap}), {report.questions} questions; "
        f"embedding model {report.embedding_model}.",
        f"Ingestion: {report.ingest_s:.1f} s ({report.articles / max(report.ingest_s, 1e-9):.1f} documents/s)"
        + (f"; refused: {len(report.ingest_refused)}" if report.ingest_refused else "")
        + f". Embedding a question: {report.embed_query_ms:.1f} ms (once, shared by the modes).",
        "",
        "| mode | hit@1 | hit@5 | MRR@10 | search time (ms/question) |",
        "|---|---|---|---|---|",
    ]
    for r in report.results:
        if r.note:
            lines.append(f"| {r.mode} | – | – | – | {r.note} |")
        else:
            lines.append(f"| {r.mode} | {r.hit1:.4f} | {r.hit5:.4f} | {r.mrr:.4f} | {r.query_ms:.1f} |")
    return "\n".join(lines)
