"""The vector-store backends behind one interface (issue 12): the same behaviour from
FAISS and Milvus (Milvus Lite, in process): add, dense query, delete, vectors, count;
keyword and hybrid queries inside Milvus over jieba tokens."""
from __future__ import annotations

import numpy as np
import pytest

from rag.stores import QueryMode, StoredChunk, VectorStoreQuery, make_store
from rag.stores.base import VectorStore

TEXTS = ["安装 DeepSpeed：pip install deepspeed", "ZeRO 将优化器状态切分到各个数据并行进程",
         "The inference engine serves large models", "流水线并行把模型的层分到多个设备"]


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(params=["faiss", "milvus"])
def store(request, tmp_path) -> VectorStore:
    if request.param == "faiss":
        made = make_store("faiss", dim=8)
    else:
        pytest.importorskip("milvus_lite", reason="pip install milvus-lite (a dependency)")
        made = make_store("milvus", uri=str(tmp_path / "milvus.db"), collection="kb_test", dim=8)
    yield made
    made.close()


def test_add_query_delete_and_count(store):
    rng = np.random.default_rng(0)
    vectors = unit(rng.normal(size=(4, 8)))
    ids = np.array([10, 11, 12, 13], dtype=np.int64)
    store.add(ids, vectors, [StoredChunk(int(i), t, f"f{int(i) % 2}.md") for i, t in zip(ids, TEXTS)])
    assert store.count() == 4 and sorted(store.ids().tolist()) == [10, 11, 12, 13]
    hits = store.query(VectorStoreQuery(vector=vectors[2], top_k=2))
    assert hits.ids[0] == 12 and hits.scores[0] == pytest.approx(1.0, abs=1e-4) and len(hits.ids) == 2
    np.testing.assert_allclose(store.vectors([13, 10]), vectors[[3, 0]], atol=1e-6)
    store.delete([12, 99])
    assert store.count() == 3 and 12 not in store.query(VectorStoreQuery(vector=vectors[2], top_k=4)).ids
    with pytest.raises(KeyError):
        store.vectors([12])


def test_capabilities_say_what_the_backend_does(store):
    vectors = unit(np.eye(4, 8, dtype=np.float32) + 0.01)
    store.add(np.arange(4), vectors, [StoredChunk(i, t, "a.md" if i < 2 else "b.md") for i, t in enumerate(TEXTS)])
    keyword = VectorStoreQuery(text="如何安装deepspeed", vector=vectors[1], top_k=3, mode=QueryMode.KEYWORD)
    if not store.native_keyword:
        assert store.stores_text is False
        with pytest.raises(ValueError, match="dense"):
            store.query(keyword)
        return
    assert store.stores_text is True
    assert store.query(keyword).ids[0] == 0, "BM25 over jieba tokens finds the install chunk"
    hybrid = store.query(VectorStoreQuery(text="如何安装deepspeed", vector=vectors[1], top_k=4, mode=QueryMode.HYBRID))
    assert set(hybrid.ids[:2]) == {0, 1}, "fused: the keyword hit and the dense hit first"
    only_b = store.query(VectorStoreQuery(vector=vectors[0], top_k=4, sources=["b.md"]))
    assert set(only_b.ids) == {2, 3}
    assert [c.text for c in store.chunks([1])] == [TEXTS[1]]


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(ValueError, match="faiss, milvus"):
        make_store("qdrant", dim=8)


def test_milvus_collection_of_another_dimension_is_refused(tmp_path):
    pytest.importorskip("milvus_lite")
    first = make_store("milvus", uri=str(tmp_path / "m.db"), collection="kb_dim", dim=8)
    with pytest.raises(ValueError, match="another embedding model"):
        make_store("milvus", uri=str(tmp_path / "m.db"), collection="kb_dim", dim=16, client=first.client)
    first.close()


