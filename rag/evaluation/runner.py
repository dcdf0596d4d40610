"""``run_eval``: ingest a SQuAD file's articles into a fresh knowledge base through the
real pipeline, embed each question once, and measure each retrieval mode."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..fusion import DEFAULT_DENSE_WEIGHT, DEFAULT_SCORE_THRESHOLD
from .data import load_squad
from .metrics import EVAL_MODES, evaluate_mode
from .report import EvalReport, ModeResult

if TYPE_CHECKING:
    from ..embeddings import Embedder
    from ..rerank import Reranker


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


def _store_factory(backend: str, directory: Path, milvus_uri: str | None, token: str | None = None):
    """How the knowledge base in ``directory`` makes its vector store (None: FAISS); for
    Milvus, collection ``kb_<folder name>`` in ``milvus_uri`` (default ``milvus.db`` beside
    the folder), as :class:`rag.registry.KnowledgeBaseRegistry` and ``rag migrate`` name it."""
    if backend == "faiss":
        return None
    from ..stores import make_store
    from ..stores.milvus import collection_name

    uri = milvus_uri or str(directory.parent / "milvus.db")
    return lambda dim: make_store("milvus", uri=uri, collection=collection_name("kb", directory.name), dim=dim,
                                  token=token)


def run_eval(path: str | Path, embedder: "Embedder", *, modes: Sequence[str] = ("dense", "bm25", "hybrid"),
             reranker: "Reranker | None" = None, reranker_name: str | None = None,
             dense_weights: Sequence[float] = (DEFAULT_DENSE_WEIGHT,), limit: int | None = None,
             max_articles: int | None = None, chunk_size: int | None = None, chunk_overlap: int | None = None,
             chunk_unit: str | None = None, score_threshold: float | None = DEFAULT_SCORE_THRESHOLD,
             unanswerable: Sequence[str] = (), foreign_docs: Sequence[str | Path] = (), foreign_limit: int = 100,
             doc_names: str = "title", workdir: str | Path | None = None, reuse: bool = False, skip: int = 0,
             commit_every: int = 100, progress: bool = False, vector_store: str = "faiss",
             milvus_uri: str | None = None, milvus_token: str | None = None) -> EvalReport:
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
        vector_store: where the vectors live, "faiss" or "milvus" (:data:`rag.stores.BACKENDS`).
        milvus_uri: for "milvus", a Milvus Lite file or ``http(s)://host:19530``; default
            ``milvus.db`` beside the knowledge base's folder, as the server's default
            (``<knowledge-dir>/milvus.db``), so a base moved there by ``python -m rag migrate``
            is found with ``workdir`` and ``reuse``. The collection is named after the folder.
        milvus_token: Milvus credentials, if the server wants them.

    Returns:
        The :class:`EvalReport`.

    Raises:
        EvalFormatError, FileNotFoundError: see :func:`load_squad`.
        ValueError: unknown mode or vector store, limit/max_articles < 1, or a folder ``workdir``
            that already holds files (without ``reuse``).
        rag.store.VectorStoreMismatchError: with ``reuse``, the base was built on the other store.
    """
    from tqdm import tqdm

    from ..store import KnowledgeBase
    from ..stores import BACKENDS

    if vector_store not in BACKENDS:
        raise ValueError(f"unknown vector store {vector_store!r}: use one of {', '.join(BACKENDS)}")
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
        kb = KnowledgeBase.open(kb_dir, cached, chunk_size=chunk_size, chunk_overlap=chunk_overlap, chunk_unit=chunk_unit,
                                store_factory=_store_factory(vector_store, kb_dir, milvus_uri, milvus_token))
        bar = tqdm(total=len(paths), desc="ingesting articles", unit="doc", disable=not progress)
        start = time.perf_counter()

        def on_file(name: str, i: int, n: int) -> None:
            bar.update(i - bar.n)
            bar.set_postfix_str(name[:30])

        reused = bool(reuse and len(kb))
        reports = [] if reused else kb.add_files(paths, progress=on_file, commit_every=commit_every)
        bar.update(len(paths) - bar.n)
        bar.close()
        ingest_s = time.perf_counter() - start
        foreign_kb = None
        if foreign_docs:
            foreign_dir = Path(tmp) / "foreign"
            foreign_store = _store_factory(vector_store, foreign_dir, milvus_uri, milvus_token)
            foreign_kb = KnowledgeBase.open(foreign_dir, cached, chunk_size=chunk_size, chunk_overlap=chunk_overlap,
                                            chunk_unit=chunk_unit, store_factory=foreign_store)
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
                            vector_store=vector_store, reused=reused,
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
