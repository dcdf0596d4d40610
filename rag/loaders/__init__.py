"""Turn an uploaded file into LangChain ``Document`` objects (text + metadata).

One function, :func:`load_file`, picks the loader by file extension from the table
in :mod:`rag.loaders.registry` (one module per file type: ``text``, ``word``,
``pdf``, ``spreadsheet``, ``slides``, ``web``, ``image``; OCR in ``ocr``).

Every failure a user can cause (wrong extension, damaged file, password,
no text layer, empty file, a file beyond a size limit) is raised as
:class:`DocumentLoadError`, whose message names the file and says how to fix it,
so the page can show it as is.
"""
from __future__ import annotations

import logging
from pathlib import Path

from langchain_core.documents import Document

from .base import (
    OCR_MODES,
    OFFICE_MAX_PARTS,
    OFFICE_MAX_RATIO,
    OFFICE_MAX_UNCOMPRESSED,
    DocumentLoadError,
    LoadOptions,
    check_office_archive,
    configure,
    current_options,
    ocr_progress,
)
from .registry import BY_EXTENSION, FILE_TYPES, SUPPORTED_EXTENSIONS, FileType, upload_label
from .text import decode_text
from .word import TABLE_CELL_SEPARATOR, table_to_text

logger = logging.getLogger(__name__)

# The names these limits had when only .docx was guarded.
DOCX_MAX_UNCOMPRESSED = OFFICE_MAX_UNCOMPRESSED
DOCX_MAX_PARTS = OFFICE_MAX_PARTS
DOCX_MAX_RATIO = OFFICE_MAX_RATIO

__all__ = [
    "BY_EXTENSION", "FILE_TYPES", "OCR_MODES", "SUPPORTED_EXTENSIONS", "TABLE_CELL_SEPARATOR",
    "DocumentLoadError", "FileType", "LoadOptions", "check_office_archive", "configure",
    "current_options", "decode_text", "load_file", "ocr_progress", "table_to_text", "upload_label",
]


def load_file(path: str | Path, *, name: str | None = None, options: LoadOptions | None = None) -> list[Document]:
    """Load one file into LangChain Documents.

    Args:
        path: the file on disk (for uploads, a temporary file with a random name).
        name: the file name to show and record (the name as uploaded); defaults
            to ``Path(path).name``. Its extension picks the loader (the extension
            of ``path`` is used when ``name`` has none).
        options: how to read it; default the process-wide options (:func:`configure`,
            set from ``--ocr``).

    Returns:
        Documents with ``metadata["source"] == name``: one per PDF page with text or
        per slide (``metadata["page"]``, 1-based), one per block of spreadsheet rows
        (``metadata["sheet"]``, ``"rows"`` and ``"location"``), else one per file.

    Raises:
        DocumentLoadError: unsupported extension, empty file, a file that is not
            what its extension claims, a password-protected PDF, a PDF without a
            text layer (with OCR off or finding nothing), a document without any
            text, or a file beyond a size limit of its loader.
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    name = name or path.name
    suffix = Path(name).suffix.lower() or path.suffix.lower()
    file_type = BY_EXTENSION.get(suffix)
    if file_type is None:
        raise DocumentLoadError(
            f"{name}: unsupported file type {suffix or '(no extension)'!r}; "
            f"supported types are {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file: {path}")
    if path.stat().st_size == 0:
        raise DocumentLoadError(f"{name}: the file is empty; upload a file that contains text")

    docs = file_type.loader()(path, name, options or current_options())
    logger.debug("loaded %s: %d document(s), %d characters", name, len(docs),
                 sum(len(d.page_content) for d in docs))
    return docs
