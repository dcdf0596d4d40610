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

Layout: :mod:`rag.evaluation.data` (reading the SQuAD file and question lists),
:mod:`rag.evaluation.metrics` (asking the questions in one mode and scoring the
rankings), :mod:`rag.evaluation.report` (the figures and their Markdown table),
:mod:`rag.evaluation.runner` (:func:`run_eval`: ingest, embed the questions, run the modes).
"""
from __future__ import annotations

from .data import Article, EvalFormatError, Question, load_questions, load_squad
from .metrics import EVAL_MODES, RANK_DEPTH, evaluate_mode
from .report import EvalReport, ModeResult, format_report
from .runner import run_eval

__all__ = ["EVAL_MODES", "RANK_DEPTH", "Article", "EvalFormatError", "EvalReport", "ModeResult", "Question",
           "evaluate_mode", "format_report", "load_questions", "load_squad", "run_eval"]
