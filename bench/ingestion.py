"""Ingestion benchmark (issue 6, item 3): our pipeline next to LangChain's canonical one, same run.

Files: the 117-page PDF (``pdf/GeoTopo-komprimiert.pdf``), the DeepSpeed Markdown docs and
the Word files of ``../shared/corpus``. Both pipelines use the same embedding model (the
bundled all-MiniLM-L6-v2, on the same device, one instance loaded before timing starts),
the same chunk settings (500 characters, 50 overlap) and sentence-transformers' batch size 32.

* **ours**: ``KnowledgeBase.add_files`` into a fresh temporary folder, as an upload does
  (load, split, embed, store in FAISS + BM25 tokens, save crash-safely after each file);
* **LangChain**: ``PyPDFLoader`` / ``TextLoader`` / ``Docx2txtLoader``,
  ``RecursiveCharacterTextSplitter(chunk_size=500, chunk_overlap=50)``,
  ``HuggingFaceEmbeddings`` (langchain_community), ``FAISS.from_documents`` (in memory,
  nothing saved);
* **re-ingest**: ``add_files`` of the same, unchanged files again, into the same knowledge
  base (skipped by content hash), and again after re-opening it from disk (a restart).
  LangChain's pipeline has no such check: running it again costs the full time again.

The pipelines alternate (ours, LangChain, ours, ...) ``--repeats`` times; medians are reported.
Each also reports the seconds spent loading + splitting alone (no embedding), and the
process's CPU seconds (``time.process_time``): on a machine shared with other jobs the wall
time grows with the load, the CPU time much less.

``--embedding-models bundled,offline`` measures all of it with each model in turn (MiniLM,
then the packaged multilingual-e5-small, the CPU default), plus one run of ours with the
server's default chunks (tokens of the model, as many as it embeds) per model.

Full run:   python bench/ingestion.py --out ingestion.json
CI smoke:   python bench/ingestion.py --smoke
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_result  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
CHUNK_SIZE, CHUNK_OVERLAP, BATCH_SIZE = 500, 50, 32
SMOKE_FILES = ("deepspeed/advanced-install.md", "pdf/minimal-document.pdf")


def corpus_files(corpus: Path, smoke: bool, only: str | None = None) -> list[Path]:
    """The files ingested: the 117-page PDF, DeepSpeed's *.md, the *.docx (smoke: two small files;
    ``only``: the files of that corpus folder, e.g. "deepspeed")."""
    if smoke:
        return [corpus / f for f in SMOKE_FILES]
    if only:
        return sorted(f for f in (corpus / only).iterdir() if f.suffix in (".md", ".pdf", ".docx"))
    return ([corpus / "pdf" / "GeoTopo-komprimiert.pdf"] + sorted((corpus / "deepspeed").glob("*.md"))
            + sorted((corpus / "docx").glob("*.docx")))


# ------------------------------------------------------------------- ours

def ours_load_split(files: list[Path]) -> int:
    """Our loader + splitter only; returns the number of chunks (files without text count 0)."""
    from rag.loaders import DocumentLoadError, load_file
    from rag.splitter import make_text_splitter, split_documents

    splitter = make_text_splitter(CHUNK_SIZE, CHUNK_OVERLAP)
    chunks = 0
    for f in files:
        try:
            chunks += len(split_documents(load_file(f), splitter))
        except DocumentLoadError:  # the Word files with only images / empty tables
            continue
    return chunks


def ours_ingest(files: list[Path], embedder, workdir: Path, server_chunks: bool = False) -> dict[str, Any]:
    """``add_files`` into a new knowledge base in ``workdir``, then the same files again
    (same object, then re-opened from disk): seconds and chunks of each. ``server_chunks``:
    the server's default chunking (tokens of the embedder, as many as it embeds) instead of
    500/50 characters."""
    from rag.store import KnowledgeBase

    folder = Path(tempfile.mkdtemp(dir=workdir))
    start, cpu = time.perf_counter(), time.process_time()
    sizes = {} if server_chunks else dict(chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP, chunk_unit="chars")
    kb = KnowledgeBase.open(folder, embedder, **sizes)
    reports = kb.add_files(files)
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    if not any(r.status == "added" for r in reports):
        raise RuntimeError(f"our pipeline added no file: {[r.reason for r in reports]}")
    start = time.perf_counter()
    again = kb.add_files(files)
    reingest = time.perf_counter() - start
    start = time.perf_counter()
    reopened = KnowledgeBase.open(folder, embedder, **sizes)
    after_restart = reopened.add_files(files)
    reingest_reopened = time.perf_counter() - start
    return {"seconds": seconds, "cpu_s": cpu_s, "chunks": len(kb),
            "files_refused": sum(r.status == "refused" for r in reports),
            "reingest_s": reingest,
            "reingest_skipped": sum(r.status == "skipped" for r in again),
            "reopen_and_reingest_s": reingest_reopened,
            "reopen_skipped": sum(r.status == "skipped" for r in after_restart)}


# -------------------------------------------------------------- LangChain

def langchain_embeddings(device: str, model: str = "bundled"):
    """LangChain's ``HuggingFaceEmbeddings`` around the same model folder as ours (normalised,
    batch 32): the bundled MiniLM, or ("offline") the packaged multilingual-e5-small with its
    ``passage: `` prefix, as ours embeds chunks."""
    from langchain_community.embeddings import HuggingFaceEmbeddings

    from rag.e5_offline import E5_PASSAGE_PREFIX, offline_model_folder
    from rag.embeddings import BUNDLED_ALIASES, bundled_model_path

    encode = {"normalize_embeddings": True, "batch_size": BATCH_SIZE}
    if model in BUNDLED_ALIASES:
        folder = bundled_model_path()
    elif model == "offline":
        folder, encode["prompt"] = offline_model_folder(), E5_PASSAGE_PREFIX
    else:
        raise ValueError(f"--embedding-models: 'bundled' or 'offline', not {model!r}")
    return HuggingFaceEmbeddings(model_name=str(folder), model_kwargs={"device": device}, encode_kwargs=encode)


def langchain_load_split(files: list[Path]) -> list:
    """LangChain's canonical loaders and ``RecursiveCharacterTextSplitter``: the chunk Documents."""
    from langchain_community.document_loaders import Docx2txtLoader, PyPDFLoader, TextLoader
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    docs = []
    for f in files:
        if f.suffix == ".pdf":
            docs += PyPDFLoader(str(f)).load()
        elif f.suffix == ".docx":
            docs += Docx2txtLoader(str(f)).load()
        else:
            docs += TextLoader(str(f), encoding="utf-8").load()
    splitter = RecursiveCharacterTextSplitter(chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP)
    return splitter.split_documents(docs)


