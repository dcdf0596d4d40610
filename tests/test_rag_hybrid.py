"""Hybrid retrieval: the BM25 tokenizer and index, score fusion, search modes and
their scores, the keyword tokens saved with each generation, and hybrid beating
dense-only and BM25-only retrieval on a CMRC 2018 subset through the real pipeline. The
search-mode tests and the replace/delete test run on FAISS and on Milvus Lite (the
``vector_store`` fixture); the parsing and fusion ones do not touch a store."""
from __future__ import annotations

import json
import shutil

import pytest

import rag.persistence as disk
from rag import KnowledgeBase
from rag.evaluation import run_eval
from rag.fusion import convex_combination, reciprocal_rank_fusion
from rag.keywords import TOKENIZER_ID, KeywordIndex, chunk_tokens, tokenize

try:  # tests/ is a package (tests/__init__.py); fall back to rootdir-relative import without it
    from tests.rag_fixtures import HashEmbedder, memoized_bundled_embedder
except ImportError:  # pragma: no cover
    from rag_fixtures import HashEmbedder, memoized_bundled_embedder


# ------------------------------------------------------------- tokenizer


def test_tokenize_chinese_english_and_mixed_text():
    assert tokenize("如何安装DeepSpeed？") == ["安装", "deepspeed"]
    assert tokenize("How do I install DeepSpeed?") == ["install", "deepspeed"]
    # jieba cuts Chinese into words; punctuation and stop words (的, 是) are dropped
    assert tokenize("光荣和ω-force开发的战国无双系列。") == ["光荣", "ω", "force", "开发", "战国", "无双", "系列"]
    assert tokenize("  ，。!? ") == []


def test_chunk_tokens_start_with_the_file_name():
    assert chunk_tokens("她是孙权的妃子。", "潘淑.txt") == ["潘淑", "孙权", "妃子"]


# ---------------------------------------------------------------- BM25 index


def test_keyword_index_scores_add_and_remove():
    index = KeywordIndex()
    index.add(7, tokenize("DeepSpeed ZeRO offload reduces memory"))
    index.add(3, tokenize("install DeepSpeed with pip"))
    index.add(5, tokenize("the capital of France is Paris"))
    top = index.top(tokenize("How do I install DeepSpeed?"), 5)
    assert [cid for cid, _ in top] == [3, 7], "the install chunk first, the other DeepSpeed chunk next, Paris never"
    assert top[0][1] > top[1][1] > 0
    assert index.top(tokenize("quantum chromodynamics"), 5) == [], "no shared word, no keyword hit"
    index.remove([3])
    assert [cid for cid, _ in index.top(tokenize("install DeepSpeed"), 5)] == [7]
    assert len(index) == 2 and index.ids() == {5, 7}


# ------------------------------------------------------------------ fusion


def test_convex_combination_normalises_from_the_theoretical_minimum():
    cosine = {1: 0.5, 2: 0.2, 3: -1.0}
    bm25 = {1: 0.0, 2: 10.0, 3: 5.0}
    fused = dict(convex_combination(cosine, bm25, dense_weight=0.5))
    # dense part: (cos + 1) / (0.5 + 1); keyword part: bm25 / 10
    assert fused[1] == pytest.approx(0.5 * 1.0 + 0.5 * 0.0)
    assert fused[2] == pytest.approx(0.5 * (1.2 / 1.5) + 0.5 * 1.0)
    assert fused[3] == pytest.approx(0.5 * 0.0 + 0.5 * 0.5)
    assert [cid for cid, _ in convex_combination(cosine, bm25, 0.5)] == [2, 1, 3]
    assert [cid for cid, _ in convex_combination(cosine, bm25, 1.0)] == [1, 2, 3], "weight 1 = dense order"
    assert [cid for cid, _ in convex_combination(cosine, bm25, 0.0)] == [2, 3, 1], "weight 0 = BM25 order"
    with pytest.raises(ValueError, match="same candidates"):
        convex_combination({1: 0.1}, {2: 1.0})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        convex_combination(cosine, bm25, 1.5)


def test_reciprocal_rank_fusion():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1]], k=60)
    assert [cid for cid, _ in fused] == [1, 3, 2]
    assert dict(fused)[1] == pytest.approx(1 / 61 + 1 / 62)


# ------------------------------------------------------------- search modes


