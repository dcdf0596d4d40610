"""The commands that ask a knowledge base: ``search`` (the best chunks for a question) and
``eval`` (retrieval figures on a SQuAD-format file) (see :mod:`rag.cli`)."""
from __future__ import annotations

import argparse
import json
from typing import TextIO

from . import common
from .common import CliError, collect_files, open_kb, snippet


def cmd_search(args: argparse.Namespace, out: TextIO) -> int:
    """``search``: print the ranked chunks (or JSON)."""
    from ..rerank import load_reranker

    if args.top_k < 1:
        raise CliError(f"--top-k must be >= 1, got {args.top_k}")
    kb = open_kb(args, create=False)
    reranker = load_reranker(args.reranker_model)
    results = kb.search(args.question, top_k=args.top_k, score_threshold=args.score_threshold,
                        mode=args.mode, reranker=reranker)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], ensure_ascii=False, indent=1), file=out)
        return 0
    if not results:
        print("no relevant passage" + (f" (cosine >= {args.score_threshold:g})"
                                       if args.score_threshold is not None else ""), file=out)
    for i, r in enumerate(results, 1):
        where = r.chunk.source + (f", page {r.chunk.page}" if r.chunk.page else "")
        scores = " · ".join(f"{k} {v:.3f}" for k, v in r.scores.items())
        print(f"[{i}] {where} · {r.retriever} score {r.score:.3f} ({scores})", file=out)
        print(f"    {snippet(r.chunk.text)}", file=out)
    return 0


def cmd_eval(args: argparse.Namespace, out: TextIO) -> int:
    """``eval``: run :func:`rag.evaluation.run_eval` and print its Markdown report."""
    from ..evaluation import EvalFormatError, format_report, load_questions, run_eval
    from ..fusion import check_weight
    from ..rerank import load_reranker

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.reranker_model and "hybrid+rerank" not in modes:
        modes.append("hybrid+rerank")
    try:
        weights = ([check_weight(w) for w in args.dense_weights.split(",")] if args.dense_weights else None)
        embedder = common.load_model(args.embedding_model)
        reranker = load_reranker(args.reranker_model) if "hybrid+rerank" in modes else None
        kwargs = {"dense_weights": weights} if weights else {}
        unanswerable = load_questions(args.unanswerable) if args.unanswerable else []
        foreign, refused = collect_files(args.foreign_docs) if args.foreign_docs else ([], [])
        if refused:
            raise CliError("; ".join(r.reason or r.name for r in refused))
        report = run_eval(args.file, embedder, modes=modes, reranker=reranker, reranker_name=args.reranker_model,
                          limit=args.limit, max_articles=args.articles, chunk_size=args.chunk_size,
                          chunk_overlap=args.chunk_overlap, chunk_unit=args.chunk_unit,
                          score_threshold=None if args.score_threshold < 0 else args.score_threshold,
                          unanswerable=unanswerable, foreign_docs=foreign, doc_names=args.doc_names,
                          workdir=args.keep_kb, reuse=args.reuse_kb, skip=max(args.skip, 0),
                          progress=not args.no_progress, vector_store=args.vector_store or (
                              common.recorded_store(args.keep_kb) if args.reuse_kb and args.keep_kb else "faiss"),
                          milvus_uri=args.milvus_uri, milvus_token=args.milvus_token, **kwargs)
    except (EvalFormatError, OSError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    print(format_report(report), file=out)
    if args.json_out:
        args.json_out.write_text(json.dumps(report.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")
    return 0