def langchain_ingest(files: list[Path], embeddings) -> dict[str, Any]:
    """Load, split, embed into ``FAISS.from_documents``: seconds and chunks."""
    from langchain_community.vectorstores import FAISS

    start, cpu = time.perf_counter(), time.process_time()
    chunks = langchain_load_split(files)
    store = FAISS.from_documents(chunks, embeddings)
    return {"seconds": time.perf_counter() - start, "cpu_s": time.process_time() - cpu, "chunks": store.index.ntotal}


# ------------------------------------------------------------------- main

def _median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    row["chunks_per_s"] = row["chunks"] / row["seconds"]
    row["chunks_per_cpu_s"] = row["chunks"] / row["cpu_s"]
    row["runs_s"] = [round(r["seconds"], 3) for r in runs]
    return row


def _measure_model(name: str, files: list[Path], device: str, repeats: int) -> dict[str, Any]:
    """Ours and LangChain's pipelines, alternating ``repeats`` times, on embedding model ``name``;
    then once ours with the server's default chunks (tokens of the model)."""
    from rag.embeddings import load_embedder

    embedder = load_embedder(name, device=device)
    lc_embeddings = langchain_embeddings(device, name)
    embedder.embed_documents(["warm-up"] * 4)
    lc_embeddings.embed_documents(["warm-up"] * 4)
    ours_runs, lc_runs, ours_split, lc_split = [], [], [], []
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(repeats):
            start = time.perf_counter()
            ours_load_split(files)
            ours_split.append(time.perf_counter() - start)
            start = time.perf_counter()
            langchain_load_split(files)
            lc_split.append(time.perf_counter() - start)
            ours_runs.append(ours_ingest(files, embedder, Path(workdir)))
            lc_runs.append(langchain_ingest(files, lc_embeddings))
        default_chunks = ours_ingest(files, embedder, Path(workdir), server_chunks=True)
    ours, lc = _median_row(ours_runs), _median_row(lc_runs)
    ours["load_split_s"], lc["load_split_s"] = statistics.median(ours_split), statistics.median(lc_split)
    ours["reingest_fraction"] = ours["reingest_s"] / ours["seconds"]
    ours["reopen_reingest_fraction"] = ours["reopen_and_reingest_s"] / ours["seconds"]
    default_chunks["chunks_per_s"] = default_chunks["chunks"] / default_chunks["seconds"]
    default_chunks["chunks_per_cpu_s"] = default_chunks["chunks"] / default_chunks["cpu_s"]
    print(f"{embedder.name}: ours {ours['seconds']:.1f} s, LangChain {lc['seconds']:.1f} s, "
          f"server chunks {default_chunks['seconds']:.1f} s", file=sys.stderr, flush=True)
    return {"model": embedder.name, "ours": ours, "langchain": lc, "ours_server_default_chunks": default_chunks,
            "ours_vs_langchain_time": ours["seconds"] / lc["seconds"]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--repeats", type=int, default=3, help="runs of each pipeline (alternating; medians)")
    p.add_argument("--device", default=None, help="embedding device (default: cuda when available, else cpu)")
    p.add_argument("--embedding-models", default="bundled",
                   help="comma-separated, measured in turn: 'bundled' (all-MiniLM-L6-v2), 'offline' (the packaged "
                   "multilingual-e5-small, the CPU default); the first one's rows are also the top-level ones")
    p.add_argument("--only", default=None, metavar="FOLDER",
                   help="ingest only the files of this corpus folder (e.g. deepspeed: its five Markdown docs)")
    p.add_argument("--smoke", action="store_true", help=f"one run on two small files: {', '.join(SMOKE_FILES)}")
    p.add_argument("--out", help="also write the JSON result here")
    args = p.parse_args(argv)
    if args.smoke:
        args.repeats = 1
    files = corpus_files(args.corpus, args.smoke, args.only)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        p.error(f"missing corpus files {missing}; the corpus lives in ../shared/corpus (see its README.md)")
    for name in ("docx2txt",):
        if any(f.suffix == ".docx" for f in files) and __import__("importlib").util.find_spec(name) is None:
            p.error(f"LangChain's Docx2txtLoader needs {name}: pip install 'chatllm-webui[bench]'")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        from langchain_core._api.deprecation import LangChainDeprecationWarning
        warnings.filterwarnings("ignore", category=LangChainDeprecationWarning)
    except ImportError:
        pass
    import logging
    logging.getLogger("pypdf").setLevel(logging.ERROR)

    import langchain_community
    import pypdf

    from rag.embeddings import default_device

    device = args.device or default_device()
    by_model = [_measure_model(name.strip(), files, device, args.repeats)
                for name in args.embedding_models.split(",") if name.strip()]
    ours, lc = by_model[0]["ours"], by_model[0]["langchain"]
    import importlib.metadata as md

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    result = {
        "benchmark": "ingestion", "machine": machine(), "device": device, "model": by_model[0]["model"],
        "versions": {"langchain_community": langchain_community.__version__, "pypdf": pypdf.__version__,
                     "pypdfium2": version("pypdfium2"), "faiss": version("faiss-cpu"),
                     "docx2txt": version("docx2txt")},
        "command": "python bench/ingestion.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "files": [str(f.relative_to(args.corpus)) for f in files],
        "chunk_size": CHUNK_SIZE, "chunk_overlap": CHUNK_OVERLAP, "repeats": args.repeats,
        "ours": ours, "langchain": lc,
        "ours_vs_langchain_time": ours["seconds"] / lc["seconds"],
        "ours_vs_langchain_chunks_per_s": ours["chunks_per_s"] / lc["chunks_per_s"],
        "by_model": by_model, "load_avg_end": [round(x, 2) for x in __import__("os").getloadavg()],
    }
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
