"""Saved web pages (.html, .htm) by trafilatura: the article text without the page's chrome.

trafilatura (Apache-2.0, maintained; the best-scoring open-source extractor in its own
and in ScrapingHub's article-extraction benchmarks) finds the main content and leaves
out navigation, sidebars, footers, cookie banners and comments; its Markdown output
keeps headings (``#``), lists and tables. It reads the encoding from the page's
``<meta charset>`` or detects it. markitdown's HTML converter was the other candidate:
it converts the whole ``<body>``, chrome included (it special-cases Wikipedia only).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from langchain_core.documents import Document

from .base import DocumentLoadError, LoadOptions

logger = logging.getLogger(__name__)

#: Largest page read, in bytes. A saved article is rarely above a few MB (the corpus'
#: Wikipedia article, one of the longest kinds, is 0.4 MB and takes ~0.3 s); parsing
#: takes about a second per MB on this 2-core machine and several times the page in memory.
MAX_HTML_BYTES = 10 * 1024 * 1024

#: Footnote marks trafilatura leaves as inline HTML (``<sup>\[12\]</sup>``): dropped;
#: other ``<sup>``/``<sub>`` tags are unwrapped.
_FOOTNOTE_MARK = re.compile(r"<sup>\s*\\?\[[^\]<]{1,12}\\?\]\s*</sup>")
_SUP_SUB_TAG = re.compile(r"</?(?:sup|sub)>")


def load(path: Path, name: str, options: LoadOptions) -> list[Document]:
    """One Document with the page's main text as Markdown (``metadata["title"]`` when the page has one).

    Raises:
        DocumentLoadError: larger than :data:`MAX_HTML_BYTES`, not HTML, or no article text found.
    """
    import trafilatura

    size = path.stat().st_size
    if size > MAX_HTML_BYTES:
        raise DocumentLoadError(
            f"{name}: the web page is {size / 2**20:.0f} MB (limit {MAX_HTML_BYTES // 2**20} MB); save only the "
            "article (the browser's reader view, or print it to PDF) and upload that")
    data = path.read_bytes()
    if b"\x00" in data[:4096] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DocumentLoadError(f"{name}: not an HTML page (binary content); upload the page saved as HTML")
    try:
        tree = trafilatura.load_html(data)  # encoding from <meta charset>, else detected
        if tree is None:
            raise ValueError("no HTML document")
        text = trafilatura.extract(
            tree, output_format="markdown", include_tables=True, include_links=False, include_images=False,
            include_comments=False, deduplicate=False)
        metadata = trafilatura.extract_metadata(tree)
    except Exception as exc:  # noqa: BLE001 - lxml and trafilatura raise many types on odd input
        raise DocumentLoadError(
            f"{name}: not a readable HTML page ({type(exc).__name__}); save the page again as HTML "
            "(or print it to PDF) and upload that") from exc
    if not text or not text.strip():
        raise DocumentLoadError(
            f"{name}: no article text found in the page (is it a page of links or a script-built app?); "
            "save the article itself (the browser's reader view, or print it to PDF) and upload that")
    text = _SUP_SUB_TAG.sub("", _FOOTNOTE_MARK.sub("", text))
    title = (getattr(metadata, "title", None) or "").strip()
    if title and not text.lstrip().startswith("#"):
        text = f"# {title}\n\n{text}"
    meta = {"source": name}
    if title:
        meta["title"] = title
    return [Document(page_content=text, metadata=meta)]
