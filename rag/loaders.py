"""Turn an uploaded file into LangChain ``Document`` objects (text + metadata).

One function, :func:`load_file`, picks the loader by file extension:

* ``.pdf``  -- LangChain's ``PyPDFium2Loader`` (pypdfium2), or its ``PyPDFLoader``
  (pypdf) where pypdfium2 fails (see :func:`_load_pdf`), one Document per page;
* ``.docx`` -- python-docx, paragraphs and tables in reading order;
* ``.txt`` / ``.md`` -- plain text; the encoding is detected, not assumed.

Every failure a user can cause (wrong extension, damaged file, password,
no text layer, empty file) is raised as :class:`DocumentLoadError`, whose
message names the file and says how to fix it, so the page can show it as is.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from langchain_core.documents import Document

logger = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS = (".txt", ".md", ".docx", ".pdf")

#: Separator between a table row's cells when a .docx table is rendered as text.
TABLE_CELL_SEPARATOR = " | "

#: Zip-bomb guards for .docx (a zip archive): most bytes all parts may expand to,
#: most parts, and the largest expansion ratio of a part bigger than 10 MB.
DOCX_MAX_UNCOMPRESSED = 256 * 1024 * 1024
DOCX_MAX_PARTS = 10_000
DOCX_MAX_RATIO = 100


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
    (GBK/GB18030, Big5, Shift-JIS, cp1252, UTF-16, ...).  Bytes with NULs are
    never taken as UTF-8 (UTF-16 without a BOM is full of them).

    Raises:
        DocumentLoadError: the bytes do not look like text in any encoding
            (including text that is mostly control characters, e.g. NULs).
    """
    refusal = DocumentLoadError(
        f"{name}: the file does not look like text in any known encoding "
        "(is it a binary file with a .txt/.md name?); save it as UTF-8 text and upload it again"
    )
    if b"\x00" not in data:
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError:
            pass
    import charset_normalizer

    best = charset_normalizer.from_bytes(data).best()
    if best is None:
        raise refusal
    text = str(best)
    controls = sum(1 for ch in text if ch < " " and ch not in "\t\n\r\f\v" or ch == "\x7f")
    if "\x00" in text or controls > len(text) // 10:
        raise refusal
    logger.info("%s: not UTF-8, decoding as %s", name, best.encoding)
    return text


def _load_text(path: Path, name: str) -> list[Document]:
    text = decode_text(path.read_bytes(), name)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise DocumentLoadError(f"{name}: the file has no text; upload a file that contains text")
    return [Document(page_content=text, metadata={"source": name})]


# ---------------------------------------------------------------------- pdf

#: Right-to-left scripts (Hebrew, Arabic, Syriac, Thaana, NKo, Samaritan, Mandaic and their
#: presentation forms). PDFium returns them in visual order, i.e. reversed; pypdf puts them
#: in logical order (py-pdf/pypdf#1589, #1619), so PDFs with such text are read by pypdf.
_RTL_TEXT = re.compile("[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufeff]")
#: PDFium marks a hyphen it found at a line break with U+FFFE (or \x02): the word was split
#: there, so the mark is dropped and the word joined again.
_PDFIUM_HYPHEN = re.compile("[\x02\ufffe]")
#: Other control characters (glyphs of TeX symbol fonts without a Unicode mapping), except tab and newline.
_CONTROL_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


def _load_pdf(path: Path, name: str) -> list[Document]:
    """Pages with text of a PDF: read by pypdfium2, or by pypdf where pypdfium2 fails.

    pypdfium2 (PDFium, Apache-2.0/BSD) reads the corpus PDFs about 20 times faster than
    pypdf and keeps Greek letters, mathematical symbols and "fi"/"ff" ligatures that
    pypdf loses (docs/benchmarks.md, "PDF parsing"). pypdf reads the PDF instead when
    pypdfium2 cannot open it (a damaged file pypdf may still repair), finds no text in
    it, or finds right-to-left script (see :data:`_RTL_TEXT`).
    """
    with path.open("rb") as f:
        head = f.read(1024)
    # Acrobat accepts the "%PDF-" header anywhere in the first 1024 bytes
    # (Adobe PDF Reference 1.7, appendix H, implementation note 13); so do we.
    if b"%PDF-" not in head:
        raise DocumentLoadError(
            f"{name}: not a PDF file (no %PDF- header); check the file type, "
            "or export the document as PDF again and upload it"
        )
    pages = _pdfium_pages(path, name)
    if pages is None or not any(text.strip() for _, text in pages):
        pages = _pypdf_pages(path, name)

    docs = [Document(page_content=text, metadata={"source": name, "page": number})
            for number, text in pages if text.strip()]
    if not docs:
        raise DocumentLoadError(
            f"{name}: the PDF has no text layer ({len(pages)} page(s), e.g. a scan); "
            "run OCR on it (e.g. ocrmypdf) and upload the result"
        )
    return docs


