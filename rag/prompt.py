"""The prompt that puts retrieved chunks in front of the chat model.

Modelled on the knowledge-base template of PAI-EAS ChatLLM-WebUI / LangChain-
Chatchat ("已知信息：{context} 根据上述已知信息，简洁和专业的来回答用户的问题。
如果无法从中得到答案，请说 ..."), with numbered passages so the answer can cite
them, and the answer language following the question instead of fixed Chinese.
"""
from __future__ import annotations

from typing import Sequence

from .types import SearchResult

RAG_INSTRUCTIONS = (
    "Instructions:\n"
    "- Answer the question using only the information in the passages above.\n"
    "- Cite the passages you use by their numbers in square brackets, e.g. [1] or [2][3].\n"
    "- If the passages do not contain the answer, say so plainly; do not make up an answer.\n"
    "- Answer in the same language as the question (e.g. Chinese for a Chinese question)."
)

NO_RESULTS_INSTRUCTIONS = (
    "The user's knowledge base was searched for this question, but it contains no relevant passages.\n"
    "Instructions:\n"
    "- Start by telling the user that their knowledge base has nothing relevant to the question.\n"
    "- You may then answer from general knowledge only if you are confident, and say clearly that "
    "this part does not come from their documents.\n"
    "- Answer in the same language as the question (e.g. Chinese for a Chinese question)."
)


def passage_label(result: SearchResult) -> str:
    """``"source: README.md, page 3"`` (page only for paged documents such as PDFs)."""
    chunk = result.chunk
    label = f"source: {chunk.source}"
    if chunk.page is not None:
        label += f", page {chunk.page}"
    return label


def build_rag_prompt(question: str, results: Sequence[SearchResult]) -> str:
    """The user message for a knowledge-base answer.

    Args:
        question: the user's question, as typed.
        results: retrieved chunks, best first (from :meth:`KnowledgeBase.search`).

    Returns:
        A prompt listing the passages as ``[1] (source: a.pdf, page 2)`` + text,
        in the order given, then instructions (answer from the passages, cite
        their numbers, say when they lack the answer, answer in the question's
        language), then the question. With no results, a prompt that tells the
        model the knowledge base had nothing relevant.
    """
    question = question.strip()
    if not results:
        return f"{NO_RESULTS_INSTRUCTIONS}\n\nQuestion: {question}"
    passages = "\n\n".join(
        f"[{i}] ({passage_label(r)})\n{r.chunk.text.strip()}" for i, r in enumerate(results, start=1)
    )
    return (
        "Answer the question using the following passages from the user's knowledge base.\n\n"
        f"Passages:\n{passages}\n\n{RAG_INSTRUCTIONS}\n\nQuestion: {question}"
    )
