"""The fast paths of ingestion and retrieval behave right (their speed is shown by bench/, not here):

* PDFs are read by pypdfium2, and by pypdf where pypdfium2 fails or gets the text wrong;
* the embedding backend option and batches sized to the device;
* the FAISS index type chosen by size (flat, IVF above a threshold): same results as flat
  on a real knowledge base, deletion, persistence, and the way back to flat.
"""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from rag import embeddings as emb
from rag.loaders import DocumentLoadError, load_file
from rag.store import IVF_NPROBE, KnowledgeBase, build_index, index_ids, ivf_lists

try:  # tests/ is a package (tests/__init__.py); fall back to rootdir-relative import without it
    from tests.rag_fixtures import HashEmbedder, bundled_embedder
except ImportError:  # pragma: no cover
    from rag_fixtures import HashEmbedder, bundled_embedder


def _text(docs) -> str:
    return "\n".join(d.page_content for d in docs)


# --------------------------------------------------------------------- PDFs

def test_pdf_is_read_by_pypdfium2_keeping_symbols_and_plain_letters(corpus):
    docs = load_file(corpus / "pdf" / "GeoTopo-komprimiert.pdf")
    text = _text(docs)
    assert [d.metadata["page"] for d in docs] == list(range(1, 118))
    # pypdf loses these (Greek letters, maths) or writes "ﬁ"/"ﬀ" ligatures that break search
    assert text.count("Definition") > 100 and "γ" in text and "∈" in text and "offen" in text
    assert not re.search("[\ufb00-\ufb06]", text), "no ligature characters"
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f\ufffe]", text), "no control characters or hyphen marks"


def test_pdfium_hyphen_marks_join_the_word_again(corpus):
    text = _text(load_file(corpus / "pdf" / "multicolumn.pdf"))
    assert "adipiscing" in text and "adip-" not in text


def test_right_to_left_pdf_is_read_by_pypdf_in_logical_order(corpus):
    # PDFium returns Arabic in visual (reversed) order; pypdf in logical order
    assert "حَبيبي habibi حَبيبي" in _text(load_file(corpus / "pdf" / "habibi.pdf"))


def test_pypdf_reads_the_pdf_when_pypdfium2_fails(corpus, monkeypatch):
    import pypdfium2
    from langchain_community.document_loaders import PyPDFium2Loader

    def fail(self):
        raise pypdfium2.PdfiumError("Failed to load document (PDFium: Data format error).", err_code=3)

    monkeypatch.setattr(PyPDFium2Loader, "load", fail)
    docs = load_file(corpus / "pdf" / "multicolumn.pdf")
    assert [d.metadata["page"] for d in docs] == [1, 2, 3]
    assert "adip-\niscing" in _text(docs), "pypdf's text (it keeps the line-break hyphen)"


def test_password_pdf_is_still_refused_naming_the_file(corpus):
    with pytest.raises(DocumentLoadError, match=r"^libreoffice-writer-password\.pdf: the PDF is password-protected"):
        load_file(corpus / "pdf" / "libreoffice-writer-password.pdf")


def test_damaged_pdf_is_refused_naming_the_file(tmp_path):
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage without pages\n%%EOF\n")
    with pytest.raises(DocumentLoadError, match=r"^broken\.pdf: "):
        load_file(bad)


# --------------------------------------------------------------- embeddings

def test_batch_size_follows_the_device():
    assert emb.default_batch_size("cpu") == 32
    assert emb.default_batch_size("cuda") == emb.default_batch_size("cuda:1") == 128
    assert emb.default_batch_size("mps") == 32


class _RecordingModel:
    """Stands in for a SentenceTransformer: records the batch size of each encode call."""

    def __init__(self, device: str):
        self.device = device
        self.batch_sizes: list[int] = []

    def get_embedding_dimension(self) -> int:
        return 4

    def encode(self, texts, batch_size, **kwargs):
        self.batch_sizes.append(batch_size)
        return np.ones((len(texts), 4), dtype=np.float32) / 2


