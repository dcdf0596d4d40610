"""The Gradio page: a **Chat** tab and a **LangChain** tab.

All conversation state lives in per-session ``gr.State`` values (a list of
``(user, assistant)`` pairs); the only shared objects are the model and the
knowledge base inside :class:`~webui.services.ChatService`, captured by the
handlers' closures.  The handlers are plain functions (see :class:`PageHandlers`)
so tests can call them without a browser, and the page exposes them under the
API names ``chat``, ``clear``, ``ingest`` and ``rag_chat`` (and ``kb_select``,
``kb_create``, ``kb_delete``, ``kb_delete_file``) for gradio_client.
The knowledge base a LangChain-tab session works on is that session's own
``gr.State`` (a name); the knowledge-base controls are in :mod:`webui.ui_knowledge`.
"""
from __future__ import annotations

import html
import logging
import re
import time
from typing import Any, Iterator, Sequence

import gradio as gr

from llm.base import GenerationParams
from rag.loaders import SUPPORTED_EXTENSIONS, upload_label
from rag.types import SearchResult

from .services import QUERY_MODES, ChatService
from .ui_knowledge import FILE_COLUMNS, KnowledgeHandlers, format_report  # noqa: F401 - format_report: re-exported

log = logging.getLogger(__name__)

ChatMessages = list[dict[str, Any]]
PairHistory = list[list[str]]

DEMO_BANNER = (
    "⚠️ **Demo model.** No `--model-path` was given and the default model could not be loaded "
    "(not cached, no network), so a tiny random-weight model answers: its answers are meaningless. "
    "Restart with `--model-path Qwen/Qwen2.5-7B-Instruct` (or a local model folder) for real answers."
)
SNIPPET_CHARS = 240
QUERY_MODE_LABELS = {"retrieval+llm": "Retrieval + LLM", "llm": "LLM only", "retrieval": "Retrieval only"}


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


def format_sources(sources: Sequence[SearchResult], score_threshold: float | None = None) -> str:
    """Markdown list of the chunks an answer used: number (as in the prompt), file, page
    (PDFs), scores, snippet; or a "no relevant passage" line."""
    if not sources:
        limit = f" (least relevance {score_threshold:g})" if score_threshold is not None else ""
        return f"**No relevant passage** in the knowledge base{limit}."
    lines = ["**Sources**", ""]
    for i, r in enumerate(sources, 1):
        where = r.chunk.source + (f", page {r.chunk.page}" if r.chunk.page else "") + (
            f", {r.chunk.metadata['location']}" if r.chunk.metadata.get("location") else "")
        snippet = " ".join(r.chunk.text.split())
        if len(snippet) > SNIPPET_CHARS:
            snippet = snippet[:SNIPPET_CHARS] + "…"
        lines.append(f"[{i}] **{plain_markdown(where)}** · {format_scores(r)}  \n> {plain_markdown(snippet)}\n")
    return "\n".join(lines)


