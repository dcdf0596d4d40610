"""The Gradio page's handlers: a **Chat** tab and a **LangChain** tab.

A session's conversation lives in its own ``gr.State`` values (a list of
``(user, assistant)`` pairs); finished rounds are also kept, per browser (per signed-in
user with ``--auth-file``: the handlers take the owner from ``gr.Request``), in the
conversation store (:mod:`webui.conversations`, via :mod:`webui.ui_conversations`).
The shared objects are the model and the knowledge bases inside
:class:`~webui.services.ChatService`.  The handlers are plain functions (see
:class:`PageHandlers`) so tests can call them without a browser; the layout is
:mod:`webui.ui_page`, which exposes them under the API names ``chat``, ``clear``,
``ingest`` and ``rag_chat`` (and ``kb_select``, ``kb_create``, ``kb_delete``,
``kb_delete_file``, ``conversations_init``, ``conversation_open_chat`` ...) for gradio_client.
Text the handlers write is in the page's language (``lang``, :func:`webui.i18n.t`).
"""
from __future__ import annotations

from contextlib import closing

import html
import logging
import re
import time
from typing import Any, Iterator, Sequence

import gradio as gr

from llm.base import GenerationParams
from rag.types import Chunk, SearchResult

from .conversations import ConversationStore
from .i18n import t
from .services import ChatService
from .ui_conversations import ConversationHandlers
from .ui_knowledge import FILE_COLUMNS, KnowledgeHandlers, format_report  # noqa: F401 - format_report: re-exported

log = logging.getLogger(__name__)

ChatMessages = list[dict[str, Any]]
PairHistory = list[list[str]]

SNIPPET_CHARS = 240


def plain_markdown(text: str) -> str:
    """``text`` with every ASCII punctuation mark backslash-escaped (CommonMark), so a
    snippet of a Markdown file shows as the text it is, not as headings and links."""
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", text)


def to_chat_messages(history: Sequence[Sequence[str]]) -> ChatMessages:
    """``[(user, assistant), ...]`` -> Gradio ``messages`` format (list of role/content dicts)."""
    out: ChatMessages = []
    for user, assistant in history:
        out.append({"role": "user", "content": user})
        out.append({"role": "assistant", "content": assistant})
    return out


def format_scores(result: SearchResult) -> str:
    """``"score 0.981 (hybrid; cosine 0.663, bm25 2.58)"``: the ranking score, what it is,
    and the other scores known (see :class:`rag.types.SearchResult`)."""
    others = ", ".join(f"{k} {v:.3g}" for k, v in result.scores.items() if k != result.retriever.split("+")[-1])
    return f"score {result.score:.3f} ({result.retriever}{'; ' + others if others else ''})"


def format_sources(sources: Sequence[SearchResult], score_threshold: float | None = None, lang: str = "en") -> str:
    """Markdown list (in ``lang``) of the chunks an answer used, or a "no relevant passage" line.

    Each source is an HTML ``<details>`` block: its summary gives the number (as in the
    prompt), the file, page (PDFs, slides) or sheet and rows, the scores and a snippet of
    ``SNIPPET_CHARS`` characters; opening it shows the whole chunk."""
    if not sources:
        limit = t(lang, "no_relevant_limit", threshold=score_threshold) if score_threshold is not None else ""
        return t(lang, "no_relevant", limit=limit)
    lines = [t(lang, "sources_heading"), ""]
    for i, r in enumerate(sources, 1):
        where = r.chunk.source + (t(lang, "page", page=r.chunk.page) if r.chunk.page else "") + (
            f", {r.chunk.metadata['location']}" if r.chunk.metadata.get("location") else "")
        snippet = " ".join(r.chunk.text.split())
        if len(snippet) > SNIPPET_CHARS:
            snippet = snippet[:SNIPPET_CHARS] + "…"
        lines.append(f"<details><summary>[{i}] <b>{html.escape(where)}</b> · {html.escape(format_scores(r))}"
                     f"<br>{html.escape(snippet)}</summary>\n\n{plain_markdown(r.chunk.text.strip())}\n\n</details>\n")
    return "\n".join(lines)


