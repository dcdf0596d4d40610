"""OCR of images and of PDF pages without a text layer, on ../shared/corpus/ocr (its README
lists the text each file holds; linn.txt is the true text of linn.pdf / linn.png)."""
from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pypdf
import pytest

from rag.loaders import DocumentLoadError, LoadOptions, load_file
from rag.loaders import ocr

from .server_utils import ROOT

OFF = LoadOptions(ocr="off")


@functools.lru_cache(maxsize=None)
def _ocr(path: Path):
    """load_file once per corpus file in this module (OCR takes seconds a page)."""
    return load_file(path)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]{4,}", text.lower())


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["linn.pdf", "linn.png"])
def test_linn_scan_matches_its_true_text(corpus, name):
    docs = _ocr(corpus / "ocr" / name)
    assert len(docs) == 1 and docs[0].metadata["ocr"] is True
    if name.endswith(".pdf"):
        assert docs[0].metadata["page"] == 1
    text = docs[0].page_content
    assert "The LinnSequencer" in text
    truth = _words((corpus / "ocr" / "linn.txt").read_text(encoding="utf-8"))
    flat = _squeezed(text).lower()  # OCR drops some spaces between words ("rhythmicvalue")
    found = sum(w in flat for w in truth) / len(truth)
    assert found >= 0.9, f"only {found:.0%} of linn.txt's words were read"


@pytest.mark.slow
def test_two_columns_are_read_one_after_the_other(corpus):
    text = _ocr(corpus / "ocr" / "linn.pdf")[0].page_content
    lines = text.splitlines()
    # left column of "Recording a Sequence" goes on in its own lines, not joined to the right column
    start = next(i for i, line in enumerate(lines) if line.startswith("To record a sequence, simply press RECORD"))
    assert lines[start + 1].startswith("then play your MIDI keyboard")


@pytest.mark.slow
def test_chinese_advertisement_words_are_read(corpus):
    docs = _ocr(corpus / "ocr" / "ch_en_num.jpg")
    text = _squeezed(docs[0].page_content)
    for words in ["正品促销", "大桶装更划算", "强力去污符合国标", "5.8"]:
        assert words in text
    assert docs[0].metadata == {"source": "ch_en_num.jpg", "ocr": True}


@pytest.mark.slow
@pytest.mark.parametrize("name, expected", [
    ("c02-22.pdf", ["Miss Watson", "kitchen"]),
    ("typewriter.png", ["Linzensoep", "liter water"]),
    ("medical_report_scan.pdf", ["MEDRPT-2024-PAT-3847", "Heart Rate"]),
])
def test_other_scans_are_read(corpus, name, expected):
    docs = _ocr(corpus / "ocr" / name)
    text = "\n".join(d.page_content for d in docs)
    assert all(e in text for e in expected), text[:500]
    if name.endswith(".pdf"):
        assert [d.metadata["page"] for d in docs] == list(range(1, len(pypdf.PdfReader(corpus / "ocr" / name).pages) + 1))


# ------------------------------------------------ which pages are OCR-ed


@pytest.fixture
def fake_ocr(monkeypatch):
    """Replace the OCR engine by a recorder that 'reads' every image as one line."""
    calls = []

    def read(image):
        calls.append(image.size)
        return f"fake OCR text {len(calls)}"

    monkeypatch.setattr(ocr, "ocr_image", read)
    return calls


def _mixed_pdf(corpus, tmp_path) -> Path:
    """A text page (pdflatex-4-pages.pdf, page 1), the linn scan, another text page."""
    writer = pypdf.PdfWriter()
    text_pdf = pypdf.PdfReader(corpus / "pdf" / "pdflatex-4-pages.pdf")
    writer.add_page(text_pdf.pages[0])
    writer.add_page(pypdf.PdfReader(corpus / "ocr" / "linn.pdf").pages[0])
    writer.add_page(text_pdf.pages[1])
    path = tmp_path / "mixed.pdf"
    with path.open("wb") as f:
        writer.write(f)
    return path


