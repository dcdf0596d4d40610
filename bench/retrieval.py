"""Retrieval latency as the store grows (issue 6, item 4), query embedding included.

How the stores are built (embedding 100k chunks with MiniLM on 2 CPU cores would take
hours, so chunk vectors are synthesised; every query is embedded for real):

1. **pool**: every chunk (500/50 characters) of the DeepSpeed docs, the PDFs and the Word
   files of ``../shared/corpus`` is embedded for real by ``--embedding-model`` (default the
   bundled all-MiniLM-L6-v2; ``offline``: the packaged multilingual-e5-small, the CPU default)
   (~650 vectors; cached under the demo model's cache folder, keyed by model and texts).
2. **chunk texts**: real corpus sentences, drawn at random and joined to 260-480
   characters, one paragraph each, so the knowledge base's splitter keeps each as one chunk.
3. **chunk vectors**: for a chunk text, two pool vectors ``a``, ``b`` and a noise vector
   ``e`` (N(0, 0.02²) per dimension) are picked from a hash of the text, and its vector is
   ``normalise(a + 0.5 b + e)``: vectors of the same shape and neighbourhood structure as
   real vectors of that model on this corpus, all distinct.
4. **queries**: other corpus sentences (<= 120 characters), embedded by the real model
   on every search.

Two levels are measured at each size (default 1k, 10k, 100k chunks):

* **FAISS**: flat (exact), HNSW (M=32, several efSearch) and IVF-flat (nlist =
  ``rag.store.ivf_lists(N)`` = 4 sqrt(N), several nprobe) over the same vectors: build seconds, per-query latency p50/p95 of
  embedding + search and of the search alone (one query at a time, as a server does), and
  recall@10 against flat;
* **knowledge base**: the same chunks ingested through ``KnowledgeBase.add_files`` (with an
  embedder whose documents get the synthetic vectors and whose queries the real model):
  ingestion chunks/s, then ``KnowledgeBase.search`` latency p50/p95 in ``dense`` and
  ``hybrid`` mode, top_k 3, with the index type the knowledge base picks for its size; on
  each vector store of ``--vector-store`` in turn (``faiss,milvus``: FAISS and Milvus Lite,
  side by side, same chunks and queries; bench/retrieval_kb.py).

Full run:   python bench/retrieval.py --out retrieval.json
FAISS against Milvus Lite, knowledge-base level only:
            python bench/retrieval.py --kb-only --vector-store faiss,milvus --sizes 10000,100000
CI smoke:   python bench/retrieval.py --smoke
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.common import machine, package_versions, percentile, write_result  # noqa: E402
from bench.retrieval_kb import measure_kb  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
NOISE_SIGMA = 0.02
HNSW_M = 32
_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+|\n+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd\ufffe]")


# ------------------------------------------------------------------ data

def corpus_chunks(corpus: Path, smoke: bool = False) -> list[str]:
    """All chunks (500/50) of the corpus' DeepSpeed docs, PDFs and Word files (the password PDF
    and the files without text are left out); ``smoke``: of two small files only."""
    from rag.loaders import DocumentLoadError, load_file
    from rag.splitter import make_text_splitter, split_documents

    splitter = make_text_splitter(500, 50)
    files = (sorted((corpus / "deepspeed").glob("*.md")) + sorted((corpus / "pdf").glob("*.pdf"))
             + sorted((corpus / "docx").glob("*.docx")))
    if smoke:
        files = [corpus / "deepspeed" / "advanced-install.md", corpus / "pdf" / "pdflatex-4-pages.pdf"]
    chunks = []
    for f in files:
        try:
            chunks += [c.page_content for c in split_documents(load_file(f), splitter)]
        except DocumentLoadError:
            continue
    return chunks


def sentences_of(chunks: Sequence[str]) -> list[str]:
    """Sentences (and lines) of at least 20 characters, whitespace collapsed, control
    characters (NULs of glyphs a PDF extractor could not map) dropped, deduplicated."""
    seen, out = set(), []
    for chunk in chunks:
        for s in _SENTENCE_END.split(chunk):
            s = " ".join(_CONTROL.sub(" ", s).split())
            if len(s) >= 20 and s not in seen:
                seen.add(s)
                out.append(s[:400])
    return out


def synthetic_texts(sentences: Sequence[str], n: int, seed: int) -> list[str]:
    """``n`` distinct chunk texts of 260-480 characters made of random corpus sentences."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        target, parts, length = rng.randint(260, 480), [], 0
        while length < target:
            s = rng.choice(sentences)
            parts.append(s)
            length += len(s) + 1
        text = " ".join(parts)[:480].rstrip()
        texts.append(f"{text} [{i}]")  # distinct even when the same sentences are drawn
    return texts


