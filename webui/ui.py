"""The Gradio page: a **Chat** tab and a **LangChain** tab.

All conversation state lives in per-session ``gr.State`` values (a list of
``(user, assistant)`` pairs); the only shared objects are the model and the
knowledge base inside :class:`~webui.services.ChatService`, captured by the
handlers' closures.  The handlers are plain functions (see :class:`PageHandlers`)
so tests can call them without a browser, and the page exposes them under the
API names ``chat``, ``clear``, ``ingest`` and ``rag_chat`` for gradio_client.
"""
from __future__ import annotations

import html
import logging
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import gradio as gr

from llm.base import GenerationParams
from rag.loaders import SUPPORTED_EXTENSIONS
from rag.types import FileReport, SearchResult

from .services import ChatService

log = logging.getLogger(__name__)

ChatMessages = list[dict[str, Any]]
PairHistory = list[list[str]]

DEMO_BANNER = (
    "⚠️ **Demo model.** No `--model-path` was given and the default model could not be loaded "
    "(not cached, no network), so a tiny random-weight model answers: its answers are meaningless. "
    "Restart with `--model-path Qwen/Qwen2.5-7B-Instruct` (or a local model folder) for real answers."
)
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


def format_sources(sources: Sequence[SearchResult], score_threshold: float | None = None) -> str:
    """Markdown list of the chunks an answer used: number, file, page (PDFs), score, snippet."""
    if not sources:
        limit = f" (score threshold {score_threshold:g})" if score_threshold is not None else ""
        return (f"**No relevant passage** in the knowledge base{limit}: "
                "the answer comes from the model alone.")
    lines = ["**Sources**", ""]
    for i, r in enumerate(sources, 1):
        where = r.chunk.source + (f", page {r.chunk.page}" if r.chunk.page else "")
        snippet = " ".join(r.chunk.text.split())
        if len(snippet) > SNIPPET_CHARS:
            snippet = snippet[:SNIPPET_CHARS] + "…"
        lines.append(f"[{i}] **{plain_markdown(where)}** · score {r.score:.3f}  \n> {plain_markdown(snippet)}\n")
    return "\n".join(lines)


def format_report(reports: Sequence[FileReport]) -> str:
    """Markdown table of an upload batch: one row per file with status, chunks and reason."""
    if not reports:
        return "No file uploaded: choose .txt, .md, .docx or .pdf files first."
    icon = {"added": "✅", "skipped": "⏭️", "refused": "❌"}
    rows = ["| file | status | chunks added | reason |", "|---|---|---|---|"]
    for r in reports:
        cell = lambda s: html.escape(str(s or "")).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        rows.append(f"| {cell(r.name)} | {icon.get(r.status, '')} {r.status} | {r.chunks} | {cell(r.reason)} |")
    return "\n".join(rows)