def _pdfium_pages(path: Path, name: str) -> list[tuple[int, str]] | None:
    """(1-based page number, text) of every page by LangChain's ``PyPDFium2Loader``
    (which also serialises PDFium calls: PDFium is not thread-safe), or None when pypdf
    should read the file instead (pypdfium2 failed, or the text is right-to-left).

    Raises:
        DocumentLoadError: the PDF is password-protected.
    """
    import pypdfium2
    import pypdfium2.raw as pdfium_c
    from langchain_community.document_loaders import PyPDFium2Loader

    try:
        # PDFium opens PDFs that are only "owner"-protected (printing/copying
        # restrictions) with the empty password, as PyPDFLoader does.
        loaded = PyPDFium2Loader(str(path), mode="page").load()
    except pypdfium2.PdfiumError as exc:
        if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD:
            raise DocumentLoadError(
                f"{name}: the PDF is password-protected; remove the password "
                "(e.g. open it and print to PDF) and upload it again"
            ) from exc
        logger.info("%s: pypdfium2 cannot read it (%s); trying pypdf", name, exc)
        return None
    except Exception as exc:  # noqa: BLE001 - any failure: pypdf gets its chance
        logger.info("%s: pypdfium2 failed (%s: %s); trying pypdf", name, type(exc).__name__, exc)
        return None
    pages = [(int(d.metadata["page"]) + 1, _CONTROL_CHARS.sub("", _PDFIUM_HYPHEN.sub("", d.page_content)))
             for d in loaded]
    if any(_RTL_TEXT.search(text) for _, text in pages):
        logger.info("%s: right-to-left text; reading it with pypdf, which keeps its logical order", name)
        return None
    return pages


def _pypdf_pages(path: Path, name: str) -> list[tuple[int, str]]:
    """(1-based page number, text) of every page by LangChain's ``PyPDFLoader`` (pypdf).

    Raises:
        DocumentLoadError: password-protected, encrypted beyond what pypdf reads here,
            or not a readable PDF.
    """
    import pypdf.errors
    from langchain_community.document_loaders import PyPDFLoader

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
    # PyPDFLoader's "page" is 0-based; pages are numbered from 1 for people.
    return [(int(page.metadata["page"]) + 1, page.page_content) for page in pages]


# --------------------------------------------------------------------- docx

def _check_docx_archive(path: Path, name: str) -> None:
    """Refuse a .docx whose zip archive would expand beyond the guards (a zip bomb).

    The sizes the archive declares are enough: Python's zipfile never inflates a
    part beyond its declared size (a lying header fails its CRC check instead).
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            parts = archive.infolist()
    except Exception:  # noqa: BLE001 - BadZipFile, NotImplementedError (odd zip version), ...
        return  # not a readable zip: python-docx says so below
    total = sum(p.file_size for p in parts)
    bomb = next((p for p in parts if p.file_size > 10 * 1024 * 1024
                 and p.file_size > DOCX_MAX_RATIO * max(p.compress_size, 1)), None)
    if total > DOCX_MAX_UNCOMPRESSED or len(parts) > DOCX_MAX_PARTS or bomb is not None:
        what = (f"its part {bomb.filename} expands {bomb.file_size // max(bomb.compress_size, 1)} times"
                if bomb is not None else f"it expands to {total / 2**20:.0f} MB in {len(parts)} parts")
        raise DocumentLoadError(
            f"{name}: refused as a possible zip bomb: {what} (limits: {DOCX_MAX_UNCOMPRESSED // 2**20} MB, "
            f"{DOCX_MAX_PARTS} parts, {DOCX_MAX_RATIO}x for parts over 10 MB); if it is a real document, "
            "save it again in Word/LibreOffice (or as PDF) and upload that")


def _load_docx(path: Path, name: str) -> list[Document]:
    import docx

    _check_docx_archive(path, name)
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
