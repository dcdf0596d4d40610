"""The one table from file extension to loader.

Each row names a module of :mod:`rag.loaders` whose ``load(path, name, options)``
reads that type; the module is imported on first use, so importing the table
costs nothing. The upload widget's accepted types and its label (webui/ui.py),
the CLI's folder walk (rag.cli) and the README's list of file types all come
from here. Adding a type: one new module with a ``load`` function, one row here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class FileType:
    """One kind of file the knowledge base reads.

    Attributes:
        label: what people call it, e.g. ``"Excel"``.
        extensions: lower-case, with the dot, e.g. ``(".xlsx", ".xls")``.
        module: the module of :mod:`rag.loaders` with its ``load`` function.
        library: what does the reading (shown in the README).
    """

    label: str
    extensions: tuple[str, ...]
    module: str
    library: str

    def loader(self) -> Callable:
        """The ``load(path: Path, name: str, options: LoadOptions) -> list[Document]`` function."""
        return importlib.import_module(f"rag.loaders.{self.module}").load


#: Every file type, in the order the page and the README list them.
FILE_TYPES: tuple[FileType, ...] = (
    FileType("text", (".txt",), "text", "charset-normalizer (encoding detection)"),
    FileType("Markdown", (".md",), "text", "charset-normalizer (encoding detection)"),
    FileType("Word", (".docx",), "word", "python-docx"),
    FileType("PDF", (".pdf",), "pdf", "pypdfium2, pypdf where it fails; pages without a text layer by OCR"),
    FileType("Excel", (".xlsx", ".xls"), "spreadsheet", "openpyxl (.xlsx), xlrd (.xls)"),
    FileType("CSV", (".csv",), "spreadsheet", "csv + charset-normalizer (encoding and delimiter detected)"),
    FileType("PowerPoint", (".pptx",), "slides", "python-pptx"),
    FileType("web page", (".html", ".htm"), "web", "trafilatura (the article without the page's chrome)"),
    FileType("image", (".png", ".jpg", ".jpeg"), "image", "OCR: RapidOCR (PP-OCRv4 Chinese/English, ONNX Runtime)"),
)

#: Extension -> its :class:`FileType`.
BY_EXTENSION: dict[str, FileType] = {ext: t for t in FILE_TYPES for ext in t.extensions}

#: Every extension the loaders read, lower-case with the dot, in table order.
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(BY_EXTENSION)


def upload_label() -> str:
    """The upload widget's label: ``"Upload .txt / .md / ... / .jpeg"``."""
    return "Upload " + " / ".join(SUPPORTED_EXTENSIONS)


def describe_types() -> str:
    """Prose list for messages: ``".txt, .md, .docx, ... or .jpeg"``."""
    return ", ".join(SUPPORTED_EXTENSIONS[:-1]) + " or " + SUPPORTED_EXTENSIONS[-1]


def markdown_table() -> str:
    """The README's table of file types (``python -m rag.loaders.registry`` prints it)."""
    rows = ["| file type | extensions | read by |", "| --- | --- | --- |"]
    rows += [f"| {t.label} | {', '.join(f'`{e}`' for e in t.extensions)} | {t.library} |" for t in FILE_TYPES]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
