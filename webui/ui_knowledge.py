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
from pathlib import Path
from typing import Any, Sequence

import gradio as gr

from rag.loaders import ocr_progress
from rag.loaders.registry import describe_types
from rag.registry import InvalidKnowledgeBaseName, UnknownKnowledgeBase
from rag.store import EmbeddingMismatchError, KnowledgeBase, KnowledgeBaseCorruptError, VectorStoreMismatchError
from rag.types import FileReport

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


def format_report(reports: Sequence[FileReport]) -> str:
    """Markdown table of an upload batch: one row per file with status, chunks and reason
    ("skipped" = same name and content as a stored file; "added" replaces a changed one)."""
    if not reports:
        return f"No file uploaded: choose {describe_types()} files first."
    icon = {"added": "✅", "skipped": "⏭️", "refused": "❌"}
    rows = ["| file | status | chunks added | reason |", "|---|---|---|---|"]
    for r in reports:
        cell = lambda s: html.escape(str(s or "")).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        rows.append(f"| {cell(r.name)} | {icon.get(r.status, '')} {r.status} | {r.chunks} | {cell(r.reason)} |")
    return "\n".join(rows)


class KnowledgeHandlers:
    """Handlers for the knowledge-base controls; ``name`` arguments come from the
    session's ``gr.State`` (None = the server's default knowledge base)."""

    def __init__(self, service: ChatService):
        self.service = service

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

    def status(self, name: str | None = None) -> str:
        """One line on the knowledge base: files, chunks, embedding model, retrieval
        (and a fallback warning); a problem opening it is shown instead of raised."""
        name = name or self.default
        if name == self.default and not self.service.knowledge_bases.exists(name):
            # not created just to be shown: a deleted default base stays deleted until used
            return f"Knowledge base **{html.escape(name)}**: 0 file(s), 0 chunk(s) (created by the first upload)."
        try:
            kb = self.kb(name)
        except gr.Error as exc:
            return f"⚠️ {html.escape(str(exc))}"
        s = self.service.settings
        reranker = self.service.reranker.name if self.service.reranker is not None else "off"
        line = (f"Knowledge base **{html.escape(kb.directory.name)}**: {len(kb.files())} file(s), {len(kb)} chunk(s); "
                f"embedding model `{kb.embedding_model}`; retrieval `{s.retrieval_mode}`, reranker `{reranker}`.")
        if self.service.embedding_fallback:
            line += (f"  \n⚠️ The default embedding model could not be loaded offline, so `{kb.embedding_model}`, "
                     "which ships inside a package, is used instead. Pass `--embedding-model` to choose another.")
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

    def _view(self, name: str) -> tuple[str, str, list[list[Any]], dict]:
        return name, self.status(name), self.files_table(name), self.file_choices(name)

    def select(self, name: str | None) -> tuple[str, str, list[list[Any]], dict]:
        """Pick a knowledge base: (session state, status, files table, file picker)."""
        return self._view(name or self.default)

    def create(self, new_name: str, current: str | None) -> tuple[dict, str, str, list[list[Any]], dict, str]:
        """Create (or just switch to) ``new_name``: (knowledge-base picker, state, status,
        files table, file picker, cleared name box).

        Raises:
            gr.Error: an invalid name (the message gives the rule).
        """
        name = (new_name or "").strip()
        if not name:
            raise gr.Error("Type a name for the new knowledge base first.")
        self.kb(name, create=True)
        log.info("knowledge base %s created or selected from the page", name)
        return (gr.update(choices=self.names(), value=name), *self._view(name), "")

    def delete(self, name: str | None) -> tuple[dict, str, str, list[list[Any]], dict]:
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
        gr.Info(f"Knowledge base {name} deleted.")
        return (gr.update(choices=self.names(), value=self.default), *self._view(self.default))

    def delete_file(self, name: str | None, file: str | None) -> tuple[str, str, list[list[Any]], dict]:
        """Delete one file and its chunks: (message, status, files table, file picker).

        Raises:
            gr.Error: no file picked, or it is not in the knowledge base.
        """
        if not file:
            raise gr.Error("Pick a file to delete first.")
        kb = self.kb(name)
        try:
            removed = kb.delete_file(file)
        except KeyError as exc:
            raise gr.Error(str(exc.args[0])) from None
        message = f"Deleted **{html.escape(file)}** ({removed} chunks)."
        return message, self.status(name), self.files_table(name), self.file_choices(name)

    def ingest(self, files: Sequence[Any] | None, name: str | None = None,
               progress: gr.Progress | None = None) -> tuple[str, str]:
        """Add uploaded files to knowledge base ``name``, reporting progress (files and
        chunks) to ``progress`` while it runs: (per-file report table, status line)."""
        given = [Path(f if isinstance(f, str) else f.name) for f in files or []]
        paths = [p for p in given if received_by_gradio(p)]
        refused = [FileReport(p.name, "refused", reason="not a file uploaded through this page: "
                              "upload it with the file picker") for p in given if not received_by_gradio(p)]
        for report in refused:
            log.warning("ingest refused a path outside Gradio's upload folder: %s", report.name)
        if not paths:
            return format_report(refused), self.status(name)
        kb = self.kb(name, create=True)
        position = {"file": 0, "n": len(paths)}

        def on_file(file_name: str, i: int, n: int) -> None:
            position["file"] = i
            if progress is not None:
                progress((i, n), desc=f"File {i + 1}/{n}: {file_name}", unit="files")

        def on_chunks(file_name: str, done: int, total: int) -> None:
            if progress is not None:
                progress((done, total), unit="chunks",
                         desc=f"File {position['file'] + 1}/{position['n']}: {file_name} · chunks {done}/{total}")

        def on_ocr(file_name: str, done: int, total: int) -> None:
            if progress is not None:
                progress((done, total), unit="pages",
                         desc=f"File {position['file'] + 1}/{position['n']}: {file_name} · OCR page {done}/{total}")

        with ocr_progress(on_ocr):
            reports = refused + kb.add_files(paths, names=[p.name for p in paths], progress=on_file,
                                             on_chunks=on_chunks)
        log.info("ingested %d file(s) into %s, %d chunk(s) added", len(reports), kb.directory.name,
                 sum(r.chunks for r in reports))
        return format_report(reports), self.status(name)
