"""Fuzz the document loaders and the upload-name rule with Hypothesis (issue 5).

Whatever bytes arrive under whatever name, :func:`rag.loaders.load_file` either
returns Documents with text, or raises :class:`~rag.loaders.DocumentLoadError`
whose message starts with the file name: never another exception, never a hang.
Inputs: arbitrary bytes, real corpus files with bytes flipped, cut or spliced,
and zip archives with random members under a .docx name.  ``derandomize`` keeps
CI runs repeatable; the example counts are fixed and small.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="pip install -e '.[test]' brings hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rag.loaders import DocumentLoadError, load_file  # noqa: E402
from rag.persistence import MAX_NAME_BYTES, safe_file_name  # noqa: E402

from .conftest import CORPUS  # noqa: E402

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SAMPLES = {".pdf": "pdf/minimal-document.pdf", ".docx": "docx/test.docx", ".md": "deepspeed/zero.md",
           ".xlsx": "office/test.xlsx", ".xls": "office/test.xls", ".csv": "office/test_mskanji.csv",
           ".pptx": "office/test.pptx", ".html": "office/test_blog.html", ".png": "ocr/linn.png",
           ".jpg": "ocr/ch_en_num.jpg"}
EXTENSIONS = [".txt", ".md", ".pdf", ".docx", ".xlsx", ".xls", ".csv", ".pptx", ".html", ".png", ".jpg", ".exe", ""]


@pytest.fixture(autouse=True)
def fast_ocr(monkeypatch):
    """Images decode for real; the OCR engine itself (seconds an image) is a stand-in here."""
    from rag.loaders import ocr

    monkeypatch.setattr(ocr, "ocr_image", lambda image: f"text of a {image.width}x{image.height} image")


def load_or_refuse(tmp: Path, name: str, data: bytes) -> None:
    """The loaders' contract for one input."""
    path = tmp / "upload.bin"
    path.write_bytes(data)
    try:
        docs = load_file(path, name=name)
    except DocumentLoadError as exc:
        assert str(exc).startswith(name + ":"), str(exc)
        return
    assert docs, "a loaded file has at least one Document"
    for doc in docs:
        assert doc.page_content.strip() and doc.metadata["source"] == name
        assert "\x00" not in doc.page_content, "binary passed off as text"


@FUZZ
@given(data=st.binary(max_size=4096), ext=st.sampled_from(EXTENSIONS))
def test_arbitrary_bytes_load_or_are_refused(tmp_path, data, ext):
    load_or_refuse(tmp_path, f"upload{ext}", data)


@FUZZ
@given(text=st.text(max_size=2000), encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "gb18030"]))
def test_text_in_any_common_encoding_loads_as_itself(tmp_path, text, encoding):
    path = tmp_path / "notes.txt"
    path.write_bytes(text.encode(encoding, errors="ignore"))
    try:
        docs = load_file(path)
    except DocumentLoadError as exc:
        assert str(exc).startswith("notes.txt:")
        return
    assert docs[0].page_content.strip()


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"real corpus not found at {CORPUS}")
@pytest.mark.parametrize("ext", list(SAMPLES))
@FUZZ
@given(data=st.data())
def test_damaged_real_files_load_or_are_refused(tmp_path, ext, data):
    original = (CORPUS / SAMPLES[ext]).read_bytes()
    how = data.draw(st.sampled_from(["flip", "cut", "splice"]), label="damage")
    damaged = bytearray(original)
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 16), label="flips")):
            i = data.draw(st.integers(0, len(damaged) - 1), label="at")
            damaged[i] = data.draw(st.integers(0, 255), label="byte")
    elif how == "cut":
        damaged = damaged[: data.draw(st.integers(0, len(damaged)), label="cut at")]
    else:
        i = data.draw(st.integers(0, len(damaged)), label="splice at")
        damaged[i:i] = data.draw(st.binary(min_size=1, max_size=512), label="junk")
    load_or_refuse(tmp_path, f"damaged{ext}", bytes(damaged))


@FUZZ
@given(members=st.lists(st.tuples(st.sampled_from(["word/document.xml", "[Content_Types].xml", "_rels/.rels",
                                                    "word/_rels/document.xml.rels", "docProps/core.xml", "x",
                                                    "xl/workbook.xml", "xl/worksheets/sheet1.xml",
                                                    "ppt/presentation.xml", "ppt/slides/slide1.xml"]),
                                   st.binary(max_size=512)), max_size=6),
       ext=st.sampled_from([".docx", ".xlsx", ".pptx"]))
def test_random_zip_archives_named_office_files_load_or_are_refused(tmp_path, members, ext):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, payload in members:
            z.writestr(name, payload)
    load_or_refuse(tmp_path, "archive" + ext, buf.getvalue())


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=300) | st.sampled_from(["..", ".", "../../etc/passwd", "C:\\x\\..\\y.md", "\x00",
                                                     "a/b/../..", " / ", "\u202e", "\u3000.md"]))
def test_safe_file_name_never_leaves_the_folder(tmp_path, name):
    safe = safe_file_name(name)
    assert safe and safe not in (".", "..") and "/" not in safe and "\\" not in safe and "\x00" not in safe
    assert len(safe.encode("utf-8")) <= MAX_NAME_BYTES
    assert safe_file_name(safe) == safe, "stable: a stored name maps to itself"
    target = tmp_path / "kb" / safe
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(b"x")  # the file system accepts it
    assert os.path.realpath(target).startswith(os.path.realpath(tmp_path / "kb") + os.sep)
    target.unlink()


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"real corpus not found at {CORPUS}")
def test_docx_needing_an_unknown_zip_version_is_refused(tmp_path):
    """Found by the fuzzing above: one flipped byte in the central directory
    ("version needed to extract" = 6.4) made zipfile raise NotImplementedError."""
    data = bytearray((CORPUS / SAMPLES[".docx"]).read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 6] = 64
    load_or_refuse(tmp_path, "version.docx", bytes(data))
    with pytest.raises(DocumentLoadError, match="not a readable Word .docx"):
        load_file(tmp_path / "upload.bin", name="version.docx")
