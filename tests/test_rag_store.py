"""rag.store.KnowledgeBase: adding, skipping, replacing, deleting, persistence,
crash safety, embedding-model checks and thread safety. The in-process failure tests (a
file whose embedding fails, a save that fails) and the embedding-model switch run on FAISS and on Milvus Lite (the
``vector_store`` fixture); the kill -9 tests are FAISS's generations (Milvus's are in
tests/test_rag_milvus_processes.py)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import rag.persistence as disk
from rag import EmbeddingMismatchError, KnowledgeBase
from rag.persistence import safe_file_name
from rag.store import UNCHANGED_REASON

try:  # tests/ is a package (tests/__init__.py); fall back to rootdir-relative import without it
    from tests.rag_fixtures import HashEmbedder, bundled_embedder
except ImportError:  # pragma: no cover
    from rag_fixtures import HashEmbedder, bundled_embedder

TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def embedder():
    return bundled_embedder()


@pytest.fixture(scope="module")
def sources(corpus):
    return {
        "advanced-install.md": corpus / "deepspeed" / "advanced-install.md",
        "inference-tutorial.md": corpus / "deepspeed" / "inference-tutorial.md",
        "test.docx": corpus / "docx" / "test.docx",
        "pdflatex-4-pages.pdf": corpus / "pdf" / "pdflatex-4-pages.pdf",
        "password": corpus / "pdf" / "libreoffice-writer-password.pdf",
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory, embedder, sources):
    """A knowledge base built once from a mixed batch (incl. the password PDF)."""
    directory = tmp_path_factory.mktemp("kb") / "knowledge"
    kb = KnowledgeBase.open(directory, embedder, chunk_size=400, chunk_overlap=40, chunk_unit="chars")
    calls = []
    batch = [sources["advanced-install.md"], sources["password"], sources["test.docx"],
             sources["pdflatex-4-pages.pdf"]]
    reports = kb.add_files(batch, progress=lambda *a: calls.append(a))
    return kb, reports, calls, batch


def _copy_kb(kb: KnowledgeBase, tmp_path: Path, embedder) -> KnowledgeBase:
    target = tmp_path / "copy"
    shutil.copytree(kb.directory, target)
    return KnowledgeBase.open(target, embedder, chunk_size=400, chunk_overlap=40, chunk_unit="chars")


# ------------------------------------------------------------------ batch


def test_batch_adds_good_files_and_refuses_the_password_pdf(built):
    kb, reports, calls, batch = built
    assert [r.name for r in reports] == [p.name for p in batch]
    assert [r.status for r in reports] == ["added", "refused", "added", "added"]
    refused = reports[1]
    assert refused.chunks == 0
    assert refused.reason.startswith("libreoffice-writer-password.pdf:") and "password" in refused.reason
    assert all(r.chunks > 0 and r.reason is None for r in reports if r.status == "added")
    assert calls == [(p.name, i, 4) for i, p in enumerate(batch)]

    files = {f["name"]: f for f in kb.files()}
    assert list(files) == ["advanced-install.md", "test.docx", "pdflatex-4-pages.pdf"]
    assert len(kb) == sum(r.chunks for r in reports)
    for report, path in zip(reports, batch):
        if report.status != "added":
            continue
        f = files[path.name]
        assert f["chunks"] == report.chunks
        assert f["size"] == path.stat().st_size
        assert len(f["sha256"]) == 64
        assert f["added_at"].endswith("+00:00")
        assert (kb.directory / "files" / path.name).read_bytes() == path.read_bytes()
    assert not (kb.directory / "files" / "libreoffice-writer-password.pdf").exists()


def test_search_results_carry_source_page_and_scores(built):
    kb, *_ = built
    results = kb.search("installing DeepSpeed from source with pre-compiled ops", top_k=5)
    assert 1 <= len(results) <= 5
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 + 1e-5 for s in scores)
    assert results[0].chunk.source == "advanced-install.md"
    pdf_hits = [r for r in kb.search("Lorem ipsum dolor sit amet", top_k=10) if r.chunk.source.endswith(".pdf")]
    assert pdf_hits and all(1 <= r.chunk.page <= 4 for r in pdf_hits)
    assert all(isinstance(r.chunk.metadata["chunk_index"], int) for r in results)


def test_search_arguments(built):
    kb, *_ = built
    assert len(kb.search("DeepSpeed", top_k=1)) == 1
    assert len(kb.search("DeepSpeed", top_k=10_000)) == len(kb)
    assert kb.search("DeepSpeed", top_k=5, score_threshold=1.01) == []
    ranking = kb.search("DeepSpeed", top_k=5)
    best = max(r.scores["relevance"] for r in kb.search("DeepSpeed", top_k=50))
    assert kb.search("DeepSpeed", top_k=5, score_threshold=best) == ranking, "passing: the ranking as it is"
    for bad in (0, -1):
        with pytest.raises(ValueError, match="top_k"):
            kb.search("DeepSpeed", top_k=bad)


def test_empty_knowledge_base_returns_nothing(tmp_path, embedder):
    kb = KnowledgeBase.open(tmp_path / "empty", embedder)
    assert len(kb) == 0 and kb.files() == []
    assert kb.search("anything") == []
    assert kb.embedding_model == embedder.name
    manifest = json.loads((tmp_path / "empty" / "manifest.json").read_text())
    assert (manifest["embedding_model"], manifest["dim"]) == (embedder.name, embedder.dim)


# ------------------------------------------------------------- persistence


def test_reopening_gives_the_same_files_chunks_and_results(built, embedder, tmp_path):
    kb, *_ = built
    again = KnowledgeBase.open(kb.directory, embedder, chunk_size=400, chunk_overlap=40, chunk_unit="chars")
    assert again is not kb
    assert again.files() == kb.files()
    assert len(again) == len(kb)
    for query in ["How do I build DeepSpeed ops ahead of time?", "python-docx", "Lorem ipsum"]:
        before = [(r.chunk.id, r.chunk.text, round(r.score, 5)) for r in kb.search(query, top_k=4)]
        after = [(r.chunk.id, r.chunk.text, round(r.score, 5)) for r in again.search(query, top_k=4)]
        assert after == before


def test_duplicate_upload_is_skipped(built, embedder, sources, tmp_path):
    kb = _copy_kb(built[0], tmp_path, embedder)
    n, files = len(kb), kb.files()
    upload = tmp_path / "tmp-upload-x7"  # same bytes, random temp name, real name passed
    shutil.copy(sources["advanced-install.md"], upload)
    [report] = kb.add_files([upload], names=["advanced-install.md"])
    assert (report.status, report.chunks, report.reason) == ("skipped", 0, UNCHANGED_REASON)
    assert len(kb) == n and kb.files() == files


def test_changed_file_replaces_its_chunks(built, embedder, sources, tmp_path):
    kb = _copy_kb(built[0], tmp_path, embedder)
    n = len(kb)
    old = {f["name"]: f for f in kb.files()}["advanced-install.md"]
    changed = tmp_path / "advanced-install.md"
    changed.write_text(sources["advanced-install.md"].read_text(encoding="utf-8")
                       + "\n\nThe zebra-quokka build flag makes the installation purple.\n", encoding="utf-8")
    [report] = kb.add_files([changed])
    assert report.status == "added"
    assert len(kb) == n - old["chunks"] + report.chunks  # replaced, not doubled
    new = {f["name"]: f for f in kb.files()}["advanced-install.md"]
    assert new["sha256"] != old["sha256"] and new["chunks"] == report.chunks
    assert [f["name"] for f in kb.files()].count("advanced-install.md") == 1
    top = kb.search("zebra-quokka build flag", top_k=1)[0]
    assert "zebra-quokka" in top.chunk.text
    assert (kb.directory / "files" / "advanced-install.md").read_bytes() == changed.read_bytes()
    reopened = KnowledgeBase.open(kb.directory, embedder, chunk_size=400, chunk_overlap=40, chunk_unit="chars")
    assert len(reopened) == len(kb)


def test_delete_file(built, embedder, tmp_path):
    kb = _copy_kb(built[0], tmp_path, embedder)
    n = len(kb)
    chunks = {f["name"]: f["chunks"] for f in kb.files()}["pdflatex-4-pages.pdf"]
    assert kb.delete_file("pdflatex-4-pages.pdf") == chunks
    assert len(kb) == n - chunks
    assert "pdflatex-4-pages.pdf" not in [f["name"] for f in kb.files()]
    assert not (kb.directory / "files" / "pdflatex-4-pages.pdf").exists()
    assert all(r.chunk.source != "pdflatex-4-pages.pdf" for r in kb.search("Lorem ipsum", top_k=len(kb)))
    with pytest.raises(KeyError, match="pdflatex-4-pages.pdf"):
        kb.delete_file("pdflatex-4-pages.pdf")
    reopened = KnowledgeBase.open(kb.directory, embedder, chunk_size=400, chunk_overlap=40, chunk_unit="chars")
    assert len(reopened) == n - chunks and reopened.files() == kb.files()


def test_embedding_model_mismatch_is_refused(built, embedder, tmp_path):
    kb = _copy_kb(built[0], tmp_path, embedder)
    for other in (HashEmbedder("BAAI/bge-m3", dim=1024), HashEmbedder("someone/other-minilm", dim=embedder.dim)):
        with pytest.raises(EmbeddingMismatchError) as info:
            KnowledgeBase.open(kb.directory, other)
        message = str(info.value)
        assert embedder.name in message and other.name in message
        assert "--embedding-model" in message


def test_empty_knowledge_base_adopts_a_new_embedding_model(tmp_path, vector_store):
    vector_store.open(tmp_path / "kb", HashEmbedder("a/model", dim=32))
    kb = vector_store.open(tmp_path / "kb", HashEmbedder("b/model", dim=48))
    assert kb.embedding_model == "b/model" and kb._store.dim == 48
    assert json.loads((tmp_path / "kb" / "manifest.json").read_text())["dim"] == 48
    (tmp_path / "a.txt").write_text("now embedded by the new model", encoding="utf-8")
    assert kb.add_files([tmp_path / "a.txt"])[0].status == "added" and vector_store.entities(kb) == 1
    with pytest.raises(EmbeddingMismatchError, match="--embedding-model b/model"):
        vector_store.open(tmp_path / "kb", HashEmbedder("a/model", dim=32))


def test_leftover_half_written_generation_is_ignored(built, embedder, tmp_path, sources):
    kb = _copy_kb(built[0], tmp_path, embedder)
    files, n = kb.files(), len(kb)
    leftover = kb.directory / "gen-999999"  # a crash while writing the next state
    leftover.mkdir()
    (leftover / "index.faiss").write_bytes(b"\x00\x01half")
    (leftover / "chunks.json").write_text('{"next_id": 3, "chunks": [{"id"', encoding="utf-8")
    (kb.directory / "manifest.json.tmp").write_text('{"generation": "gen-9', encoding="utf-8")

    reopened = KnowledgeBase.open(kb.directory, embedder, chunk_size=400, chunk_overlap=40, chunk_unit="chars")
    assert reopened.files() == files and len(reopened) == n
    assert reopened.search("DeepSpeed install", top_k=2)
    # the next commit writes a newer generation and clears the leftover away
    reopened.add_files([sources["inference-tutorial.md"]])
    generations = [p.name for p in kb.directory.iterdir() if p.name.startswith("gen-")]
    assert len(generations) == 1 and disk.generation_number(generations[0]) > 999999


def test_unsafe_names_stay_inside_the_folder(tmp_path):
    kb = KnowledgeBase.open(tmp_path / "kb", HashEmbedder())
    src = tmp_path / "upload.tmp"
    src.write_text("A small text file about safe names.", encoding="utf-8")
    [report] = kb.add_files([src], names=["../../evil\x00na\nme.txt"])
    assert report.status == "added" and report.name == "../../evil\x00na\nme.txt"
    assert [f["name"] for f in kb.files()] == ["evilname.txt"]
    assert (tmp_path / "kb" / "files" / "evilname.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb", "upload.tmp"]
    assert kb.delete_file("../../evil\x00na\nme.txt") == 1


@pytest.mark.parametrize("name, expected", [
    ("report.pdf", "report.pdf"),
    ("C:\\Users\\me\\报告.docx", "报告.docx"),
    ("/etc/passwd", "passwd"),
    ("..", "file"),
    ("a/b/..", "file"),
    ("\x00\x01", "file"),
    ("bad\u202etxt.exe.md", "badtxt.exe.md"),
    ("x" * 300 + ".pdf", "x" * 196 + ".pdf"),
])
def test_safe_file_name(name, expected):
    assert safe_file_name(name) == expected


# ---------------------------------------------------------- failure handling


def test_unexpected_error_refuses_only_that_file(tmp_path, vector_store):
    class Flaky(HashEmbedder):
        def embed_documents(self, texts, batch_size=32, show_progress=False):
            if any("EXPLODE" in t for t in texts):
                raise RuntimeError("GPU fell off the bus")
            return super().embed_documents(texts)

    kb = vector_store.open(tmp_path / "kb", Flaky())
    paths = []
    for name, text in [("a.txt", "first file"), ("b.txt", "EXPLODE here"), ("c.md", "third file")]:
        paths.append(tmp_path / name)
        paths[-1].write_text(text, encoding="utf-8")
    reports = kb.add_files(paths)
    assert [r.status for r in reports] == ["added", "refused", "added"]
    assert "RuntimeError" in reports[1].reason and "GPU fell off the bus" in reports[1].reason
    assert [f["name"] for f in kb.files()] == ["a.txt", "c.md"]
    assert vector_store.entities(kb) == len(kb) == 2


def test_failed_save_keeps_the_last_saved_state(tmp_path, monkeypatch, vector_store):
    kb = vector_store.open(tmp_path / "kb", HashEmbedder())
    good = tmp_path / "good.txt"
    good.write_text("saved fine", encoding="utf-8")
    kb.add_files([good])
    other = tmp_path / "other.txt"
    other.write_text("this one fails to save", encoding="utf-8")

    real = disk.replace_json_atomically
    monkeypatch.setattr(disk, "replace_json_atomically", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    [report] = kb.add_files([other])
    monkeypatch.setattr(disk, "replace_json_atomically", real)
    assert report.status == "refused" and "disk full" in report.reason
    assert [f["name"] for f in kb.files()] == ["good.txt"] and len(kb) == 1
    assert not (kb.directory / "files" / "other.txt").exists()
    assert vector_store.entities(kb) == 1, "the unsaved file's vectors left the store"
    again = vector_store.open(kb.directory, HashEmbedder())
    assert again.files() == kb.files() and vector_store.entities(again) == 1
    assert [r.chunk.source for r in again.search("this one fails to save", top_k=5)] == ["good.txt"]


def test_names_must_match_paths(tmp_path):
    kb = KnowledgeBase.open(tmp_path / "kb", HashEmbedder())
    with pytest.raises(ValueError, match="one name per path"):
        kb.add_files([tmp_path / "a.txt"], names=["a.txt", "b.txt"])


# ----------------------------------------------------------- concurrency


def test_concurrent_search_while_adding(tmp_path):
    kb = KnowledgeBase.open(tmp_path / "kb", HashEmbedder())
    paths = []
    for i in range(12):
        p = tmp_path / f"doc{i}.txt"
        p.write_text(f"Document number {i}. " * 40, encoding="utf-8")
        paths.append(p)
    errors, stop = [], threading.Event()

    def searcher():
        while not stop.is_set():
            try:
                for r in kb.search("Document number 3", top_k=5):
                    assert r.chunk.text
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    writers = [threading.Thread(target=kb.add_files, args=(paths[i::2],)) for i in range(2)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert len(kb.files()) == 12
    assert len(kb) == sum(f["chunks"] for f in kb.files())
    assert len(KnowledgeBase.open(kb.directory, HashEmbedder())) == len(kb)


# --------------------------------------------------------------- kill -9

_CHILD = textwrap.dedent("""
    import sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from pathlib import Path
    from rag_fixtures import HashEmbedder
    from rag import KnowledgeBase
    kb = KnowledgeBase.open({directory!r}, HashEmbedder(), chunk_size=80, chunk_overlap=0)
    work = Path({work!r})
    i = 0
    while True:
        p = work / f"f{{i % 7}}.txt"
        p.write_text(f"round {{i}} of the crash test. " * (5 + i % 11), encoding="utf-8")
        kb.add_files([p])
        victim = f"f{{(i + 3) % 7}}.txt"
        if i % 5 == 4 and victim in [f["name"] for f in kb.files()]:
            kb.delete_file(victim)
        print(i, flush=True)
        i += 1