class PageHandlers:
    """The page's event handlers, bound to one :class:`ChatService`.

    Every handler takes the session's own history and returns the new one, so
    two browser sessions never share a conversation.
    """

    def __init__(self, service: ChatService):
        self.service = service

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
        pieces = self.service.stream_chat(message, history, system_prompt=system_prompt, params=params,
                                          max_round=int(max_round))
        yield from self._stream_into(message, history, pieces, display=to_chat_messages(history))

    def _stream_into(self, message: str, history: PairHistory, pieces: Iterator[str],
                     display: ChatMessages, extra: ChatMessages = ()
                     ) -> Iterator[tuple[ChatMessages, PairHistory, str]]:
        display = display + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        answer = ""
        yield display, history, ""
        try:
            for piece in pieces:
                answer += piece
                display[-1]["content"] = answer
                yield display, history, ""
        except Exception as exc:  # noqa: BLE001 - the page must show the failure, not hang
            log.exception("generation failed")
            display[-1]["content"] = answer + f"\n\n⚠️ Generation failed: {exc}"
            gr.Warning(f"Generation failed: {exc}")
            yield display, history, message  # keep the question in the box to retry
            return
        history = history + [[message, answer]]
        yield display + list(extra), history, ""

    def clear(self) -> tuple[ChatMessages, PairHistory, str]:
        """Clear history: empty chatbot, empty history, empty sources."""
        return [], [], ""

    def ingest(self, files: Sequence[str] | None, progress: gr.Progress = gr.Progress()) -> tuple[str, str]:
        """LangChain tab, **Vectorstore knowledge**: add the uploaded files.

        Returns (per-file report as a Markdown table, knowledge-base status line).
        """
        paths = [Path(f if isinstance(f, str) else f.name) for f in files or []]
        if not paths:
            return format_report([]), self.kb_status()

        def on_file(name: str, i: int, n: int) -> None:
            progress((i, n), desc=f"Embedding {name}", unit="files")

        reports = self.service.knowledge_base().add_files(paths, names=[p.name for p in paths], progress=on_file)
        added = sum(r.chunks for r in reports)
        log.info("ingested %d file(s), %d chunk(s) added", len(reports), added)
        return format_report(reports), self.kb_status()

    def kb_status(self) -> str:
        """One line on the knowledge base: files, chunks, embedding model (and a fallback warning)."""
        kb = self.service.knowledge_base()
        files = kb.files()
        line = (f"Knowledge base **{html.escape(kb.directory.name)}**: {len(files)} file(s), {len(kb)} chunk(s); "
                f"embedding model `{kb.embedding_model}`.")
        if self.service.embedding_fallback:
            line += ("  \n⚠️ The configured embedding model could not be loaded offline, so the bundled "
                     "English all-MiniLM-L6-v2 is used: Chinese retrieval is weak. Pass `--embedding-model`.")
        return line

    def rag_chat(self, question: str, history: PairHistory, top_k: float, score_threshold: float,
                 system_prompt: str, max_new_tokens: float, temperature: float, gen_top_k: float,
                 top_p: float, max_round: float) -> Iterator[tuple[ChatMessages, PairHistory, str, str]]:
        """LangChain tab: retrieve, inject, stream; yields (chatbot, history, textbox, sources)."""
        history = [list(h) for h in history or []]
        if not question or not question.strip():
            gr.Warning("Type a question first.")
            yield to_chat_messages(history), history, "", ""
            return
        if len(self.service.knowledge_base()) == 0:
            gr.Warning("The knowledge base is empty: upload files and click 'Vectorstore knowledge' first.")
        answer = self.service.answer_from_knowledge(
            question, history, top_k=int(top_k), score_threshold=float(score_threshold),
            system_prompt=system_prompt, params=self._params(max_new_tokens, temperature, gen_top_k, top_p),
            max_round=int(max_round))
        sources_md = format_sources(answer.sources, float(score_threshold))
        folded = [{"role": "assistant", "content": sources_md,
                   "metadata": {"title": f"📚 Sources ({len(answer.sources)})", "status": "done"}}]
        for chat, hist, box in self._stream_into(question, history, answer.pieces,
                                                 display=to_chat_messages(history), extra=folded):
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
                        max_new_tokens = gr.Slider(1, max(4096, s.max_new_tokens), value=s.max_new_tokens,
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
                kb_status = gr.Markdown(h.kb_status(), elem_id="kb-status")
                with gr.Row():
                    files = gr.File(file_count="multiple", file_types=list(SUPPORTED_EXTENSIONS),
                                    label="Upload .txt / .md / .docx / .pdf", scale=3, elem_id="kb-files")
                    with gr.Column(scale=1):
                        ingest = gr.Button("Vectorstore knowledge", variant="primary", elem_id="kb-ingest")
                        with gr.Accordion("Retrieval settings", open=False):
                            rag_top_k = gr.Slider(1, 20, value=s.retrieval_top_k, step=1, label="top_k (chunks)")
                            threshold = gr.Slider(-1, 1, value=s.score_threshold, step=0.01,
                                                  label="score threshold (cosine)")
                report = gr.Markdown(elem_id="kb-report")
                ingest.click(h.ingest, inputs=[files], outputs=[report, kb_status], api_name="ingest")

                rag_bot = gr.Chatbot(label="Ask the knowledge base", height=400, elem_id="rag-chatbot")
                rag_history = gr.State([])
                with gr.Row():
                    rag_box = gr.Textbox(placeholder="Ask about your documents…", show_label=False, scale=8,
                                         elem_id="rag-input")
                    rag_send = gr.Button("Send", variant="primary", scale=1, elem_id="rag-send")
                rag_clear = gr.Button("Clear history", elem_id="rag-clear")
                sources = gr.Markdown(elem_id="rag-sources")
                rag_io = dict(fn=h.rag_chat, inputs=[rag_box, rag_history, rag_top_k, threshold, *gen],
                              outputs=[rag_bot, rag_history, rag_box, sources])
                rag_send.click(api_name="rag_chat", **rag_io)
                rag_box.submit(api_name=False, **rag_io)
                rag_clear.click(h.clear, outputs=[rag_bot, rag_history, sources], api_name="rag_clear")
        page.load(h.kb_status, outputs=[kb_status], api_name=False)
    return page
