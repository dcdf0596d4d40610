"""The knowledge base: files -> chunks -> embeddings in FAISS, plus search.

FAISS holds vectors only (the vectors are L2-normalised, so the inner product is
cosine similarity): an exact ``IndexIDMap2`` over ``IndexFlatIP`` up to
:data:`APPROXIMATE_INDEX_MIN_CHUNKS` chunks, an ``IndexIVFFlat`` from there on
(:func:`build_index`; chosen from measured latency and recall). Chunk text and
metadata live beside it in JSON, found by chunk id, and so do each chunk's BM25
tokens (:mod:`rag.keywords`). Search is dense, BM25 or hybrid (both, fused by
:mod:`rag.fusion`), optionally reranked (:mod:`rag.rerank`). The on-disk layout
and its crash safety are described in :mod:`rag.persistence`.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from . import persistence as disk
from .fusion import (DEFAULT_DENSE_WEIGHT, DEFAULT_FUSION, FUSIONS, bm25_upper_bound, check_weight,
                     convex_combination, fusion_for, keyword_coverage, reciprocal_rank_fusion, relevance)
from .keywords import TOKENIZER_ID, KeywordIndex, chunk_tokens, tokenize
from .loaders import DocumentLoadError, load_file
from .rerank import RERANK_CANDIDATES
from .splitter import chunk_settings, make_text_splitter, searchable_text, split_documents, visible_markdown
from .types import RETRIEVAL_MODES, Chunk, FileReport, SearchResult

if TYPE_CHECKING:
    from .embeddings import Embedder
    from .rerank import Reranker

logger = logging.getLogger(__name__)

UNCHANGED_REASON = "unchanged: already in the knowledge base"
#: Candidates each retriever contributes to a hybrid search (at least top_k).
HYBRID_CANDIDATES = 50
#: Chunks embedded per call while adding a file (progress is reported between calls);
#: more when the embedder's own batch is larger (a GPU's).
EMBED_BATCH = 64
#: From this many chunks on, dense search uses an approximate IVF index instead of the exact
#: flat one. Measured on 2 CPU cores with all-MiniLM-L6-v2 (docs/benchmarks.md, "Retrieval
#: latency"): embedding the query takes ~12 ms; searching one query flat takes 1.5 ms at 10k
#: chunks, 3.0 ms at 20k, 6.9 ms at 50k and 14 ms at 100k, IVF 0.2-0.35 ms at 20k-100k with
#: recall@10 0.993-0.9995 (nprobe 32). HNSW reached only 0.87 at 100k and cannot delete.
#: Flat therefore stays (exact) while it adds at most ~25% to the query's latency.
APPROXIMATE_INDEX_MIN_CHUNKS = 20_000
#: Inverted lists an IVF index probes per query (recall@10 >= 0.993 from 20k to 100k chunks,
#: measured; 16 probes gave 0.98 at 20k).
IVF_NPROBE = 32


def ivf_lists(n: int) -> int:
    """Inverted lists of an IVF index over ``n`` vectors: 4 sqrt(n) (FAISS' guideline is
    4-16 sqrt(n)), at most n / 39 (k-means wants 39 training points per list), at least 1."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def build_index(vectors: np.ndarray, ids: np.ndarray, dim: int, approximate: bool):
    """A FAISS inner-product index holding ``vectors`` (float32, shape (n, dim)) under ``ids``
    (int64, shape (n,)).

    Returns:
        ``approximate`` False: ``IndexIDMap2(IndexFlatIP)`` (exact). True: an
        ``IndexIVFFlat`` with :func:`ivf_lists` lists trained on ``vectors`` (k-means;
        seconds for tens of thousands of vectors), :data:`IVF_NPROBE` probes (all lists
        when there are fewer) and a hash-table direct map, so that ``remove_ids`` and
        ``reconstruct`` by chunk id work as on the flat index.
    """
    import faiss

    if not approximate or len(ids) == 0:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    else:
        nlist = ivf_lists(len(ids))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(IVF_NPROBE, nlist)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
    return index


def empty_index(dim: int):
    """An empty exact index (``IndexIDMap2(IndexFlatIP)``) for ``dim``-dimensional vectors."""
    return build_index(np.zeros((0, dim), np.float32), np.zeros(0, np.int64), dim, approximate=False)


def index_ids(index) -> np.ndarray:
    """The ids stored in an index made by :func:`build_index` (int64, any order)."""
    import faiss

    if not isinstance(index, faiss.IndexIVF):
        return faiss.vector_to_array(index.id_map)
    lists = index.invlists
    parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
             for i in range(index.nlist) if lists.list_size(i)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class EmbeddingMismatchError(ValueError):
    """A knowledge base was opened with an embedding model (name or dim) other
    than the one its vectors were made with; the message names both and the fix."""


