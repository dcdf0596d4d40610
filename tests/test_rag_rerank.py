"""The optional cross-encoder reranker: the reranking path with a stand-in model
(no cross-encoder weights are available offline), and the load-failure path for real."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from rag import KnowledgeBase
from rag.registry import KnowledgeBaseRegistry
from rag.rerank import RERANK_CANDIDATES, Reranker, load_reranker
from webui.services import ChatService
from webui.settings import Settings

from .conftest import FakeChatModel


class KeywordCrossEncoder:
    """Stands in for ``sentence_transformers.CrossEncoder``: same ``predict(pairs, ...)``
    call, scores 0.9 for passages containing ``needle``, else 0.1; records the pairs."""

    def __init__(self, needle: str):
        self.needle = needle
        self.pairs: list[tuple[str, str]] = []

    def predict(self, pairs, batch_size=32, show_progress_bar=None, **kwargs):
        self.pairs.extend(pairs)
        return np.array([0.9 if self.needle in passage else 0.1 for _, passage in pairs], dtype=np.float32)


@pytest.fixture(scope="module")
def readme_kb(tmp_path_factory, corpus, embedder):
    kb = KnowledgeBase.open(tmp_path_factory.mktemp("rerank") / "kb", embedder)
    kb.add_files([corpus / "deepspeed" / "advanced-install.md", corpus / "deepspeed" / "getting-started.md"])
    return kb


def test_reranker_reorders_the_candidates(readme_kb):
    query = "How do I install DeepSpeed?"
    pool = readme_kb.search(query, top_k=RERANK_CANDIDATES, mode="hybrid")
    needle = "DS_BUILD"
    preferred = [r.chunk.id for r in pool if needle in r.chunk.text]
    others = [r.chunk.id for r in pool if needle not in r.chunk.text]
    assert preferred and others and pool[0].chunk.id in others, "the test needs a reordering to check"
    model = KeywordCrossEncoder(needle)
    reranked = readme_kb.search(query, top_k=3, mode="hybrid", reranker=Reranker(model, "keyword-stand-in"))
    assert [text for _, text in model.pairs] == [r.chunk.text for r in pool], \
        "the reranker re-scores the best fused candidates"
    assert all(q == query for q, _ in model.pairs)
    assert [r.chunk.id for r in reranked] == (preferred + others)[:3], \
        "passages the cross-encoder prefers come first; ties keep the fused order"
    assert all(r.retriever == "hybrid+rerank" for r in reranked)
    assert all(r.score == r.scores["rerank"] for r in reranked)
    assert reranked[0].score == pytest.approx(0.9)
    assert all({"cosine", "bm25", "hybrid", "rerank"} <= set(r.scores) for r in reranked)


def test_reranker_with_threshold_and_other_modes(readme_kb):
    model = KeywordCrossEncoder("pip install")
    reranker = Reranker(model, "stand-in")
    dense = readme_kb.search("How do I install DeepSpeed?", top_k=2, mode="dense", reranker=reranker,
                             score_threshold=0.3)
    assert dense[0].retriever == "dense+rerank" and "pip install" in dense[0].chunk.text
    assert max(r.scores["relevance"] for r in dense) >= 0.3, "the threshold still gates on relevance"
    assert readme_kb.search("Who won the 2018 World Cup?", reranker=reranker, score_threshold=0.6) == []


def test_a_reranker_with_the_wrong_output_is_refused(readme_kb):
    class TwoLabels:
        def predict(self, pairs, **kwargs):
            return np.zeros((len(pairs), 2))

    with pytest.raises(ValueError, match="one output label"):
        readme_kb.search("install", reranker=Reranker(TwoLabels(), "two-labels"))


def test_no_reranker_when_none_is_named():
    assert load_reranker(None) is None and load_reranker("") is None


@pytest.mark.parametrize("name", ["BAAI/bge-reranker-v2-m3", "folder"])
def test_a_reranker_that_cannot_be_loaded_is_off_with_a_warning(name, tmp_path, caplog):
    target = str(tmp_path) if name == "folder" else name  # an empty folder, or a hub id not cached (offline)
    with caplog.at_level(logging.WARNING, logger="rag.rerank"):
        assert load_reranker(target) is None
    assert any("WITHOUT reranking" in r.getMessage() and target in r.getMessage() for r in caplog.records)


def test_service_loads_the_reranker_from_settings_and_survives_a_bad_one(tmp_path, embedder, corpus, caplog):
    settings = Settings(knowledge_dir=tmp_path / "knowledge", reranker_model=str(tmp_path / "no-such-model"))
    registry = KnowledgeBaseRegistry(settings.knowledge_dir, embedder)
    with caplog.at_level(logging.WARNING, logger="rag.rerank"):
        service = ChatService(FakeChatModel(), registry, settings)
    assert service.reranker is None and "WITHOUT reranking" in caplog.text
    service.knowledge_base().add_files([corpus / "deepspeed" / "advanced-install.md"])
    results = service.retrieve("How do I install DeepSpeed from source?", score_threshold=-1)
    assert results and all(r.retriever == "hybrid" for r in results)

    reranking = ChatService(FakeChatModel(), registry, Settings(knowledge_dir=settings.knowledge_dir),
                            reranker=Reranker(KeywordCrossEncoder("pip install"), "stand-in"))
    results = reranking.retrieve("How do I install DeepSpeed from source?", score_threshold=-1)
    assert all(r.retriever == "hybrid+rerank" for r in results)
    assert "pip install" in results[0].chunk.text