def test_embed_documents_uses_the_devices_batch_size():
    gpu = emb.Embedder(_RecordingModel("cuda:0"), "x")
    gpu.embed_documents(["a", "b"])
    gpu.embed_documents(["a"], batch_size=7)
    assert gpu.model.batch_sizes == [128, 7]
    cpu = emb.Embedder(_RecordingModel("cpu"), "x")
    cpu.embed_documents(["a"])
    assert cpu.model.batch_sizes == [32]


def test_knowledge_base_embeds_in_the_embedders_batches(tmp_path):
    class Batched(HashEmbedder):
        batch_size = 128

        def __init__(self):
            super().__init__()
            self.calls: list[int] = []

        def embed_documents(self, texts, batch_size=None, show_progress=False):
            self.calls.append(len(texts))
            return super().embed_documents(texts)

    doc = tmp_path / "many.txt"
    doc.write_text("\n\n".join(f"Paragraph {i} about topic {i % 17}. " * 3 for i in range(300)), encoding="utf-8")
    embedder = Batched()
    kb = KnowledgeBase.open(tmp_path / "kb", embedder, chunk_size=100, chunk_overlap=0)
    kb.add_files([doc])
    assert len(kb) > 256 and embedder.calls[:2] == [128, 128] and sum(embedder.calls) == len(kb)


def test_onnx_backend_that_cannot_load_is_a_clear_error():
    try:
        emb.check_backend("onnx")
    except emb.EmbeddingLoadError as exc:
        message = str(exc)
    else:
        pytest.skip("optimum-onnx works with this transformers: the onnx backend is usable here")
    assert "optimum" in message and "--embedding-backend torch" in message
    with pytest.raises(emb.EmbeddingLoadError, match="optimum"):
        emb.load_embedder("bundled", device="cpu", backend="onnx")


def test_server_refuses_an_unusable_onnx_backend_before_loading_the_chat_model(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    try:
        emb.check_backend("onnx")
    except emb.EmbeddingLoadError:
        pass
    else:
        pytest.skip("optimum-onnx works with this transformers: the onnx backend is usable here")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "run.py", "--embedding-backend", "onnx", "--model-path",
                           str(tmp_path / "no-such-model"), "--knowledge-dir", str(tmp_path / "kb")],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "--embedding-backend torch" in proc.stderr and "no-such-model" not in proc.stderr


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown embedding backend 'tensorflow': use one of torch, onnx"):
        emb.load_embedder("bundled", device="cpu", backend="tensorflow")


def test_embedding_backend_flag():
    from webui.settings import parse_settings

    assert parse_settings([]).embedding_backend == "torch"
    assert parse_settings(["--embedding-backend", "onnx"]).embedding_backend == "onnx"
    assert parse_settings(["--embedding_backend=onnx"]).embedding_backend == "onnx"
    with pytest.raises(SystemExit):
        parse_settings(["--embedding-backend", "openvino"])


# ------------------------------------------------------------ index by size

def test_ivf_lists_rule():
    assert ivf_lists(100_000) == 1264 and ivf_lists(50_000) == 894  # 4 sqrt(n)
    assert ivf_lists(200) == 5 and ivf_lists(10) == 1  # at least 39 training points per list


def test_build_index_flat_and_ivf_hold_the_same_vectors():
    import faiss

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1000, 4000, dtype=np.int64)
    flat = build_index(vectors, ids, 32, approximate=False)
    ivf = build_index(vectors, ids, 32, approximate=True)
    assert isinstance(flat, faiss.IndexIDMap2) and isinstance(ivf, faiss.IndexIVFFlat)
    assert ivf.nlist == ivf_lists(3000) and ivf.nprobe == IVF_NPROBE
    for index in (flat, ivf):
        assert sorted(index_ids(index).tolist()) == ids.tolist()
        np.testing.assert_allclose(index.reconstruct(1234), vectors[234])
        index.remove_ids(np.array([1234], dtype=np.int64))
        assert index.ntotal == 2999 and 1234 not in set(index_ids(index).tolist())
    # approximate, yet close to exact: the true nearest neighbour found for most queries
    _, exact = flat.search(vectors[:200], 1)
    _, approx = ivf.search(vectors[:200], 1)
    assert (exact == approx).mean() > 0.7


