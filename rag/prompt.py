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
    "The user's knowledge base was searched for this question, but it contains no relevant passages "
    "(the user has already been told so).\n"
    "Instructions:\n"
    "- Answer from your general knowledge only if you are confident; otherwise say that you do not know.\n"
    "- Do not claim that the answer comes from the user's documents.\n"
    "- Answer in the same language as the question (e.g. Chinese for a Chinese question)."
)

#: What the program itself says (not the model) when no chunk passes the score
#: threshold; ``{limit}`` becomes " (score threshold 0.3)" or "". English and Chinese.
NO_PASSAGE_NOTICE = {
    "en": "**No relevant passage in the knowledge base**{limit}. The answer below comes from the model's "
          "own knowledge, not from your documents:\n\n",
    "zh": "**知识库中没有相关段落**{limit}。以下回答来自模型自身的知识，而不是您的文档：\n\n",
}
NO_PASSAGE_REFUSAL = {
    "en": "**No relevant passage in the knowledge base**{limit}, so no answer is given. Upload documents "
          "that cover this question, lower the score threshold, or ask in LLM-only mode.",
    "zh": "**知识库中没有相关段落**{limit}，因此不作回答。请上传涵盖该问题的文档、降低分数阈值，或改用仅 LLM 模式提问。",
}


def is_chinese(text: str) -> bool:
    """True when ``text`` holds a CJK unified ideograph (U+4E00..U+9FFF), i.e. the
    program's own messages should be in Chinese."""
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def _limit(score_threshold: float | None, lang: str) -> str:
    if score_threshold is None:
        return ""
    return f"（分数阈值 {score_threshold:g}）" if lang == "zh" else f" (score threshold {score_threshold:g})"


def no_passage_notice(question: str, score_threshold: float | None = None) -> str:
    """The marker put before an answer from the model's own knowledge, when no
    chunk passed the score threshold: Markdown, in Chinese for a Chinese
    question, else English, ending in a blank line."""
    lang = "zh" if is_chinese(question) else "en"
    return NO_PASSAGE_NOTICE[lang].format(limit=_limit(score_threshold, lang))


def no_passage_refusal(question: str, score_threshold: float | None = None) -> str:
    """The whole answer when no chunk passed the threshold and the server is set
    to refuse (``--no-relevant-passage refuse``); language as :func:`no_passage_notice`."""
    lang = "zh" if is_chinese(question) else "en"
    return NO_PASSAGE_REFUSAL[lang].format(limit=_limit(score_threshold, lang))


def passage_label(result: SearchResult) -> str:
    """``"source: README.md, page 3"`` (page only for paged documents such as PDFs and slide
    decks), or with the loader's ``location``: ``"source: t.xlsx, sheet Sheet1, rows 2-15"``."""
    chunk = result.chunk
    label = f"source: {chunk.source}"
    if chunk.page is not None:
        label += f", page {chunk.page}"
    if chunk.metadata.get("location"):
        label += f", {chunk.metadata['location']}"
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