def test_only_pages_without_a_text_layer_are_ocred(corpus, tmp_path, fake_ocr):
    docs = load_file(_mixed_pdf(corpus, tmp_path))
    assert [d.metadata["page"] for d in docs] == [1, 2, 3]
    assert [d.metadata.get("ocr", False) for d in docs] == [False, True, False]
    assert docs[1].page_content == "fake OCR text 1" and len(fake_ocr) == 1
    assert max(fake_ocr[0]) <= ocr.OCR_MAX_SIDE  # rendered at most at the OCR size


def test_pdfs_with_text_are_never_ocred(corpus, fake_ocr):
    for path in sorted((corpus / "pdf").glob("*.pdf"))[:4]:
        if "password" not in path.name and "GeoTopo" not in path.name:
            load_file(path)
    assert fake_ocr == []


def test_ocr_off_skips_scanned_pages_and_refuses_scans_and_images(corpus, tmp_path, fake_ocr):
    docs = load_file(_mixed_pdf(corpus, tmp_path), options=OFF)
    assert [d.metadata["page"] for d in docs] == [1, 3]
    with pytest.raises(DocumentLoadError, match=r"^linn\.pdf: the PDF has no text layer .*--ocr off.*--ocr auto"):
        load_file(corpus / "ocr" / "linn.pdf", options=OFF)
    with pytest.raises(DocumentLoadError, match=r"^linn\.png: images are read by OCR, which is off .*--ocr auto"):
        load_file(corpus / "ocr" / "linn.png", options=OFF)
    assert fake_ocr == []


def test_image_without_text_is_refused(tmp_path):
    from PIL import Image

    path = tmp_path / "white.png"
    Image.new("RGB", (400, 300), "white").save(path)
    with pytest.raises(DocumentLoadError, match=r"^white\.png: OCR found no text"):
        load_file(path)


# ------------------------------------------------------------ bad images


def test_huge_image_is_refused_before_decoding(tmp_path, fake_ocr):
    from PIL import Image

    path = tmp_path / "poster.png"
    Image.new("1", (20_000, 20_000), 1).save(path)  # a 90 KB file of 400 megapixels
    with pytest.raises(DocumentLoadError, match=r"^poster\.png: the image has 20,000 x 20,000 pixels "
                                                r"\(limit 50 megapixels\); scale it down"):
        load_file(path)
    assert fake_ocr == []


@pytest.mark.parametrize("name", ["photo.jpg", "scan.png", "scan.jpeg"])
def test_damaged_images_are_refused(corpus, tmp_path, name):
    source = corpus / "ocr" / ("ch_en_num.jpg" if name.endswith(("jpg", "jpeg")) else "linn.png")
    for i, data in enumerate([b"not an image at all" * 10, source.read_bytes()[:600]]):
        path = tmp_path / f"{i}{name}"
        path.write_bytes(data)
        with pytest.raises(DocumentLoadError, match=rf"^{i}{re.escape(name)}: (not a readable image|the image is damaged)"):
            load_file(path)


def test_ocr_text_lines_follow_reading_order():
    def box(x0, y0, x1, y1):
        return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]

    items = [  # a heading, two columns of prose, a full-width footer (given out of order)
        (box(520, 100, 900, 120), "right column line one is long enough"),
        (box(10, 10, 900, 30), "Heading across the page"),
        (box(10, 100, 400, 120), "left column line one is long enough"),
        (box(10, 130, 400, 150), "left column line two is long enough"),
        (box(520, 130, 900, 150), "right column line two is long enough"),
        (box(10, 300, 900, 320), "Footer across the page"),
    ]
    assert ocr.lines_to_text(items).splitlines() == [
        "Heading across the page", "left column line one is long enough", "left column line two is long enough",
        "right column line one is long enough", "right column line two is long enough", "Footer across the page"]
    table = [(box(10, 10, 60, 30), "Rate"), (box(300, 10, 340, 30), "78"),
             (box(10, 40, 60, 60), "Temp"), (box(300, 40, 340, 60), "98.6")]
    assert ocr.lines_to_text(table).splitlines() == ["Rate 78", "Temp 98.6"]  # a table stays row by row


def test_importing_the_loaders_does_not_load_the_ocr_engine():
    code = ("import sys, rag, rag.loaders, rag.loaders.image, webui.settings; "
            "assert not {'rapidocr_onnxruntime', 'onnxruntime', 'cv2'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
