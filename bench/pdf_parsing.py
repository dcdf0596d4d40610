"""PDF text extraction: pypdf vs pypdfium2 on the corpus PDFs (issue 6, "PDF parsing").

For each PDF in ``../shared/corpus/pdf`` both libraries extract every page's text,
``--repeats`` times; the median time gives pages/s. Text quality is compared on the
same output: characters, words, the word overlap of the two (Jaccard over distinct
``\\w+`` words), what each loses (Unicode ligatures like "ﬁ" that break search for
"fi", NULs and U+FFFD for glyphs without a Unicode mapping) and spot-check counts of
words a reader would search for. Published figures for reference: pypdf ~12 pages/s,
pypdfium2 ~146 pages/s (py-pdf/benchmarks).

Full run:   python bench/pdf_parsing.py --out pdf.json
CI smoke:   python bench/pdf_parsing.py --smoke
"""
from __future__ import annotations

import argparse
import collections
import logging
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_result  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
SMOKE_FILES = ("minimal-document.pdf", "pdflatex-4-pages.pdf")
#: Searched for in both extractions of the 117-page German lecture script (and the others):
#: plain words with "fi"/"ff" (ligatures in the PDF) and mathematical symbols.
SPOT_CHECKS = ("Definition", "offen", "Diffeomorphismus", "γ", "ϕ", "∈", "−")
_WORD = re.compile(r"\w+")
_LIGATURES = re.compile("[\ufb00-\ufb06]")


def extract_pypdf(path: Path) -> list[str]:
    """Each page's text by pypdf's ``extract_text()`` (what LangChain's PyPDFLoader returns)."""
    import pypdf

    return [page.extract_text() for page in pypdf.PdfReader(path).pages]


def extract_pypdfium2(path: Path) -> list[str]:
    """Each page's text by pypdfium2 (``get_text_range``, what LangChain's PyPDFium2Loader and
    :func:`rag.loaders.load_file` use), raw: CRLF line ends and U+FFFE hyphen marks kept."""
    import pypdfium2

    pdf = pypdfium2.PdfDocument(path)
    try:
        pages = []
        for i in range(len(pdf)):
            page = pdf[i]
            textpage = page.get_textpage()
            pages.append(textpage.get_text_range())
            textpage.close()
            page.close()
        return pages
    finally:
        pdf.close()


EXTRACTORS = {"pypdf": extract_pypdf, "pypdfium2": extract_pypdfium2}


def timed(fn, path: Path, repeats: int) -> tuple[list[str] | None, float | None, str | None]:
    """(pages' text, median seconds, error) of ``repeats`` runs of ``fn(path)``."""
    times, pages = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        try:
            pages = fn(path)
        except Exception as exc:  # noqa: BLE001 - a failure is a result here
            return None, None, f"{type(exc).__name__}: {exc}"
        times.append(time.perf_counter() - start)
    return pages, statistics.median(times), None


def quality(pages: list[str]) -> dict[str, Any]:
    """Characters, words and the defects counted in one extraction."""
    text = "\n".join(pages)
    return {"chars": len(text), "words": len(_WORD.findall(text)),
            "ligature_chars": len(_LIGATURES.findall(text)),
            "lost_glyphs": text.count("\x00") + text.count("\ufffd"),
            "spot_checks": {term: text.count(term) for term in SPOT_CHECKS}}


def compare(a: list[str], b: list[str], top: int = 8) -> dict[str, Any]:
    """Word overlap of two extractions and the commonest words only one of them has."""
    ca = collections.Counter(_WORD.findall("\n".join(a)))
    cb = collections.Counter(_WORD.findall("\n".join(b)))
    union = set(ca) | set(cb)
    only_a = sorted(set(ca) - set(cb), key=lambda w: (-ca[w], w))[:top]
    only_b = sorted(set(cb) - set(ca), key=lambda w: (-cb[w], w))[:top]
    return {"word_jaccard": len(set(ca) & set(cb)) / len(union) if union else 1.0,
            "only_pypdf": [f"{w} ({ca[w]})" for w in only_a],
            "only_pypdfium2": [f"{w} ({cb[w]})" for w in only_b]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=CORPUS / "pdf", help="folder of PDFs")
    p.add_argument("--repeats", type=int, default=5, help="runs per file and library (median taken)")
    p.add_argument("--smoke", action="store_true", help=f"two small files, one run: {', '.join(SMOKE_FILES)}")
    p.add_argument("--out", help="also write the JSON result here")
    args = p.parse_args(argv)
    if not args.corpus.is_dir():
        p.error(f"{args.corpus}: no such folder; the corpus lives in ../shared/corpus (see its README.md)")
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # "fontTools is required ..." per font, per page
    files = sorted(args.corpus.glob("*.pdf"))
    if args.smoke:
        files, args.repeats = [f for f in files if f.name in SMOKE_FILES], 1

    import pypdf
    import pypdfium2

    rows, totals = [], {name: {"pages": 0, "seconds": 0.0} for name in EXTRACTORS}
    for path in files:
        row: dict[str, Any] = {"file": path.name}
        texts = {}
        for name, fn in EXTRACTORS.items():
            pages, seconds, error = timed(fn, path, args.repeats)
            if error:
                row[name] = {"error": error}
                continue
            texts[name] = pages
            row[name] = {"pages": len(pages), "seconds": seconds,
                         "pages_per_s": len(pages) / seconds if seconds else float("inf"), **quality(pages)}
        if len(texts) == len(EXTRACTORS):  # totals over files both could read
            for name in EXTRACTORS:
                totals[name]["pages"] += row[name]["pages"]
                totals[name]["seconds"] += row[name]["seconds"]
            row["comparison"] = compare(texts["pypdf"], texts["pypdfium2"])
        rows.append(row)
    for t in totals.values():
        t["pages_per_s"] = t["pages"] / t["seconds"] if t["seconds"] else float("nan")
    result = {
        "benchmark": "pdf_parsing", "machine": machine(),
        "versions": {"pypdf": pypdf.__version__, "pypdfium2": pypdfium2.version.PYPDFIUM_INFO.version,
                     "pdfium": str(pypdfium2.version.PDFIUM_INFO)},
        "command": "python bench/pdf_parsing.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "repeats": args.repeats, "files": rows, "total": totals,
        "speedup": totals["pypdfium2"]["pages_per_s"] / totals["pypdf"]["pages_per_s"]
        if totals["pypdf"]["pages"] else float("nan"),
    }
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
