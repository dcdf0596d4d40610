"""The knowledge-base level of ``bench/retrieval.py``: chunks ingested through
``KnowledgeBase.add_files`` on one vector store (FAISS or Milvus Lite), then
``KnowledgeBase.search`` timed per retrieval mode."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from bench.common import percentile


def measure_kb(texts: list[str], embedder, queries: list[str], workdir: Path, warmup: int,
               vector_store: str = "faiss", modes: Sequence[str] = ("dense", "hybrid")) -> dict[str, Any]:
    """Ingest ``texts`` (one paragraph per chunk) through ``add_files`` into a knowledge base on
    ``vector_store`` ("faiss", or "milvus": Milvus Lite in a file of ``workdir``); ingestion
    seconds and chunks/s, search latency p50/p95 (ms) per mode of ``modes``."""
    from rag.store import KnowledgeBase

    folder = Path(tempfile.mkdtemp(dir=workdir))
    files = []
    per_file = 5000
    for start in range(0, len(texts), per_file):
        path = folder.parent / f"{folder.name}-part{start // per_file:04d}.txt"
        path.write_text("\n\n".join(texts[start:start + per_file]), encoding="utf-8")
        files.append(path)
    factory = None
    if vector_store == "milvus":
        from rag.stores import make_store

        def factory(dim: int):
            return make_store("milvus", uri=str(folder / "milvus.db"), collection="kb_bench", dim=dim)
    start = time.perf_counter()
    kb = KnowledgeBase.open(folder / "kb", embedder, chunk_size=500, chunk_overlap=50, chunk_unit="chars",
                            store_factory=factory)  # one paragraph a chunk
    reports = kb.add_files(files, commit_every=len(files))
    ingest = time.perf_counter() - start
    bad = [r.reason for r in reports if r.status != "added"]
    if bad:
        raise RuntimeError(f"ingestion failed: {bad}")
    row: dict[str, Any] = {"vector_store": vector_store, "chunks": len(kb), "ingest_s": ingest,
                           "chunks_per_s": len(kb) / ingest, "index": kb.index_description}
    for mode in modes:
        for q in queries[:warmup]:
            kb.search(q, top_k=3, mode=mode)
        times = []
        for q in queries:
            t0 = time.perf_counter()
            kb.search(q, top_k=3, mode=mode)
            times.append((time.perf_counter() - t0) * 1000)
        row[mode] = {"p50_ms": percentile(times, 50), "p95_ms": percentile(times, 95)}
    kb._store.close()
    return row