""")


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
def test_kill_minus_9_at_any_moment_leaves_a_consistent_knowledge_base(tmp_path):
    directory, work = tmp_path / "kb", tmp_path / "work"
    work.mkdir()
    script = _CHILD.format(root=str(TESTS_DIR.parent), tests=str(TESTS_DIR), directory=str(directory),
                           work=str(work))
    for round_, delay in enumerate([0.0, 0.017, 0.041]):
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            for _ in range(3 + round_):  # let it finish a few files, then kill it mid-work
                assert child.stdout.readline(), "child died"
            time.sleep(delay)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            child.stdout.close()
        kb = KnowledgeBase.open(directory, HashEmbedder(), chunk_size=80, chunk_overlap=0)  # checks ids match
        files = kb.files()
        assert files, "finished files must survive"
        assert len(kb) == sum(f["chunks"] for f in files)
        hits = kb.search("round of the crash test", top_k=len(kb))
        assert len(hits) == len(kb)
        assert {r.chunk.source for r in hits} == {f["name"] for f in files}
        generations = [p for p in directory.iterdir() if p.name.startswith("gen-")]
        assert generations  # leftovers may exist; the manifest names a complete one


_CRASHING_CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from pathlib import Path
    import rag.persistence as disk
    from rag_fixtures import HashEmbedder
    from rag import KnowledgeBase

    point, state = {point!r}, {{"armed": False}}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    real_write, real_replace, real_remove = disk.write_json_durably, os.replace, disk.remove_generations_except

    def write_json_durably(path, obj):
        if state["armed"] and point == "mid-generation" and Path(path).name == "chunks.json":
            Path(path).write_text('{{"next_id": 1, "chunks": [', encoding="utf-8")
            die()
        real_write(path, obj)

    def replace(src, dst):
        if state["armed"] and point == "before-manifest" and Path(dst).name == "manifest.json":
            die()
        if state["armed"] and point == "before-copy" and Path(dst).parent.name == "files":
            die()
        real_replace(src, dst)

    def remove_generations_except(directory, keep):
        if state["armed"] and point == "after-manifest":
            die()
        real_remove(directory, keep)

    disk.write_json_durably, os.replace = write_json_durably, replace
    disk.remove_generations_except = remove_generations_except
    kb = KnowledgeBase.open({directory!r}, HashEmbedder(), chunk_size=80, chunk_overlap=0)
    work = Path({work!r})
    for i, text in enumerate(["first file, kept. " * 9, "second file, kept. " * 9, "third file, in flight. " * 9]):
        p = work / f"f{{i}}.txt"
        p.write_text(text, encoding="utf-8")
        state["armed"] = i == 2
        kb.add_files([p])
    sys.exit(3)  # not reached: the child kills itself while adding the third file
""")


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
@pytest.mark.parametrize("point, third_file_kept", [
    ("mid-generation", False),   # new generation half written, manifest untouched
    ("before-manifest", False),  # manifest.json.tmp written, not yet renamed
    ("after-manifest", True),    # committed, old generation not yet removed
    ("before-copy", True),       # committed, the stored copy not yet in files/
])
def test_kill_at_each_step_of_a_commit(tmp_path, point, third_file_kept):
    directory, work = tmp_path / "kb", tmp_path / "work"
    work.mkdir()
    script = _CRASHING_CHILD.format(root=str(TESTS_DIR.parent), tests=str(TESTS_DIR), point=point,
                                    directory=str(directory), work=str(work))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]

    kb = KnowledgeBase.open(directory, HashEmbedder(), chunk_size=80, chunk_overlap=0)
    names = [f["name"] for f in kb.files()]
    assert names == (["f0.txt", "f1.txt", "f2.txt"] if third_file_kept else ["f0.txt", "f1.txt"])
    assert len(kb) == sum(f["chunks"] for f in kb.files())
    assert {r.chunk.source for r in kb.search("file", top_k=len(kb))} == set(names)
    # the stored copy is moved into files/ after the commit, so it is missing
    # in every case; adding the file again completes it
    assert not (directory / "files" / "f2.txt").exists()
    [report] = kb.add_files([work / "f2.txt"])
    assert report.status == "added"
    assert len(kb) == sum(f["chunks"] for f in kb.files())
    assert (directory / "files" / "f2.txt").read_bytes() == (work / "f2.txt").read_bytes()
    assert len([p for p in directory.iterdir() if p.name.startswith("gen-")]) == 1


def test_inconsistent_state_is_reported_not_silently_used(tmp_path):
    from rag import KnowledgeBaseCorruptError

    kb = KnowledgeBase.open(tmp_path / "kb", HashEmbedder())
    src = tmp_path / "a.txt"
    src.write_text("some text for the index", encoding="utf-8")
    kb.add_files([src])
    manifest = json.loads((kb.directory / "manifest.json").read_text())
    (kb.directory / manifest["generation"] / "chunks.json").write_text('{"next_id": 0, "chunks": []}')
    with pytest.raises(KnowledgeBaseCorruptError, match="does not match"):
        KnowledgeBase.open(kb.directory, HashEmbedder())
    manifest["generation"] = "../../elsewhere"
    (kb.directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(KnowledgeBaseCorruptError, match="not a generation folder"):
        KnowledgeBase.open(kb.directory, HashEmbedder())