class KnowledgeBaseCorruptError(RuntimeError):
    """The files of a knowledge base are unreadable or disagree with each other
    (not caused by a crash, which the layout survives); the message names the folder."""


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def recorded_embedding_model(directory: str | Path) -> tuple[str, int] | None:
    """The (embedding model name, dim) a knowledge-base folder records in its
    manifest, or None when the folder holds no readable knowledge base."""
    try:
        manifest = disk.read_json(Path(directory) / disk.MANIFEST_NAME)
        return str(manifest["embedding_model"]), int(manifest["dim"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class KnowledgeBase:
    """A folder of documents, chunked, embedded and searchable.

    Create or load one with :meth:`open`. All methods are thread-safe: a lock
    serialises mutation and search; the slow parts of adding a file (reading,
    splitting, embedding) run outside it, so searches are not blocked for long.
    One process should own a folder at a time.
    """

    def __init__(self, directory: Path, embedder: "Embedder", chunk_size: int | None, chunk_overlap: int | None,
                 approximate_from: int = APPROXIMATE_INDEX_MIN_CHUNKS, chunk_unit: str | None = None):
        """Use :meth:`open`; this only sets up an empty, unsaved state."""
        if isinstance(approximate_from, bool) or not isinstance(approximate_from, int) or approximate_from < 1:
            raise ValueError(f"approximate_from must be an integer >= 1, got {approximate_from!r}")
        self._directory = directory
        self._embedder = embedder
        chunk_size, chunk_overlap, chunk_unit = chunk_settings(embedder, chunk_size, chunk_overlap, chunk_unit)
        self._splitter = make_text_splitter(chunk_size, chunk_overlap, chunk_unit,
                                            getattr(embedder, "tokenizer", None))
        self._chunk_size = chunk_size
        self._chunk_overlap = chunk_overlap
        self._chunk_unit = chunk_unit
        self._lock = threading.RLock()
        self._approximate_from = approximate_from
        self._index = empty_index(embedder.dim)
        self._chunks: dict[int, Chunk] = {}
        self._keywords = KeywordIndex()
        self._files: dict[str, dict[str, Any]] = {}
        self._next_id = 0
        self._generation: str | None = None
        self._created_at = _utc_now()

    # ------------------------------------------------------------------ open

    @classmethod
    def open(cls, directory: str | Path, embedder: "Embedder", *, chunk_size: int | None = None,
             chunk_overlap: int | None = None, approximate_from: int = APPROXIMATE_INDEX_MIN_CHUNKS,
             chunk_unit: str | None = None) -> "KnowledgeBase":
        """Open the knowledge base in ``directory``, creating it if missing.

        Args:
            directory: its folder; created (with parents) if missing.
            embedder: the embedding model (see :func:`rag.load_embedder`); must
                be the one the knowledge base was built with.
            chunk_size, chunk_overlap, chunk_unit: splitter settings for files added
                from now on; None picks the embedder's defaults (:func:`rag.splitter.chunk_settings`:
                tokens of its tokenizer, as many as it embeds).
            approximate_from: chunks from which dense search uses an IVF index
                (:func:`build_index`); it switches when files are added or deleted
                (back to flat below half of it), not on opening.

        Raises:
            EmbeddingMismatchError: the knowledge base holds chunks embedded by
                another model (name or dim). An empty one adopts ``embedder``.
            KnowledgeBaseCorruptError: its files are unreadable or inconsistent.
            ValueError: bad chunk settings or ``approximate_from``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        kb = cls(directory, embedder, chunk_size, chunk_overlap, approximate_from, chunk_unit)
        manifest_path = directory / disk.MANIFEST_NAME
        with kb._lock:
            if manifest_path.exists():
                kb._load()
                kb._tidy_file_copies()
            else:
                logger.info("creating knowledge base at %s (embedding model %s, dim %d)",
                            directory, embedder.name, embedder.dim)
                kb._commit()
        return kb

    def _read_manifest(self) -> dict[str, Any]:
        path = self._directory / disk.MANIFEST_NAME
        try:
            manifest = disk.read_json(path)
        except (OSError, ValueError) as exc:
            raise KnowledgeBaseCorruptError(
                f"{path}: unreadable manifest ({exc}); restore the folder from a backup "
                "or move it away and re-upload the documents") from exc
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > disk.FORMAT_VERSION:
            raise KnowledgeBaseCorruptError(
                f"{path}: format version {version!r} is not supported by this program "
                f"(it reads up to {disk.FORMAT_VERSION}); upgrade the program or use another folder")
        return manifest

    def _load(self) -> None:
        """Replace the in-memory state by the one the manifest names."""
        import faiss

        manifest = self._read_manifest()
        gen_name = str(manifest.get("generation"))
        gen_dir = self._directory / gen_name
        try:
            if disk.generation_number(gen_name) is None:
                raise ValueError(f"manifest names {gen_name!r}, not a generation folder")
            index = faiss.deserialize_index(np.fromfile(gen_dir / "index.faiss", dtype=np.uint8))
            chunk_data = disk.read_json(gen_dir / "chunks.json")
            file_data = disk.read_json(gen_dir / "files.json")
            chunks = {int(c["id"]): Chunk(**c) for c in chunk_data["chunks"]}
            ids = set(index_ids(index).tolist()) if index.ntotal else set()
        except Exception as exc:
            raise KnowledgeBaseCorruptError(
                f"{gen_dir}: cannot read the knowledge base state ({type(exc).__name__}: {exc}); "
                "restore the folder from a backup or move it away and re-upload the documents") from exc
        if ids != set(chunks) or index.ntotal != len(chunks) or index.d != manifest.get("dim"):
            raise KnowledgeBaseCorruptError(
                f"{gen_dir}: the index ({index.ntotal} vectors of dim {index.d}) does not match chunks.json "
                f"({len(chunks)} chunks) and the manifest (dim {manifest.get('dim')}); "
                "move the folder away and re-upload the documents")

        recorded_name, recorded_dim = manifest.get("embedding_model"), manifest.get("dim")
        if (recorded_name, recorded_dim) != (self._embedder.name, self._embedder.dim):
            if chunks:
                raise EmbeddingMismatchError(
                    f"the knowledge base at {self._directory} was built with embedding model "
                    f"{recorded_name!r} (dim {recorded_dim}), but {self._embedder.name!r} "
                    f"(dim {self._embedder.dim}) is loaded. Start with --embedding-model {recorded_name}, "
                    f"or re-embed it with the loaded model: `python -m rag reindex --kb {self._directory.name}` "
                    "(add --embedding-model NAME for another; it keeps the base's files), or use another "
                    "knowledge-base folder (or delete this one) and upload the documents again")
            logger.info("empty knowledge base at %s: switching its embedding model from %s to %s",
                        self._directory, recorded_name, self._embedder.name)
            index = empty_index(self._embedder.dim)

        recorded_chunking = (manifest.get("chunk_size"), manifest.get("chunk_overlap"), manifest.get("chunk_unit", "chars"))
        if recorded_chunking != (self._chunk_size, self._chunk_overlap, self._chunk_unit):
            logger.info("knowledge base at %s: files added from now on use chunk_size=%d, chunk_overlap=%d %s "
                        "(was %s, %s %s)", self._directory, self._chunk_size, self._chunk_overlap, self._chunk_unit,
                        *recorded_chunking)
        self._index = index
        self._chunks = chunks
        self._keywords = self._load_keywords(gen_dir, chunks)
        self._files = {f["name"]: f for f in file_data}
        self._next_id = int(chunk_data["next_id"])
        self._generation = gen_dir.name
        self._created_at = manifest.get("created_at", self._created_at)
        if (recorded_name, recorded_dim) != (self._embedder.name, self._embedder.dim):
            self._commit()  # record the adopted model
        logger.info("opened knowledge base at %s: %d files, %d chunks (%s)",
                    self._directory, len(self._files), len(self._chunks), self._generation)

    def _load_keywords(self, gen_dir: Path, chunks: dict[int, Chunk]) -> KeywordIndex:
        """The BM25 tokens saved with a generation; recomputed from the chunk texts
        when the file is missing (older knowledge bases), unreadable, made by
        another tokenizer, or does not cover exactly the chunks."""
        index = KeywordIndex()
        path = gen_dir / disk.KEYWORDS_NAME
        try:
            data = disk.read_json(path)
            tokens = {int(k): v for k, v in data["tokens"].items()}
            if data.get("tokenizer") != TOKENIZER_ID or set(tokens) != set(chunks):
                raise ValueError(f"tokenizer {data.get('tokenizer')!r}, {len(tokens)} token lists "
                                 f"for {len(chunks)} chunks")
            for cid, toks in tokens.items():
                if not isinstance(toks, list):
                    raise ValueError(f"tokens of chunk {cid} are not a list")
                index.add(cid, toks)
            return index
        except FileNotFoundError:
            reason = "none saved"
        except Exception as exc:  # noqa: BLE001 - derived data: recompute rather than fail
            reason = f"{type(exc).__name__}: {exc}"
        if chunks:
            logger.info("knowledge base at %s: recomputing the BM25 tokens of %d chunks (%s)",
                        self._directory, len(chunks), reason)
        for cid, chunk in chunks.items():
            index.add(cid, chunk_tokens(searchable_text(chunk.text), chunk.source))
        return index

    def _tidy_file_copies(self) -> None:
        """Remove leftovers of interrupted adds/deletes: partial uploads in
        ``incoming/`` and copies in ``files/`` of files no longer stored."""
        incoming = self._directory / disk.INCOMING_DIR
        if incoming.is_dir():
            for part in incoming.glob("*.part"):
                part.unlink(missing_ok=True)
        files_dir = self._directory / disk.FILES_DIR
        if files_dir.is_dir():
            for copy in files_dir.iterdir():
                if copy.is_file() and copy.name not in self._files:
                    logger.info("removing %s: not part of the knowledge base (left by an interrupted delete)", copy)
                    copy.unlink(missing_ok=True)
        missing = [n for n in self._files if not (files_dir / n).is_file()]
        if missing:
            logger.warning("knowledge base at %s: no stored copy of %s (interrupted while saving); "
                           "its chunks are searchable, upload the file again to restore the copy",
                           self._directory, ", ".join(missing))

    # ---------------------------------------------------------------- commit

    def _commit(self) -> None:
        """Persist the in-memory state as a new generation (see :mod:`rag.persistence`)."""
        import faiss

        existing = disk.existing_generations(self._directory)
        current = disk.generation_number(self._generation) if self._generation else None
        number = max(existing + ([current] if current is not None else []), default=0) + 1
        gen_name = disk.generation_name(number)
        gen_dir = self._directory / gen_name
        gen_dir.mkdir()
        disk.write_bytes_durably(gen_dir / "index.faiss", faiss.serialize_index(self._index).tobytes())
        disk.write_json_durably(gen_dir / "chunks.json", {
            "next_id": self._next_id,
            "chunks": [vars(c) for c in self._chunks.values()],
        })
        disk.write_json_durably(gen_dir / "files.json", list(self._files.values()))
        disk.write_json_durably(gen_dir / disk.KEYWORDS_NAME, {
            "tokenizer": TOKENIZER_ID,
            "tokens": {str(cid): toks for cid, toks in self._keywords.tokens().items()},
        })
        disk.fsync_dir(gen_dir)
        disk.fsync_dir(self._directory)
        disk.replace_json_atomically(self._directory / disk.MANIFEST_NAME, {
            # 1 while the index is flat, so that older versions keep reading it
            "format_version": disk.FORMAT_VERSION if self.index_kind == "ivf" else 1,
            "generation": gen_name,
            "embedding_model": self._embedder.name,
            "dim": self._embedder.dim,
            "chunk_size": self._chunk_size,
            "chunk_overlap": self._chunk_overlap,
            "chunk_unit": self._chunk_unit,
            "files": len(self._files),
            "chunks": len(self._chunks),
            "created_at": self._created_at,
            "updated_at": _utc_now(),
        })
        self._generation = gen_name
        disk.remove_generations_except(self._directory, gen_name)

    def _commit_or_reload(self) -> None:
        """Commit; if that fails, go back to the last committed state and re-raise."""
        try:
            self._commit()
        except BaseException:
            logger.exception("could not save the knowledge base at %s; reloading its last saved state",
                             self._directory)
            self._load()
            raise

    # --------------------------------------------------------------- reindex

    @classmethod
    def reindex(cls, directory: str | Path, embedder: "Embedder", *, chunk_size: int | None = None,
                chunk_overlap: int | None = None, chunk_unit: str | None = None,
                progress: Callable[[str, int, int], None] | None = None,
                on_chunks: Callable[[str, int, int], None] | None = None) -> tuple["KnowledgeBase", list[FileReport]]:
        """Re-embed (and re-chunk) a knowledge base with ``embedder`` from the copies of its
        files it keeps in ``files/``, whatever model built it (e.g. one made with
        all-MiniLM-L6-v2, to move it to multilingual-e5-small).

        Crash-safe: the new state is built in memory and saved as one new generation,
        which the manifest points to only once it is complete (:mod:`rag.persistence`);
        killed midway, the folder still opens as before (with its old model).

        Args:
            directory: the knowledge base's folder.
            embedder, chunk_size, chunk_overlap, chunk_unit: as for :meth:`open`.
            progress, on_chunks: as for :meth:`add_files`.

        Returns:
            (the reopened knowledge base, one report per file: "added" with its chunks, or
            "refused" with the reason, e.g. a missing copy; refused files are left out).

        Raises:
            KnowledgeBaseCorruptError: not a readable knowledge base.
        """
        directory = Path(directory)
        if not (directory / disk.MANIFEST_NAME).is_file():
            raise KnowledgeBaseCorruptError(f"{directory}: no knowledge base here (no {disk.MANIFEST_NAME})")
        kb = cls(directory, embedder, chunk_size, chunk_overlap, APPROXIMATE_INDEX_MIN_CHUNKS, chunk_unit)
        with kb._lock:
            manifest = kb._read_manifest()
            gen_dir = directory / str(manifest.get("generation"))
            try:
                records = disk.read_json(gen_dir / "files.json")
            except (OSError, ValueError) as exc:
                raise KnowledgeBaseCorruptError(f"{gen_dir}: cannot read files.json ({exc}); restore the folder "
                                                "from a backup or re-upload the documents") from exc
            kb._generation = gen_dir.name
            kb._created_at = manifest.get("created_at", kb._created_at)
        reports = []
        for i, record in enumerate(records):
            key = record["name"]
            if progress is not None:
                progress(key, i, len(records))
            copy = directory / disk.FILES_DIR / key
            try:
                if not copy.is_file():
                    raise DocumentLoadError(f"{key}: its stored copy {copy} is missing; upload the file again")
                pieces, tokens, vectors = kb._prepare(copy, key, key, on_chunks)
            except DocumentLoadError as exc:
                reports.append(FileReport(name=key, status="refused", reason=str(exc)))
                continue
            except Exception as exc:  # noqa: BLE001 - one bad file never stops the others
                logger.exception("unexpected error while reindexing %s in %s", key, directory)
                reports.append(FileReport(name=key, status="refused", reason=f"{key}: unexpected error "
                                          f"({type(exc).__name__}: {exc}); see the log, upload the file again"))
                continue
            with kb._lock:
                kb._insert(key, pieces, tokens, vectors, record)
            reports.append(FileReport(name=key, status="added", chunks=len(pieces)))
        with kb._lock:
            kb._commit()
            kb._tidy_file_copies()
        logger.info("reindexed %s with %s: %d files, %d chunks", directory, embedder.name, len(kb._files), len(kb))
        return kb, reports

    # ------------------------------------------------------------- add files

    def add_files(self, paths: Sequence[str | Path], names: Sequence[str] | None = None,
                  progress: Callable[[str, int, int], None] | None = None, *,
                  on_chunks: Callable[[str, int, int], None] | None = None,
                  commit_every: int = 1) -> list[FileReport]:
        """Load, split, embed and store files; one :class:`FileReport` per file, in order.

        Args:
            paths: files on disk (e.g. the upload's temporary files).
            names: the names to record and show (as uploaded), one per path;
                default each path's name. The stored name is
                :func:`rag.persistence.safe_file_name` of it.
            progress: called as ``progress(name, index, n_files)`` before each
                file, ``index`` counting from 0.
            on_chunks: called as ``on_chunks(name, embedded, n_chunks)`` while a
                file's chunks are embedded: once with ``embedded = 0`` when the
                file is split, then after each batch of :data:`EMBED_BATCH`
                chunks. Not called for skipped or refused files.
            commit_every: save (commit a new generation) after this many added
                files and at the end. 1 (the default) saves each file before the
                next. Every save rewrites the whole state, so bulk ingestion
                (``python -m rag ingest``) saves less often: a crash then loses
                at most the files added since the last save, never corrupts.

        Returns:
            Reports: "added" (chunks = chunks stored; a file of the same name
            but other content is replaced), "skipped" (same name and sha256 as
            a stored file; reason :data:`UNCHANGED_REASON`), or "refused" with
            the reason (a :class:`DocumentLoadError` message, a failed save, or
            the error for anything unexpected, which is also logged with its
            traceback). One bad file never stops the others.

        Raises:
            ValueError: ``names`` given with a length other than ``paths``', or ``commit_every`` < 1.
        """
        paths = list(paths)
        if names is not None and len(names) != len(paths):
            raise ValueError(f"names has {len(names)} entries but paths has {len(paths)}; give one name per path")
        if isinstance(commit_every, bool) or not isinstance(commit_every, int) or commit_every < 1:
            raise ValueError(f"commit_every must be an integer >= 1, got {commit_every!r}")
        reports: list[FileReport] = []
        pending: list[tuple[int, Path, str, str]] = []  # added, not saved yet: (report index, copy, key, sha256)
        for i, path in enumerate(paths):
            name = str(names[i]) if names is not None else Path(path).name
            if progress is not None:
                progress(name, i, len(paths))
            try:
                report = self._add_file(Path(path), name, on_chunks,
                                        pending=pending if commit_every > 1 else None, index=len(reports))
            except DocumentLoadError as exc:
                report = FileReport(name=name, status="refused", reason=str(exc))
            except Exception as exc:
                logger.exception("unexpected error while adding %s to %s", name, self._directory)
                report = FileReport(name=name, status="refused",
                                    reason=f"{name}: unexpected error ({type(exc).__name__}: {exc}); "
                                           "see the server log, and report it if it persists")
            logger.info("%s: %s%s", name, report.status,
                        f" ({report.chunks} chunks)" if report.status == "added" else f" - {report.reason}")
            reports.append(report)
            if len(pending) >= commit_every:
                self._save_pending(pending, reports)
        if pending:
            self._save_pending(pending, reports)
        return reports

    def _save_pending(self, pending: list[tuple[int, Path, str, str]], reports: list[FileReport]) -> None:
        """Commit the files added since the last save and keep their copies; if the
        save fails (the state goes back to the last saved one), report them refused."""
        with self._lock:
            try:
                self._commit_or_reload()
                failure = None
            except Exception as exc:  # logged by _commit_or_reload
                failure = f"could not be saved ({type(exc).__name__}: {exc}); add it again"
            for index, tmp_copy, key, sha256 in pending:
                record = self._files.get(key)
                if failure is None and record is not None and record["sha256"] == sha256:
                    self._keep_copy(tmp_copy, key)
                else:
                    name = reports[index].name
                    reports[index] = FileReport(name=name, status="refused", reason=f"{name}: " + (
                        failure or "lost when another save of this knowledge base failed; add it again"))
                tmp_copy.unlink(missing_ok=True)
        pending.clear()

    def _add_file(self, path: Path, name: str, on_chunks: Callable[[str, int, int], None] | None = None, *,
                  pending: list[tuple[int, Path, str, str]] | None = None, index: int = 0) -> FileReport:
        """Add one file; commit it, or with ``pending`` leave the commit to
        :meth:`_save_pending` (recording ``(index, copy, key, sha256)``)."""
        key = disk.safe_file_name(name)
        if not path.is_file():
            raise DocumentLoadError(f"{name}: the uploaded file was not found on the server; upload it again")
        data = path.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        with self._lock:
            if self._is_unchanged(key, sha256):
                return FileReport(name=name, status="skipped", reason=UNCHANGED_REASON)

        pieces, tokens, vectors = self._prepare(path, key, name, on_chunks)
        incoming = self._directory / disk.INCOMING_DIR
        incoming.mkdir(exist_ok=True)
        tmp_copy = incoming / f"{uuid.uuid4().hex}.part"
        disk.write_bytes_durably(tmp_copy, data)
        keep_tmp = False
        try:
            with self._lock:
                if self._is_unchanged(key, sha256):  # another thread stored it meanwhile
                    return FileReport(name=name, status="skipped", reason=UNCHANGED_REASON)
                self._insert(key, pieces, tokens, vectors, {"size": len(data), "added_at": _utc_now(), "sha256": sha256})
                if pending is None:
                    self._commit_or_reload()
                    self._keep_copy(tmp_copy, key)
                else:
                    pending.append((index, tmp_copy, key, sha256))
                    keep_tmp = True
        finally:
            if not keep_tmp:
                tmp_copy.unlink(missing_ok=True)
        return FileReport(name=name, status="added", chunks=len(pieces))

    def _prepare(self, path: Path, key: str, name: str,
                 on_chunks: Callable[[str, int, int], None] | None = None) -> tuple[list, list[list[str]], np.ndarray]:
        """Load, split, tokenize and embed one file (outside the lock): (chunk Documents,
        their BM25 tokens, their vectors of shape (n, dim))."""
        docs = load_file(path, name=key)
        if key.lower().endswith((".md", ".markdown")):  # Markdown: chunk its visible text
            for doc in docs:
                doc.page_content = visible_markdown(doc.page_content)
        pieces = split_documents(docs, self._splitter)
        if not pieces:
            raise DocumentLoadError(f"{name}: no text left after splitting; upload a file that contains text")
        texts = [searchable_text(p.page_content) for p in pieces]
        tokens = [chunk_tokens(t, key) for t in texts]
        batches = []
        if on_chunks is not None:
            on_chunks(name, 0, len(texts))
        step = max(EMBED_BATCH, int(getattr(self._embedder, "batch_size", 0) or 0))
        for start in range(0, len(texts), step):
            batches.append(self._embedder.embed_documents(texts[start:start + step]))
            if on_chunks is not None:
                on_chunks(name, min(start + step, len(texts)), len(texts))
        return pieces, tokens, np.ascontiguousarray(np.concatenate(batches), dtype=np.float32)

    def _insert(self, key: str, pieces: list, tokens: list[list[str]], vectors: np.ndarray,
                record: dict[str, Any]) -> None:
        """Replace a file's chunks in memory by these (under the lock; not saved).
        ``record``: its "size", "added_at" and "sha256"."""
        self._remove_chunks_of(key)
        ids = np.arange(self._next_id, self._next_id + len(pieces), dtype=np.int64)
        self._next_id += len(pieces)
        self._index.add_with_ids(vectors, ids)
        for chunk_id, piece, toks in zip(ids.tolist(), pieces, tokens):
            meta = {k: v for k, v in piece.metadata.items() if k not in ("source", "page")}
            self._chunks[chunk_id] = Chunk(id=chunk_id, text=piece.page_content, source=key,
                                           page=piece.metadata.get("page"), metadata=meta)
            self._keywords.add(chunk_id, toks)
        self._fit_index()
        self._files.pop(key, None)
        self._files[key] = {"name": key, "chunks": len(pieces), "size": record["size"], "added_at": record["added_at"],
                            "sha256": record["sha256"], "chunk_size": self._chunk_size,
                            "chunk_overlap": self._chunk_overlap, "chunk_unit": self._chunk_unit}

    def _keep_copy(self, tmp_copy: Path, key: str) -> None:
        """Move the committed file's copy into ``files/``. A failure here only
        costs the copy (the chunks are saved), so it is logged, not raised."""
        files_dir = self._directory / disk.FILES_DIR
        try:
            files_dir.mkdir(exist_ok=True)
            os.replace(tmp_copy, files_dir / key)
            disk.fsync_dir(files_dir)
        except OSError:
            logger.exception("%s is in the knowledge base, but its copy could not be stored in %s",
                             key, files_dir)

    def _is_unchanged(self, key: str, sha256: str) -> bool:
        """Same name and content already stored (and its copy present; a missing
        copy, left by an interrupted save, is restored by adding the file again)."""
        record = self._files.get(key)
        return (record is not None and record["sha256"] == sha256
                and (self._directory / disk.FILES_DIR / key).is_file())

    def _remove_chunks_of(self, key: str) -> int:
        """Drop a file's chunks from memory (not from disk); returns how many."""
        ids = [cid for cid, c in self._chunks.items() if c.source == key]
        if ids:
            self._index.remove_ids(np.asarray(ids, dtype=np.int64))
            for cid in ids:
                del self._chunks[cid]
            self._keywords.remove(ids)
        return len(ids)

    def _fit_index(self) -> None:
        """Switch the index to the type for the current size (under the lock): IVF from
        ``approximate_from`` chunks on, retrained when the chunks have grown fourfold
        (twice the lists are due), flat again below half of ``approximate_from``. The
        vectors are read back from the current index; if the rebuild fails, that index
        (which holds them all) stays and the error is logged."""
        import faiss

        n = len(self._chunks)
        is_ivf = isinstance(self._index, faiss.IndexIVF)
        if is_ivf:
            if n >= self._approximate_from // 2 and ivf_lists(n) < 2 * self._index.nlist:
                return
        elif n < self._approximate_from:
            return
        approximate = n >= (self._approximate_from // 2 if is_ivf else self._approximate_from)
        try:
            ids = np.fromiter(sorted(self._chunks), dtype=np.int64, count=n)
            vectors = self._index.reconstruct_batch(ids) if n else np.zeros((0, self._embedder.dim), np.float32)
            index = build_index(vectors, ids, self._embedder.dim, approximate)
        except Exception:  # noqa: BLE001 - the current index still holds every vector: keep searching it
            logger.exception("knowledge base at %s: could not rebuild the index for %d chunks; keeping %s",
                             self._directory, n, self.index_description)
            return
        self._index = index
        logger.info("knowledge base at %s: %d chunks, dense search now uses %s", self._directory, n,
                    self.index_description)

    # ---------------------------------------------------------- delete, list

    def delete_file(self, name: str) -> int:
        """Remove a file's chunks and its stored copy.

        Args:
            name: a name as listed by :meth:`files` (or as uploaded).

        Returns:
            The number of chunks removed.

        Raises:
            KeyError: no such file in the knowledge base.
        """
        with self._lock:
            key = name if name in self._files else disk.safe_file_name(name)
            if key not in self._files:
                known = ", ".join(sorted(self._files)) or "none"
                raise KeyError(f"no file named {name!r} in the knowledge base at {self._directory} "
                               f"(files: {known})")
            removed = self._remove_chunks_of(key)
            self._fit_index()
            del self._files[key]
            self._commit_or_reload()
            (self._directory / disk.FILES_DIR / key).unlink(missing_ok=True)
        logger.info("deleted %s from %s (%d chunks)", key, self._directory, removed)
        return removed

    def files(self) -> list[dict[str, Any]]:
        """The stored files, oldest first: dicts with "name", "chunks" (count),
        "size" (bytes of the original file), "added_at" (ISO-8601 UTC) and "sha256" (hex)."""
        with self._lock:
            return [{k: f[k] for k in ("name", "chunks", "size", "added_at", "sha256")}
                    for f in self._files.values()]

    def __len__(self) -> int:
        """Number of chunks stored."""
        with self._lock:
            return len(self._chunks)

    @property
    def directory(self) -> Path:
        """The knowledge base's folder."""
        return self._directory

    @property
    def index_kind(self) -> str:
        """"flat" (exact) or "ivf" (approximate): the FAISS index dense search uses now."""
        import faiss

        return "ivf" if isinstance(self._index, faiss.IndexIVF) else "flat"

    @property
    def index_description(self) -> str:
        """The index type with its parameters, e.g. "flat (exact)" or "IVF-flat, 1264 lists, nprobe 16"."""
        with self._lock:
            if self.index_kind == "ivf":
                return f"IVF-flat, {self._index.nlist} lists, nprobe {self._index.nprobe}"
            return "flat (exact)"

    @property
    def embedding_model(self) -> str:
        """Name of the embedding model its vectors were made with."""
        return self._embedder.name

    # ---------------------------------------------------------------- search

    def search(self, query: str, top_k: int = 3, score_threshold: float | None = None, *,
               mode: str = "dense", reranker: "Reranker | None" = None,
               dense_weight: float | None = None, fusion: str | None = None) -> list[SearchResult]:
        """Retrieve the chunks that best answer ``query`` (the retriever).

        Args:
            query: the user's question.
            top_k: most results to return (>= 1).
            score_threshold: if given, the question gets no passage ([]) unless some
                candidate chunk reaches this **relevance** (:func:`rag.fusion.relevance`,
                in [0, 1]: the larger of its calibrated cosine and the question's keyword
                coverage), in every mode. It says "the knowledge base has nothing on
                this"; it does not thin out the ranking: when one chunk passes, the best
                ``top_k`` are returned in ranking order, so a chunk ranked first on strong
                keyword evidence is never cut for a low cosine. Below 0 keeps everything.
            mode: ``"dense"`` (FAISS, cosine; the default, for compatibility),
                ``"bm25"`` (keywords; only chunks sharing a word with the query),
                or ``"hybrid"`` (the best :data:`HYBRID_CANDIDATES` of each,
                fused by ``fusion``; what the server uses).
            reranker: if given, the best ``max(top_k, RERANK_CANDIDATES)`` chunks
                of ``mode`` are re-ordered by it (see :mod:`rag.rerank`).
            dense_weight: the weight of the dense score in convex hybrid fusion, in [0, 1];
                None: the embedding model's default (:func:`rag.fusion.fusion_for`).
            fusion: one of :data:`rag.fusion.FUSIONS`; None: the model's default (likewise).

        Returns:
            Up to ``top_k`` :class:`SearchResult`, best first: ``score`` is the
            score they are ranked by (cosine, BM25, hybrid or rerank score; see
            :class:`SearchResult`), ``scores`` holds every score known, always
            including ``"cosine"``, ``"coverage"`` and ``"relevance"``. [] for an empty
            knowledge base, and in bm25 mode when no chunk shares a word with the query.

        Raises:
            ValueError: ``top_k`` < 1, an unknown ``mode`` or ``fusion``, or a bad ``dense_weight``.
        """
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
        if mode not in RETRIEVAL_MODES:
            raise ValueError(f"unknown retrieval mode {mode!r}: use one of {', '.join(RETRIEVAL_MODES)}")
        default_fusion, default_weight = fusion_for(self._embedder.name)
        fusion = default_fusion if fusion is None else fusion
        dense_weight = default_weight if dense_weight is None else dense_weight
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}: use one of {', '.join(FUSIONS)}")
        dense_weight = check_weight(dense_weight)
        top_k = int(top_k)
        if len(self) == 0:
            return []
        query_vector = self._embedder.embed_query(query).reshape(1, -1)
        query_tokens = list(dict.fromkeys(tokenize(query)))
        # How many ranked candidates to carry out of the lock (the reranker's pool),
        # and how deep to look for one that passes the threshold.
        wanted = max(top_k, RERANK_CANDIDATES) if reranker is not None else top_k
        depth = wanted if score_threshold is None else max(wanted, HYBRID_CANDIDATES)
        with self._lock:
            idf = self._keywords.idf(query_tokens)
            ranked, scores = self._rank(query_vector, query_tokens, mode, dense_weight, depth, fusion, idf)
            for cid, _ in ranked:
                s = scores[cid]
                s["coverage"] = keyword_coverage(idf, self._keywords.chunk_token_set(cid))
                s["relevance"] = relevance(s["cosine"], s["coverage"], self._embedder.name)
            if score_threshold is not None and max((scores[c]["relevance"] for c, _ in ranked), default=-1.0) \
                    < score_threshold:
                return []
            candidates = []
            for cid, rank_score in ranked[:wanted]:
                c = self._chunks[cid]
                chunk = Chunk(id=c.id, text=c.text, source=c.source, page=c.page, metadata=dict(c.metadata))
                candidates.append(SearchResult(chunk=chunk, score=float(rank_score), scores=scores[cid],
                                               retriever=mode))
        if reranker is not None and candidates:
            candidates = self._rerank(query, candidates, reranker)
        return candidates[:top_k]

    def _rank(self, query_vector: np.ndarray, query_tokens: list[str], mode: str, dense_weight: float,
              depth: int, fusion: str = DEFAULT_FUSION, idf: dict[str, float] | None = None,
              ) -> tuple[list[tuple[int, float]], dict[int, dict[str, float]]]:
        """Rank chunks for a query (under the lock): ``([(chunk id, score), ...] best
        first, {chunk id: {"cosine": .., "bm25": .., "hybrid": ..}})``; ``depth`` =
        how many ranked chunks are needed at most."""
        n_total = self._index.ntotal
        if mode == "dense":
            k = min(depth, n_total)
            sims, ids = self._index.search(query_vector, k)
            ranked = [(int(cid), float(sim)) for sim, cid in zip(sims[0].tolist(), ids[0].tolist())
                      if cid >= 0 and cid in self._chunks]
            return ranked, {cid: {"cosine": sim} for cid, sim in ranked}

        bm25_ids, bm25_scores = self._keywords.scores(query_tokens)  # every chunk, ids ascending
        order = np.lexsort((bm25_ids, -bm25_scores)) if len(bm25_scores) else np.zeros(0, dtype=np.int64)
        if mode == "bm25":
            ranked = [(int(bm25_ids[i]), float(bm25_scores[i])) for i in order[:depth] if bm25_scores[i] > 0]
            cosine = self._cosines(query_vector, [cid for cid, _ in ranked])
            return ranked, {cid: {"cosine": cosine[cid], "bm25": s} for cid, s in ranked}

        pool = max(HYBRID_CANDIDATES, depth)
        sims, ids = self._index.search(query_vector, min(pool, n_total))
        cosine = {int(cid): float(sim) for sim, cid in zip(sims[0].tolist(), ids[0].tolist())
                  if cid >= 0 and cid in self._chunks}
        dense_order = list(cosine)
        bm25_order = [int(bm25_ids[i]) for i in order[:pool] if bm25_scores[i] > 0]
        keyword_only = [cid for cid in bm25_order if cid not in cosine]
        cosine.update(self._cosines(query_vector, keyword_only))
        candidates = np.fromiter(cosine, dtype=np.int64, count=len(cosine))
        positions = np.minimum(np.searchsorted(bm25_ids, candidates), max(len(bm25_ids) - 1, 0))
        found = (bm25_ids[positions] == candidates) if len(bm25_ids) else np.zeros(len(candidates), dtype=bool)
        values = np.where(found, bm25_scores[positions] if len(bm25_scores) else 0.0, 0.0)
        bm25 = dict(zip(candidates.tolist(), values.astype(float).tolist()))
        if fusion == "rrf":
            fused = reciprocal_rank_fusion([dense_order, bm25_order])
        else:
            bound = bm25_upper_bound(idf or {}, self._keywords.k1) if fusion == "convex-bound" else None
            fused = convex_combination(cosine, bm25, dense_weight, bm25_bound=bound or None)
        ranked = fused[:depth]
        return ranked, {cid: {"cosine": cosine[cid], "bm25": bm25[cid], "hybrid": f} for cid, f in ranked}

    def _cosines(self, query_vector: np.ndarray, ids: Sequence[int]) -> dict[int, float]:
        """Cosine similarity of the query and the stored vectors of ``ids`` (under the lock)."""
        if not ids:
            return {}
        vectors = np.stack([self._index.reconstruct(int(cid)) for cid in ids])
        sims = vectors @ query_vector.reshape(-1)
        return {int(cid): float(sim) for cid, sim in zip(ids, sims.tolist())}

    @staticmethod
    def _rerank(query: str, candidates: list[SearchResult], reranker: "Reranker") -> list[SearchResult]:
        """Re-order candidates by the reranker's score (ties keep the earlier order)."""
        rerank_scores = reranker.score(query, [r.chunk.text for r in candidates])
        out = []
        for r, s in zip(candidates, rerank_scores.tolist()):
            scores = dict(r.scores)
            scores["rerank"] = float(s)
            out.append(SearchResult(chunk=r.chunk, score=float(s), scores=scores, retriever=f"{r.retriever}+rerank"))
        order = sorted(range(len(out)), key=lambda i: -out[i].score)
        return [out[i] for i in order]
