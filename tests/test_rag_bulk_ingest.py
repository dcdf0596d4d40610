"""Bulk ingestion saves every N files (``add_files(commit_every=N)``): fewer whole-state
rewrites, and a failed save reports its files refused and leaves the last saved state."""
from __future__ import annotations

import pytest

import rag.persistence as disk
from rag import KnowledgeBase

try:  # tests/ is a package (tests/__init__.py); fall back to rootdir-relative import without it
    from tests.rag_fixtures import HashEmbedder
except ImportError:  # pragma: no cover
    from rag_fixtures import HashEmbedder


@pytest.fixture
def docs(corpus):
    d = corpus / "deepspeed"
    return [d / "README.md", d / "zero.md", d / "getting-started.md", d / "inference-tutorial.md",
            d / "advanced-install.md"]


def count_commits(monkeypatch, fail_on: int | None = None) -> list[int]:
    calls: list[int] = []
    original = KnowledgeBase._commit

    def commit(self):
        calls.append(len(self._files))
        if fail_on is not None and len(calls) == fail_on:
            raise OSError("disk full (simulated)")
        original(self)

    monkeypatch.setattr(KnowledgeBase, "_commit", commit)
    return calls


def test_saves_every_n_files_and_at_the_end(tmp_path, docs, monkeypatch):
    kb = KnowledgeBase.open(tmp_path / "kb", HashEmbedder())
    calls = count_commits(monkeypatch)
    reports = kb.add_files(docs, commit_every=2)
    assert [r.status for r in reports] == ["added"] * 5
    assert calls == [2, 4, 5], "saved after files 2 and 4, and at the end"
    assert sorted(p.name for p in (kb.directory / disk.FILES_DIR).iterdir()) == sorted(p.name for p in docs)
    assert not any((kb.directory / disk.INCOMING_DIR).iterdir())
    again = KnowledgeBase.open(kb.directory, HashEmbedder())
    assert len(again) == len(kb) and len(again.files()) == 5

    calls.clear()
    kb.add_files(docs[:2])
    assert calls == [], "unchanged files: nothing to save"
    with pytest.raises(ValueError, match="commit_every"):
        kb.add_files(docs, commit_every=0)


def test_a_failed_save_refuses_its_batch_and_keeps_the_saved_state(tmp_path, docs, monkeypatch):
    kb = KnowledgeBase.open(tmp_path / "kb", HashEmbedder())
    count_commits(monkeypatch, fail_on=2)
    reports = kb.add_files(docs, commit_every=2)
    assert [r.status for r in reports] == ["added", "added", "refused", "refused", "added"]
    assert "could not be saved (OSError: disk full (simulated))" in reports[2].reason
    assert [f["name"] for f in kb.files()] == ["README.md", "zero.md", "advanced-install.md"]
    again = KnowledgeBase.open(kb.directory, HashEmbedder())
    assert [f["name"] for f in again.files()] == ["README.md", "zero.md", "advanced-install.md"]
    assert {r.chunk.source for r in again.search("DeepSpeed", top_k=len(again), mode="bm25")} == \
        {"README.md", "zero.md", "advanced-install.md"}
    assert sorted(p.name for p in (kb.directory / disk.FILES_DIR).iterdir()) == \
        ["README.md", "advanced-install.md", "zero.md"]
    assert not any((kb.directory / disk.INCOMING_DIR).iterdir())