def result_from_dict(d: dict) -> SearchResult:
    """A kept source (:meth:`rag.types.SearchResult.to_dict`) back as a :class:`SearchResult` (chunk id 0)."""
    chunk = Chunk(0, d.get("text", ""), d.get("source", "?"), d.get("page"), d.get("metadata") or {})
    return SearchResult(chunk, float(d.get("score", 0.0)), d.get("scores") or {}, d.get("retriever", "dense"))


class PageHandlers:
    """The page's event handlers, bound to one :class:`ChatService`.

    Every handler takes the session's own history and returns the new one, so
    two browser sessions never share a conversation.
    """

    def __init__(self, service: ChatService, store: ConversationStore | None = None):
        self.service = service
        self.knowledge = KnowledgeHandlers(service)
        store = store or ConversationStore(service.settings.data_folder / "conversations.sqlite3")
        self.conversations = ConversationHandlers(store, accounts=service.settings.auth_file is not None)

    def _params(self, max_new_tokens, temperature, top_k, top_p) -> GenerationParams:
        return GenerationParams(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                top_k=int(top_k), top_p=float(top_p))

    def chat(self, message: str, history: PairHistory, system_prompt: str, max_new_tokens: float,
             temperature: float, top_k: float, top_p: float, max_round: float, on_finished=None,
             lang: str = "en") -> Iterator[tuple[ChatMessages, PairHistory, str]]:
        """Chat tab: stream the answer to ``message``; yields (chatbot, history, textbox).
        ``on_finished(question, answer, sources)`` runs when the answer is complete, before
        it is shown as done (the page keeps the round there)."""
        history = [list(h) for h in history or []]
        if not message or not message.strip():
            gr.Warning(t(lang, "type_message"))
            yield to_chat_messages(history), history, ""
            return
        params = self._params(max_new_tokens, temperature, top_k, top_p)
        try:
            pieces = self.service.stream_chat(message, history, system_prompt=system_prompt, params=params,
                                              max_round=int(max_round))
        except ValueError as exc:  # e.g. the prompt does not fit in the model's context
            raise gr.Error(str(exc)) from None
        yield from self._stream_into(message, history, pieces, display=to_chat_messages(history), lang=lang,
                                     record=lambda text: self._finished(on_finished, message, text, [], (
                                         "page", message, text, history, system_prompt)))

    def _finished(self, on_finished, question: str, answer: str, sources: list, record: tuple,
                  exported: dict | None = None) -> None:
        """Export the finished round (--export-history-path), then hand it to ``on_finished``."""
        self.service.record_round(*record, **(exported or {}))
        if on_finished is not None:
            on_finished(question, answer, sources)

    def _stream_into(self, message: str, history: PairHistory, pieces: Iterator[str],
                     display: ChatMessages, extra: ChatMessages = (), record=None, lang: str = "en"
                     ) -> Iterator[tuple[ChatMessages, PairHistory, str]]:
        display = display + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        answer = ""
        yield display, history, ""
        # one page update per --stream-interval-ms at most (each costs Gradio a diff of the
        # whole conversation); text held back is shown with the next update or the last one
        interval = self.service.settings.stream_interval
        shown = float("-inf")
        try:
            for piece in pieces:
                answer += piece
                display[-1]["content"] = answer
                if time.monotonic() - shown >= interval:
                    shown = time.monotonic()
                    yield display, history, ""
        except Exception as exc:  # noqa: BLE001 - the page must show the failure, not hang
            log.exception("generation failed")
            display[-1]["content"] = answer + "\n\n⚠️ " + t(lang, "generation_failed", error=exc)
            gr.Warning(t(lang, "generation_failed", error=exc))
            yield display, history, message  # keep the question in the box to retry
            return
        finally:  # the page went away (Gradio closes this generator): stop the model now, not at GC
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
        if record is not None:  # export the finished round (--export-history-path) before showing it done
            record(answer)
        history = history + [[message, answer]]
        yield display + list(extra), history, ""

    def clear(self) -> tuple[ChatMessages, PairHistory, str]:
        """Clear history: empty chatbot, empty history, empty sources."""
        return [], [], ""

    def ingest(self, files: Sequence[str] | None, kb_name: str | None = None,
               progress: gr.Progress = gr.Progress(), lang: str = "en", upload_id: str | None = None
               ) -> tuple[str, str]:
        """LangChain tab, **Vectorstore knowledge**: add the uploaded files to the session's
        knowledge base ``kb_name`` (None = the default), showing files and chunks done.

        Returns (per-file report as a Markdown table, knowledge-base status line).
        """
        return self.knowledge.ingest(files, kb_name, progress, lang=lang, upload_id=upload_id)

    def kb_status(self, kb_name: str | None = None, lang: str = "en") -> str:
        """One line on the knowledge base: files, chunks, embedding model (and a fallback warning)."""
        return self.knowledge.status(kb_name, lang)

    def rag_chat(self, question: str, history: PairHistory, top_k: float, score_threshold: float,
                 system_prompt: str, max_new_tokens: float, temperature: float, gen_top_k: float,
                 top_p: float, max_round: float, kb_name: str | None = None,
                 query_mode: str = "retrieval+llm", retrieval_mode: str | None = None, on_finished=None,
                 lang: str = "en") -> Iterator[tuple[ChatMessages, PairHistory, str, str]]:
        """LangChain tab: answer from the session's knowledge base ``kb_name`` in
        ``query_mode`` (retrieval + LLM, LLM only, retrieval only) with the
        ``retrieval_mode`` retriever; yields (chatbot, history, textbox, sources)."""
        history = [list(h) for h in history or []]
        if not question or not question.strip():
            gr.Warning(t(lang, "type_question"))
            yield to_chat_messages(history), history, "", ""
            return
        if query_mode != "llm" and len(self.knowledge.kb(kb_name)) == 0:
            gr.Warning(t(lang, "kb_empty"))
        try:
            answer = self.service.answer_from_knowledge(
                question, history, top_k=int(top_k), score_threshold=float(score_threshold),
                system_prompt=system_prompt, params=self._params(max_new_tokens, temperature, gen_top_k, top_p),
                max_round=int(max_round), kb=kb_name or self.knowledge.default, query_mode=query_mode,
                retrieval_mode=retrieval_mode or None)
        except ValueError as exc:  # e.g. the question and passages do not fit in the model's context
            raise gr.Error(str(exc)) from None
        if query_mode == "llm":
            sources_md = t(lang, "llm_only")
        else:
            sources_md = format_sources(answer.sources, float(score_threshold), lang)
        if query_mode == "retrieval":  # no generation: the ranked passages are the answer
            answer.pieces = iter([sources_md])
        folded = [] if query_mode != "retrieval+llm" else [
            {"role": "assistant", "content": sources_md,
             "metadata": {"title": t(lang, "sources_title", n=len(answer.sources)), "status": "done"}}]
        sources = [r.to_dict() for r in answer.sources]
        for chat, hist, box in self._stream_into(question, history, answer.pieces,
                                                 display=to_chat_messages(history), extra=folded, lang=lang,
                                                 record=lambda text: self._finished(
                                                     on_finished, question, text, sources,
                                                     ("langchain", question, text, history, system_prompt),
                                                     {"sources": sources})):
            yield chat, hist, box, sources_md

    # ---- kept conversations (the page's own events; the API names above stay stateless)

    def chat_kept(self, message: str, history: PairHistory, system_prompt: str, max_new_tokens: float,
                  temperature: float, top_k: float, top_p: float, max_round: float, owner: str | None,
                  conversation_id: str | None, lang: str = "en", request: gr.Request | None = None
                  ) -> Iterator[tuple[ChatMessages, PairHistory, str, str | None]]:
        """:meth:`chat`, keeping each finished round in ``owner``'s conversation
        ``conversation_id`` (created by the first round); yields (chatbot, history, textbox, id).
        With accounts the owner is ``request``'s user (:meth:`ConversationHandlers.owner_of`)."""
        owner = self.conversations.owner_of(owner, request)
        kept = {"id": conversation_id}

        def keep(question, answer, sources):
            kept["id"] = self.conversations.keep(owner, kept["id"], "chat", question, answer, sources, lang=lang)

        with closing(self.chat(message, history, system_prompt, max_new_tokens, temperature, top_k, top_p,
                               max_round, on_finished=keep, lang=lang)) as steps:
            for out in steps:
                yield (*out, kept["id"])

    def rag_chat_kept(self, question: str, history: PairHistory, top_k: float, score_threshold: float,
                      system_prompt: str, max_new_tokens: float, temperature: float, gen_top_k: float,
                      top_p: float, max_round: float, kb_name: str | None, query_mode: str,
                      retrieval_mode: str | None, owner: str | None, conversation_id: str | None,
                      lang: str = "en", request: gr.Request | None = None
                      ) -> Iterator[tuple[ChatMessages, PairHistory, str, str, str | None]]:
        """:meth:`rag_chat`, keeping each finished round with its sources and knowledge
        base; yields (chatbot, history, textbox, sources, id). The owner as in :meth:`chat_kept`."""
        owner = self.conversations.owner_of(owner, request)
        kept = {"id": conversation_id}

        def keep(q, answer, sources):
            kept["id"] = self.conversations.keep(owner, kept["id"], "langchain", q, answer, sources,
                                                 knowledge_base=kb_name or self.knowledge.default, lang=lang)

        with closing(self.rag_chat(question, history, top_k, score_threshold, system_prompt, max_new_tokens,
                                   temperature, gen_top_k, top_p, max_round, kb_name, query_mode, retrieval_mode,
                                   on_finished=keep, lang=lang)) as steps:
            for out in steps:
                yield (*out, kept["id"])

    def open_chat(self, owner: str | None, conversation_id: str | None, lang: str = "en",
                  request: gr.Request | None = None) -> tuple[ChatMessages, PairHistory, str | None]:
        """Open a kept Chat-tab conversation: (chatbot, history, id). The owner as in :meth:`chat_kept`.

        Raises:
            gr.Error: not one of this owner's conversations.
        """
        owner = self.conversations.owner_of(owner, request)
        if not conversation_id:
            return [], [], None
        conversation = self.conversations.open(owner, conversation_id, lang)
        return to_chat_messages(conversation.rounds), conversation.rounds, conversation.id

    def open_rag(self, owner: str | None, conversation_id: str | None, lang: str = "en",
                 request: gr.Request | None = None):
        """Open a kept LangChain-tab conversation with its sources and knowledge base:
        (chatbot, history, sources of the last answer, id, knowledge-base picker, state,
        status, files table, file picker). A knowledge base deleted since is replaced by the default one.
        The owner as in :meth:`chat_kept`.

        Raises:
            gr.Error: not one of this owner's conversations.
        """
        owner = self.conversations.owner_of(owner, request)
        if not conversation_id:
            return [], [], "", None, gr.update(), *self.knowledge.select(None, lang)
        c = self.conversations.open(owner, conversation_id, lang)
        display: ChatMessages = []
        last_md = ""
        for (q, a), sources in zip(c.rounds, c.sources):
            display += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            if sources:
                last_md = format_sources([result_from_dict(d) for d in sources], lang=lang)
                display.append({"role": "assistant", "content": last_md,
                                "metadata": {"title": t(lang, "sources_title", n=len(sources)), "status": "done"}})
        kb = c.knowledge_base if c.knowledge_base in self.knowledge.names() else self.knowledge.default
        return (display, c.rounds, last_md, c.id, gr.update(choices=self.knowledge.names(), value=kb),
                *self.knowledge.select(kb, lang))


    def regenerate_chat(self, history: PairHistory, system_prompt: str, max_new_tokens: float,
                        temperature: float, top_k: float, top_p: float, max_round: float, owner: str | None,
                        conversation_id: str | None, lang: str = "en", request: gr.Request | None = None):
        """Chat tab, **retry**: answer the last question again, replacing the kept answer;
        yields (chatbot, history, textbox, id). The owner as in :meth:`chat_kept`."""
        owner = self.conversations.owner_of(owner, request)
        history = [list(x) for x in history or []]
        if not history:
            yield [], [], "", conversation_id
            return
        question, earlier = history[-1][0], history[:-1]

        def replace(_q, answer, sources):
            if owner and conversation_id:
                try:
                    self.conversations.store.replace_last_answer(owner, conversation_id, answer, sources)
                except Exception:  # noqa: BLE001 - the new answer is still shown
                    log.exception("could not keep the regenerated answer")

        for out in self.chat(question, earlier, system_prompt, max_new_tokens, temperature, top_k, top_p,
                             max_round, on_finished=replace, lang=lang):
            yield (*out, conversation_id)


from .ui_page import build_blocks  # noqa: E402,F401 - the layout, re-exported
