"""Named knowledge bases under one folder: create on demand, list, share, delete, refuse bad names."""
from __future__ import annotations

import threading

import pytest

from rag.registry import InvalidKnowledgeBaseName, KnowledgeBaseRegistry, UnknownKnowledgeBase



@pytest.fixture
def registry(tmp_path, embedder):
    return KnowledgeBaseRegistry(tmp_path / "knowledge", embedder)


def test_created_on_demand_listed_and_shared(registry, corpus):
    assert registry.names() == []
    with pytest.raises(UnknownKnowledgeBase, match="upload files to it first"):
        registry.get("manuals")
    kb = registry.get("manuals", create=True)
    kb.add_files([corpus / "deepspeed" / "README.md"])
    assert registry.names() == ["manuals"]
    assert registry.get("manuals") is kb, "one object per knowledge base, shared by every caller"

    reopened = KnowledgeBaseRegistry(registry.root, registry.embedder)
    assert reopened.names() == ["manuals"]
    assert len(reopened.get("manuals")) == len(kb) > 0


def test_concurrent_first_use_opens_once(registry):
    got = []
    threads = [threading.Thread(target=lambda: got.append(registry.get("kb1", create=True))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(kb) for kb in got}) == 1


@pytest.mark.parametrize("name", ["", "../x", "a/b", "..", ".hidden", "-x", "a" * 65, "a..b", "x\x00y"])
def test_bad_names_are_refused(registry, name):
    with pytest.raises(InvalidKnowledgeBaseName, match="invalid knowledge base name"):
        registry.get(name, create=True)
    assert not any(registry.root.parent.glob("x*")), "nothing written outside the knowledge folder"


def test_unicode_names_work(registry):
    assert registry.get("产品手册", create=True).directory.name == "产品手册"
    assert registry.names() == ["产品手册"]


def test_delete_removes_it_entirely(registry, corpus):
    registry.get("old", create=True).add_files([corpus / "deepspeed" / "zero.md"])
    registry.get("keep", create=True)
    registry.delete("old")
    assert registry.names() == ["keep"]
    assert [p.name for p in registry.root.iterdir()] == ["keep"]
    with pytest.raises(UnknownKnowledgeBase):
        registry.delete("old")
