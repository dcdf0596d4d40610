"""rag.loaders on every file type of ../shared/corpus and on broken input."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import docx
import pypdf
import pytest

from rag import SUPPORTED_EXTENSIONS, DocumentLoadError, load_file

CHINESE = (
    "DeepSpeed 是一个深度学习优化库，它使分布式训练变得简单、高效和有效。\n"
    "安装方法：先安装 PyTorch，然后运行 pip install deepspeed。\n"
    "如果遇到问题，请查看高级安装说明！"
)


@functools.lru_cache(maxsize=None)
def _load_cached(path: Path):
    """load_file once per path in this module (the 117-page PDF takes ~4 s)."""
    return load_file(path)


def _md_files(corpus: Path) -> list[Path]:
    return sorted((corpus / "deepspeed").glob("*.md"))


def _pdf_files(corpus: Path) -> list[Path]:
    return sorted(p for p in (corpus / "pdf").glob("*.pdf") if "password" not in p.name)


# ---------------------------------------------------------------- markdown


def test_every_deepspeed_markdown_file_loads_whole(corpus):
    files = _md_files(corpus)
    assert len(files) >= 5
    for path in files:
        docs = load_file(path)
        assert len(docs) == 1, path.name
        assert docs[0].metadata == {"source": path.name}
        expected = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        assert docs[0].page_content == expected


def test_display_name_sets_source_and_picks_the_loader(corpus, tmp_path):
    tmp = tmp_path / "tmpa8f3k2"  # uploads arrive as temp files with random names
    tmp.write_bytes((corpus / "deepspeed" / "README.md").read_bytes())
    docs = load_file(tmp, name="部署说明.md")
    assert docs[0].metadata["source"] == "部署说明.md"
    assert "pip install deepspeed" in docs[0].page_content


# -------------------------------------------------------------------- text


@pytest.mark.parametrize("encoding", ["gbk", "gb18030", "utf-8-sig", "utf-16"])
def test_chinese_text_encodings_are_detected(tmp_path, encoding):
    path = tmp_path / f"notes-{encoding}.txt"
    path.write_bytes(CHINESE.encode(encoding))
    docs = load_file(path)
    assert docs[0].page_content == CHINESE
    assert docs[0].metadata == {"source": path.name}


def test_gb18030_only_characters(tmp_path):
    text = "𠮷野家的中文文本。深度学习训练框架，支持分布式训练。"  # 𠮷 is outside GBK
    path = tmp_path / "rare.txt"
    path.write_bytes(text.encode("gb18030"))
    assert load_file(path)[0].page_content == text


def test_windows_line_endings_are_normalised(tmp_path):
    path = tmp_path / "crlf.md"
    path.write_bytes(b"# Title\r\n\r\nline one\r\nline two\r\n")
    assert load_file(path)[0].page_content == "# Title\n\nline one\nline two\n"


# --------------------------------------------------------------------- pdf


def test_every_pdf_gives_one_document_per_text_page(corpus):
    files = _pdf_files(corpus)
    assert len(files) >= 6
    for path in files:
        docs = _load_cached(path)
        n_pages = len(pypdf.PdfReader(path).pages)
        pages = [d.metadata["page"] for d in docs]
        assert docs, path.name
        assert all(isinstance(p, int) for p in pages), path.name
        assert pages == sorted(set(pages)), path.name
        assert 1 <= pages[0] and pages[-1] <= n_pages, path.name
        assert all(d.metadata["source"] == path.name for d in docs)
        assert all(d.page_content.strip() for d in docs)


def test_long_german_pdf_pages_are_numbered_from_one(corpus):
    docs = _load_cached(corpus / "pdf" / "GeoTopo-komprimiert.pdf")
    pages = [d.metadata["page"] for d in docs]
    assert len(docs) >= 110  # 117 pages, a few may be blank
    assert pages[0] == 1 and pages[-1] == 117
    text = " ".join(d.page_content for d in docs)
    assert "Topologie" in text


def test_password_protected_pdf_is_refused_with_the_fix(corpus):
    path = corpus / "pdf" / "libreoffice-writer-password.pdf"
    with pytest.raises(DocumentLoadError) as info:
        load_file(path)
    message = str(info.value)
    assert message.startswith("libreoffice-writer-password.pdf:")
    assert "password" in message and "upload it again" in message


def test_pdf_without_text_layer_is_refused(tmp_path):
    writer = pypdf.PdfWriter()
    writer.add_blank_page(width=200, height=200)
    path = tmp_path / "scan.pdf"
    with open(path, "wb") as f:
        writer.write(f)
    with pytest.raises(DocumentLoadError, match=r"scan\.pdf: .*no text layer.*OCR"):
        load_file(path)


# -------------------------------------------------------------------- docx


def _block_texts_in_body_order(path: Path) -> list[str]:
    """Reference order, straight from python-docx: the first text of each
    non-empty body paragraph or table cell."""
    texts = []
    for block in docx.Document(path).iter_inner_content():
        if isinstance(block, docx.table.Table):
            for row in block.rows:
                for cell in row.cells:
                    texts += [p.text for p in cell.paragraphs if p.text.strip()]
        elif block.text.strip():
            texts.append(block.text)
    return texts


def test_docx_paragraphs_and_tables_in_reading_order(corpus):
    path = corpus / "docx" / "blk-paras-and-tables.docx"
    expected = _block_texts_in_body_order(path)
    # a paragraph, then a table cell, then a paragraph
    assert expected[:4] == ["Lorem ipsum dolor sit amet, consectetur adipiscing elit.", "Text before",
                            "Text after", "Donec semper facilisis metus finibus malesuada."]
    text = load_file(path)[0].page_content
    positions = [text.find(t) for t in expected]
    assert -1 not in positions, (expected, text)
    assert positions == sorted(positions)


def test_docx_table_rows_and_merged_cells(tmp_path):
    document = docx.Document()
    document.add_paragraph("Intro paragraph.")
    table = document.add_table(rows=3, cols=3)
    for i, row in enumerate(table.rows):
        for j, cell in enumerate(row.cells):
            cell.text = f"r{i}c{j}"
    table.cell(0, 0).merge(table.cell(0, 1)).text = "Model"
    document.add_paragraph("Closing paragraph.")
    path = tmp_path / "table.docx"
    document.save(path)

    text = load_file(path)[0].page_content
    lines = text.splitlines()
    assert "Model | r0c2" in lines  # the merged cell written once
    assert "r1c0 | r1c1 | r1c2" in lines
    assert text.index("Intro paragraph.") < text.index("Model | r0c2") < text.index("r2c2") \
        < text.index("Closing paragraph.")


@pytest.mark.parametrize("name, expected", [
    ("test.docx", ["python-docx was here!", "python-docx was here too!"]),
    ("par-known-paragraphs.docx", ["Heading Paragraph", "Normal paragraph"]),
    ("hdr-header-footer.docx", ["section with header", "section without header of its own."]),
])
def test_docx_with_text_loads(corpus, name, expected):
    docs = load_file(corpus / "docx" / name)
    assert len(docs) == 1 and docs[0].metadata == {"source": name}
    positions = [docs[0].page_content.index(t) for t in expected]
    assert positions == sorted(positions)


@pytest.mark.parametrize("name", ["having-images.docx", "tbl-having-tables.docx"])
def test_docx_without_any_text_is_refused(corpus, name):
    # only images / only empty tables (checked with python-docx below)
    assert not "".join(_block_texts_in_body_order(corpus / "docx" / name)).strip()
    with pytest.raises(DocumentLoadError, match=rf"^{name}: .*no text"):
        load_file(corpus / "docx" / name)


# ------------------------------------------------------------ bad input


@pytest.mark.parametrize("suffix", [".pdf", ".docx", ".txt", ".md"])
def test_garbage_bytes_are_refused_naming_the_file(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(DocumentLoadError, match=rf"^garbage\{suffix}: "):
        load_file(path)


def test_damaged_pdf_with_a_valid_header_is_refused(tmp_path):
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"%PDF-1.7\n" + os.urandom(2048))
    with pytest.raises(DocumentLoadError, match=r"^broken\.pdf: not a readable PDF"):
        load_file(path)


def test_pdf_named_docx_is_refused(corpus, tmp_path):
    path = tmp_path / "report.docx"
    path.write_bytes((corpus / "pdf" / "minimal-document.pdf").read_bytes())
    with pytest.raises(DocumentLoadError, match=r"^report\.docx: .*\.docx"):
        load_file(path)


@pytest.mark.parametrize("name", ["slides.ppt", "old.doc", "noextension"])
def test_unsupported_extension_lists_the_supported_ones(tmp_path, name):
    path = tmp_path / name
    path.write_text("some text", encoding="utf-8")
    with pytest.raises(DocumentLoadError) as info:
        load_file(path)
    assert str(info.value).startswith(f"{name}: unsupported")
    for ext in SUPPORTED_EXTENSIONS:
        assert ext in str(info.value)


@pytest.mark.parametrize("name, content", [("empty.txt", b""), ("empty.pdf", b""), ("empty.docx", b""),
                                           ("blank.md", b"  \n\n\t \n")])
def test_empty_files_are_refused(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DocumentLoadError, match=rf"^{name}: .*(empty|no text)"):
        load_file(path)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_file(tmp_path / "missing.txt")