def test_server_on_milvus_answers_restarts_deletes_and_recovers_from_kill_9(server, corpus, tmp_path):
    """``--vector-store milvus`` (Milvus Lite file): upload, the install question, a restart,
    a delete that lowers the entity count pymilvus reports, and a kill -9 mid-upload after
    which the file list and the collection agree."""
    import signal
    import threading
    import time

    import httpx

    from .server_utils import INSTALL_QUESTION, upload_deepspeed_docs

    pytest.importorskip("milvus_lite")
    uri = str(tmp_path / "milvus.db")
    flags = ("--vector-store=milvus", f"--milvus-uri={uri}")
    srv = server(*flags)
    srv.wait()
    chunks = upload_deepspeed_docs(corpus, srv.url, srv.url)
    srv.stop()

    import subprocess
    import sys

    from rag.stores.milvus import collection_name
    name = collection_name("kb", "manuals")

    def entities() -> int:
        """The entity count pymilvus reports, from a process of its own (Milvus Lite locks its
        file for the process that opened it, until that process ends)."""
        code = ("from pymilvus import MilvusClient; import sys; c = MilvusClient(sys.argv[1]); "
                "print(c.query(sys.argv[2], filter='', output_fields=['count(*)'])[0]['count(*)'])")
        out = subprocess.run([sys.executable, "-c", code, uri, name], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.strip().splitlines()[-1])

    assert entities() == sum(chunks.values())
    again = server(*flags)
    again.wait()
    hits = httpx.post(again.url + "/v1/knowledge/manuals/search", json=INSTALL_QUESTION, timeout=60).json()["results"]
    assert any("pip install deepspeed" in h["text"] for h in hits), "after a restart too"
    assert httpx.delete(again.url + "/v1/knowledge/manuals/files/zero.md", timeout=60).status_code == 200
    again.stop()
    assert entities() == chunks["README.md"], "the delete removed exactly zero.md's chunks from Milvus"
    again = server(*flags)
    again.wait()

    # kill -9 in the middle of a batch
    batch = [("files", (f"copy-{i}.md", (corpus / "deepspeed" / "README.md").read_bytes() + f"\n{i}\n".encode()))
             for i in range(6)]
    threading.Thread(target=lambda: httpx.post(again.url + "/v1/knowledge/manuals/files", files=batch,
                                               timeout=600), daemon=True).start()
    deadline = time.monotonic() + 120
    while "copy-1.md: embedded" not in again.output() and "copy-1.md: added" not in again.output():
        assert time.monotonic() < deadline, again.output()[-2000:]
        time.sleep(0.1)
    again.proc.send_signal(signal.SIGKILL)
    again.proc.wait(30)

    third = server(*flags)
    third.wait()
    listed = httpx.get(third.url + "/v1/knowledge/manuals/files", timeout=30).json()["files"]
    assert "zero.md" not in {f["name"] for f in listed}
    third.stop()
    assert entities() == sum(f["chunks"] for f in listed), "the file list and the collection agree"


def test_migrate_to_milvus_and_back_without_re_embedding(tmp_path, corpus, embedder, monkeypatch):
    """``python -m rag migrate``: FAISS -> Milvus -> FAISS keeps every chunk and answers the
    same; the embedder is never called while moving."""
    pytest.importorskip("milvus_lite")
    import rag.cli as cli
    import rag.cli.common as cli_common
    from rag.registry import KnowledgeBaseRegistry

    kdir = tmp_path / "knowledge"
    registry = KnowledgeBaseRegistry(kdir, embedder)
    kb = registry.get("docs", create=True)
    assert [r.status for r in kb.add_files([corpus / "deepspeed" / "README.md"])] == ["added"]
    before = [h.chunk.id for h in kb.search("How do I install DeepSpeed?", top_k=3, mode="hybrid")]
    total = len(kb)
    monkeypatch.setattr(cli_common, "embedder_for", lambda directory, requested: CountingEmbedder(embedder))

    def run(*args: str) -> tuple[int, str]:
        import io
        out = io.StringIO()
        return cli.main(["migrate", "--kb", "docs", f"--knowledge-dir={kdir}", "--no-progress", *args], out), \
            out.getvalue()

    assert run("--to", "milvus") == (0, f"docs: {total} chunk(s) moved to milvus\n")
    assert CountingEmbedder.documents == 0, "no chunk was embedded again"
    assert cli_common.recorded_store(kdir / "docs") == "milvus"
    on_milvus = KnowledgeBaseRegistry(kdir, embedder, vector_store="milvus").get("docs")
    assert len(on_milvus) == total and on_milvus._store.count() == total
    assert [h.chunk.id for h in on_milvus.search("How do I install DeepSpeed?", top_k=3, mode="hybrid")] == before
    with pytest.raises(Exception, match="--vector-store milvus"):
        KnowledgeBaseRegistry(kdir, embedder).get("docs")
    on_milvus._store.close()

    assert run("--to", "milvus")[0] == 2, "already there: a clear error"
    assert run("--to", "faiss")[0] == 0
    back = KnowledgeBaseRegistry(kdir, embedder).get("docs")
    assert len(back) == total and [h.chunk.id for h in back.search("How do I install DeepSpeed?", top_k=3,
                                                                     mode="hybrid")] == before


class CountingEmbedder:
    """Wraps an embedder and counts the documents it embeds."""

    documents = 0

    def __init__(self, inner):
        self.inner, self.name, self.dim = inner, inner.name, inner.dim

    def embed_documents(self, texts):
        CountingEmbedder.documents += len(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text):
        return self.inner.embed_query(text)
