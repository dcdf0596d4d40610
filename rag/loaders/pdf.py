"""PDF (.pdf): LangChain's ``PyPDFium2Loader`` (pypdfium2), or its ``PyPDFLoader`` (pypdf)
where pypdfium2 fails, one Document per page with text (``metadata["page"]`` 1-based)."""
from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

from langchain_core.documents import Document

from .base import DocumentLoadError, LoadOptions, report_ocr_progress

logger = logging.getLogger(__name__)

#: Right-to-left scripts (Hebrew, Arabic, Syriac, Thaana, NKo, Samaritan, Mandaic and their
#: presentation forms). PDFium returns them in visual order, i.e. reversed; pypdf puts them
#: in logical order (py-pdf/pypdf#1589, #1619), so PDFs with such text are read by pypdf.
_RTL_TEXT = re.compile("[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufeff]")
#: PDFium marks a hyphen it found at a line break with U+FFFE (or \x02): the word was split
#: there, so the mark is dropped and the word joined again.
_PDFIUM_HYPHEN = re.compile("[\x02\ufffe]")
#: Other control characters (glyphs of TeX symbol fonts without a Unicode mapping), except tab and newline.
_CONTROL_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


def load(path: Path, name: str, options: LoadOptions) -> list[Document]:
    """Pages with text of a PDF: read by pypdfium2, or by pypdf where pypdfium2 fails.

    pypdfium2 (PDFium, Apache-2.0/BSD) reads the corpus PDFs about 20 times faster than
    pypdf and keeps Greek letters, mathematical symbols and "fi"/"ff" ligatures that
    pypdf loses (docs/benchmarks.md, "PDF parsing"). pypdf reads the PDF instead when
    pypdfium2 cannot open it (a damaged file pypdf may still repair), finds no text in
    it, or finds right-to-left script (see :data:`_RTL_TEXT`).

    Pages without a text layer (scans) are read by OCR (:func:`_ocr_pages`, ``metadata["ocr"]
    = True``) unless ``options.ocr`` is "off"; a page with a text layer never is.
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

    blank = [number for number, text in pages if not text.strip()]
    ocr_text = _ocr_pages(path, name, blank) if blank and options.ocr == "auto" else {}
    docs = []
    for number, text in pages:
        if text.strip():
            docs.append(Document(page_content=text, metadata={"source": name, "page": number}))
        elif ocr_text.get(number, "").strip():
            docs.append(Document(page_content=ocr_text[number], metadata={"source": name, "page": number, "ocr": True}))
    if not docs:
        how = ("OCR found no text on them either; run OCR on it with another tool (e.g. ocrmypdf) or scan it "
               "again at 300 dpi, and upload the result" if options.ocr == "auto" else
               "OCR is off on this server (--ocr off); start it with --ocr auto, or run OCR on it "
               "(e.g. ocrmypdf) and upload the result")
        raise DocumentLoadError(f"{name}: the PDF has no text layer ({len(pages)} page(s), e.g. a scan) and {how}")
    if blank and options.ocr == "off":
        logger.info("%s: %d page(s) without a text layer skipped (--ocr off)", name, len(blank))
    return docs


#: Most pages without a text layer OCR-ed in one PDF: OCR takes several seconds a page on
#: this 2-core machine (docs/benchmarks.md, "OCR"), so 300 pages are about half an hour.
MAX_OCR_PAGES = 300


def _ocr_pages(path: Path, name: str, numbers: list[int]) -> dict[int, str]:
    """OCR text of the given 1-based pages (rendered by pypdfium2 at up to OCR_MAX_SIDE pixels);
    {} when PDFium cannot open the file (pypdf read its text instead).

    Raises:
        DocumentLoadError: more than :data:`MAX_OCR_PAGES` pages would need OCR.
    """
    import pypdfium2
    from langchain_community.document_loaders.parsers.pdf import PyPDFium2Parser

    from . import ocr

    if len(numbers) > MAX_OCR_PAGES:
        raise DocumentLoadError(
            f"{name}: {len(numbers)} pages have no text layer and would need OCR (limit {MAX_OCR_PAGES} pages "
            "a file); split the PDF into smaller files, or run OCR on it first (e.g. ocrmypdf), and upload those")
    lock = getattr(PyPDFium2Parser, "_lock", None) or _RENDER_LOCK  # PDFium is not thread-safe
    out = {}
    report_ocr_progress(name, 0, len(numbers))
    try:
        for done, number in enumerate(numbers, start=1):
            with lock:
                document = pypdfium2.PdfDocument(str(path))
                try:
                    page = document[number - 1]
                    width, height = page.get_size()  # points (1/72 inch)
                    scale = min(ocr.OCR_MAX_SIDE / max(width, height, 1.0), 300 / 72)
                    image = page.render(scale=scale).to_pil()
                finally:
                    document.close()
            out[number] = ocr.ocr_image(image)
            logger.info("%s: page %d read by OCR (%d characters)", name, number, len(out[number]))
            report_ocr_progress(name, done, len(numbers))
    except pypdfium2.PdfiumError as exc:
        logger.warning("%s: pages without a text layer cannot be rendered for OCR (%s)", name, exc)
    return out


_RENDER_LOCK = threading.Lock()


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
