"""Plain text and Markdown (.txt, .md): the encoding is detected, not assumed."""
from __future__ import annotations

import logging
from pathlib import Path

from langchain_core.documents import Document

from .base import DocumentLoadError, LoadOptions

logger = logging.getLogger(__name__)


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
    text, _ = decode_text_with_encoding(data, name)
    return text


def decode_text_with_encoding(data: bytes, name: str) -> tuple[str, str]:
    """As :func:`decode_text`, also returning the encoding's name (``"utf-8"``, ``"cp932"``, ...)."""
    refusal = DocumentLoadError(
        f"{name}: the file does not look like text in any known encoding "
        "(is it a binary file with a text file's name?); save it as UTF-8 text and upload it again"
    )
    if b"\x00" not in data:
        try:
            return data.decode("utf-8-sig"), "utf-8"
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
    return text, best.encoding


def load(path: Path, name: str, options: LoadOptions) -> list[Document]:
    """One Document with the whole text (line ends normalised to ``\\n``).

    Raises:
        DocumentLoadError: not text in any encoding, or only whitespace.
    """
    text = decode_text(path.read_bytes(), name)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise DocumentLoadError(f"{name}: the file has no text; upload a file that contains text")
    return [Document(page_content=text, metadata={"source": name})]
