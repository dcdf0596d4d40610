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
