"""rag.splitter: Chinese/English sentence-aware chunks, validation, chunk_index."""
from __future__ import annotations

import re

import pytest
from langchain_core.documents import Document

from rag import make_text_splitter, split_documents

CHINESE_SENTENCES = [
    "DeepSpeed 是微软开源的深度学习优化库。",
    "它让大模型的分布式训练变得简单、高效！",
    "你想在自己的机器上试试吗？",
    "安装之前需要先装好 PyTorch；",
    "然后运行 pip install deepspeed 即可完成安装。",
    "ZeRO 技术把优化器状态、梯度和参数切分到多张显卡上。",
    "这样可以训练数十亿甚至上万亿参数的模型！",
    "推理时还可以使用张量并行和定制的高性能算子。",
]


def test_chinese_chunks_end_at_sentence_punctuation():
    text = "".join(CHINESE_SENTENCES * 3)
    chunks = make_text_splitter(chunk_size=60, chunk_overlap=0).split_text(text)
    assert len(chunks) > 3
    assert all(len(c) <= 60 for c in chunks)
    # every sentence is shorter than chunk_size, so every chunk can end at 。！？；
    assert all(c[-1] in "。！？；" for c in chunks), chunks
    assert "".join(chunks) == text  # nothing lost, nothing added


def test_chinese_text_without_punctuation_still_fits():
    text = "深度学习训练框架" * 40  # 320 characters, no separator at all
    chunks = make_text_splitter(chunk_size=50, chunk_overlap=10).split_text(text)
    assert all(len(c) <= 50 for c in chunks)
    assert chunks[0] == text[:50]
    assert chunks[1].startswith(text[40:50])  # 10 characters of overlap


def test_english_chunks_end_at_sentence_ends():
    sentences = [
        "DeepSpeed is a deep learning optimization library.",
        "It makes distributed training easy, efficient, and effective!",
        "Do you want to try it?",
        "Install PyTorch first; then run pip install deepspeed.",
        "Version 0.14.2 fixed e.g. a bug in ZeRO-3.",
    ]
    text = " ".join(sentences * 4)
    chunks = make_text_splitter(chunk_size=120, chunk_overlap=0).split_text(text)
    assert all(len(c) <= 120 for c in chunks)
    assert all(re.search(r"[.!?]$", c) for c in chunks), chunks
    assert not any(c.startswith(("14.2", "2 fixed")) for c in chunks)  # "0.14.2" is not a sentence end


def test_paragraphs_are_preferred_over_sentences():
    text = "First paragraph. It has two sentences.\n\nSecond paragraph is here."
    chunks = make_text_splitter(chunk_size=45, chunk_overlap=0).split_text(text)
    assert chunks == ["First paragraph. It has two sentences.", "Second paragraph is here."]


@pytest.mark.parametrize("size, overlap", [(0, 0), (-5, 0), (100, 100), (100, 150), (100, -1)])
def test_invalid_sizes_name_both_numbers(size, overlap):
    with pytest.raises(ValueError) as info:
        make_text_splitter(chunk_size=size, chunk_overlap=overlap)
    assert f"chunk_size={size}" in str(info.value)
    assert f"chunk_overlap={overlap}" in str(info.value)


def test_split_documents_keeps_metadata_and_numbers_chunks_per_file():
    splitter = make_text_splitter(chunk_size=40, chunk_overlap=0)
    docs = [
        Document(page_content="".join(CHINESE_SENTENCES[:4]), metadata={"source": "a.pdf", "page": 1}),
        Document(page_content="   \n\n  \t", metadata={"source": "a.pdf", "page": 2}),
        Document(page_content="".join(CHINESE_SENTENCES[4:]), metadata={"source": "a.pdf", "page": 3}),
        Document(page_content="Another file. Short.", metadata={"source": "b.md"}),
    ]
    chunks = split_documents(docs, splitter)
    a = [c for c in chunks if c.metadata["source"] == "a.pdf"]
    b = [c for c in chunks if c.metadata["source"] == "b.md"]
    assert [c.metadata["chunk_index"] for c in a] == list(range(len(a)))
    assert [c.metadata["chunk_index"] for c in b] == [0]
    assert {c.metadata["page"] for c in a} == {1, 3}  # the blank page gave no chunk
    assert all(c.page_content.strip() for c in chunks)
    assert "page" not in b[0].metadata
    assert docs[0].metadata == {"source": "a.pdf", "page": 1}  # input not modified
