"""The LangChain tab's knowledge-base management: pick, create and delete named
knowledge bases, list and delete their files, ingest uploads with progress.

Which knowledge base a browser session uses lives in that session's
``gr.State`` (a name) and is passed to every handler; nothing here is shared
between sessions except the knowledge bases themselves (through
:class:`~webui.services.ChatService`).
"""
from __future__ import annotations

import html
import logging
import threading
from pathlib import Path
from typing import Any, Sequence

import gradio as gr

from rag.loaders import ocr_progress
from rag.loaders.registry import describe_types
from rag.registry import InvalidKnowledgeBaseName, UnknownKnowledgeBase
from rag.store import (EmbeddingMismatchError, KnowledgeBase, KnowledgeBaseCorruptError, UnknownFile,
                       VectorStoreMismatchError)
from rag.types import FileReport

from .i18n import t
from .services import ChatService

log = logging.getLogger(__name__)

FILE_COLUMNS = ["file", "size", "chunks", "added (UTC)"]
KB_ERRORS = (InvalidKnowledgeBaseName, UnknownKnowledgeBase, EmbeddingMismatchError, KnowledgeBaseCorruptError,
             VectorStoreMismatchError)


def received_by_gradio(path: Path, upload_folder: str | Path | None = None) -> bool:
    """Whether ``path`` is a file Gradio itself received: inside its upload folder
    (``gradio.utils.get_upload_folder()``, i.e. ``$GRADIO_TEMP_DIR`` or ``<tmp>/gradio``).

    Gradio checks client-named ``FileData`` paths only for apps it launches; ours is
    mounted (``gr.mount_gradio_app``), so a client could name any server file (issue 16,
    item 1). Both sides are resolved (symlinks, ``..``) before comparing.
    """
    folder = Path(upload_folder or gr.utils.get_upload_folder()).resolve()
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return resolved.is_file() and resolved.is_relative_to(folder)


def human_size(n_bytes: int) -> str:
    """``1234`` -> ``"1.2 KB"`` (powers of 1024; bytes below 1 KB)."""
    size = float(n_bytes)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"  # pragma: no cover


class UploadCancelled(Exception):
    """Raised from the progress callbacks when the page's **Cancel upload** was clicked."""


def format_report(reports: Sequence[FileReport], lang: str = "en") -> str:
    """Markdown table of an upload batch in ``lang``: one row per file with status, chunks
    and reason ("skipped" = same name and content as a stored file; "added" replaces a changed one)."""
    if not reports:
        return t(lang, "no_files", types=describe_types())
    icon = {"added": "✅", "skipped": "⏭️", "refused": "❌"}
    rows = [t(lang, "report_header"), "|---|---|---|---|"]
    for r in reports:
        cell = lambda s: html.escape(str(s or "")).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        status = t(lang, r.status) if r.status in icon else r.status
        rows.append(f"| {cell(r.name)} | {icon.get(r.status, '')} {status} | {r.chunks} | {cell(r.reason)} |")
    return "\n".join(rows)


