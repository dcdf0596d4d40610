"""Query modes (retrieval + LLM, LLM only, retrieval only), numbered citations that
match the shown sources, and what happens when no passage passes the score threshold
(answer from the model's own knowledge, clearly marked, or refuse): through
ChatService and through the LangChain tab's handler."""
from __future__ import annotations

import re

import pytest

from rag.prompt import NO_RESULTS_INSTRUCTIONS
from rag.registry import KnowledgeBaseRegistry
from webui.services import QUERY_MODES, ChatService
from webui.settings import Settings
from webui.ui import PageHandlers

from .conftest import FakeChatModel

GEN = ("You are terse.", 32, 0.7, 20, 0.8)
REPLY = "Install it with pip ."


@pytest.fixture(scope="module")
def registry(tmp_path_factory, embedder, corpus):
    registry = KnowledgeBaseRegistry(tmp_path_factory.mktemp("modes") / "knowledge", embedder)
    registry.get("default", create=True).add_files([corpus / "deepspeed" / "advanced-install.md"])
    return registry


def make_service(registry, **settings) -> ChatService:
    return ChatService(FakeChatModel(REPLY), registry, Settings(knowledge_dir=registry.root, **settings))


def test_query_modes_are_the_pai_rag_three():
    assert QUERY_MODES == ("retrieval+llm", "llm", "retrieval")


def test_retrieval_plus_llm_numbers_passages_as_the_sources_are_shown(registry):
    service = make_service(registry)
    answer = service.answer_from_knowledge("How do I install DeepSpeed?", [], top_k=3, score_threshold=0.0)
    assert answer.query_mode == "retrieval+llm" and not answer.no_relevant_passage
    assert "".join(answer.pieces) == REPLY
    prompt = service.model.calls[-1][0][-1]["content"]
    assert len(answer.sources) == 3
    positions = [prompt.index(f"[{i}] (source: {r.chunk.source})\n{r.chunk.text.strip()}")
                 for i, r in enumerate(answer.sources, 1)]
    assert positions == sorted(positions), "passage [i] of the prompt is source i of the answer"
    assert "[4]" not in prompt and "Cite the passages" in prompt
    assert any("pip install deepspeed" in r.chunk.text for r in answer.sources)
    assert all(r.retriever == "hybrid" for r in answer.sources), "the server retrieves hybrid by default"


def test_llm_only_does_not_search(registry):
    service = make_service(registry)
    answer = service.answer_from_knowledge("How do I install DeepSpeed?", [["hi", "hello"]],
                                           query_mode="llm", kb="no-such-knowledge-base")
    assert answer.sources == [] and "".join(answer.pieces) == REPLY
    sent = service.model.calls[-1][0]
    assert sent[-1]["content"] == "How do I install DeepSpeed?", "the bare question, no passages"
    assert [m["content"] for m in sent if m["role"] == "user"] == ["hi", "How do I install DeepSpeed?"]


def test_retrieval_only_does_not_generate(registry):
    service = make_service(registry)
    answer = service.answer_from_knowledge("How do I install DeepSpeed?", [], query_mode="retrieval",
                                           top_k=4, score_threshold=0.0, retrieval_mode="bm25")
    assert list(answer.pieces) == [] and service.model.calls == []
    assert len(answer.sources) == 4 and all(r.retriever == "bm25" for r in answer.sources)
    assert [r.score for r in answer.sources] == sorted((r.score for r in answer.sources), reverse=True)


def test_nothing_relevant_answers_from_the_model_marked_as_such(registry):
    service = make_service(registry)
    answer = service.answer_from_knowledge("What is the capital of France?", [], score_threshold=0.5)
    assert answer.sources == [] and answer.no_relevant_passage
    pieces = list(answer.pieces)
    assert pieces[0].startswith("**No relevant passage in the knowledge base** (score threshold 0.5)")
    assert "model's own knowledge, not from your documents" in pieces[0]
    assert "".join(pieces[1:]) == REPLY, "then the model's own answer"
    prompt = service.model.calls[-1][0][-1]["content"]
    assert NO_RESULTS_INSTRUCTIONS in prompt and "[1]" not in prompt

    zh = service.answer_from_knowledge("法国的首都是哪里？", [], score_threshold=0.5)
    assert next(zh.pieces).startswith("**知识库中没有相关段落**（分数阈值 0.5）")


def test_nothing_relevant_can_refuse_instead(registry):
    service = make_service(registry, no_relevant_passage="refuse")
    answer = service.answer_from_knowledge("What is the capital of France?", [], score_threshold=0.5)
    text = "".join(answer.pieces)
    assert service.model.calls == [], "the model is not asked"
    assert text.startswith("**No relevant passage in the knowledge base**") and "no answer is given" in text
    # a per-request choice overrides the server's
    answer = service.answer_from_knowledge("What is the capital of France?", [], score_threshold=0.5,
                                           no_relevant_passage="answer")
    assert "".join(answer.pieces).endswith(REPLY)


def test_bad_modes_are_refused_with_the_choices(registry):
    service = make_service(registry)
    with pytest.raises(ValueError, match="retrieval\\+llm, llm, retrieval"):
        service.answer_from_knowledge("q", [], query_mode="rag")
    with pytest.raises(ValueError, match="'answer' or 'refuse'"):
        service.answer_from_knowledge("q", [], no_relevant_passage="maybe")
    with pytest.raises(ValueError, match="unknown retrieval mode"):
        service.answer_from_knowledge("q", [], retrieval_mode="sparse")


def test_langchain_tab_query_modes(registry):
    service = make_service(registry)
    h = PageHandlers(service)
    question = "How do I install DeepSpeed?"

    chat, history, _, sources = list(h.rag_chat(question, [], 3, 0.0, *GEN, 5, None, "retrieval", "hybrid"))[-1]
    assert service.model.calls == [], "retrieval only: no generation"
    assert chat[-1]["content"] == sources and sources.startswith("**Sources**")
    assert re.search(r"\[1\] <b>advanced-install\.md</b> · score [01]\.\d{3} \(hybrid; cosine", sources)
    assert history == [[question, sources]]

    chat, history, _, sources = list(h.rag_chat(question, [], 3, 0.0, *GEN, 5, None, "llm", None))[-1]
    assert "not searched" in sources and chat[-1]["content"] == REPLY
    assert service.model.calls[-1][0][-1]["content"] == question

    chat, history, _, sources = list(h.rag_chat("What is the capital of France?", [], 3, 0.6, *GEN, 5))[-1]
    assert "No relevant passage" in sources
    answer = [m for m in chat if m["role"] == "assistant" and not m.get("metadata")][-1]["content"]
    assert answer.startswith("**No relevant passage in the knowledge base**") and answer.endswith(REPLY)