@pytest.fixture(scope="module")
def flat_and_ivf(corpus, tmp_path_factory):
    """The same real knowledge base twice: exact (flat) and forced to IVF (threshold 100 chunks)."""
    embedder = bundled_embedder()
    root = tmp_path_factory.mktemp("index-by-size")
    chars = dict(chunk_size=500, chunk_overlap=50, chunk_unit="chars")  # >100 chunks from three files
    flat = KnowledgeBase.open(root / "flat", embedder, **chars)
    flat.add_files([corpus / "deepspeed" / "README.md", corpus / "deepspeed" / "getting-started.md"])
    shutil.copytree(root / "flat", root / "ivf")
    ivf = KnowledgeBase.open(root / "ivf", embedder, approximate_from=100, **chars)
    assert ivf.index_kind == "flat", "opening does not rebuild the index"
    for kb in (flat, ivf):
        kb.add_files([corpus / "deepspeed" / "advanced-install.md"])
    return flat, ivf, embedder


QUERIES = ["How do I install DeepSpeed?", "pip install deepspeed ops ahead of time", "ZeRO optimizer stages",
           "mixed precision training with fp16", "gradient accumulation steps", "如何安装deepspeed"]


def _results(kb, mode="dense"):
    return [[(r.chunk.id, round(r.cosine, 4)) for r in kb.search(q, top_k=3, mode=mode)] for q in QUERIES]


def test_ivf_knowledge_base_agrees_with_flat(flat_and_ivf):
    flat, ivf, _ = flat_and_ivf
    assert len(ivf) == len(flat) > 100
    assert (flat.index_kind, ivf.index_kind) == ("flat", "ivf")
    assert "lists" in ivf.index_description
    for mode in ("dense", "hybrid"):
        assert _results(ivf, mode) == _results(flat, mode)


def test_ivf_knowledge_base_persists_and_deletes(flat_and_ivf):
    flat, ivf, embedder = flat_and_ivf
    assert json.loads((ivf.directory / "manifest.json").read_text())["format_version"] == 2
    assert json.loads((flat.directory / "manifest.json").read_text())["format_version"] == 1
    again = KnowledgeBase.open(ivf.directory, embedder, approximate_from=100, chunk_size=500, chunk_overlap=50,
                               chunk_unit="chars")
    assert again.index_kind == "ivf" and _results(again) == _results(flat)

    for kb in (flat, again):
        assert kb.delete_file("getting-started.md") > 0
    assert again.index_kind == "ivf", "still above half the threshold"
    assert all(r.chunk.source != "getting-started.md" for q in QUERIES for r in again.search(q, top_k=10))
    assert _results(again) == _results(flat)

    again.delete_file("README.md")  # below half the threshold: back to the exact index
    assert again.index_kind == "flat" and len(again) < 50
    assert json.loads((again.directory / "manifest.json").read_text())["format_version"] == 1
    reopened = KnowledgeBase.open(again.directory, embedder, approximate_from=100)
    assert reopened.index_kind == "flat" and _results(reopened) == _results(again)


def test_failed_rebuild_keeps_the_current_index(tmp_path, monkeypatch):
    import rag.stores.faiss as store

    def boom(*args, **kwargs):
        raise RuntimeError("no memory for k-means")

    doc = tmp_path / "many.txt"
    doc.write_text("\n\n".join(f"Paragraph {i} about topic {i % 7}." for i in range(60)), encoding="utf-8")
    kb = KnowledgeBase.open(tmp_path / "kb", HashEmbedder(), chunk_size=40, chunk_overlap=0, approximate_from=10)
    monkeypatch.setattr(store, "build_index", boom)
    assert kb.add_files([doc])[0].status == "added"
    assert kb.index_kind == "flat" and len(kb) >= 10
    hit = kb.search("Paragraph 17 about topic 3.", top_k=1)[0]
    assert hit.chunk.text == "Paragraph 17 about topic 3." and hit.cosine == pytest.approx(1.0)


def test_threshold_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="approximate_from must be an integer >= 1"):
        KnowledgeBase.open(tmp_path / "kb", HashEmbedder(), approximate_from=0)

