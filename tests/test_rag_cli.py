"""``python -m rag``: ingest (folders walked recursively), search, list, delete and eval,
run through ``main([...])`` (with the session's embedding model, to save loading it
again) and once as a real subprocess."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rag.cli as cli
import rag.cli.common as cli_common

try:  # tests/ is a package (tests/__init__.py); fall back to rootdir-relative import without it
    from tests.rag_fixtures import HashEmbedder
except ImportError:  # pragma: no cover
    from rag_fixtures import HashEmbedder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(monkeypatch, embedder):
    """``run(*argv) -> (status, stdout)``; the embedding model is the session's bundled one."""
    loaded = []

    def fake_load(name=None, device=None):
        loaded.append(name)
        return HashEmbedder() if name == "hash" else embedder

    monkeypatch.setattr(cli_common, "load_embedder", fake_load)

    def _run(*argv):
        out = io.StringIO()
        status = cli.main(list(argv), out=out)
        return status, out.getvalue()

    _run.loaded = loaded
    return _run


@pytest.fixture
def tree(tmp_path, corpus):
    """docs/ with nested folders, a hidden folder and an unsupported file."""
    docs = tmp_path / "docs"
    (docs / "guides" / "deep").mkdir(parents=True)
    (docs / ".cache").mkdir()
    shutil.copy(corpus / "deepspeed" / "advanced-install.md", docs / "guides" / "advanced-install.md")
    shutil.copy(corpus / "deepspeed" / "zero.md", docs / "guides" / "deep" / "zero.md")
    shutil.copy(corpus / "docx" / "test.docx", docs / "test.docx")
    shutil.copy(corpus / "deepspeed" / "README.md", docs / ".cache" / "README.md")
    (docs / "notes.xyz").write_text("not a document", encoding="utf-8")
    return docs


def test_ingest_list_search_delete(run, tree, tmp_path, corpus):
    kdir = str(tmp_path / "knowledge")
    status, out = run("ingest", str(tree), str(corpus / "pdf" / "libreoffice-writer-password.pdf"),
                      "--kb", "manuals", "--knowledge-dir", kdir, "--no-progress")
    assert status == 1, "a refused file makes the exit status 1"
    lines = out.splitlines()
    added = sorted(line.split()[1] for line in lines if line.startswith("added"))
    assert added == ["advanced-install.md", "test.docx", "zero.md"], "recursive, no hidden folder, no .xyz"
    assert any(line.startswith("refused") and "password" in line for line in lines)
    assert "3 added" in lines[-1] and "1 refused" in lines[-1]

    status, out = run("ingest", str(tree), "--kb", "manuals", "--knowledge-dir", kdir, "--no-progress")
    assert status == 0 and out.count("skipped") == 3 and "3 unchanged" in out

    status, out = run("list", "--kb", "manuals", "--knowledge-dir", kdir)
    assert status == 0 and "3 files" in out.splitlines()[0]
    row = next(line for line in out.splitlines() if line.startswith("zero.md"))
    assert f"{(tree / 'guides' / 'deep' / 'zero.md').stat().st_size} bytes" in row and "chunks" in row and "added 20" in row
    status, out = run("list", "--knowledge-dir", kdir, "--json")
    assert status == 0 and [kb["name"] for kb in json.loads(out)] == ["manuals"]

    status, out = run("search", "How do I install DeepSpeed from source?", "--kb", "manuals",
                      "--knowledge-dir", kdir, "--top-k", "2")
    assert status == 0 and out.startswith("[1] advanced-install.md · hybrid score")
    status, out = run("search", "DS_BUILD_CPU_LION", "--kb", "manuals", "--knowledge-dir", kdir,
                      "--mode", "bm25", "--json")
    results = json.loads(out)
    assert "DS_BUILD_CPU_LION" in results[0]["text"] and results[0]["retriever"] == "bm25"
    assert set(results[0]["scores"]) == {"cosine", "bm25", "coverage", "relevance"}
    assert run.loaded[-1] == "sentence-transformers/all-MiniLM-L6-v2", \
        "without --embedding-model, the model the knowledge base records is used"

    status, out = run("delete", "zero.md", "--kb", "manuals", "--knowledge-dir", kdir)
    assert status == 0 and out.startswith("deleted zero.md (")
    status, out = run("list", "--kb", "manuals", "--knowledge-dir", kdir, "--json")
    assert sorted(f["name"] for f in json.loads(out)) == ["advanced-install.md", "test.docx"]


def test_errors_name_the_fix(run, tmp_path, capsys, tree):
    kdir = str(tmp_path / "knowledge")
    assert run("search", "x", "--kb", "nothing", "--knowledge-dir", kdir)[0] == 2
    assert "no knowledge base named 'nothing'" in capsys.readouterr().err
    assert run("list", "--kb", "../etc", "--knowledge-dir", kdir)[0] == 2
    assert "invalid knowledge base name" in capsys.readouterr().err
    run("ingest", str(tree / "test.docx"), "--kb", "k", "--knowledge-dir", kdir, "--no-progress")
    assert run("delete", "nope.md", "--kb", "k", "--knowledge-dir", kdir)[0] == 2
    assert "no file named 'nope.md'" in capsys.readouterr().err
    assert run("search", "x", "--kb", "k", "--knowledge-dir", kdir, "--embedding-model", "hash")[0] == 2
    err = capsys.readouterr().err
    assert "was built with embedding model 'sentence-transformers/all-MiniLM-L6-v2'" in err
    assert "'test/hash-embedder'" in err and "--embedding-model" in err
    with pytest.raises(SystemExit) as info:
        run("search")
    assert info.value.code == 2