class PageHandlers:
    """The page's event handlers, bound to one :class:`ChatService`.

    Every handler takes the session's own history and returns the new one, so
    two browser sessions never share a conversation.
    """

    def __init__(self, service: ChatService):
        self.service = service
        self.knowledge = KnowledgeHandlers(service)

    def _params(self, max_new_tokens, temperature, top_k, top_p) -> GenerationParams:
        return GenerationParams(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                top_k=int(top_k), top_p=float(top_p))

    def chat(self, message: str, history: PairHistory, system_prompt: str, max_new_tokens: float,
             temperature: float, top_k: float, top_p: float, max_round: float
             ) -> Iterator[tuple[ChatMessages, PairHistory, str]]:
        """Chat tab: stream the answer to ``message``; yields (chatbot, history, textbox)."""
        history = [list(h) for h in history or []]
        if not message or not message.strip():
            gr.Warning("Type a message first.")
            yield to_chat_messages(history), history, ""
            return
        params = self._params(max_new_tokens, temperature, top_k, top_p)
        try:
            pieces = self.service.stream_chat(message, history, system_prompt=system_prompt, params=params,
                                              max_round=int(max_round))
        except ValueError as exc:  # e.g. the prompt does not fit in the model's context
            raise gr.Error(str(exc)) from None
        yield from self._stream_into(message, history, pieces, display=to_chat_messages(history),
                                     record=lambda text: self.service.record_round(
                                         "page", message, text, history, system_prompt))

    def _stream_into(self, message: str, history: PairHistory, pieces: Iterator[str],
                     display: ChatMessages, extra: ChatMessages = (), record=None
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
            display[-1]["content"] = answer + f"\n\n⚠️ Generation failed: {exc}"
            gr.Warning(f"Generation failed: {exc}")
            yield display, history, message  # keep the question in the box to retry
            return
        if record is not None:  # export the finished round (--export-history-path) before showing it done
            record(answer)
        history = history + [[message, answer]]
        yield display + list(extra), history, ""

    def clear(self) -> tuple[ChatMessages, PairHistory, str]:
        """Clear history: empty chatbot, empty history, empty sources."""
        return [], [], ""

    def ingest(self, files: Sequence[str] | None, kb_name: str | None = None,
               progress: gr.Progress = gr.Progress()) -> tuple[str, str]:
        """LangChain tab, **Vectorstore knowledge**: add the uploaded files to the session's
        knowledge base ``kb_name`` (None = the default), showing files and chunks done.

        Returns (per-file report as a Markdown table, knowledge-base status line).
        """
        return self.knowledge.ingest(files, kb_name, progress)

    def kb_status(self, kb_name: str | None = None) -> str:
        """One line on the knowledge base: files, chunks, embedding model (and a fallback warning)."""
        return self.knowledge.status(kb_name)

    def rag_chat(self, question: str, history: PairHistory, top_k: float, score_threshold: float,
                 system_prompt: str, max_new_tokens: float, temperature: float, gen_top_k: float,
                 top_p: float, max_round: float, kb_name: str | None = None,
                 query_mode: str = "retrieval+llm", retrieval_mode: str | None = None
                 ) -> Iterator[tuple[ChatMessages, PairHistory, str, str]]:
        """LangChain tab: answer from the session's knowledge base ``kb_name`` in
        ``query_mode`` (retrieval + LLM, LLM only, retrieval only) with the
        ``retrieval_mode`` retriever; yields (chatbot, history, textbox, sources)."""
        history = [list(h) for h in history or []]
        if not question or not question.strip():
            gr.Warning("Type a question first.")
            yield to_chat_messages(history), history, "", ""
            return
        if query_mode != "llm" and len(self.knowledge.kb(kb_name)) == 0:
            gr.Warning("The knowledge base is empty: upload files and click 'Vectorstore knowledge' first.")
        try:
            answer = self.service.answer_from_knowledge(
                question, history, top_k=int(top_k), score_threshold=float(score_threshold),
                system_prompt=system_prompt, params=self._params(max_new_tokens, temperature, gen_top_k, top_p),
                max_round=int(max_round), kb=kb_name or self.knowledge.default, query_mode=query_mode,
                retrieval_mode=retrieval_mode or None)
        except ValueError as exc:  # e.g. the question and passages do not fit in the model's context
            raise gr.Error(str(exc)) from None
        if query_mode == "llm":
            sources_md = "LLM only: the knowledge base was not searched."
        else:
            sources_md = format_sources(answer.sources, float(score_threshold))
        if query_mode == "retrieval":  # no generation: the ranked passages are the answer
            answer.pieces = iter([sources_md])
        folded = [] if query_mode != "retrieval+llm" else [
            {"role": "assistant", "content": sources_md,
             "metadata": {"title": f"📚 Sources ({len(answer.sources)})", "status": "done"}}]
        sources = [r.to_dict() for r in answer.sources]
        for chat, hist, box in self._stream_into(question, history, answer.pieces,
                                                 display=to_chat_messages(history), extra=folded,
                                                 record=lambda text: self.service.record_round(
                                                     "langchain", question, text, history, system_prompt,
                                                     sources=sources)):
            yield chat, hist, box, sources_md


def build_blocks(service: ChatService) -> gr.Blocks:
    """Build the page for ``service``. Returns unlaunched ``gr.Blocks``; mount it with
    ``gr.mount_gradio_app`` (see :func:`webui.app.create_app`)."""
    h = PageHandlers(service)
    s = service.settings
    with gr.Blocks(title="ChatLLM-WebUI", analytics_enabled=False) as page:
        gr.Markdown(f"## ChatLLM-WebUI  \nModel: `{html.escape(service.model.name)}`")
        if service.model.is_demo:
            gr.Markdown(DEMO_BANNER, elem_id="demo-banner")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                chatbot = gr.Chatbot(label="Chat", height=460, elem_id="chat-chatbot")
                history = gr.State([])
                with gr.Row():
                    box = gr.Textbox(placeholder="Ask anything…", show_label=False, scale=8,
                                     elem_id="chat-input")
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
                clear = gr.Button("Clear history", elem_id="chat-clear")
                with gr.Accordion("Generation settings (also used by the LangChain tab)", open=False):
                    system_prompt = gr.Textbox(value=s.system_prompt, label="System prompt", lines=2)
                    with gr.Row():
                        max_new_tokens = gr.Slider(1, s.max_new_tokens_limit, value=s.max_new_tokens,
                                                   step=1, label="max_new_tokens")
                        max_round = gr.Slider(0, max(20, s.max_round), value=s.max_round, step=1,
                                              label="max_round (history rounds kept)")
                    with gr.Row():
                        temperature = gr.Slider(0, 2, value=s.temperature, step=0.05,
                                                label="temperature (0 = greedy)")
                        top_k = gr.Slider(0, 100, value=s.top_k, step=1, label="top_k")
                        top_p = gr.Slider(0.01, 1, value=s.top_p, step=0.01, label="top_p")
                gen = [system_prompt, max_new_tokens, temperature, top_k, top_p, max_round]
                chat_io = dict(fn=h.chat, inputs=[box, history, *gen], outputs=[chatbot, history, box])
                send.click(api_name="chat", **chat_io)
                box.submit(api_name=False, **chat_io)
                clear.click(lambda: h.clear()[:2], outputs=[chatbot, history], api_name="clear")

            with gr.Tab("LangChain", id="langchain"):
                k = h.knowledge
                kb_state = gr.State(k.default)  # this session's knowledge base (a name)
                with gr.Row():
                    kb_pick = gr.Dropdown(choices=k.names(), value=k.default, label="Knowledge base", scale=2,
                                          elem_id="kb-pick")
                    kb_new = gr.Textbox(label="New knowledge base", placeholder="name, e.g. manuals-2024", scale=2,
                                        elem_id="kb-new")
                    kb_create = gr.Button("Create", scale=1, elem_id="kb-create")
                kb_status = gr.Markdown(h.kb_status(), elem_id="kb-status")
                with gr.Row():
                    files = gr.File(file_count="multiple", file_types=list(SUPPORTED_EXTENSIONS),
                                    label=upload_label(), scale=3, elem_id="kb-files")
                    with gr.Column(scale=1):
                        ingest = gr.Button("Vectorstore knowledge", variant="primary", elem_id="kb-ingest")
                        with gr.Accordion("Retrieval settings", open=False):
                            retrieval_mode = gr.Radio(["hybrid", "dense", "bm25"], value=s.retrieval_mode,
                                                      label="retriever (hybrid = dense + BM25, fused)")
                            rag_top_k = gr.Slider(1, 20, value=s.retrieval_top_k, step=1, label="top_k (chunks)")
                            threshold = gr.Slider(-1, 1, value=s.score_threshold, step=0.01,
                                                  label="score threshold (least relevance, 0-1; -1 keeps all)")
                report = gr.Markdown(elem_id="kb-report")
                with gr.Accordion("Files in this knowledge base", open=False):
                    file_table = gr.Dataframe(value=k.files_table(), headers=FILE_COLUMNS, interactive=False,
                                              elem_id="kb-file-table")
                    with gr.Row():
                        file_pick = gr.Dropdown(choices=[row[0] for row in k.files_table()], value=None,
                                                label="File", scale=3, elem_id="kb-file-pick")
                        file_delete = gr.Button("Delete file", variant="stop", scale=1, elem_id="kb-file-delete")
                        kb_delete = gr.Button("Delete this knowledge base", variant="stop", scale=1,
                                              elem_id="kb-delete")
                    file_message = gr.Markdown(elem_id="kb-file-message")
                view = [kb_state, kb_status, file_table, file_pick]
                kb_pick.change(k.select, inputs=[kb_pick], outputs=view, api_name="kb_select")
                kb_create.click(k.create, inputs=[kb_new, kb_state], outputs=[kb_pick, *view, kb_new],
                                api_name="kb_create")
                kb_delete.click(k.delete, inputs=[kb_state], outputs=[kb_pick, *view], api_name="kb_delete")
                file_delete.click(k.delete_file, inputs=[kb_state, file_pick],
                                  outputs=[file_message, kb_status, file_table, file_pick], api_name="kb_delete_file")
                ingest.click(h.ingest, inputs=[files, kb_state], outputs=[report, kb_status], api_name="ingest").then(
                    lambda name: (k.files_table(name), k.file_choices(name)), inputs=[kb_state],
                    outputs=[file_table, file_pick], api_name=False)

                rag_bot = gr.Chatbot(label="Ask the knowledge base", height=400, elem_id="rag-chatbot")
                rag_history = gr.State([])
                query_mode = gr.Radio([(QUERY_MODE_LABELS[m], m) for m in QUERY_MODES], value=QUERY_MODES[0],
                                      label="Query mode", elem_id="rag-query-mode")
                with gr.Row():
                    rag_box = gr.Textbox(placeholder="Ask about your documents…", show_label=False, scale=8,
                                         elem_id="rag-input")
                    rag_send = gr.Button("Send", variant="primary", scale=1, elem_id="rag-send")
                rag_clear = gr.Button("Clear history", elem_id="rag-clear")
                sources = gr.Markdown(elem_id="rag-sources")
                rag_io = dict(fn=h.rag_chat, inputs=[rag_box, rag_history, rag_top_k, threshold, *gen, kb_state,
                                                     query_mode, retrieval_mode],
                              outputs=[rag_bot, rag_history, rag_box, sources])
                rag_send.click(api_name="rag_chat", **rag_io)
                rag_box.submit(api_name=False, **rag_io)
                rag_clear.click(h.clear, outputs=[rag_bot, rag_history, sources], api_name="rag_clear")
        page.load(lambda: (gr.update(choices=k.names(), value=k.default), *k.select(None)),
                  outputs=[kb_pick, *view], api_name=False)
    return page
