"""Images (.png, .jpg, .jpeg): their text by OCR (:mod:`rag.loaders.ocr`), one Document per image."""
from __future__ import annotations

import logging
from pathlib import Path

from langchain_core.documents import Document

from . import ocr
from .base import DocumentLoadError, LoadOptions, report_ocr_progress

logger = logging.getLogger(__name__)


def load(path: Path, name: str, options: LoadOptions) -> list[Document]:
    """One Document with the text OCR finds (``metadata["ocr"] = True``).

    Raises:
        DocumentLoadError: OCR is off (``--ocr off``), not a readable image, more than
            :data:`~rag.loaders.ocr.MAX_IMAGE_PIXELS` pixels, or no text found.
    """
    if options.ocr == "off":
        raise DocumentLoadError(
            f"{name}: images are read by OCR, which is off on this server (--ocr off); "
            "start it with --ocr auto, or upload the text as a document")
    image = open_image(path, name)
    report_ocr_progress(name, 0, 1)
    try:
        text = ocr.ocr_image(image)
    finally:
        image.close()
    report_ocr_progress(name, 1, 1)
    if not text.strip():
        raise DocumentLoadError(f"{name}: OCR found no text in the image; upload a sharper scan "
                                "(at least 150 dpi) or the text as a document")
    return [Document(page_content=text, metadata={"source": name, "ocr": True})]


def open_image(path: Path, name: str):
    """The image at ``path`` (PIL, EXIF orientation applied), after its size was checked
    from the header alone, before decoding.

    Raises:
        DocumentLoadError: not an image PIL reads, or more than MAX_IMAGE_PIXELS pixels.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        image = Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DocumentLoadError(f"{name}: not a readable image ({type(exc).__name__}); upload a PNG or JPEG "
                                "file (or export the scan again)") from exc
    except Image.DecompressionBombError as exc:  # over twice PIL's own limit: read the size from the header
        raise _too_big(name, _header_size(path)) from exc
    width, height = image.size
    if width * height > ocr.MAX_IMAGE_PIXELS:
        image.close()
        raise _too_big(name, (width, height))
    try:
        image.load()
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001 - truncated or damaged image data
        image.close()
        raise DocumentLoadError(f"{name}: the image is damaged or cut short ({type(exc).__name__}); "
                                "export it again and upload it") from exc


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header, without PIL's decompression-bomb check."""
    from PIL import JpegImagePlugin, PngImagePlugin

    for plugin in (PngImagePlugin.PngImageFile, JpegImagePlugin.JpegImageFile):
        try:
            with path.open("rb") as f:
                return plugin(f).size
        except Exception:  # noqa: BLE001 - not this format
            continue
    return None


def _too_big(name: str, size) -> DocumentLoadError:
    what = f"{size[0]:,} x {size[1]:,} pixels" if size else "too many pixels"
    return DocumentLoadError(
        f"{name}: the image has {what} (limit {ocr.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels); scale it down "
        f"(about {ocr.OCR_MAX_SIDE} pixels on the long side is plenty for OCR) and upload it again")
