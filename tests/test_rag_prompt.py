"""rag.prompt.build_rag_prompt."""
from __future__ import annotations

from rag import Chunk, SearchResult, build_rag_prompt


def _result(text, source, page=None, score=0.5, i=0):
    return SearchResult(chunk=Chunk(id=i, text=text, source=source, page=page), score=score)


def test_passages_are_numbered_with_source_and_page_in_order():
    results = [
        _result("Run pip install deepspeed.\n", "README.md", score=0.8, i=1),
        _result("Die Topologie ist ...", "GeoTopo.pdf", page=12, score=0.6, i=2),
        _result("DeepSpeed 支持 ZeRO。", "说明.docx", score=0.4, i=3),
    ]
    prompt = build_rag_prompt("  如何安装deepspeed？ ", results)
    one = prompt.index("[1] (source: README.md)\nRun pip install deepspeed.")
    two = prompt.index("[2] (source: GeoTopo.pdf, page 12)\nDie Topologie ist ...")
    three = prompt.index("[3] (source: 说明.docx)\nDeepSpeed 支持 ZeRO。")
    assert one < two < three
    assert "[4]" not in prompt
    assert prompt.rstrip().endswith("Question: 如何安装deepspeed？")
    lowered = prompt.lower()
    assert "only the information in the passages" in lowered
    assert "cite" in lowered and "same language as the question" in lowered
    assert "do not contain the answer" in lowered


def test_no_results_tells_the_model_the_knowledge_base_had_nothing():
    prompt = build_rag_prompt("What is the capital of France?", [])
    assert "no relevant passages" in prompt
    assert "[1]" not in prompt
    assert prompt.endswith("Question: What is the capital of France?")
    assert "same language as the question" in prompt
