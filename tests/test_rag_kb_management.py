"""Several named knowledge bases in the LangChain tab: create, pick (per browser
session), delete; files listed with size, chunk count and time added; duplicate
upload skipped and reported; a changed file replaces its chunks; file deletion;
ingestion progress; a knowledge base built with another embedding model. The tests that
add, replace, delete or reopen run on FAISS and on Milvus Lite (the ``vector_store`` fixture)."""
from __future__ import annotations

import shutil

import gradio as gr
import pytest

from .conftest import uploaded

from rag import EmbeddingMismatchError
from rag.registry import KnowledgeBaseRegistry
from webui.services import ChatService
from webui.settings import Settings
from webui.ui import PageHandlers, build_blocks

from .conftest import FakeChatModel

try:  # tests/ is a package (tests/__init__.py); fall back to rootdir-relative import without it
    from tests.rag_fixtures import HashEmbedder, memoized_bundled_embedder
except ImportError:  # pragma: no cover
    from rag_fixtures import HashEmbedder, memoized_bundled_embedder

GEN = ("You are terse.", 32, 0.7, 20, 0.8)


def make_handlers(registry: KnowledgeBaseRegistry) -> PageHandlers:
    service = ChatService(FakeChatModel("ok"), registry, Settings(knowledge_dir=registry.root))
    return PageHandlers(service)


@pytest.fixture
def handlers(tmp_path, vector_store):
    """The page's handlers over a registry on each vector store (the bundled model, each
    document embedded once for both)."""
    return make_handlers(vector_store.registry(tmp_path / "knowledge", memoized_bundled_embedder()))


@pytest.fixture
def faiss_handlers(tmp_path, embedder):
    """The page's handlers over a FAISS registry, for tests that do not touch the store."""
    return make_handlers(KnowledgeBaseRegistry(tmp_path / "knowledge", embedder))


def report_rows(report: str) -> dict[str, str]:
    return {line.split("|")[1].strip(): line for line in report.splitlines()[2:]}


def test_create_pick_and_delete_knowledge_bases(handlers, vector_store):
    k = handlers.knowledge
    assert k.names() == ["default"]
    picker, state, status, table, file_pick, box = k.create("manuals", "default")
    assert picker["choices"] == ["default", "manuals"] and picker["value"] == "manuals"
    assert state == "manuals" and box == ""
    assert "**manuals**: 0 file(s), 0 chunk(s)" in status and table == [] and file_pick["choices"] == []
    assert "manuals" in handlers.service.knowledge_bases.names()
    with pytest.raises(gr.Error, match="invalid knowledge base name"):
        k.create("../etc", "manuals")
    with pytest.raises(gr.Error, match="Type a name"):
        k.create("  ", "manuals")

    store = handlers.service.knowledge_base("manuals")._store
    picker, state, status, *_ = k.delete("manuals")
    assert picker["choices"] == ["default"] and picker["value"] == "default" and state == "default"
    assert "manuals" not in handlers.service.knowledge_bases.names()
    assert not (handlers.service.knowledge_bases.root / "manuals").exists()
    if vector_store.name == "milvus":
        assert not store.client.has_collection(store.collection), "its Milvus collection is dropped"
    with pytest.raises(gr.Error, match="no knowledge base named 'manuals'"):
        k.delete("manuals")


def test_each_session_works_on_its_own_knowledge_base(handlers, corpus):
    k = handlers.knowledge
    k.create("deepspeed", "default")
    report, status = handlers.ingest(uploaded([str(corpus / "deepspeed" / "advanced-install.md")]), "deepspeed")
    assert "added" in report_rows(report)["advanced-install.md"] and "**deepspeed**: 1 file(s)" in status
    assert handlers.kb_status("default").startswith("Knowledge base **default**: 0 file(s)")

    # session A picked "deepspeed", session B stayed on "default": same question, different answers
    a = list(handlers.rag_chat("How do I install DeepSpeed?", [], 3, 0.0, *GEN, 5, "deepspeed"))[-1]
    b = list(handlers.rag_chat("How do I install DeepSpeed?", [], 3, 0.0, *GEN, 5, "default"))[-1]
    assert "<b>advanced-install.md</b>" in a[3], "the install guide is the first source"
    assert any("pip install deepspeed" in str(call[0]) for call in handlers.service.model.calls), \
        "and its text reaches the model"
    assert "No relevant passage" in b[3]

    state, status, table, file_pick = k.select("deepspeed")
    assert state == "deepspeed" and [row[0] for row in table] == ["advanced-install.md"]
    assert k.select(None)[0] == "default"