def test_same_name_twice_in_a_batch_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for sub in ("a", "b"):
        (tmp_path / sub / "README.md").write_text(f"readme {sub}", encoding="utf-8")
    files, refused = cli.collect_files([tmp_path, tmp_path / "missing.md"])
    assert files == [tmp_path / "a" / "README.md"]
    assert [r.name for r in refused] == [str(tmp_path / "b" / "README.md"), str(tmp_path / "missing.md")]
    assert "also named 'README.md'" in refused[0].reason and "no such file" in refused[1].reason


def test_eval_command_on_a_cmrc_sample(run, tmp_path, corpus):
    out_json = tmp_path / "report.json"
    status, out = run("eval", str(corpus / "eval" / "cmrc2018_dev.json"), "--articles", "6", "--limit", "20",
                      "--modes", "dense,bm25,hybrid,rrf,hybrid+rerank", "--no-progress", "--json-out", str(out_json))
    assert status == 0
    assert "6 documents" in out and "20 questions" in out and "| mode | hit@1 | hit@5 | MRR@10 |" in out
    report = json.loads(out_json.read_text(encoding="utf-8"))
    rows = {r["mode"]: r for r in report["results"]}
    assert list(rows) == ["dense", "bm25", "hybrid", "rrf", "hybrid+rerank"]
    for mode in ("dense", "bm25", "hybrid", "rrf"):
        r = rows[mode]
        assert r["questions"] == 20 and 0 <= r["hit1"] <= r["hit5"] <= 1 and r["hit1"] <= r["mrr"] <= 1
        assert r["query_ms"] > 0
    assert rows["hybrid"]["hit5"] >= 0.9
    assert rows["hybrid+rerank"]["note"] == "not measured: no --reranker-model given"
    assert report["ingest_s"] > 0 and report["chunks"] >= 6

    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    assert run("eval", str(bad), "--no-progress")[0] == 2
    assert run("eval", str(corpus / "eval" / "cmrc2018_dev.json"), "--modes", "sparse", "--no-progress")[0] == 2


def test_eval_on_milvus_reuses_a_base_migrated_there_and_finds_the_same(run, tmp_path, corpus):
    """``eval --keep-kb`` on FAISS, ``migrate --to milvus``, ``eval --reuse-kb`` on Milvus Lite
    (the backend the base records): same chunks, same figures, nothing embedded again."""
    pytest.importorskip("milvus_lite")
    data, kb = str(corpus / "eval" / "cmrc2018_dev.json"), tmp_path / "knowledge" / "cmrc"
    reports = []
    for backend in ("faiss", "milvus"):
        if backend == "milvus":
            assert run("migrate", "--knowledge-dir", str(kb.parent), "--kb", "cmrc", "--to", "milvus",
                       "--no-progress")[0] == 0
        out_json = tmp_path / f"{backend}.json"
        status, out = run("eval", data, "--articles", "2", "--limit", "10", "--modes", "dense,hybrid", "--no-progress",
                          "--keep-kb", str(kb), *(["--reuse-kb"] if backend == "milvus" else []),
                          "--json-out", str(out_json))
        assert status == 0 and f"vector store {backend}" in out
        reports.append(json.loads(out_json.read_text(encoding="utf-8")))
    faiss, milvus = reports
    assert milvus["vector_store"] == "milvus" and milvus["chunks"] == faiss["chunks"] >= 2
    assert milvus["reused"] and not faiss["reused"], "the Milvus run embedded no document"
    assert json.loads((kb / "manifest.json").read_text(encoding="utf-8"))["vector_store"] == "milvus"
    for a, b in zip(faiss["results"], milvus["results"]):
        assert (b["mode"], b["hit1"], b["hit5"]) == (a["mode"], a["hit1"], a["hit5"])
        assert b["mrr"] == pytest.approx(a["mrr"], abs=1e-3)
    assert run("eval", data, "--articles", "2", "--limit", "5", "--no-progress", "--keep-kb", str(kb), "--reuse-kb",
               "--vector-store", "faiss")[0] == 2, "a Milvus base opened as FAISS is refused"


def test_default_knowledge_dir_is_the_servers():
    from webui.settings import DEFAULT_KNOWLEDGE_DIR

    assert cli.DEFAULT_KNOWLEDGE_DIR == DEFAULT_KNOWLEDGE_DIR


def test_python_dash_m_rag_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rag", "list", "--knowledge-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"no knowledge bases in {tmp_path}"
    proc = subprocess.run([sys.executable, "-m", "rag", "ingest"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 2 and "PATH" in proc.stderr
