"""Milvus across processes (issue 12): two servers on one Milvus (the ``milvus-lite``
package's own gRPC server, ``python -m milvus_lite server``, reached over TCP as a Milvus
standalone server would be) see each other's uploads and deletes; and a kill -9 at ten
points of an upload to Milvus Lite leaves the file list and the collection in agreement."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .server_utils import free_port, upload_deepspeed_docs

pytest.importorskip("milvus_lite", reason="pip install milvus-lite (a dependency)")
TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture
def milvus_server(tmp_path):
    """``python -m milvus_lite server`` on a free loopback port -> its ``http://`` uri."""
    port = free_port()
    log = open(tmp_path / "milvus-lite.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(tmp_path / "milvus"),
                             "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while "listening" not in (tmp_path / "milvus-lite.log").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "milvus-lite.log").read_text()
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(30)
    log.close()


def test_two_servers_on_one_milvus_see_each_others_uploads_and_deletes(server, milvus_server, corpus):
    """Upload through one server, find the file through the other's search API, delete it
    through the other: the first no longer lists or finds it, and the entity count pymilvus
    reports drops by exactly its chunks. The servers share ``--knowledge-dir`` (the file
    list and chunk texts live there; each loads what the other committed)."""
    import httpx
    from pymilvus import MilvusClient

    from rag.stores.milvus import collection_name

    flags = ("--vector-store=milvus", f"--milvus-uri={milvus_server}")
    first, second = server(*flags), server(*flags)
    first.wait()
    second.wait()
    listed = upload_deepspeed_docs(corpus, first.url, second.url)  # the second server finds the first's upload
    assert set(listed) == {"README.md", "zero.md"}
    client = MilvusClient(milvus_server)
    name = collection_name("kb", "manuals")

    def entities() -> int:
        return client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"]

    assert entities() == sum(listed.values())

    assert httpx.delete(second.url + "/v1/knowledge/manuals/files/zero.md", timeout=60).status_code == 200
    assert entities() == listed["README.md"], "the delete removed exactly zero.md's chunks"
    after = httpx.get(first.url + "/v1/knowledge/manuals/files", timeout=30).json()["files"]
    assert [f["name"] for f in after] == ["README.md"], "the first server sees the other's delete"
    ask = {"query": "ZeRO optimizer state partitioning", "top_k": 5, "score_threshold": -1}
    hits = httpx.post(first.url + "/v1/knowledge/manuals/search", json=ask, timeout=60).json()["results"]
    assert hits and {h["source"] for h in hits} == {"README.md"}, hits
    client.close()


# ------------------------------------------------------------- kill -9 at ten points

#: Where the upload of [f2.txt (new), f0.txt (new content)] is killed, and the files left
#: after the restart: before f2's commit nothing of it stays; from the manifest's rename on
#: it is kept; a replacement killed before its commit keeps the old f0.txt whole.
POINTS = {
    "embedding": ["f0.txt", "f1.txt"],            # f2 being embedded, nothing written
    "incoming-copy": ["f0.txt", "f1.txt"],        # f2's upload copy written to incoming/
    "mid-insert": ["f0.txt", "f1.txt"],           # half of f2's rows in Milvus
    "after-insert": ["f0.txt", "f1.txt"],         # all of f2's rows in Milvus, no commit yet
    "mid-generation": ["f0.txt", "f1.txt"],       # new generation half written
    "before-manifest": ["f0.txt", "f1.txt"],      # manifest.json.tmp written, not renamed
    "after-manifest": ["f0.txt", "f1.txt", "f2.txt"],  # committed, old generation still there
    "before-copy": ["f0.txt", "f1.txt", "f2.txt"],     # committed, the copy not in files/ yet
    "replace-inserted": ["f0.txt", "f1.txt", "f2.txt"],  # f0's new rows in Milvus, no commit
    "replace-committed": ["f0.txt", "f1.txt", "f2.txt"],  # f0's new version committed
}

_CHILD = textwrap.dedent("""
    import json, os, signal, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from pathlib import Path
    import rag.persistence as disk
    from rag_fixtures import HashEmbedder
    from rag import KnowledgeBase
    from rag.stores import make_store
    from rag.stores.milvus import MilvusVectorStore

    check, point, work = {check!r}, {point!r}, Path({work!r})
    state = {{"armed": False, "adds": 0}}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def open_kb(name):
        return KnowledgeBase.open(work / name, HashEmbedder(), chunk_size=80, chunk_overlap=0,
                                  store_factory=lambda dim: make_store("milvus", uri=str(work / "milvus.db"),
                                                                       collection="kb_" + name.replace("-", "_"),
                                                                       dim=dim))

    if check:  # the restart after the last point: what recovery left
        kb = open_kb(check)
        files = kb.files()
        hits = kb.search("file", top_k=max(len(kb), 1), score_threshold=None)
        print(json.dumps({{"files": {{f["name"]: [f["chunks"], f["sha256"]] for f in files}},
                          "chunks": sorted(kb._chunks), "stored": sorted(kb._store.ids().tolist()),
                          "count": kb._store.count(), "sources": sorted({{h.chunk.source for h in hits}})}}),
              flush=True)
    if not point:
        sys.exit(0)

    real = {{"embed": HashEmbedder.embed_documents, "bytes": disk.write_bytes_durably, "json": disk.write_json_durably,
             "replace": os.replace, "remove": disk.remove_generations_except, "add": MilvusVectorStore.add}}

    def embed_documents(self, texts, *a, **k):
        if state["armed"] and point == "embedding":
            die()
        return real["embed"](self, texts, *a, **k)

    def write_bytes_durably(path, data):
        real["bytes"](path, data)
        if state["armed"] and point == "incoming-copy" and Path(path).parent.name == "incoming":
            die()

    def write_json_durably(path, obj):
        if state["armed"] and point == "mid-generation" and Path(path).name == "chunks.json":
            Path(path).write_text('{{"next_id": 1, "chunks": [', encoding="utf-8")
            die()
        real["json"](path, obj)

    def replace(src, dst):
        if state["armed"] and point == "before-manifest" and Path(dst).name == "manifest.json":
            die()
        if state["armed"] and point == "before-copy" and Path(dst).parent.name == "files":
            die()
        real["replace"](src, dst)

    def remove_generations_except(directory, keep):
        if state["armed"] and point in ("after-manifest", "replace-committed") and state["adds"] == (
                1 if point == "after-manifest" else 2):
            die()
        real["remove"](directory, keep)

    def add(self, ids, vectors, chunks=None):
        state["adds"] += state["armed"]
        if state["armed"] and point == "mid-insert":
            half = len(ids) // 2
            real["add"](self, ids[:half], vectors[:half], chunks[:half])
            die()
        real["add"](self, ids, vectors, chunks)
        if state["armed"] and (point, state["adds"]) in (("after-insert", 1), ("replace-inserted", 2)):
            die()

    HashEmbedder.embed_documents, disk.write_bytes_durably, disk.write_json_durably = (
        embed_documents, write_bytes_durably, write_json_durably)
    os.replace, disk.remove_generations_except, MilvusVectorStore.add = replace, remove_generations_except, add

    kb = open_kb(point)
    texts = {{"f0.txt": "first file, old version. " * 12, "f1.txt": "second file, kept. " * 12}}
    for name, text in texts.items():
        (work / name).write_text(text, encoding="utf-8")
    assert [r.status for r in kb.add_files([work / n for n in texts])] == ["added", "added"]
    (work / "f2.txt").write_text("third file, in flight. " * 12, encoding="utf-8")
    (work / "new-f0.txt").write_text("first file, new version. " * 12, encoding="utf-8")
    state["armed"] = True
    kb.add_files([work / "f2.txt", work / "new-f0.txt"], names=["f2.txt", "f0.txt"])
    sys.exit(3)  # not reached: the child kills itself during the upload
""")


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
def test_kill_minus_9_at_ten_points_of_an_upload_to_milvus_lite(tmp_path):
    """Each point is one child process that kills itself there (Milvus Lite runs in it);
    the next child starts over the same Milvus Lite file, as a restarted server would,
    and reports what recovery left: the file list, the chunks, the ids in the collection
    and pymilvus's ``count(*)`` agree, and search finds exactly the listed files."""
    import hashlib

    def child(check: str, point: str) -> subprocess.CompletedProcess:
        script = _CHILD.format(root=str(TESTS_DIR.parent), tests=str(TESTS_DIR), check=check, point=point,
                               work=str(tmp_path))
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)

    old_f0 = hashlib.sha256(("first file, old version. " * 12).encode()).hexdigest()
    previous = ""
    for point in [*POINTS, ""]:
        result = child(previous, point)
        assert result.returncode == (-signal.SIGKILL if point else 0), (point, result.stderr[-3000:])
        if previous:
            state = json.loads(result.stdout.splitlines()[0])
            assert sorted(state["files"]) == POINTS[previous], (previous, state["files"])
            assert state["stored"] == state["chunks"], f"{previous}: collection and chunk list differ"
            assert state["count"] == len(state["chunks"]) == sum(c for c, _ in state["files"].values()), previous
            assert state["sources"] == POINTS[previous], previous
            f0_kept_old = previous != "replace-committed"
            assert (state["files"]["f0.txt"][1] == old_f0) is f0_kept_old, previous
        previous = point