@pytest.fixture(scope="module")
def docs_kb(tmp_path_factory, corpus, vector_store):
    kb = vector_store.open(tmp_path_factory.mktemp("hybrid") / "kb", memoized_bundled_embedder())
    reports = kb.add_files([corpus / "deepspeed" / "advanced-install.md", corpus / "deepspeed" / "getting-started.md"])
    assert [r.status for r in reports] == ["added", "added"]
    return kb


def test_each_mode_ranks_by_its_own_score_and_reports_cosine(docs_kb):
    q = "How do I install DeepSpeed?"
    for mode in ("dense", "bm25", "hybrid"):
        results = docs_kb.search(q, top_k=5, mode=mode)
        assert len(results) == 5
        assert all(r.retriever == mode for r in results)
        assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
        assert all(-1 <= r.scores["cosine"] <= 1 + 1e-5 for r in results)
        assert any("pip install deepspeed" in r.chunk.text for r in results[:3]), mode
    hybrid = docs_kb.search(q, top_k=5, mode="hybrid")
    assert all(r.score == pytest.approx(r.scores["hybrid"]) and 0 <= r.score <= 1 for r in hybrid)
    assert hybrid[0].score == pytest.approx(1.0, abs=0.05)
    bm25 = docs_kb.search(q, top_k=5, mode="bm25")
    assert all(r.score == r.scores["bm25"] > 0 for r in bm25)
    d = hybrid[0].to_dict()
    assert set(d["scores"]) == {"cosine", "bm25", "hybrid", "coverage", "relevance"} and d["retriever"] == "hybrid"
    assert all(0 <= r.scores["coverage"] <= 1 and 0 <= r.scores["relevance"] <= 1 for r in hybrid)


def test_keyword_search_finds_an_exact_identifier(docs_kb):
    results = docs_kb.search("DS_BUILD_CPU_LION", top_k=1, mode="bm25")
    assert "DS_BUILD_CPU_LION" in results[0].chunk.text
    assert "DS_BUILD_CPU_LION" in docs_kb.search("DS_BUILD_CPU_LION", top_k=1, mode="hybrid")[0].chunk.text
    assert docs_kb.search("zyxwvut qqqq", top_k=3, mode="bm25") == [], "nothing shares a word"


def test_score_threshold_gates_the_question_on_relevance_in_every_mode(docs_kb):
    q = "How do I install DeepSpeed?"
    for mode in ("dense", "bm25", "hybrid"):
        ranking = docs_kb.search(q, top_k=10, mode=mode)
        best = max(r.scores["relevance"] for r in ranking)
        # passing: the ranking is returned untouched (the threshold does not thin it out)
        kept = docs_kb.search(q, top_k=10, mode=mode, score_threshold=best)
        assert [r.chunk.id for r in kept] == [r.chunk.id for r in ranking], mode
        assert docs_kb.search(q, top_k=10, mode=mode, score_threshold=best + 1e-3) == [], mode
    # relevance = max(calibrated cosine, keyword coverage): both words of the question in a chunk -> 1
    assert docs_kb.search(q, top_k=1, mode="hybrid")[0].scores["coverage"] == pytest.approx(1.0)
    assert docs_kb.search("quantum chromodynamics lattice", top_k=3, mode="hybrid", score_threshold=0.5) == []
    with pytest.raises(ValueError, match="unknown retrieval mode"):
        docs_kb.search(q, mode="sparse")


# ---------------------------------------------- tokens saved with generations


def _current_generation(kb) -> str:
    return disk.read_json(kb.directory / disk.MANIFEST_NAME)["generation"]


