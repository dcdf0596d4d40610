"""Spreadsheets, slide decks and web pages from ../shared/corpus/office (the text each
file is known to contain is listed in the corpus README), and broken input of those kinds."""
from __future__ import annotations

import csv
import io
import os
import zipfile
from pathlib import Path

import pytest

from rag.loaders import DocumentLoadError, load_file
from rag.loaders import spreadsheet
from rag.splitter import make_text_splitter, split_documents

XLSX_KNOWN = ["6ff4173b-42a5-4784-9b19-f49caff4d93d", "affc7dad-52dc-4b98-9b5d-51e65d8a8ad0"]


def zip_bomb(template: Path, part: str, expanded_mb: int = 20) -> bytes:
    """``template`` (a real Office file) with ``expanded_mb`` MB of spaces appended to its
    part ``part``: a file of a few hundred KB that inflates about a thousandfold."""
    out = io.BytesIO()
    with zipfile.ZipFile(template) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == part:
                data += b" " * (expanded_mb * 1024 * 1024)
            dst.writestr(item, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return out.getvalue()


def rows_of(doc) -> list[list[str]]:
    """The Markdown table rows of a spreadsheet Document, as cell lists (title line dropped)."""
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in doc.page_content.splitlines()[1:]]


# ------------------------------------------------------------ spreadsheets


@pytest.mark.parametrize("name", ["test.xlsx", "test.xls"])
def test_workbook_every_sheet_with_header_in_each_block(corpus, name):
    docs = load_file(corpus / "office" / name)
    text = "\n".join(d.page_content for d in docs)
    assert all(known in text for known in XLSX_KNOWN)
    sheets = [d.metadata["sheet"] for d in docs]
    assert sheets[0] == "Sheet1" and len(set(sheets)) == 2  # both sheets, in workbook order
    for doc in docs:
        assert doc.metadata["source"] == name
        first, _, last = doc.metadata["rows"].partition("-")
        assert doc.metadata["location"] == f"sheet {doc.metadata['sheet']}, rows {doc.metadata['rows']}"
        header = ["Alpha", "Beta", "Gamma", "Delta"] if doc.metadata["sheet"] == "Sheet1" else [
            "ColA", "ColB", "ColC", "ColD"]
        rows = rows_of(doc)
        assert rows[0] == header and rows[1] == ["---"] * 4
        assert len(rows) - 2 == int(last or first) - int(first) + 1  # the row range counts the rows
        assert len(doc.page_content) <= spreadsheet.ROW_BLOCK_CHARS
    # row ranges of a sheet follow each other: no row lost, none twice
    ranges = [tuple(int(x) for x in (d.metadata["rows"] + "-" + d.metadata["rows"]).split("-")[:2])
              for d in docs if d.metadata["sheet"] == "Sheet1"]
    assert ranges[0][0] == 2 and all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:]))


def test_xlsx_row_numbers_match_the_cells(corpus):
    import openpyxl

    ws = openpyxl.load_workbook(corpus / "office" / "test.xlsx").worksheets[0]
    number = next(c.row for row in ws.iter_rows() for c in row if c.value == XLSX_KNOWN[0])
    doc = next(d for d in load_file(corpus / "office" / "test.xlsx") if XLSX_KNOWN[0] in d.page_content)
    first, last = (int(x) for x in doc.metadata["rows"].split("-"))
    assert first <= number <= last
    assert rows_of(doc)[2 + number - first][1] == XLSX_KNOWN[0]


def test_shift_jis_csv_rows_keep_their_cells(corpus):
    docs = load_file(corpus / "office" / "test_mskanji.csv")
    rows = [r for d in docs for r in rows_of(d)]
    assert rows[0] == ["名前", "年齢", "住所"]
    assert ["佐藤太郎", "30", "東京"] in rows and ["髙橋淳", "35", "名古屋"] in rows
    assert docs[0].metadata == {"source": "test_mskanji.csv", "rows": "2-4", "location": "rows 2-4"}


@pytest.mark.parametrize("encoding, delimiter", [("utf-8", ","), ("gbk", ";"), ("utf-8-sig", "\t"),
                                                 ("cp1252", "|")])
def test_csv_encoding_and_delimiter_are_detected(tmp_path, encoding, delimiter):
    if encoding == "cp1252":
        rows = [["name", "city", "note"]] + [[n, f"city {i}", f"remark, with comma {i}"]
                                             for i, n in enumerate(["Zoë", "Renée", "Müller", "François"])]
    else:  # a few lines of real Chinese: charset detection needs some text to tell GBK from Big5
        rows = [["姓名", "城市", "备注"], ["张伟", "北京市朝阳区", "客户要求下周三之前发货，请提前安排物流"],
                ["李娜", "上海市浦东新区", "已经支付全部货款，发票需要寄到公司地址"],
                ["王芳", "广州市天河区", "订单数量有变化，请与销售部门联系确认"]]
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter).writerows(rows)
    path = tmp_path / "people.csv"
    path.write_bytes(buf.getvalue().encode(encoding))
    got = [r for d in load_file(path) for r in rows_of(d)]
    assert got[0] == rows[0] and got[2:] == rows[1:]


