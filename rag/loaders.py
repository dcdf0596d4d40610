"""Turn an uploaded file into LangChain ``Document`` objects (text + metadata).

One function, :func:`load_file`, picks the loader by file extension:

* ``.pdf``  -- LangChain's ``PyPDFLoader`` (pypdf), one Document per page;
* ``.docx`` -- python-docx, paragraphs and tables in reading order;
* ``.txt`` / ``.md`` -- plain text; the encoding is detected, not assumed.

Every failure a user can cause (wrong extension, damaged file, password,
no text layer, empty file) is raised as :class:`DocumentLoadError`, whose
message names the file and says how to fix it, so the page can show it as is.
"""
from __future__ import annotations

import logging
from pathlib import Path

from langchain_core.documents import Document

logger = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS = (".txt", ".md", ".docx", ".pdf")

#: Separator between a table row's cells when a .docx table is rendered as text.
TABLE_CELL_SEPARATOR = " | "


class DocumentLoadError(ValueError):
    """A file could not be turned into text.

    The message starts with the file name and names the fix, e.g.
    ``"x.pdf: the PDF is password-protected; remove the password ... and upload it again"``.
    """


def load_file(path: str | Path, *, name: str | None = None) -> list[Document]:
    """Load one file into LangChain Documents.

    Args:
        path: the file on disk (for uploads, a temporary file with a random name).
        name: the file name to show and record (the name as uploaded); defaults
            to ``Path(path).name``. Its extension picks the loader (the extension
            of ``path`` is used when ``name`` has none).

    Returns:
        One Document per PDF page that has text (``metadata["page"]`` is the
        1-based page number), or a single Document for .txt/.md/.docx.
        ``metadata["source"]`` is always ``name``.

    Raises:
        DocumentLoadError: unsupported extension, empty file, a file that is not
            what its extension claims, a password-protected PDF, a PDF without a
            text layer, or a document without any text.
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    name = name or path.name
    suffix = Path(name).suffix.lower() or path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise DocumentLoadError(
            f"{name}: unsupported file type {suffix or '(no extension)'!r}; "
            f"supported types are {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file: {path}")
    if path.stat().st_size == 0:
        raise DocumentLoadError(f"{name}: the file is empty; upload a file that contains text")

    if suffix == ".pdf":
        docs = _load_pdf(path, name)
    elif suffix == ".docx":
        docs = _load_docx(path, name)
    else:
        docs = _load_text(path, name)
    logger.debug("loaded %s: %d document(s), %d characters", name, len(docs),
                 sum(len(d.page_content) for d in docs))
    return docs


# --------------------------------------------------------------------- text

def decode_text(data: bytes, name: str) -> str:
    """Decode the bytes of a text file, detecting the encoding.

    Strict UTF-8 (a BOM is dropped) is tried first, since it almost never
    decodes non-UTF-8 text by accident; otherwise charset-normalizer guesses
    (GBK/GB18030, Big5, Shift-JIS, cp1252, UTF-16, ...).

    Raises:
        DocumentLoadError: the bytes do not look like text in any encoding.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    import charset_normalizer

    best = charset_normalizer.from_bytes(data).best()
    if best is None:
        raise DocumentLoadError(
            f"{name}: the file does not look like text in any known encoding "
            "(is it a binary file with a .txt/.md name?); save it as UTF-8 text and upload it again"
        )
    logger.info("%s: not UTF-8, decoding as %s", name, best.encoding)
    return str(best)


def _load_text(path: Path, name: str) -> list[Document]:
    text = decode_text(path.read_bytes(), name)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise DocumentLoadError(f"{name}: the file has no text; upload a file that contains text")
    return [Document(page_content=text, metadata={"source": name})]


# ---------------------------------------------------------------------- pdf

def _load_pdf(path: Path, name: str) -> list[Document]:
    import pypdf.errors
    from langchain_community.document_loaders import PyPDFLoader

    with path.open("rb") as f:
        head = f.read(1024)
    # Acrobat accepts the "%PDF-" header anywhere in the first 1024 bytes
    # (Adobe PDF Reference 1.7, appendix H, implementation note 13); so do we.
    if b"%PDF-" not in head:
        raise DocumentLoadError(
            f"{name}: not a PDF file (no %PDF- header); check the file type, "
            "or export the document as PDF again and upload it"
        )
    try:
        # PyPDFLoader tries the empty user password itself, so PDFs that are
        # only "owner"-protected (printing/copying restrictions) still load.
        pages = PyPDFLoader(str(path), mode="page").load()
    except pypdf.errors.FileNotDecryptedError as exc:
        raise DocumentLoadError(
            f"{name}: the PDF is password-protected; remove the password "
            "(e.g. open it and print to PDF) and upload it again"
        ) from exc
    except pypdf.errors.DependencyError as exc:
        # e.g. AES encryption without the optional 'cryptography' package.
        raise DocumentLoadError(
            f"{name}: the PDF is encrypted and cannot be read here ({exc}); "
            "remove the encryption (e.g. print to PDF) and upload it again"
        ) from exc
    except Exception as exc:  # pypdf raises many types for damaged files
        raise DocumentLoadError(
            f"{name}: not a readable PDF file ({type(exc).__name__}: {exc}); "
            "check that the file is a PDF and not damaged, then upload it again"
        ) from exc

    docs = []
    for page in pages:
        text = page.page_content
        if not text.strip():
            continue
        # PyPDFLoader's "page" is 0-based; pages are numbered from 1 for people.
        docs.append(Document(page_content=text,
                             metadata={"source": name, "page": int(page.metadata["page"]) + 1}))
    if not docs:
        raise DocumentLoadError(
            f"{name}: the PDF has no text layer ({len(pages)} page(s), e.g. a scan); "
            "run OCR on it (e.g. ocrmypdf) and upload the result"
        )
    return docs


# --------------------------------------------------------------------- docx

def _load_docx(path: Path, name: str) -> list[Document]:
    import docx

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
