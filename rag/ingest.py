"""Adding and deleting files: load, split, embed in batches, store, save (with progress
and per-file reports). Mixed into :class:`rag.store.KnowledgeBase`."""
from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import persistence as disk
from .kb_state import KnowledgeBaseClosedError, UnknownFile, _utc_now
from .keywords import chunk_tokens
from .loaders import DocumentLoadError, load_file
from .splitter import searchable_text, split_documents, visible_markdown
from .stores import StoredChunk
from .types import Chunk, FileReport

logger = logging.getLogger("rag.store")

UNCHANGED_REASON = "unchanged: already in the knowledge base"
#: Chunks embedded per call while adding a file (progress is reported between calls);
#: more when the embedder's own batch is larger (a GPU's).
EMBED_BATCH = 64


class Ingestion:
    """Adding and deleting files of :class:`rag.store.KnowledgeBase` (a mixin)."""

    # ------------------------------------------------------------- add files

    def add_files(self, paths: Sequence[str | Path], names: Sequence[str] | None = None,
                  progress: Callable[[str, int, int], None] | None = None, *,
                  on_chunks: Callable[[str, int, int], None] | None = None,
                  commit_every: int = 1, commit_interval: float | None = None) -> list[FileReport]:
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
            commit_interval: also save once this many seconds passed since the last
                save (None: only by count), so a slow batch saves as it goes. A
                file is logged "added" once it is saved.

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
        all_names = [str(names[i]) if names is not None else Path(p).name for i, p in enumerate(paths)]
        try:
            with self._writing():
                return self._add_files(paths, all_names, progress, on_chunks, commit_every, commit_interval)
        except (KnowledgeBaseClosedError, disk.FolderBusyError) as exc:  # before the first file
            return [FileReport(name=n, status="refused", reason=f"{n}: {exc}") for n in all_names]

    def _add_files(self, paths: list, names: list[str], progress, on_chunks, commit_every: int,
                   commit_interval: float | None) -> list[FileReport]:
        last_save = time.monotonic()
        reports: list[FileReport] = []
        pending: list[tuple[int, Path, str, str]] = []  # added, not saved yet: (report index, copy, key, sha256)
        for i, path in enumerate(paths):
            name = names[i]
            if self._closing.is_set():  # deleted meanwhile: nothing more is written
                reports += [FileReport(name=n, status="refused", reason=f"{n}: knowledge base "
                                       f"{self._directory.name!r} was deleted while the upload ran; "
                                       "upload the files again to create it anew") for n in names[i:]]
                for _, tmp_copy, _, _ in pending:
                    tmp_copy.unlink(missing_ok=True)
                pending.clear()
                break
            if progress is not None:
                progress(name, i, len(paths))
            try:
                report = self._add_file(Path(path), name, on_chunks,
                                        pending=pending if commit_every > 1 else None, index=len(reports))
            except (DocumentLoadError, KnowledgeBaseClosedError) as exc:
                report = FileReport(name=name, status="refused", reason=str(exc))
            except Exception as exc:
                logger.exception("unexpected error while adding %s to %s", name, self._directory)
                report = FileReport(name=name, status="refused",
                                    reason=f"{name}: unexpected error ({type(exc).__name__}: {exc}); "
                                           "see the server log, and report it if it persists")
            if pending and pending[-1][0] == len(reports):
                logger.info("%s: embedded (%d chunks), saved with the next commit", name, report.chunks)
            else:
                logger.info("%s: %s%s", name, report.status,
                            f" ({report.chunks} chunks)" if report.status == "added" else f" - {report.reason}")
            reports.append(report)
            if len(pending) >= commit_every or (pending and commit_interval is not None
                                                and time.monotonic() - last_save >= commit_interval):
                self._save_pending(pending, reports)
                last_save = time.monotonic()
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
                    logger.info("%s: added (%d chunks)", reports[index].name, reports[index].chunks)
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
                self._insert(key, pieces, tokens, vectors, {"size": len(data), "added_at": _utc_now(),
                                                            "sha256": sha256})
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
        their BM25 tokens, their vectors of shape (n, dim)). A delete of the knowledge base
        stops it between embedding batches (:class:`KnowledgeBaseClosedError`)."""
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
            self._check_open()
            batches.append(self._embedder.embed_documents(texts[start:start + step]))
            if on_chunks is not None:
                on_chunks(name, min(start + step, len(texts)), len(texts))
        return pieces, tokens, np.ascontiguousarray(np.concatenate(batches), dtype=np.float32)

    def _insert(self, key: str, pieces: list, tokens: list[list[str]], vectors: np.ndarray,
                record: dict[str, Any]) -> None:
        """Replace a file's chunks in memory and in the vector store by these (under the
        lock; not saved). ``record``: its "size", "added_at" and "sha256"."""
        self._remove_chunks_of(key)
        ids = np.arange(self._next_id, self._next_id + len(pieces), dtype=np.int64)
        self._next_id += len(pieces)
        stored = ([StoredChunk(int(i), searchable_text(p.page_content), key) for i, p in zip(ids, pieces)]
                  if self._store.stores_text else None)
        self._store.add(ids, vectors, stored)
        for chunk_id, piece, toks in zip(ids.tolist(), pieces, tokens):
            meta = {k: v for k, v in piece.metadata.items() if k not in ("source", "page")}
            self._chunks[chunk_id] = Chunk(id=chunk_id, text=piece.page_content, source=key,
                                           page=piece.metadata.get("page"), metadata=meta)
            self._keywords.add(chunk_id, toks)
        self._files.pop(key, None)
        self._files[key] = {"name": key, "chunks": len(pieces), "size": record["size"], "added_at": record["added_at"],
                            "sha256": record["sha256"], "chunk_size": self._chunk_size,
                            "chunk_overlap": self._chunk_overlap, "chunk_unit": self._chunk_unit}

    # --------------------------------------------------------------- reindex

    @classmethod
    def reindex(cls, directory: str | Path, embedder, *, chunk_size: int | None = None,
                chunk_overlap: int | None = None, chunk_unit: str | None = None,
                progress: Callable[[str, int, int], None] | None = None,
                on_chunks: Callable[[str, int, int], None] | None = None) -> tuple[Any, list[FileReport]]:
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
            ValueError: its vectors are in another store than FAISS (migrate it first).
        """
        from .kb_state import KnowledgeBaseCorruptError

        directory = Path(directory)
        if not (directory / disk.MANIFEST_NAME).is_file():
            raise KnowledgeBaseCorruptError(f"{directory}: no knowledge base here (no {disk.MANIFEST_NAME})")
        kb = cls(directory, embedder, chunk_size, chunk_overlap, chunk_unit=chunk_unit)
        with disk.folder_lock(directory), kb._lock:
            manifest = kb._read_manifest()
            if manifest.get("vector_store", "faiss") != "faiss":
                raise ValueError(f"knowledge base {directory.name!r} keeps its vectors in "
                                 f"{manifest.get('vector_store')}: move it to FAISS first (python -m rag migrate "
                                 f"--kb {directory.name} --to faiss), reindex, then migrate it back")
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
                kb._insert(key, pieces, tokens, vectors, record)
                reports.append(FileReport(name=key, status="added", chunks=len(pieces)))
            kb._commit()
            kb._tidy_file_copies()
        logger.info("reindexed %s with %s: %d files, %d chunks", directory, embedder.name, len(kb._files), len(kb))
        return kb, reports

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
        """Drop a file's chunks from memory, not from disk (see :mod:`rag.kb_sync`); returns how many."""
        ids = [cid for cid, c in self._chunks.items() if c.source == key]
        if ids:
            self._forget_vectors(ids)
            for cid in ids:
                del self._chunks[cid]
            self._keywords.remove(ids)
        return len(ids)

    # ---------------------------------------------------------- delete, list

    def delete_file(self, name: str) -> int:
        """Remove a file's chunks and its stored copy.

        Args:
            name: a name as listed by :meth:`files` (or as uploaded).

        Returns:
            The number of chunks removed.

        Raises:
            UnknownFile: no such file in the knowledge base (a :class:`KeyError`).
            KnowledgeBaseClosedError: the knowledge base was deleted.
            rag.persistence.FolderBusyError: another process kept writing it too long.
        """
        with self._writing(), self._lock:
            key = name if name in self._files else disk.safe_file_name(name)
            if key not in self._files:
                known = ", ".join(sorted(self._files)) or "none"
                raise UnknownFile(f"no file named {name!r} in knowledge base {self._directory.name!r} "
                                  f"(files: {known})")
            removed = self._remove_chunks_of(key)
            del self._files[key]
            self._commit_or_reload()
            (self._directory / disk.FILES_DIR / key).unlink(missing_ok=True)
        logger.info("deleted %s from %s (%d chunks)", key, self._directory, removed)
        return removed
