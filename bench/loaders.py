"""Loading time per file type, and OCR speed (issue 13, "OCR" in docs/benchmarks.md).

Every file of ``../shared/corpus/office`` and ``../shared/corpus/ocr`` (and, for
reference, one Markdown, one Word and one PDF file with a text layer) is loaded by
:func:`rag.loaders.load_file` ``--repeats`` times (the median is taken; the OCR engine is
created before timing starts). That is the extra ingestion time a type costs: splitting,
embedding and saving are the same for every type (docs/benchmarks.md, "Ingestion").
The OCR files are then read again with the OCR engine on 1 thread and on all cores
(ONNX Runtime's intra-op threads) to give pages/s for each.

Full run:   python bench/loaders.py --out docs/bench-loaders-cpu.json
CI smoke:   python bench/loaders.py --smoke
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_result  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
REFERENCE = ("deepspeed/README.md", "docx/test.docx", "pdf/pdflatex-4-pages.pdf")
SMOKE_FILES = ("office/test.xlsx", "office/test_mskanji.csv", "ocr/ch_en_num.jpg")
OCR_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf")


def _files(corpus: Path, smoke: bool) -> list[Path]:
    if smoke:
        return [corpus / f for f in SMOKE_FILES]
    found = [corpus / f for f in REFERENCE]
    for folder in ("office", "ocr"):
        found += sorted(p for p in (corpus / folder).iterdir()
                        if p.suffix.lower() in {".xlsx", ".xls", ".csv", ".pptx", ".html", ".htm", *OCR_SUFFIXES})
    return found


def _time_load(path: Path, repeats: int) -> dict[str, Any]:
    from rag.loaders import load_file

    times, docs = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        docs = load_file(path)
        times.append(time.perf_counter() - start)
    ocr_pages = sum(1 for d in docs if d.metadata.get("ocr"))
    return {"file": f"{path.parent.name}/{path.name}", "bytes": path.stat().st_size, "documents": len(docs),
            "characters": sum(len(d.page_content) for d in docs), "ocr_pages": ocr_pages,
            "seconds": round(statistics.median(times), 4)}


def _ocr_speed(paths: list[Path], threads: int) -> dict[str, Any]:
    """Pages/s over the OCR files with the engine on ``threads`` threads (engine built first)."""
    from rag.loaders import load_file, ocr

    ocr.OCR_THREADS = threads
    ocr._engine = None
    ocr.engine()
    pages, seconds = 0, 0.0
    for path in paths:
        start = time.perf_counter()
        docs = load_file(path)
        seconds += time.perf_counter() - start
        pages += sum(1 for d in docs if d.metadata.get("ocr"))
    return {"threads": threads, "pages": pages, "seconds": round(seconds, 2),
            "pages_per_second": round(pages / seconds, 3) if seconds else None}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=CORPUS, help="the shared corpus folder")
    p.add_argument("--repeats", type=int, default=3, help="loads per file without OCR (median taken); OCR files once")
    p.add_argument("--smoke", action="store_true", help=f"three small files, one run: {', '.join(SMOKE_FILES)}")
    p.add_argument("--out", help="also write the JSON result here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from rag.loaders import ocr

    files = _files(args.corpus, args.smoke)
    ocr.engine()  # its ~1.5 s start-up is not a file's loading time
    rows = []
    for path in files:
        scanned = path.parent.name == "ocr"
        rows.append(_time_load(path, 1 if scanned or args.smoke else args.repeats))
        print(f"{rows[-1]['file']}: {rows[-1]['seconds']} s", file=sys.stderr)
    scans = [f for f in files if f.parent.name == "ocr"]
    cores = os.cpu_count() or 1
    speed = [] if args.smoke else [_ocr_speed(scans, t) for t in sorted({1, cores})]
    result = {"machine": machine(), "default_ocr_threads": max(1, cores - 1), "files": rows, "ocr_speed": speed}
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