def test_long_sheet_chunks_each_repeat_the_header(tmp_path):
    path = tmp_path / "orders.csv"
    lines = ["order id,customer,product,quantity"] + [f"{i},customer {i},product {i % 7},{i % 13}" for i in range(500)]
    path.write_text("\n".join(lines), encoding="utf-8")
    docs = load_file(path)
    chunks = split_documents(docs, make_text_splitter(500, 50))
    assert len(chunks) == len(docs) > 10  # a block is never cut by the default splitter
    for chunk in chunks:
        assert "| order id | customer | product | quantity |" in chunk.page_content
    found = [c for c in chunks if "| 321 | customer 321 |" in c.page_content]
    assert len(found) == 1
    first, last = (int(x) for x in found[0].metadata["rows"].split("-"))
    assert first <= 323 <= last  # record 1 is the header, record 323 is order 321


def test_csv_beyond_the_row_limit_is_refused_naming_the_fix(tmp_path):
    path = tmp_path / "huge.csv"
    with path.open("w", encoding="utf-8") as f:
        f.write("id,value\n")
        f.writelines(f"{i},{i * 7}\n" for i in range(spreadsheet.MAX_ROWS + 10))
    with pytest.raises(DocumentLoadError, match=r"^huge\.csv: .*more than 100,000 rows.*split it"):
        load_file(path)


def test_sheet_beyond_the_cell_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(spreadsheet, "MAX_CELLS", 1000)
    path = tmp_path / "wide.csv"
    path.write_text("\n".join(",".join(f"r{r}c{c}" for c in range(50)) for r in range(30)), encoding="utf-8")
    with pytest.raises(DocumentLoadError, match=r"^wide\.csv: .*more than 1,000 non-empty cells"):
        load_file(path)


def test_empty_sheets_are_refused(tmp_path):
    import openpyxl

    path = tmp_path / "blank.xlsx"
    openpyxl.Workbook().save(path)
    with pytest.raises(DocumentLoadError, match=r"^blank\.xlsx: .*no cell with text"):
        load_file(path)


