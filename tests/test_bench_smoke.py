"""The benchmarks run (smoke sizes): CI keeps them working; their figures live in docs/benchmarks.md."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .server_utils import ROOT

pytestmark = pytest.mark.slow


def test_serving_benchmark_smoke(tmp_path):
    out = tmp_path / "serving.json"
    proc = subprocess.run([sys.executable, "bench/serving.py", "--cpu", "--smoke", f"--out={out}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1",
                               "CHATLLM_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [row["users"] for row in result["served"]] == [1, 2]
    assert all(row["tokens_per_stream"] == [8] for row in result["served"]), "every stream ran to max_tokens"
    assert [row["users"] for row in result["plain_generate"]["queued"]] == [1, 2]
    assert result["overhead"]["ratio"] > 0 and result["machine"]["cores"] >= 1


# --------------------------------------------- ingestion and retrieval (in-process: faster)

def test_ingestion_benchmark_smoke(corpus, tmp_path):
    from bench import ingestion

    out = tmp_path / "ingestion.json"
    result = ingestion.main(["--smoke", f"--corpus={corpus}", f"--out={out}"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    ours, lc = result["ours"], result["langchain"]
    assert ours["chunks"] > 10 and lc["chunks"] > 10
    assert ours["files_refused"] == 0
    assert ours["reingest_skipped"] == ours["reopen_skipped"] == len(result["files"]) == 2, \
        "unchanged files are skipped on re-ingestion, also after re-opening the knowledge base"
    assert ours["seconds"] > 0 and lc["seconds"] > 0 and ours["reingest_fraction"] >= 0


def test_retrieval_benchmark_smoke(corpus, tmp_path, monkeypatch):
    from bench import retrieval

    monkeypatch.setenv("CHATLLM_CACHE_DIR", str(tmp_path / "cache"))  # the pool-vector cache
    pytest.importorskip("milvus_lite")
    result = retrieval.main(["--smoke", "--vector-store=faiss,milvus", f"--corpus={corpus}",
                             f"--out={tmp_path / 'retrieval.json'}"])
    assert [row["chunks"] for row in result["sizes"]] == [100, 500]
    for row in result["sizes"]:
        flat = row["faiss"][0]
        assert flat["index"] == "flat" and flat["recall@10"] == 1.0
        assert {r["index"].split()[0] for r in row["faiss"]} >= {"flat", "hnsw"}
        assert all(0 <= r["recall@10"] <= 1 and r["p95_ms"] >= r["p50_ms"] > 0 for r in row["faiss"])
        assert set(row["knowledge_base"]) == {"faiss", "milvus"}, "both stores, side by side"
        for kb in row["knowledge_base"].values():
            assert kb["chunks"] == row["chunks"], "each synthetic paragraph is one chunk"
            assert kb["chunks_per_s"] > 0 and kb["dense"]["p50_ms"] > 0 and kb["hybrid"]["p50_ms"] > 0
    assert list((tmp_path / "cache").glob("bench-retrieval-pool-*.npy")), "pool vectors cached"


def test_pdf_parsing_benchmark_smoke(corpus, tmp_path):
    from bench import pdf_parsing

    result = pdf_parsing.main(["--smoke", f"--corpus={corpus / 'pdf'}", f"--out={tmp_path / 'pdf.json'}"])
    assert sorted(f["file"] for f in result["files"]) == sorted(pdf_parsing.SMOKE_FILES)
    for row in result["files"]:
        assert row["pypdf"]["pages"] == row["pypdfium2"]["pages"] >= 1
        assert row["comparison"]["word_jaccard"] > 0.9, "both libraries read these simple PDFs alike"
    assert result["total"]["pypdfium2"]["pages"] == 5


def test_embedding_benchmark_smoke(corpus, tmp_path):
    from bench import embedding

    result = embedding.main(["--smoke", f"--corpus={corpus}", f"--out={tmp_path / 'embedding.json'}"])
    rows = {r["variant"]: r for r in result["rows"]}
    assert rows["torch fp32"]["chunks_per_s"] > 0 and rows["torch fp32"]["speedup_vs_torch"] == 1.0
    assert "error" in rows["sentence-transformers onnx"] or rows["sentence-transformers onnx"]["cosine_min"] > 0.99
    if "onnxruntime fp32" in rows:  # only with the bench extra installed
        assert rows["onnxruntime fp32"]["cosine_min"] > 0.999, "the exported model computes the same vectors"
        assert rows["onnxruntime int8"]["cosine_mean"] < 1.0, "the int8 model really is a different model"


def test_loaders_benchmark_smoke(corpus, tmp_path):
    from bench import loaders

    result = loaders.main(["--smoke", f"--corpus={corpus}", f"--out={tmp_path / 'loaders.json'}"])
    rows = {row["file"]: row for row in result["files"]}
    assert set(rows) == set(loaders.SMOKE_FILES)
    assert all(row["documents"] > 0 and row["seconds"] > 0 for row in rows.values())
    assert rows["ocr/ch_en_num.jpg"]["ocr_pages"] == 1 and rows["office/test.xlsx"]["ocr_pages"] == 0


def test_embedding_models_benchmark_smoke(tmp_path):
    from bench import embedding_models

    result = embedding_models.main(["--smoke", f"--out={tmp_path / 'models.json'}"])
    rows = {row["model"]: row for row in result["rows"]}
    assert set(rows) == {"bge-small-zh-v1.5", "all-MiniLM-L6-v2"}
    assert rows["bge-small-zh-v1.5"]["parameters_m"] == pytest.approx(24, abs=1), "the hub configuration, built"
    assert rows["all-MiniLM-L6-v2"]["parameters_m"] == pytest.approx(22.7, abs=0.5), "the real packaged weights"
    for row in rows.values():
        cell = row["len32"]
        assert cell["tokens"] == 32 and not cell["truncated"]
        assert cell["ms_per_chunk"] > 0 and cell["passages_per_s"] == pytest.approx(1000 / cell["ms_per_chunk"], rel=0.01)
        assert row["peak_rss_mb"] > 100


def test_retrieval_api_benchmark_smoke(corpus, tmp_path):
    """The real server with default flags and an empty model cache, 3 CMRC articles over the API
    (hub switched off: no network outside loopback in tests)."""
    out = tmp_path / "retrieval_api.json"
    proc = subprocess.run([sys.executable, "bench/retrieval_api.py", str(corpus / "eval" / "cmrc2018_dev.json"),
                           "--smoke", "--hub-offline", f"--workdir={tmp_path / 'work'}", f"--out={out}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**__import__("os").environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ingestion"]["files_added"] == 3 and result["ingestion"]["chunks"] >= 3
    row = result["modes"]["default"]
    assert row["questions"] == len(row["first_hit_ranks"]) > 0
    assert 0 <= row["hit@1"] <= row["hit@5"] <= 1 and row["no_passage"] is not None
    assert (tmp_path / "work" / "cache" / "chatllm").is_dir(), "a fresh model cache, inside the workdir"


def test_detokenize_benchmark_smoke(tmp_path):
    from bench import detokenize

    result = detokenize.main(["--lengths=16,64", f"--out={tmp_path / 'detok.json'}"])
    assert [row["answer_tokens"] for row in result["rows"]] == [16, 64]
    assert all(row["decode_all_us_per_token"] > 0 and row["incremental_us_per_token"] > 0 for row in result["rows"])
    assert json.loads((tmp_path / "detok.json").read_text())["benchmark"] == "detokenize"


def test_serving_ab_benchmark_smoke(tmp_path, monkeypatch):
    from bench import serving_ab

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = serving_ab.main(["--users=2", "--rounds=2", "--prompt-tokens=32", "--new-tokens=8",
                              f"--out={tmp_path / 'ab.json'}"])
    assert set(result["rows"]) == {"off", "auto"}
    assert all(len(row["total_tps"]) == 2 and row["median"] > 0 for row in result["rows"].values())
