"""The page's own handlers, called directly: chat streaming and history, max_round,
per-session isolation, ingestion reports and knowledge-base answers with sources."""
from __future__ import annotations

from dataclasses import replace

import pytest

from .conftest import uploaded

from rag.registry import KnowledgeBaseRegistry
from webui.services import ChatService
from webui.settings import Settings
from webui.ui import PageHandlers, build_blocks

from .conftest import FakeChatModel  # noqa: F401

GEN = ("You are terse.", 32, 0.7, 20, 0.8)  # system prompt, max_new_tokens, temperature, top_k, top_p


@pytest.fixture
def service(tmp_path, embedder):
    registry = KnowledgeBaseRegistry(tmp_path / "knowledge", embedder)
    return ChatService(FakeChatModel("Install it with pip ."), registry, Settings(knowledge_dir=tmp_path / "knowledge"))


def run_chat(handlers, message, history, max_round=5):
    return list(handlers.chat(message, history, *GEN, max_round))


def test_chat_streams_token_by_token_and_keeps_history(service):
    service.settings = replace(service.settings, stream_interval_ms=0)  # an update per token
    h = PageHandlers(service)
    answers = [chat[-1]["content"] for chat, _, _ in h.chat("hello", [], *GEN, 5)]
    assert answers[:3] == ["", "Install", "Install it"], "one update a word"
    assert len(answers) == 2 + len("Install it with pip .".split()), "the empty answer, one update a word, the end"
    steps = run_chat(h, "hello", [])
    assert answers[-1] == "Install it with pip ."
    assert all(len(a) <= len(b) for a, b in zip(answers, answers[1:])), "streamed text only grows"
    chat, history, box = steps[-1]
    assert history == [["hello", "Install it with pip ."]]
    assert box == ""
    assert [m["role"] for m in chat] == ["user", "assistant"]

    steps = run_chat(h, "and then?", history)
    _, history, _ = steps[-1]
    assert [q for q, _ in history] == ["hello", "and then?"]
    sent, params = service.model.calls[-1]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0]["content"] == "You are terse."
    assert sent[1]["content"] == "hello" and sent[-1]["content"] == "and then?"
    assert params.max_new_tokens == 32


def test_page_updates_at_most_once_per_stream_interval(service):
    service.settings = replace(service.settings, stream_interval_ms=1000)
    shown = [chat[-1]["content"] for chat, _, _ in PageHandlers(service).chat("hello", [], *GEN, 5)]
    # the scripted model yields every word at once: the empty answer, the first word at once,
    # then nothing until the end, which shows the whole answer
    assert shown == ["", "Install", "Install it with pip ."]


def test_max_round_truncates_what_the_model_sees(service):
    h = PageHandlers(service)
    history = [[f"q{i}", f"a{i}"] for i in range(6)]
    run_chat(h, "latest", history, max_round=2)
    sent, _ = service.model.calls[-1]
    users = [m["content"] for m in sent if m["role"] == "user"]
    assert users == ["q4", "q5", "latest"]
    run_chat(h, "alone", history, max_round=0)
    sent, _ = service.model.calls[-1]
    assert [m["content"] for m in sent if m["role"] != "system"] == ["alone"]


def test_sessions_do_not_share_history(service):
    h = PageHandlers(service)
    a = run_chat(h, "I am Alice", [])[-1][1]
    b = run_chat(h, "I am Bob", [])[-1][1]
    run_chat(h, "who am I?", b)
    sent, _ = service.model.calls[-1]
    text = " ".join(m["content"] for m in sent)
    assert "Bob" in text and "Alice" not in text
    assert a == [["I am Alice", "Install it with pip ."]]


def test_generation_failure_is_shown_not_hung(service):
    service.model = FakeChatModel("one two three four", fail_after=2)
    steps = run_chat(PageHandlers(service), "hi", [])
    chat, history, box = steps[-1]
    assert "Generation failed" in chat[-1]["content"]
    assert chat[-1]["content"].startswith("one two")
    assert history == [], "a failed turn is not added to the history"
    assert box == "hi", "the question stays in the box for a retry"


def test_empty_message_is_not_sent(service):
    steps = run_chat(PageHandlers(service), "   ", [])
    assert steps[-1][1] == [] and service.model.calls == []