def test_files_listed_duplicate_skipped_changed_replaced_and_deleted(handlers, corpus, tmp_path, vector_store):
    k = handlers.knowledge
    k.create("docs", "default")
    upload = tmp_path / "upload"
    upload.mkdir()
    guide = upload / "zero.md"
    shutil.copy(corpus / "deepspeed" / "zero.md", guide)
    docx = corpus / "docx" / "blk-paras-and-tables.docx"
    handlers.ingest(uploaded([str(guide), str(docx)]), "docs")

    table = {row[0]: row for row in k.files_table("docs")}
    assert set(table) == {"zero.md", "blk-paras-and-tables.docx"}
    name, size, chunks, added = table["zero.md"]
    assert size == f"{guide.stat().st_size / 1024:.1f} KB" and chunks > 10
    assert len(added) == 19 and added[:2] == "20", "UTC time, to the second: YYYY-MM-DD HH:MM:SS"
    kb = handlers.service.knowledge_base("docs")
    total = len(kb)
    assert vector_store.entities(kb) == total

    # the same files again: skipped, and the report says so
    report, _ = handlers.ingest(uploaded([str(guide), str(docx)]), "docs")
    rows = report_rows(report)
    assert "skipped" in rows["zero.md"] and "unchanged" in rows["zero.md"]
    assert len(kb) == total

    # a changed file of the same name replaces its chunks
    guide.write_text("# ZeRO, shortened\n\nZeRO partitions optimizer states across data-parallel ranks.\n",
                     encoding="utf-8")
    report, _ = handlers.ingest(uploaded([str(guide)]), "docs")
    assert "added" in report_rows(report)["zero.md"]
    table = {row[0]: row for row in k.files_table("docs")}
    assert table["zero.md"][2] == 1 and len(kb) == total - chunks + 1
    assert vector_store.entities(kb) == len(kb), "the old version's vectors are gone from the store"
    assert [r.chunk.text for r in kb.search("ZeRO optimizer states", top_k=50, mode="bm25")
            if r.chunk.source == "zero.md"] == ["# ZeRO, shortened\n\nZeRO partitions optimizer states across "
                                                "data-parallel ranks."]

    # delete a file from the tab
    message, status, rows_after, file_pick = k.delete_file("docs", "zero.md")
    assert "Deleted **zero.md** (1 chunks)" in message
    assert [row[0] for row in rows_after] == ["blk-paras-and-tables.docx"]
    assert file_pick["choices"] == ["blk-paras-and-tables.docx"]
    assert all(r.chunk.source != "zero.md" for r in kb.search("ZeRO", top_k=50, mode="hybrid"))
    assert vector_store.entities(kb) == len(kb) == total - chunks, "exactly its chunks left the store"
    with pytest.raises(gr.Error, match="no file named"):
        k.delete_file("docs", "zero.md")
    with pytest.raises(gr.Error, match="Pick a file"):
        k.delete_file("docs", None)


def test_ingestion_reports_files_and_chunks_while_it_runs(faiss_handlers, corpus):
    handlers = faiss_handlers
    calls = []

    def progress(value, desc=None, unit=None):
        calls.append((value, desc, unit))

    files = [str(corpus / "deepspeed" / "advanced-install.md"), str(corpus / "deepspeed" / "inference-tutorial.md")]
    handlers.knowledge.ingest(uploaded(files), None, progress)
    file_steps = [c for c in calls if c[2] == "files"]
    chunk_steps = [c for c in calls if c[2] == "chunks"]
    assert [v for v, _, _ in file_steps] == [(0, 2), (1, 2)]
    assert file_steps[1][1] == "File 2/2: inference-tutorial.md"
    assert chunk_steps[0][0][0] == 0 and chunk_steps[-1][0][0] == chunk_steps[-1][0][1] > 0
    assert any(desc.startswith("File 1/2: advanced-install.md · chunks ") for _, desc, u in chunk_steps)


def test_knowledge_base_of_another_embedding_model(handlers, corpus, vector_store):
    root = handlers.service.knowledge_bases.root
    other = vector_store.open(root / "hashed", HashEmbedder())
    other.add_files([corpus / "deepspeed" / "zero.md"])
    with pytest.raises(EmbeddingMismatchError, match="test/hash-embedder"):
        vector_store.open(root / "hashed", handlers.service.knowledge_bases.embedder)

    k = handlers.knowledge
    assert "hashed" in k.names()
    state, status, table, _ = k.select("hashed")
    assert status.startswith("⚠️") and "test/hash-embedder" in status and "--embedding-model" in status
    assert table == []
    with pytest.raises(gr.Error, match="was built with embedding model 'test/hash-embedder'"):
        handlers.ingest(uploaded([str(corpus / "deepspeed" / "README.md")]), "hashed")
    again = vector_store.open(root / "hashed", HashEmbedder())
    assert len(again) == len(other) == vector_store.entities(again), "left untouched"


def test_page_has_the_knowledge_base_controls(faiss_handlers):
    handlers = faiss_handlers
    config = build_blocks(handlers.service).get_config_file()
    api_names = {d.get("api_name") for d in config["dependencies"]}
    assert {"ingest", "rag_chat", "kb_select", "kb_create", "kb_delete", "kb_delete_file"} <= api_names
    from webui.i18n import render

    labels = {render(c["props"]["label"], "en") for c in config["components"] if c.get("props", {}).get("label")}
    assert {"Knowledge base", "New knowledge base", "Query mode", "File"} <= labels
    states = [c for c in config["components"] if c.get("type") == "state"]
    assert len(states) >= 3, "chat history, RAG history and the session's knowledge-base name are gr.State"