def pool_vectors(embedder, texts: list[str]) -> np.ndarray:
    """Real embeddings of ``texts``, cached on disk by (model, texts)."""
    from llm.demo import default_demo_dir

    key = hashlib.sha256("\n\0".join([embedder.name, *texts]).encode()).hexdigest()[:16]
    cache = default_demo_dir().parent / f"bench-retrieval-pool-{key}.npy"
    if cache.is_file():
        vectors = np.load(cache)
        if vectors.shape == (len(texts), embedder.dim):
            return vectors
    vectors = embedder.embed_documents(texts)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors


def synthetic_vectors(texts: Sequence[str], pool: np.ndarray) -> np.ndarray:
    """``normalise(pool[a] + 0.5 pool[b] + e)`` per text, ``a``, ``b``, ``e`` drawn from a hash
    of the text (so the same text always gets the same vector); float32 (len(texts), dim)."""
    out = np.empty((len(texts), pool.shape[1]), dtype=np.float32)
    for i, text in enumerate(texts):
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        rng = np.random.default_rng(seed)
        a, b = rng.integers(0, len(pool), size=2)
        v = pool[a] + 0.5 * pool[b] + rng.normal(0.0, NOISE_SIGMA, pool.shape[1])
        out[i] = v / np.linalg.norm(v)
    return out


def synthetic_embedder(real, pool: np.ndarray):
    """An :class:`rag.embeddings.Embedder` that embeds documents with :func:`synthetic_vectors`
    and queries with the real model ``real``."""
    from rag.embeddings import Embedder

    class SyntheticDocuments(Embedder):
        def embed_documents(self, texts, batch_size=32, show_progress=False):
            return synthetic_vectors(list(texts), pool)

    return SyntheticDocuments(real.model, real.name, real.query_instruction)


# ----------------------------------------------------------------- FAISS

def faiss_variants(vectors: np.ndarray, hnsw_ef: Sequence[int], ivf_nprobe: Sequence[int]):
    """(name, index, search parameter setter, build seconds) for flat, HNSW and IVF over ``vectors``."""
    import faiss

    d, n = vectors.shape[1], len(vectors)
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(d)
    flat.add(vectors)
    out = [("flat", flat, None, time.perf_counter() - start)]
    start = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(vectors)
    build = time.perf_counter() - start
    for ef in hnsw_ef:
        out.append((f"hnsw efSearch={ef}", hnsw, ("efSearch", ef), build))
    from rag.store import ivf_lists

    nlist = ivf_lists(n)  # the knowledge base's rule: 4 sqrt(n), at most n / 39
    if nlist >= 64:  # fewer lists: not worth an approximate index
        start = time.perf_counter()
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(vectors)
        ivf.add(vectors)
        build = time.perf_counter() - start
        for nprobe in ivf_nprobe:
            out.append((f"ivf nlist={nlist} nprobe={nprobe}", ivf, ("nprobe", nprobe), build))
    return out


def measure_faiss(vectors: np.ndarray, embedder, queries: list[str], k: int, hnsw_ef, ivf_nprobe,
                  warmup: int) -> list[dict[str, Any]]:
    """Per index variant: build s, latency p50/p95 (ms) of embed+search and search only, recall@k."""
    import faiss

    query_vectors = np.stack([embedder.embed_query(q) for q in queries])
    exact = None
    rows = []
    for name, index, param, build in faiss_variants(vectors, hnsw_ef, ivf_nprobe):
        if param is not None:
            faiss.ParameterSpace().set_index_parameter(index, *param)
        for q in queries[:warmup]:
            index.search(embedder.embed_query(q).reshape(1, -1), k)
        total, search_only, found = [], [], []
        for q in queries:
            start = time.perf_counter()
            qv = embedder.embed_query(q).reshape(1, -1)
            mid = time.perf_counter()
            _, ids = index.search(qv, k)
            end = time.perf_counter()
            total.append((end - start) * 1000)
            search_only.append((end - mid) * 1000)
        _, found = index.search(query_vectors, k)
        if exact is None:
            exact = found
        recall = np.mean([len(set(a[a >= 0]) & set(b)) / k for a, b in zip(found, exact)])
        rows.append({"index": name, "build_s": build,
                     "p50_ms": percentile(total, 50), "p95_ms": percentile(total, 95),
                     "search_p50_ms": percentile(search_only, 50), "search_p95_ms": percentile(search_only, 95),
                     f"recall@{k}": float(recall)})
    return rows