class KnowledgeHandlers:
    """Handlers for the knowledge-base controls; ``name`` arguments come from the
    session's ``gr.State`` (None = the server's default knowledge base)."""

    def __init__(self, service: ChatService):
        self.service = service
        self._cancel: dict[str, threading.Event] = {}  # upload id (the page session) -> cancel flag

    @property
    def default(self) -> str:
        """The server's default knowledge base (``--knowledge-base``)."""
        return self.service.settings.knowledge_base

    def names(self) -> list[str]:
        """Knowledge bases to offer: those on disk plus the default one, sorted."""
        return sorted(set(self.service.knowledge_bases.names()) | {self.default})

    def kb(self, name: str | None, *, create: bool = False) -> KnowledgeBase:
        """The knowledge base ``name`` (the default one is created on first use).

        Raises:
            gr.Error: with the registry's or store's message (unknown or invalid
                name, embedding-model mismatch, unreadable files).
        """
        name = name or self.default
        try:
            return self.service.knowledge_base(name, create=create or name == self.default)
        except KB_ERRORS as exc:
            raise gr.Error(str(exc)) from None

    def status(self, name: str | None = None, lang: str = "en") -> str:
        """One line on the knowledge base: files, chunks, embedding model, retrieval
        (and a fallback warning); a problem opening it is shown instead of raised."""
        name = name or self.default
        if name == self.default and not self.service.knowledge_bases.exists(name):
            # not created just to be shown: a deleted default base stays deleted until used
            return t(lang, "status_new", name=html.escape(name))
        try:
            kb = self.kb(name)
        except gr.Error as exc:
            return f"⚠️ {html.escape(str(exc))}"
        s = self.service.settings
        reranker = self.service.reranker.name if self.service.reranker is not None else "off"
        line = t(lang, "status", name=html.escape(kb.directory.name), files=len(kb.files()), chunks=len(kb),
                 model=kb.embedding_model, mode=s.retrieval_mode, reranker=reranker)
        if self.service.embedding_fallback:
            line += "  \n" + t(lang, "embedding_fallback", model=kb.embedding_model)
        return line

    def files_table(self, name: str | None = None) -> list[list[Any]]:
        """Rows of the files table: file, size, chunks, time added (UTC, seconds)."""
        name = name or self.default
        if not self.service.knowledge_bases.exists(name):
            return []
        try:
            files = self.kb(name).files()
        except gr.Error:
            return []
        return [[f["name"], human_size(f["size"]), f["chunks"], f["added_at"].replace("T", " ").replace("+00:00", "")]
                for f in files]

    def file_choices(self, name: str | None) -> dict:
        """Update for the file picker: the files of ``name``, none picked."""
        return gr.update(choices=[row[0] for row in self.files_table(name)], value=None)

    def _view(self, name: str, lang: str = "en") -> tuple[str, str, list[list[Any]], dict]:
        return name, self.status(name, lang), self.files_table(name), self.file_choices(name)

    def select(self, name: str | None, lang: str = "en") -> tuple[str, str, list[list[Any]], dict]:
        """Pick a knowledge base: (session state, status, files table, file picker)."""
        return self._view(name or self.default, lang)

    def create(self, new_name: str, current: str | None, lang: str = "en"
               ) -> tuple[dict, str, str, list[list[Any]], dict, str]:
        """Create (or just switch to) ``new_name``: (knowledge-base picker, state, status,
        files table, file picker, cleared name box).

        Raises:
            gr.Error: an invalid name (the message gives the rule).
        """
        name = (new_name or "").strip()
        if not name:
            raise gr.Error(t(lang, "type_kb_name"))
        self.kb(name, create=True)
        log.info("knowledge base %s created or selected from the page", name)
        return (gr.update(choices=self.names(), value=name), *self._view(name, lang), "")

    def delete(self, name: str | None, lang: str = "en") -> tuple[dict, str, str, list[list[Any]], dict]:
        """Delete knowledge base ``name`` with all its files, then switch to the default one:
        (picker, state, status, files table, file picker).

        Raises:
            gr.Error: it does not exist (any more).
        """
        name = name or self.default
        try:
            self.service.knowledge_bases.delete(name)
        except KB_ERRORS as exc:
            raise gr.Error(str(exc)) from None
        gr.Info(t(lang, "kb_deleted", name=name))
        return (gr.update(choices=self.names(), value=self.default), *self._view(self.default, lang))

    def delete_file(self, name: str | None, file: str | None, lang: str = "en"
                    ) -> tuple[str, str, list[list[Any]], dict]:
        """Delete one file and its chunks: (message, status, files table, file picker).

        Raises:
            gr.Error: no file picked, or it is not in the knowledge base.
        """
        if not file:
            raise gr.Error(t(lang, "pick_file"))
        kb = self.kb(name)
        try:
            removed = kb.delete_file(file)
        except UnknownFile as exc:
            raise gr.Error(str(exc.args[0])) from None
        message = t(lang, "file_deleted", file=html.escape(file), chunks=removed)
        return message, self.status(name, lang), self.files_table(name), self.file_choices(name)

    def cancel(self, upload_id: str | None) -> None:
        """**Cancel upload**: the upload ``upload_id`` stops at its next progress step; the
        file being embedded is not added (the knowledge base stays as it was before it)."""
        flag = self._cancel.get(upload_id or "")
        if flag is not None:
            flag.set()

    def ingest(self, files: Sequence[Any] | None, name: str | None = None,
               progress: gr.Progress | None = None, lang: str = "en",
               upload_id: str | None = None) -> tuple[str, str]:
        """Add uploaded files to knowledge base ``name``, reporting progress (files, pages
        read by OCR, chunks embedded) to ``progress`` while it runs: (per-file report table,
        status line). Files go one at a time, each committed before the next; a
        :meth:`cancel` of ``upload_id`` stops between embedding batches, reporting the
        file being embedded and those after it as cancelled."""
        given = [Path(f if isinstance(f, str) else f.name) for f in files or []]
        paths = [p for p in given if received_by_gradio(p)]
        refused = [FileReport(p.name, "refused", reason=t(lang, "not_uploaded"))
                   for p in given if not received_by_gradio(p)]
        for report in refused:
            log.warning("ingest refused a path outside Gradio's upload folder: %s", report.name)
        if not paths:
            return format_report(refused, lang), self.status(name, lang)
        kb = self.kb(name, create=True)
        flag = threading.Event()
        if upload_id:
            self._cancel[upload_id] = flag
        position = {"file": 0, "n": len(paths)}

        def step(key: str, file_name: str, done: int = 0, total: int = 0) -> str:
            if flag.is_set():
                raise UploadCancelled(file_name)
            return t(lang, key, i=position["file"] + 1, n=position["n"], name=file_name, done=done, total=total)

        def on_chunks(file_name: str, done: int, total: int) -> None:
            desc = step("progress_chunks", file_name, done, total)
            if progress is not None:
                progress((done, total), unit="chunks", desc=desc)

        def on_ocr(file_name: str, done: int, total: int) -> None:
            desc = step("progress_ocr", file_name, done, total)
            if progress is not None:
                progress((done, total), unit="pages", desc=desc)

        reports = list(refused)
        try:
            with ocr_progress(on_ocr):
                for i, path in enumerate(paths):
                    position["file"] = i
                    if flag.is_set():
                        reports.append(FileReport(path.name, "refused", reason=t(lang, "upload_cancelled")))
                        continue
                    if progress is not None:
                        progress((i, len(paths)), unit="files",
                                 desc=t(lang, "progress_file", i=i + 1, n=len(paths), name=path.name))
                    [report] = kb.add_files([path], names=[path.name], on_chunks=on_chunks)
                    if flag.is_set() and report.status == "refused":  # stopped by the cancel, not a bad file
                        report = FileReport(path.name, "refused", reason=t(lang, "upload_cancelled"))
                    reports.append(report)
        except UploadCancelled:  # between two files: the ones left are reported above
            pass
        finally:
            if upload_id and self._cancel.get(upload_id) is flag:
                del self._cancel[upload_id]
        log.info("ingested %d file(s) into %s, %d chunk(s) added%s", len(reports), kb.directory.name,
                 sum(r.chunks for r in reports), " (cancelled)" if flag.is_set() else "")
        return format_report(reports, lang), self.status(name, lang)
