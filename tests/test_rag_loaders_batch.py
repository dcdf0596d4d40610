"""The new file types in a knowledge base and through the real server's API: good files
added and found by a question about their known text, hostile ones refused with a reason
that names the fix, and the rest of the batch added."""
from __future__ import annotations

import os
import re

import httpx
import pytest

from rag.loaders import spreadsheet
from rag.store import KnowledgeBase

from .rag_fixtures import HashEmbedder
from .test_rag_loaders_office import zip_bomb
from .conftest import uploaded


def _hostile_batch(corpus, tmp_path) -> list[tuple[str, bytes]]:
    from PIL import Image

    office = corpus / "office"
    xlsx, pptx = (office / "test.xlsx").read_bytes(), (office / "test.pptx").read_bytes()
    poster = tmp_path / "poster.png"
    Image.new("1", (20_000, 20_000), 1).save(poster)
    huge_csv = b"id,value\n" + b"".join(b"%d,%d\n" % (i, i * 7) for i in range(spreadsheet.MAX_ROWS + 5))
    return [
        ("test.xlsx", xlsx),
        ("corrupt.xlsx", xlsx[: len(xlsx) // 2]),
        ("bomb.xlsx", zip_bomb(office / "test.xlsx", "xl/worksheets/sheet1.xml")),
        ("test_mskanji.csv", (office / "test_mskanji.csv").read_bytes()),
        ("corrupt.pptx", os.urandom(8192)),
        ("bomb.pptx", zip_bomb(office / "test.pptx", "ppt/slides/slide1.xml")),
        ("poster.png", poster.read_bytes()),
        ("huge.csv", huge_csv),
        ("huge.html", b"<html><body>" + b"<p>" + b"word " * (11 * 1024 * 1024 // 5) + b"</p></body></html>"),
        ("test.pptx", pptx),
    ]


REFUSALS = {  # file -> (words of the reason, words of the fix)
    "corrupt.xlsx": ("not a readable Excel .xlsx", "save it as .xlsx"),
    "bomb.xlsx": ("zip bomb", "save it again"),
    "corrupt.pptx": ("not a readable PowerPoint .pptx", "save it again as .pptx"),
    "bomb.pptx": ("zip bomb", "save it again"),
    "poster.png": ("20,000 x 20,000 pixels", "scale it down"),
    "huge.csv": ("more than 100,000 rows", "split it into smaller files"),
    "huge.html": ("the web page is 11 MB", "save only the article"),
}


def test_hostile_files_are_refused_and_the_rest_of_the_batch_added(corpus, tmp_path):
    batch = _hostile_batch(corpus, tmp_path)
    folder = tmp_path / "upload"
    folder.mkdir()
    paths = []
    for name, data in batch:
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    kb = KnowledgeBase.open(tmp_path / "kb", HashEmbedder())
    reports = {r.name: r for r in kb.add_files(paths)}
    for name, (reason, fix) in REFUSALS.items():
        assert reports[name].status == "refused", reports[name]
        assert reports[name].reason.startswith(name + ":") and reason in reports[name].reason \
            and fix in reports[name].reason, reports[name].reason
    good = [n for n, _ in batch if n not in REFUSALS]
    assert all(reports[n].status == "added" and reports[n].chunks > 0 for n in good)
    assert sorted(f["name"] for f in kb.files()) == sorted(good)  # nothing of a refused file stored
    reopened = KnowledgeBase.open(tmp_path / "kb", HashEmbedder())
    assert sorted(f["name"] for f in reopened.files()) == sorted(good)
    assert not any((tmp_path / "kb" / "files").glob("*bomb*"))


@pytest.mark.slow
def test_new_types_through_the_api(server, corpus):
    srv = server("--max-new-tokens=8")
    srv.wait()
    names = ["test.xlsx", "test.pptx", "test_wikipedia.html", "test_mskanji.csv", "ch_en_num.jpg", "linn.pdf"]
    files = [("files", (n, (corpus / ("ocr" if n in ("ch_en_num.jpg", "linn.pdf") else "office") / n).read_bytes()))
             for n in names] + [("files", ("broken.pptx", b"PK\x03\x04 not really a deck"))]
    with httpx.Client(base_url=srv.url, timeout=600) as client:
        r = client.post("/v1/knowledge/newtypes/files", files=files)
        assert r.status_code == 200, r.text
        report = {f["name"]: f for f in r.json()["files"]}
        assert all(report[n]["status"] == "added" and report[n]["chunks"] > 0 for n in names), report
        assert report["broken.pptx"]["status"] == "refused" and "save it again" in report["broken.pptx"]["reason"]

        def search(query: str, top_k: int = 3, mode: str = "hybrid") -> list[dict]:
            r = client.post("/v1/knowledge/newtypes/search",
                            json={"query": query, "top_k": top_k, "score_threshold": -1, "mode": mode})
            assert r.status_code == 200, r.text
            return r.json()["results"]

        best = search("Which row has the value 6ff4173b-42a5-4784-9b19-f49caff4d93d?")[0]
        assert best["source"] == "test.xlsx" and "6ff4173b-42a5-4784-9b19-f49caff4d93d" in best["text"]
        assert best["metadata"]["sheet"] == "Sheet1" and re.fullmatch(r"sheet Sheet1, rows \d+-\d+",
                                                                      best["metadata"]["location"])
        assert best["text"].splitlines()[1] == "| Alpha | Beta | Gamma | Delta |"  # the header with the row

        best = search("What is the title of the chart a3f6004b-6f4f-4ea8-bee3-3741f4dc385f?")[0]
        assert best["source"] == "test.pptx" and best["page"] == 4

        found = search("When did Microsoft enter the operating system business with Xenix?")
        assert any(c["source"] == "test_wikipedia.html" and "operating system (OS) business in 1980" in c["text"]
                   for c in found), found

        best = search("What is the LinnSequencer?")[0]
        assert best["source"] == "linn.pdf" and best["page"] == 1 and "LinnSequencer" in best["text"]
        assert best["metadata"]["ocr"] is True

        best = search("正品促销的价格是多少？", mode="bm25")[0]
        assert best["source"] == "ch_en_num.jpg"

        best = search("髙橋淳は何歳ですか 名古屋", mode="bm25")[0]
        assert best["source"] == "test_mskanji.csv" and "| 髙橋淳 | 35 | 名古屋 |" in best["text"]

        chrome = search("move to sidebar hide 154 languages", top_k=20)
        assert not any("move to sidebar" in c["text"] or "154 languages" in c["text"] for c in chrome)


def test_citation_names_the_sheet_and_rows(corpus):
    from rag.loaders import load_file
    from rag.prompt import passage_label
    from rag.types import Chunk, SearchResult
    from webui.ui import format_sources

    doc = load_file(corpus / "office" / "test.xlsx")[0]
    meta = {k: v for k, v in doc.metadata.items() if k != "source"}
    result = SearchResult(chunk=Chunk(id=1, text=doc.page_content, source="test.xlsx", metadata=meta), score=0.9)
    assert passage_label(result) == f"source: test.xlsx, sheet Sheet1, rows {doc.metadata['rows']}"
    shown = format_sources([result])
    assert f"<b>test.xlsx, sheet Sheet1, rows {doc.metadata['rows']}</b>" in shown
    assert "6ff4173b\\-42a5" in shown, "opening the source shows the whole chunk"
    slide = SearchResult(chunk=Chunk(id=2, text="AutoGen", source="test.pptx", page=4), score=0.9)
    assert passage_label(slide) == "source: test.pptx, page 4"


@pytest.mark.slow
def test_new_types_through_the_page_handlers(tmp_path, embedder, corpus):
    from rag.registry import KnowledgeBaseRegistry
    from webui.services import ChatService
    from webui.settings import Settings
    from webui.ui import PageHandlers

    from .conftest import FakeChatModel

    registry = KnowledgeBaseRegistry(tmp_path / "knowledge", embedder)
    service = ChatService(FakeChatModel("Seen."), registry, Settings(knowledge_dir=tmp_path / "knowledge"))
    shown = []

    def progress(value, desc="", unit="", **_):
        shown.append((value, desc, unit))

    h = PageHandlers(service)
    files = [str(corpus / "office" / "test.xlsx"), str(corpus / "office" / "test.pptx"),
             str(corpus / "ocr" / "medical_report_scan.pdf")]
    report, status = h.ingest(uploaded(files), progress=progress)
    assert report.count("✅ added") == 3, report
    ocr_steps = [(v, d) for v, d, u in shown if u == "pages"]
    assert [v for v, _ in ocr_steps] == [(0, 3), (1, 3), (2, 3), (3, 3)]  # the scan's pages counted
    assert "medical_report_scan.pdf · OCR page 3/3" in ocr_steps[-1][1]
    steps = list(h.rag_chat("Which row has the value affc7dad-52dc-4b98-9b5d-51e65d8a8ad0?", [], 3, -1.0,
                            "You are terse.", 32, 0.7, 20, 0.8, 5))
    sources = steps[-1][3]
    assert "<b>test.xlsx, sheet " in sources  # the citation names the sheet and rows
    sent, _ = service.model.calls[-1]
    assert "affc7dad-52dc-4b98-9b5d-51e65d8a8ad0" in sent[-1]["content"]


def test_cli_ingest_ocr_off_refuses_images_and_keeps_the_rest(monkeypatch, tmp_path, corpus):
    import io as _io

    import rag.cli as cli
    import rag.cli.common as cli_common
    from rag.loaders import configure, current_options

    monkeypatch.setattr(cli_common, "load_embedder", lambda name=None, device=None: HashEmbedder())
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ["test.xlsx", "test_mskanji.csv"]:
        (folder / name).write_bytes((corpus / "office" / name).read_bytes())
    (folder / "ch_en_num.jpg").write_bytes((corpus / "ocr" / "ch_en_num.jpg").read_bytes())
    out = _io.StringIO()
    try:
        status = cli.main(["ingest", str(folder), "--ocr", "off", "--no-progress",
                           f"--knowledge-dir={tmp_path / 'kb'}"], out=out)
        assert current_options().ocr == "off"
    finally:
        configure(ocr="auto")  # a process-wide setting: leave it as the other tests expect
    text = out.getvalue()
    assert status == 1  # a file was refused
    assert re.search(r"refused\s+.*ch_en_num\.jpg.*--ocr off.*--ocr auto", text), text
    assert re.search(r"added\s+.*test\.xlsx", text) and re.search(r"added\s+.*test_mskanji\.csv", text), text
