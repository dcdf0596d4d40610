"""Word documents (.docx) by python-docx: paragraphs and tables in reading order."""
from __future__ import annotations

from pathlib import Path

from langchain_core.documents import Document

from .base import DocumentLoadError, LoadOptions, check_office_archive

#: Separator between a table row's cells when a .docx table is rendered as text.
TABLE_CELL_SEPARATOR = " | "


def load(path: Path, name: str, options: LoadOptions) -> list[Document]:
    """One Document: body paragraphs and tables (one row per line) in body order.

    Raises:
        DocumentLoadError: a zip bomb (:func:`~rag.loaders.base.check_office_archive`),
            not a readable .docx, or no text at all.
    """
    import docx

    check_office_archive(path, name, "Word")
    try:
        document = docx.Document(str(path))
    except Exception as exc:  # PackageNotFoundError, BadZipFile, KeyError, ValueError ...
        raise DocumentLoadError(
            f"{name}: not a readable Word .docx file ({type(exc).__name__}); "
            "if it is an old .doc or another format, save it as .docx in Word/LibreOffice and upload it again"
        ) from exc
    blocks = [_block_text(block) for block in document.iter_inner_content()]
    text = "\n\n".join(b for b in blocks if b.strip())
    if not text.strip():
        raise DocumentLoadError(
            f"{name}: the document has no text (only images or empty tables?); "
            "upload a document that contains text"
        )
    return [Document(page_content=text, metadata={"source": name})]


def _block_text(block) -> str:
    """Text of a body-level Paragraph, or a Table rendered one row per line."""
    from docx.table import Table

    if isinstance(block, Table):
        return table_to_text(block)
    return block.text


def table_to_text(table) -> str:
    """Render a python-docx ``Table`` as text: one line per row, cells joined by " | ".

    A merged cell appears several times in ``row.cells`` (python-docx returns
    the same cell for each grid column it spans); it is written once. Rows
    without any text are left out. Nested tables are rendered inline, their
    rows separated by "; ".
    """
    lines = []
    for row in table.rows:
        cells, seen = [], []
        for cell in row.cells:
            if any(cell._tc is tc for tc in seen):
                continue
            seen.append(cell._tc)
            cells.append(_cell_text(cell))
        if any(c.strip() for c in cells):
            lines.append(TABLE_CELL_SEPARATOR.join(cells))
    return "\n".join(lines)


def _cell_text(cell) -> str:
    from docx.table import Table

    parts = []
    for block in cell.iter_inner_content():
        text = table_to_text(block).replace("\n", "; ") if isinstance(block, Table) else block.text
        if text.strip():
            parts.append(text.strip())
    return " ".join(parts).replace("\n", " ")
