"""Retrieval quality on the classic demo (DeepSpeed's README) with the bundled
all-MiniLM-L6-v2, and the score ranges behind the default score threshold."""
from __future__ import annotations

import pytest

from rag import KnowledgeBase

try:  # tests/ is a package (tests/__init__.py); fall back to rootdir-relative import without it
    from tests.rag_fixtures import bundled_embedder
except ImportError:  # pragma: no cover
    from rag_fixtures import bundled_embedder

INSTALL = "pip install deepspeed"
RELEVANT = ["How do I install DeepSpeed?", "How can I install DeepSpeed from PyPI?"]
IRRELEVANT = ["What is the capital of France?", "How do I bake sourdough bread?", "Who won the 2018 World Cup?"]


@pytest.fixture(scope="module")
def readme_kb(corpus, tmp_path_factory):
    kb = KnowledgeBase.open(tmp_path_factory.mktemp("readme") / "kb", bundled_embedder())  # defaults 500/50
    [report] = kb.add_files([corpus / "deepspeed" / "README.md"])
    assert report.status == "added" and report.chunks > 20
    return kb


def _rank_of_install_chunk(kb, query):
    results = kb.search(query, top_k=len(kb))
    return next((i for i, r in enumerate(results, 1) if INSTALL in r.chunk.text), None)


@pytest.mark.parametrize("query", RELEVANT)
def test_install_question_finds_the_installation_section(readme_kb, query):
    top3 = readme_kb.search(query, top_k=3)
    assert len(top3) == 3
    assert any(INSTALL in r.chunk.text for r in top3), [r.chunk.text[:80] for r in top3]


def test_relevant_and_irrelevant_scores_are_well_apart(readme_kb):
    relevant = min(readme_kb.search(q, top_k=1)[0].score for q in RELEVANT)
    irrelevant = max(readme_kb.search(q, top_k=1)[0].score for q in IRRELEVANT)
    # measured: relevant top-1 0.66-0.82, irrelevant top-1 0.10-0.19
    assert relevant - irrelevant > 0.3, (relevant, irrelevant)
    threshold = (relevant + irrelevant) / 2
    assert readme_kb.search(RELEVANT[0], top_k=3, score_threshold=threshold)
    assert all(readme_kb.search(q, top_k=3, score_threshold=threshold) == [] for q in IRRELEVANT)


@pytest.mark.xfail(reason="all-MiniLM-L6-v2 is English-only: for '如何安装deepspeed' the install chunk "
                          "ranks ~44th of 129 (measured); a multilingual model such as BAAI/bge-m3 is needed",
                   strict=True)
def test_chinese_install_question_with_the_english_only_model(readme_kb):
    assert _rank_of_install_chunk(readme_kb, "如何安装deepspeed") <= 3