@pytest.mark.parametrize("name", ["test.xlsx", "test.xls"])
def test_damaged_workbooks_are_refused_naming_the_fix(corpus, tmp_path, name):
    data = (corpus / "office" / name).read_bytes()
    for i, damaged in enumerate([os.urandom(4096), data[: len(data) // 2], b"plain text, not a workbook"]):
        path = tmp_path / f"{i}{name}"
        path.write_bytes(damaged)
        with pytest.raises(DocumentLoadError, match=rf"^{i}{name}: not a readable Excel .*(save it|upload)"):
            load_file(path)


def test_xlsx_zip_bomb_is_refused(corpus, tmp_path):
    path = tmp_path / "bomb.xlsx"
    path.write_bytes(zip_bomb(corpus / "office" / "test.xlsx", "xl/worksheets/sheet1.xml"))
    assert path.stat().st_size < 1024 * 1024
    with pytest.raises(DocumentLoadError, match=r"^bomb\.xlsx: refused as a possible zip bomb.*save it again"):
        load_file(path)


# ------------------------------------------------------------ slide decks


def test_pptx_one_document_per_slide_with_the_known_text(corpus):
    from pptx import Presentation

    docs = load_file(corpus / "office" / "test.pptx")
    n_slides = len(Presentation(corpus / "office" / "test.pptx").slides)
    assert [d.metadata["page"] for d in docs] == list(range(1, n_slides + 1))  # every slide has text here
    by_page = {d.metadata["page"]: d.page_content for d in docs}
    assert by_page[1].startswith("# AutoGen: Enabling Next-Gen LLM Applications via Multi-Agent Conversation\n")
    assert by_page[1].count("AutoGen: Enabling Next-Gen") == 1  # the title once, not again as a shape
    assert "2cdda5c8-e50e-4db4-b5f0-9722a649f455" in by_page[2]
    assert "Image: The first page of the AutoGen ArXiv paper." in by_page[2]  # alternative text
    assert "Chart: a3f6004b-6f4f-4ea8-bee3-3741f4dc385f" in by_page[4]


def test_pptx_table_rows_stay_rows(corpus):
    text = load_file(corpus / "office" / "test.pptx")[2].page_content
    assert "| ColA | ColB | ColC | ColD | ColE | ColF |\n| --- |" in text
    assert "| 7 | 8 | 9 | 1b92870d-e3b5-4e65-8153-919f4ff45592 | 11 | 12 |" in text.splitlines()


def test_pptx_reading_order_and_notes(tmp_path):
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[5])  # title only
    slide.shapes.title.text = "Quarterly results"
    # added bottom first: the stacking order is not the reading order
    slide.shapes.add_textbox(Inches(1), Inches(5), Inches(4), Inches(1)).text_frame.text = "Bottom box"
    slide.shapes.add_textbox(Inches(5), Inches(2), Inches(4), Inches(1)).text_frame.text = "Top right box"
    slide.shapes.add_textbox(Inches(1), Inches(2), Inches(4), Inches(1)).text_frame.text = "Top left box"
    slide.notes_slide.notes_text_frame.text = "Say that revenue grew 12 percent."
    deck.slides.add_slide(deck.slide_layouts[6])  # blank slide: no Document
    path = tmp_path / "results.pptx"
    deck.save(path)
    docs = load_file(path)
    assert len(docs) == 1 and docs[0].metadata == {"source": "results.pptx", "page": 1}
    text = docs[0].page_content
    order = ["# Quarterly results", "Top left box", "Top right box", "Bottom box", "Notes: Say that revenue grew"]
    assert [text.index(t) for t in order] == sorted(text.index(t) for t in order)


def test_damaged_pptx_is_refused_naming_the_fix(corpus, tmp_path):
    data = (corpus / "office" / "test.pptx").read_bytes()
    for i, damaged in enumerate([os.urandom(4096), data[: len(data) // 2], (corpus / "office" / "test.xls").read_bytes()]):
        path = tmp_path / f"{i}deck.pptx"
        path.write_bytes(damaged)
        with pytest.raises(DocumentLoadError, match=rf"^{i}deck\.pptx: not a readable PowerPoint .*save it again"):
            load_file(path)


def test_pptx_zip_bomb_is_refused(corpus, tmp_path):
    path = tmp_path / "bomb.pptx"
    path.write_bytes(zip_bomb(corpus / "office" / "test.pptx", "ppt/slides/slide1.xml"))
    with pytest.raises(DocumentLoadError, match=r"^bomb\.pptx: refused as a possible zip bomb"):
        load_file(path)


# --------------------------------------------------------------- web pages


def test_wikipedia_article_without_page_chrome(corpus):
    docs = load_file(corpus / "office" / "test_wikipedia.html")
    assert len(docs) == 1 and docs[0].metadata["title"] == "Microsoft - Wikipedia"
    text = docs[0].page_content
    assert "Microsoft entered the operating system (OS) business in 1980" in text
    for chrome in ["move to sidebar", "154 languages", "You are encouraged to create an account", "<sup>"]:
        assert chrome not in text
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings[:2] == ["# Microsoft", "## History"]


def test_blog_post_text_and_title(corpus):
    text = load_file(corpus / "office" / "test_blog.html")[0].page_content
    assert text.startswith("# Does Model and Inference Parameter Matter in LLM Applications?")
    assert "Is model selection irrelevant? What about inference parameters?" in text


def test_html_encoding_comes_from_the_page(tmp_path):
    body = ("DeepSpeed 是一个深度学习优化库，它使分布式训练变得简单、高效和有效。"
            "安装方法：先安装 PyTorch，然后运行 pip install deepspeed。")
    page = (f"<html><head><meta charset='gbk'><title>安装说明</title></head><body>"
            f"<nav><a href='/'>首页</a> | <a href='/about'>关于我们</a></nav>"
            f"<article><h1>安装说明</h1><p>{body * 3}</p><h2>常见问题</h2><p>如果遇到问题，请查看高级安装说明！"
            f"这里有更多的解释和例子。</p></article><footer>版权所有 示例公司 保留所有权利</footer></body></html>")
    path = tmp_path / "install.htm"
    path.write_bytes(page.encode("gbk"))
    text = load_file(path)[0].page_content
    assert body in text and "## 常见问题" in text
    assert "关于我们" not in text and "版权所有" not in text  # navigation and footer left out


def test_web_page_over_the_size_limit_is_refused(tmp_path):
    path = tmp_path / "huge.html"
    with path.open("wb") as f:
        f.write(b"<html><body>")
        for _ in range(50):
            f.write(b"<p>" + b"word " * 209_715 + b"</p>")  # 50 MB in all
        f.write(b"</body></html>")
    with pytest.raises(DocumentLoadError, match=r"^huge\.html: the web page is 50 MB \(limit 10 MB\); save only"):
        load_file(path)


@pytest.mark.parametrize("content", [os.urandom(4096), b"<html><head><script>app()</script></head><body></body></html>"])
def test_html_without_article_text_is_refused(tmp_path, content):
    path = tmp_path / "page.html"
    path.write_bytes(content)
    with pytest.raises(DocumentLoadError, match=r"^page\.html: (not an HTML page|not a readable|no article text)"):
        load_file(path)
