"""What every loader shares: the error type, the load options and the Office zip guard.

A loader is a module of this package with one function
``load(path: Path, name: str, options: LoadOptions) -> list[Document]``; the table
in :mod:`rag.loaders.registry` maps file extensions to it.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

#: OCR modes: "auto" reads images and PDF pages without a text layer by OCR, "off" refuses them.
OCR_MODES = ("auto", "off")

#: Zip-bomb guards for Office files (.docx, .xlsx, .pptx are zip archives): most bytes all
#: parts may expand to, most parts, and the largest expansion ratio of a part bigger than 10 MB.
#: Real files of the corpus expand 2-20 times; python-docx's own test files stay far below.
OFFICE_MAX_UNCOMPRESSED = 256 * 1024 * 1024
OFFICE_MAX_PARTS = 10_000
OFFICE_MAX_RATIO = 100
_RATIO_CHECK_MIN_BYTES = 10 * 1024 * 1024


class DocumentLoadError(ValueError):
    """A file could not be turned into text.

    The message starts with the file name and names the fix, e.g.
    ``"x.pdf: the PDF is password-protected; remove the password ... and upload it again"``.
    """


@dataclass(frozen=True)
class LoadOptions:
    """Settings that change how files are read (server- or CLI-wide, see :func:`configure`).

    Attributes:
        ocr: ``"auto"`` (default): images, and PDF pages without a text layer, are read by
            OCR (:mod:`rag.loaders.ocr`); pages with a text layer never are. ``"off"``:
            images are refused and scanned PDF pages skipped (a PDF with no text at all
            is refused), naming ``--ocr auto`` as the fix.
    """

    ocr: str = "auto"

    def __post_init__(self) -> None:
        if self.ocr not in OCR_MODES:
            raise ValueError(f"ocr must be one of {', '.join(OCR_MODES)}, got {self.ocr!r}")


_options = LoadOptions()
_options_lock = threading.Lock()


def configure(**changes) -> LoadOptions:
    """Change the process-wide :class:`LoadOptions` (e.g. ``configure(ocr="off")`` from
    ``--ocr off``); returns the new options. Raises ValueError on an unknown value."""
    global _options
    with _options_lock:
        _options = replace(_options, **changes)
        return _options


def current_options() -> LoadOptions:
    """The process-wide :class:`LoadOptions` in force."""
    return _options


#: Called as ``(file name, pages done, pages to read)`` while a file's pages are OCR-ed (before the
#: first page and after each); set for a block of code with :func:`ocr_progress`.
_ocr_progress: contextvars.ContextVar[Callable[[str, int, int], None] | None] = contextvars.ContextVar(
    "ocr_progress", default=None)


@contextlib.contextmanager
def ocr_progress(callback: Callable[[str, int, int], None] | None) -> Iterator[None]:
    """Report OCR progress to ``callback(name, done, total)`` (pages) for loads inside the block,
    in this thread or context (``run_in_threadpool`` copies the context); for the page's
    and the CLI's progress bars, since OCR takes seconds a page."""
    token = _ocr_progress.set(callback)
    try:
        yield
    finally:
        _ocr_progress.reset(token)


def report_ocr_progress(name: str, done: int, total: int) -> None:
    """Tell the :func:`ocr_progress` callback in force, if any (its errors are not the load's)."""
    callback = _ocr_progress.get()
    if callback is not None:
        try:
            callback(name, done, total)
        except Exception:  # noqa: BLE001 - a progress bar must never fail a load
            pass


def check_office_archive(path: Path, name: str, kind: str = "Office") -> None:
    """Refuse an Office file whose zip archive would expand beyond the guards (a zip bomb).

    The sizes the archive declares are enough: Python's zipfile never inflates a
    part beyond its declared size (a lying header fails its CRC check instead).
    A file that is not a readable zip passes: the format's own library says so.

    Raises:
        DocumentLoadError: beyond :data:`OFFICE_MAX_UNCOMPRESSED` bytes in all,
            :data:`OFFICE_MAX_PARTS` parts, or a part over 10 MB expanding more than
            :data:`OFFICE_MAX_RATIO` times.
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            parts = archive.infolist()
    except Exception:  # noqa: BLE001 - BadZipFile, NotImplementedError (odd zip version), ...
        return
    total = sum(p.file_size for p in parts)
    bomb = next((p for p in parts if p.file_size > _RATIO_CHECK_MIN_BYTES
                 and p.file_size > OFFICE_MAX_RATIO * max(p.compress_size, 1)), None)
    if total > OFFICE_MAX_UNCOMPRESSED or len(parts) > OFFICE_MAX_PARTS or bomb is not None:
        what = (f"its part {bomb.filename} expands {bomb.file_size // max(bomb.compress_size, 1)} times"
                if bomb is not None else f"it expands to {total / 2**20:.0f} MB in {len(parts)} parts")
        raise DocumentLoadError(
            f"{name}: refused as a possible zip bomb: {what} (limits: {OFFICE_MAX_UNCOMPRESSED // 2**20} MB, "
            f"{OFFICE_MAX_PARTS} parts, {OFFICE_MAX_RATIO}x for parts over 10 MB); if it is a real document, "
            f"save it again in {kind} or LibreOffice (or as PDF) and upload that")


def markdown_row(cells) -> str:
    """One Markdown table row: ``| a | b |``; pipes escaped, line breaks in a cell become spaces."""
    return "| " + " | ".join(" ".join(str(c).split()).replace("|", "\\|") for c in cells) + " |"