def test_keyword_tokens_are_saved_per_generation_and_recomputed_when_stale(tmp_path, corpus):
    embedder = HashEmbedder()
    kb = KnowledgeBase.open(tmp_path / "kb", embedder)
    kb.add_files([corpus / "deepspeed" / "zero.md", corpus / "deepspeed" / "getting-started.md"])
    gen = kb.directory / _current_generation(kb)
    saved = disk.read_json(gen / disk.KEYWORDS_NAME)
    chunk_ids = {c["id"] for c in disk.read_json(gen / "chunks.json")["chunks"]}
    assert saved["tokenizer"] == TOKENIZER_ID
    assert {int(k) for k in saved["tokens"]} == chunk_ids
    query = "ZeRO stage 3 offload optimizer states"
    before = [(r.chunk.id, round(r.score, 4)) for r in kb.search(query, top_k=5, mode="bm25")]
    assert before

    def reopened_results():
        again = KnowledgeBase.open(kb.directory, embedder)
        return [(r.chunk.id, round(r.score, 4)) for r in again.search(query, top_k=5, mode="bm25")], again

    assert reopened_results()[0] == before
    # another tokenizer's tokens (garbage here) are not trusted: recomputed from the chunk texts
    (gen / disk.KEYWORDS_NAME).write_text(json.dumps(
        {"tokenizer": "old", "tokens": {str(i): ["x"] for i in chunk_ids}}), encoding="utf-8")
    assert reopened_results()[0] == before
    # tokens for other chunks than the generation's: recomputed as well
    (gen / disk.KEYWORDS_NAME).write_text(json.dumps(
        {"tokenizer": TOKENIZER_ID, "tokens": {"999999": ["zero"]}}), encoding="utf-8")
    assert reopened_results()[0] == before
    # a missing file (a knowledge base from before hybrid search): recomputed, and saved with the next commit
    (gen / disk.KEYWORDS_NAME).unlink()
    results, again = reopened_results()
    assert results == before
    again.delete_file("getting-started.md")
    new_gen = again.directory / _current_generation(again)
    assert new_gen != gen and (new_gen / disk.KEYWORDS_NAME).is_file()
    assert all(r.chunk.source == "zero.md" for r in again.search(query, top_k=50, mode="bm25"))


def test_replaced_and_deleted_files_leave_no_keyword_hits(tmp_path, corpus, vector_store):
    kb = vector_store.open(tmp_path / "kb", HashEmbedder())
    doc = tmp_path / "notes.md"
    doc.write_text("The flux capacitor needs 1.21 gigawatts.\n", encoding="utf-8")
    kb.add_files([doc])
    assert kb.search("flux capacitor", mode="bm25")
    doc.write_text("The warp core runs on dilithium crystals.\n", encoding="utf-8")
    assert kb.add_files([doc])[0].status == "added"
    assert kb.search("flux capacitor", mode="bm25") == [], "the old version's words are gone"
    assert kb.search("dilithium", mode="bm25")[0].chunk.source == "notes.md"
    assert vector_store.entities(kb) == len(kb) == 1, "the old version's vector is gone from the store"
    kb.delete_file("notes.md")
    assert kb.search("dilithium", mode="bm25") == [] and kb.search("dilithium", mode="hybrid") == []
    assert vector_store.entities(kb) == 0


# ------------------------------------------- hybrid vs dense vs BM25 on CMRC


@pytest.fixture(scope="module")
def cmrc_subset(corpus):
    """The first 12 CMRC 2018 dev articles through the server's pipeline (multilingual-e5-small,
    token chunks, hybrid fusion, score threshold)."""
    from tests.rag_fixtures import offline_embedder

    report = run_eval(corpus / "eval" / "cmrc2018_dev.json", offline_embedder(), modes=("dense", "bm25", "hybrid"),
                      max_articles=12)
    return report, {r.mode: r for r in report.results}


def test_hybrid_beats_dense_and_bm25_on_a_cmrc_subset(cmrc_subset):
    report, by_mode = cmrc_subset
    assert report.articles == 12 and report.chunks >= 12 and report.chunk_unit == "tokens"
    assert not report.ingest_refused
    dense, bm25, hybrid = by_mode["dense"], by_mode["bm25"], by_mode["hybrid"]
    assert hybrid.hit1 >= max(dense.hit1, bm25.hit1) and hybrid.mrr >= max(dense.mrr, bm25.mrr)
    assert hybrid.hit5 >= 0.97 and hybrid.no_passage == 0.0, "the threshold keeps answerable questions"
    assert (hybrid.hit1, hybrid.hit5) == (hybrid.hit1_all, hybrid.hit5_all)


def test_eval_data_is_read_as_squad(corpus, tmp_path):
    from rag.evaluation import EvalFormatError, load_squad

    articles, questions = load_squad(corpus / "eval" / "cmrc2018_dev.json")
    assert len(articles) == 848 and len(questions) == 3219
    assert articles[0].name == "战国无双3.txt" and articles[0].text.startswith("《战国无双3》")
    assert all(any(a in next(x.text for x in articles if x.id == q.article_id) for a in q.answers)
               for q in questions[:50]), "gold answers are spans of their article"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"title": "x"}]}), encoding="utf-8")
    with pytest.raises(EvalFormatError, match="not SQuAD format"):
        load_squad(bad)
    shutil.rmtree(tmp_path)
