"""What the page and the API do with the model and the knowledge bases.

:class:`ChatService` holds the loaded chat model and the knowledge bases; it keeps
no conversation: each caller passes its own history (a browser session's
``gr.State``, an API request's ``history``), so nothing leaks between users.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

from llm.base import ChatModel, GenerationParams, Message
from llm.history import build_messages
from rag.prompt import build_rag_prompt
from rag.registry import KnowledgeBaseRegistry
from rag.store import KnowledgeBase
from rag.types import SearchResult

from .export import HistoryExporter
from .settings import Settings

log = logging.getLogger(__name__)

History = Sequence[tuple[str, str]]


@dataclass
class RagAnswer:
    """A knowledge-base answer in the making.

    Attributes:
        sources: the retrieved chunks injected into the prompt, best first; their
            order is the passage numbering [1], [2], ... the prompt uses.
        pieces: the answer's text pieces, streamed from the model.
    """

    sources: list[SearchResult]
    pieces: Iterator[str]


class ChatService:
    """Chat and knowledge-base answering over one model and named knowledge bases.

    Args:
        model: the chat model (real, demo or a test's fake).
        knowledge_bases: the knowledge bases; ``settings.knowledge_base`` names the
            one used when a caller names none (it is created on first use).
        settings: server-wide defaults (sampling, max_round, retrieval top_k,
            score threshold, system prompt).
        embedding_fallback: True when the configured embedding model could not be
            loaded and the bundled all-MiniLM-L6-v2 is used instead (the page says so).
    """

    def __init__(self, model: ChatModel, knowledge_bases: KnowledgeBaseRegistry, settings: Settings,
                 embedding_fallback: bool = False, exporter: HistoryExporter | None = None):
        self.model = model
        self.knowledge_bases = knowledge_bases
        self.settings = settings
        self.embedding_fallback = embedding_fallback
        self.exporter = exporter

    def record_round(self, channel: str, prompt: str, response: str, history: History = (),
                     system_prompt: str | None = None, **extra) -> None:
        """Export one finished round (``--export-history-path``); does nothing when export is off.
        A failing export is logged, never raised: it must not break the chat."""
        if self.exporter is None:
            return
        try:
            self.exporter.record(channel=channel, prompt=prompt, response=response, history=history,
                                 system_prompt=system_prompt, **extra)
        except OSError:
            log.exception("could not export the conversation to %s", self.exporter.directory)

    def knowledge_base(self, name: str | None = None, *, create: bool = False) -> KnowledgeBase:
        """The knowledge base ``name`` (default: the server's default one, created if needed).

        Raises:
            rag.registry.InvalidKnowledgeBaseName, rag.registry.UnknownKnowledgeBase: see
                :meth:`rag.registry.KnowledgeBaseRegistry.get`.
        """
        if name is None:
            return self.knowledge_bases.get(self.settings.knowledge_base, create=True)
        return self.knowledge_bases.get(name, create=create)

    def stream_chat(self, prompt: str, history: History, *, system_prompt: str | None = None,
                    params: GenerationParams | None = None, max_round: int | None = None) -> Iterator[str]:
        """Stream the model's answer to ``prompt`` after the last ``max_round`` rounds of ``history``.

        Raises:
            ValueError: the prompt is empty.
            llm.base.GenerationError: from the iterator, when generation fails.
        """
        if not prompt or not prompt.strip():
            raise ValueError("the prompt is empty: type a question first")
        messages = build_messages(
            prompt,
            history,
            system_prompt=self.settings.system_prompt if system_prompt is None else system_prompt,
            max_round=self.settings.max_round if max_round is None else max_round,
        )
        return self.stream_messages(messages, params or self.settings.generation_params())

    def stream_messages(self, messages: Sequence[Message], params: GenerationParams) -> Iterator[str]:
        """Stream the answer to a whole conversation the caller built (the OpenAI API sends
        every message itself; no server system prompt or max_round is applied).

        Raises:
            ValueError: the conversation does not fit in the model's context (real models).
        """
        return self.model.stream(messages, params)

    def retrieve(self, question: str, *, top_k: int | None = None, score_threshold: float | None = None,
                 kb: str | None = None) -> list[SearchResult]:
        """The best chunks of knowledge base ``kb`` for ``question``, best first (see KnowledgeBase.search)."""
        return self.knowledge_base(kb).search(
            question,
            top_k=top_k or self.settings.retrieval_top_k,
            score_threshold=self.settings.score_threshold if score_threshold is None else score_threshold,
        )

    def answer_from_knowledge(self, question: str, history: History, *, top_k: int | None = None,
                              score_threshold: float | None = None, system_prompt: str | None = None,
                              params: GenerationParams | None = None,
                              max_round: int | None = None, kb: str | None = None) -> RagAnswer:
        """Retrieve chunks for ``question``, inject them into the prompt and stream the answer.

        ``history`` holds the earlier questions and answers as the user saw them
        (without injected passages), so earlier retrievals do not crowd the context.

        Raises:
            ValueError: the question is empty, or top_k < 1.
        """
        if not question or not question.strip():
            raise ValueError("the question is empty: type a question first")
        sources = self.retrieve(question, top_k=top_k, score_threshold=score_threshold, kb=kb)
        prompt = build_rag_prompt(question, sources)
        pieces = self.stream_chat(prompt, history, system_prompt=system_prompt, params=params,
                                  max_round=max_round)
        return RagAnswer(sources=sources, pieces=pieces)