def test_ingest_reports_each_file_and_survives_a_bad_one(service, corpus):
    h = PageHandlers(service)
    files = [str(corpus / "deepspeed" / "README.md"), str(corpus / "pdf" / "libreoffice-writer-password.pdf"),
             str(corpus / "docx" / "blk-paras-and-tables.docx")]
    report, status = h.ingest(uploaded(files))
    lines = {line.split("|")[1].strip(): line for line in report.splitlines()[2:]}
    assert "added" in lines["README.md"] and "added" in lines["blk-paras-and-tables.docx"]
    assert "refused" in lines["libreoffice-writer-password.pdf"]
    assert "password" in lines["libreoffice-writer-password.pdf"].lower()
    assert len(service.knowledge_base().files()) == 2
    assert "2 file(s)" in status


def test_rag_answer_injects_chunks_and_shows_sources(service, corpus):
    h = PageHandlers(service)
    h.ingest(uploaded([str(corpus / "deepspeed" / "README.md")]))
    steps = list(h.rag_chat("How do I install DeepSpeed?", [], 3, 0.0, *GEN, 5))
    chat, history, _, sources = steps[-1]
    assert "<b>README.md</b>" in sources and "score" in sources
    assert "pip install deepspeed" in sources
    assert history == [["How do I install DeepSpeed?", "Install it with pip ."]]
    assert chat[-1]["metadata"]["title"].startswith("📚 Sources")
    sent, _ = service.model.calls[-1]
    assert "pip install deepspeed" in sent[-1]["content"], "retrieved chunks go into the prompt"
    assert "[1]" in sent[-1]["content"]


def test_rag_with_nothing_relevant_says_so(service, corpus):
    h = PageHandlers(service)
    h.ingest(uploaded([str(corpus / "deepspeed" / "README.md")]))
    steps = list(h.rag_chat("Which marmalade recipe do quokkas prefer?", [], 3, 0.99, *GEN, 5))
    assert "No relevant passage" in steps[-1][3]


def label_text(value, table=None):
    """A config prop as the English page shows it (``gr.I18n`` keys resolved)."""
    import json
    import re

    from webui.i18n import EN

    if type(value).__name__ == "I18nData":
        value = str(value)
    if not isinstance(value, str):
        return value
    return re.sub(r'__i18n__(\{[^}]*\})', lambda m: (table or EN)[json.loads(m.group(1))["key"]], value)


def test_page_builds_with_both_tabs_and_named_endpoints(service):
    page = build_blocks(service)
    config = page.get_config_file()
    props = [c.get("props", {}) for c in config["components"]]
    labels = {label_text(p.get("label")) for p in props if p.get("label") is not None}
    assert {"Chat", "LangChain"} <= labels
    values = {label_text(p.get("value")) for p in props if isinstance(p.get("value"), str)
              or type(p.get("value")).__name__ == "I18nData"}
    assert {"Send", "Clear history", "Vectorstore knowledge"} <= values
    api_names = {d.get("api_name") for d in config["dependencies"]}
    assert {"chat", "clear", "ingest", "rag_chat", "conversations_init"} <= api_names
    assert "false" not in api_names, "private events are not offered as API endpoints"


def test_a_cancelled_upload_leaves_the_base_as_it_was(service, corpus):
    """Cancel upload while the second file embeds: the first file stays, the one being
    embedded and the one after it are reported cancelled, nothing of them is stored."""
    k = PageHandlers(service).knowledge
    files = uploaded([corpus / "deepspeed" / "README.md", corpus / "docx" / "blk-paras-and-tables.docx",
                      corpus / "pdf" / "pdflatex-4-pages.pdf"])

    def progress(value, desc="", unit=""):
        if unit == "chunks" and "2/3" in desc:
            k.cancel("upload-1")

    report, status = k.ingest(files, None, progress, lang="en", upload_id="upload-1")
    rows = {line.split("|")[1].strip(): line for line in report.splitlines()[2:]}
    assert "added" in rows["README.md"]
    assert "Upload cancelled" in rows["blk-paras-and-tables.docx"] and "Upload cancelled" in rows["pdflatex-4-pages.pdf"]
    assert [f["name"] for f in k.kb(None).files()] == ["README.md"] and "1 file(s)" in status
    assert k._cancel == {}, "the cancel flag is dropped with its upload"
