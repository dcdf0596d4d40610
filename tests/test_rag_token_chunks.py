"""Chunks measured in the embedding model's own tokens (rag.splitter.chunk_settings), in
Chinese and English, on real documents; characters stay available as a unit; and
`python -m rag reindex` re-embeds a base from its file copies, surviving a kill -9."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rag import KnowledgeBase, make_text_splitter
from rag.evaluation import load_squad
from rag.splitter import chunk_settings

try:  # tests/ is a package (tests/__init__.py); fall back to rootdir-relative import without it
    from tests.rag_fixtures import HashEmbedder, bundled_embedder, offline_embedder
except ImportError:  # pragma: no cover
    from rag_fixtures import HashEmbedder, bundled_embedder, offline_embedder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def e5():
    return offline_embedder()


def _tokens(embedder, text: str) -> int:
    return len(embedder.tokenizer(embedder.passage_prefix + text)["input_ids"])


def test_default_chunks_fit_the_models_maximum_sequence_length(e5):
    size, overlap, unit = chunk_settings(e5)
    assert unit == "tokens" and size + e5.token_overhead() == e5.max_seq_length == 512 and overlap == size // 10
    minilm = bundled_embedder()
    size, _, unit = chunk_settings(minilm)
    assert unit == "tokens" and size + minilm.token_overhead() == minilm.max_seq_length == 256
    assert chunk_settings(HashEmbedder()) == (500, 50, "chars"), "no tokenizer: characters"
    assert chunk_settings(e5, chunk_unit="chars") == (500, 50, "chars")
    with pytest.raises(ValueError, match="--chunk-unit chars"):
        chunk_settings(HashEmbedder(), chunk_unit="tokens")


@pytest.mark.parametrize("language", ["zh", "en"])
def test_every_chunk_of_a_real_document_fits_in_tokens(e5, corpus, language):
    if language == "zh":
        articles, _ = load_squad(corpus / "eval" / "cmrc2018_dev.json")
        text = "\n\n".join(a.text for a in articles[:8])
    else:
        text = (corpus / "deepspeed" / "README.md").read_text(encoding="utf-8")
    splitter = make_text_splitter(120, 12, "tokens", e5.tokenizer)
    chunks = splitter.split_text(text)
    assert len(chunks) > 5
    counts = [_tokens(e5, c) - e5.token_overhead() for c in chunks]
    assert max(counts) <= 120, max(counts)
    assert sum(counts) / len(counts) > 60, "chunks are filled, not cut at every separator"
    by_chars = make_text_splitter(120, 12, "chars").split_text(text)
    assert max(len(c) for c in by_chars) <= 120 and len(by_chars) != len(chunks)


def test_a_knowledge_base_records_its_chunk_unit(e5, corpus, tmp_path):
    kb = KnowledgeBase.open(tmp_path / "kb", e5, chunk_size=200)
    [report] = kb.add_files([corpus / "deepspeed" / "advanced-install.md"])
    manifest = json.loads((tmp_path / "kb" / "manifest.json").read_text(encoding="utf-8"))
    assert (manifest["chunk_size"], manifest["chunk_overlap"], manifest["chunk_unit"]) == (200, 20, "tokens")
    assert report.chunks > 2


_REINDEX = """
import sys
from rag import KnowledgeBase, load_embedder
def on_chunks(name, done, total):
    print("embedding", name, done, total, flush=True)
    if done:
        import time; time.sleep(60)
kb, reports = KnowledgeBase.reindex(sys.argv[1], load_embedder("offline", device="cpu"), on_chunks=on_chunks)
"""


def test_reindex_from_minilm_to_e5_survives_kill_9(corpus, tmp_path, e5):
    kb_dir = tmp_path / "kb"
    old = KnowledgeBase.open(kb_dir, bundled_embedder(), chunk_unit="chars")
    files = [corpus / "deepspeed" / "advanced-install.md"]
    assert [r.status for r in old.add_files(files)] == ["added"]
    before = len(old)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _REINDEX, str(kb_dir)], stdout=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)
    for line in proc.stdout:  # killed after embedding a batch, before the new state is saved
        if line.startswith("embedding") and int(line.split()[2]) > 0:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # the old base is intact: still MiniLM, same chunks
    again = KnowledgeBase.open(kb_dir, bundled_embedder())
    assert len(again) == before and again.embedding_model == bundled_embedder().name
    from rag.store import EmbeddingMismatchError

    with pytest.raises(EmbeddingMismatchError, match="python -m rag reindex --kb kb"):
        KnowledgeBase.open(kb_dir, e5)
    new, reports = KnowledgeBase.reindex(kb_dir, e5)
    assert [r.status for r in reports] == ["added"]
    assert new.embedding_model == e5.name and len(new) > 0
    new = KnowledgeBase.open(kb_dir, e5)
    assert [f["name"] for f in new.files()] == ["advanced-install.md"] and len(new) == reports[0].chunks
    assert any("pip install deepspeed" in r.chunk.text for r in new.search("如何安装deepspeed", top_k=3, mode="hybrid"))