# ------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--sizes", default="1000,10000,100000", help="chunks in the store, comma-separated")
    p.add_argument("--queries", type=int, default=200, help="timed queries per measurement")
    p.add_argument("--k", type=int, default=10, help="neighbours for recall@k")
    p.add_argument("--hnsw-ef", default="16,64,128", help="HNSW efSearch values")
    p.add_argument("--ivf-nprobe", default="8,16,32", help="IVF nprobe values")
    p.add_argument("--no-kb", action="store_true", help="FAISS level only (skip the knowledge-base level)")
    p.add_argument("--kb-only", action="store_true", help="knowledge-base level only (skip the FAISS index variants)")
    p.add_argument("--vector-store", default="faiss", metavar="NAME[,NAME]",
                   help="vector stores of the knowledge-base level, measured in turn at each size: faiss, milvus "
                   "(Milvus Lite in a temporary file) (default: %(default)s)")
    p.add_argument("--kb-modes", default="dense,hybrid", help="retrieval modes timed at the knowledge-base level")
    p.add_argument("--faiss-threads", type=int, default=None,
                   help="OpenMP threads of FAISS (default: its own, one per core); 1 shows what one-query "
                        "searches cost without OpenMP's thread hand-off on a busy machine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="where queries are embedded (cpu, cuda)")
    p.add_argument("--embedding-model", default="bundled",
                   help="the real model of the pool vectors and the queries: 'bundled' (all-MiniLM-L6-v2), "
                   "'offline' (the packaged multilingual-e5-small, the CPU default), or any name load_embedder takes")
    p.add_argument("--smoke", action="store_true", help="pool from two small files, sizes 100,500, 5 queries")
    p.add_argument("--out", help="also write the JSON result here")
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.queries, args.hnsw_ef, args.ivf_nprobe = "100,500", 5, "16", "8"
    stores = [v.strip() for v in args.vector_store.split(",") if v.strip()]
    unknown = [v for v in stores if v not in ("faiss", "milvus")]
    if unknown or not stores:
        p.error(f"--vector-store: {', '.join(unknown) or 'none given'}; use faiss, milvus or faiss,milvus")
    if not (args.corpus / "deepspeed").is_dir():
        p.error(f"{args.corpus}: no corpus there; it lives in ../shared/corpus (see its README.md)")
    import logging

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    logging.getLogger("jieba").setLevel(logging.WARNING)
    import faiss

    from rag.embeddings import load_embedder

    if args.faiss_threads:
        faiss.omp_set_num_threads(args.faiss_threads)

    real = load_embedder(args.embedding_model, device=args.device)
    chunks = corpus_chunks(args.corpus, args.smoke)
    pool = pool_vectors(real, chunks)
    sentences = sentences_of(chunks)
    rng = random.Random(args.seed)
    queries = [s[:120] for s in rng.sample(sentences, min(len(sentences), args.queries))]
    warmup = min(20, len(queries) // 2)
    embedder = synthetic_embedder(real, pool)

    embed_times = []
    for q in queries:
        t0 = time.perf_counter()
        real.embed_query(q)
        embed_times.append((time.perf_counter() - t0) * 1000)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[dict[str, Any]] = []

    def result_of(rows):
        return _result(args, argv, real, pool, queries, embed_times, stores, rows)

    with tempfile.TemporaryDirectory() as workdir:
        for n in sizes:
            texts = synthetic_texts(sentences, n, args.seed)
            vectors = synthetic_vectors(texts, pool)
            row: dict[str, Any] = {"chunks": n}
            if not args.kb_only:
                row["faiss"] = measure_faiss(vectors, real, queries, args.k, [int(x) for x in args.hnsw_ef.split(",")],
                                             [int(x) for x in args.ivf_nprobe.split(",")], warmup)
            if not args.no_kb:
                row["knowledge_base"] = {store: measure_kb(texts, embedder, queries, Path(workdir), warmup, store,
                                                           args.kb_modes.split(",")) for store in stores}
            rows.append(row)
            print(f"{n} chunks done", file=sys.stderr, flush=True)
            if args.out and n != sizes[-1]:  # what a long run has measured so far
                Path(args.out).write_text(json.dumps(result_of(rows), indent=2, ensure_ascii=False) + "\n",
                                          encoding="utf-8")
    result = result_of(rows)
    write_result(args.out, result)
    return result


def _result(args, argv, real, pool, queries, embed_times, stores, rows) -> dict[str, Any]:
    """The JSON result of a run (``rows``: the sizes measured so far)."""
    import faiss

    return {
        "benchmark": "retrieval", "machine": machine(), "faiss": faiss.__version__, "model": real.name,
        "faiss_threads": faiss.omp_get_max_threads(), "device": args.device, "vector_stores": stores,
        "versions": package_versions(["faiss-cpu"] + (["pymilvus", "milvus-lite"] if "milvus" in stores else [])),
        "command": "python bench/retrieval.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "method": (f"pool of {len(pool)} real {real.name} vectors of corpus chunks; chunk texts = random corpus "
                   f"sentences joined to 260-480 chars; chunk vector = normalise(pool[a] + 0.5 pool[b] + "
                   f"N(0, {NOISE_SIGMA}^2)), a, b, noise from a hash of the text; every query (a corpus "
                   f"sentence <= 120 chars) embedded by the real model in each timed search"),
        "queries": len(queries), "k": args.k,
        "query_embedding_ms": {"p50": percentile(embed_times, 50), "p95": percentile(embed_times, 95)},
        "sizes": rows,
    }


if __name__ == "__main__":
    main()
