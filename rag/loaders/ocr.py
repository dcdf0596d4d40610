"""OCR by RapidOCR (``rapidocr-onnxruntime``): PP-OCRv4 Chinese + English detection and
recognition models, shipped inside the wheel and run by ONNX Runtime on the CPU.

The engine is created on first use (about 1.5 s; importing this module costs nothing) and
shared by the process; one OCR runs at a time. The recognised text boxes are put back
in reading order, columns one after the other (:func:`lines_to_text`).

LangChain's ``RapidOCRBlobParser`` wraps the same engine, but for the images embedded in
a PDF, pages with a text layer included; here a page is OCR-ed only when it has no text
(:mod:`rag.loaders.pdf`), and it is rendered whole, so text drawn over a scan counts too.
"""
from __future__ import annotations

import logging
import os
import threading

logger = logging.getLogger(__name__)

#: Longest side, in pixels, an image is scaled down to before OCR: RapidOCR's own
#: ``max_side_len`` (it would scale down to it anyway; doing it first saves memory).
#: A Letter/A4 page rendered at this size is ~180 dpi, enough for 9-pt text.
OCR_MAX_SIDE = 2000
#: Most pixels of an image accepted at all (decoding a 20,000 x 20,000 image alone takes
#: 1.2 GB of memory); 50 MP is a 600 dpi A3 scan or a modern phone photo four times over.
MAX_IMAGE_PIXELS = 50_000_000
#: Least recognition score of a text line kept (RapidOCR's own default ``text_score``).
MIN_TEXT_SCORE = 0.5
#: ONNX Runtime threads of the OCR: all cores but one, so that a long scan being read
#: leaves a core to the chat model (on the 2-core development machine: 1 thread).
OCR_THREADS = max(1, (os.cpu_count() or 2) - 1)

_engine = None
_engine_lock = threading.Lock()
_run_lock = threading.Lock()


def engine():
    """The shared ``rapidocr_onnxruntime.RapidOCR`` engine, created on first call."""
    global _engine
    with _engine_lock:
        if _engine is None:
            from rapidocr_onnxruntime import RapidOCR

            _engine = RapidOCR(intra_op_num_threads=OCR_THREADS, text_score=MIN_TEXT_SCORE)
            logger.info("OCR engine ready (RapidOCR PP-OCRv4, %d thread(s))", OCR_THREADS)
        return _engine


def fit(image):
    """``image`` (PIL) as RGB, scaled down (aspect kept) so that its longest side is at
    most :data:`OCR_MAX_SIDE` pixels."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # transparent pixels become white paper, not black (text is usually dark on a clear background)
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    elif image.mode != "RGB":
        image = image.convert("RGB")  # palette and 1-bit scans ("P", "1") read as noise unless expanded
    longest = max(image.size)
    if longest > OCR_MAX_SIDE:
        scale = OCR_MAX_SIDE / longest
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
    return image


def ocr_image(image) -> str:
    """The text of a PIL image: lines as read, paragraphs separated by blank lines; "" when
    no text is found. The image is first passed through :func:`fit`."""
    import numpy as np

    bgr = np.ascontiguousarray(np.asarray(fit(image))[:, :, ::-1])  # RapidOCR takes OpenCV's BGR order
    ocr = engine()
    with _run_lock:
        result, _ = ocr(bgr)
    return lines_to_text([(box, text) for box, text, score in (result or []) if text.strip()])


def lines_to_text(items) -> str:
    """Text from OCR results ``[(box, text)]`` (``box``: four (x, y) corners), in reading order.

    The boxes are cut into horizontal bands at every white gap between them (each band
    is a line or a few); consecutive bands that leave the same vertical gutter free form
    a block, and a block whose two sides both hold lines of prose (median box at least
    :data:`COLUMN_LINE_RATIO` times as wide as high; table cells are not, so tables stay
    row by row) is read left column first, then right (recursively, for three columns).
    A full-width line ends a block. Within a column, boxes whose vertical extents overlap
    by more than half the smaller height form one line, joined left to right.
    """
    boxes = []
    for box, text in items:
        ys = [p[1] for p in box]
        xs = [p[0] for p in box]
        if text.strip():
            boxes.append((float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys)), text.strip()))
    if not boxes:
        return ""
    height = max(sorted(b[3] - b[1] for b in boxes)[len(boxes) // 2], 1.0)
    return "\n".join(_read(boxes, height))


#: Least width / height of a column's median text box for it to count as a column of
#: prose (a line of prose is 20-40 times as wide as high, a table cell a few times).
COLUMN_LINE_RATIO = 8


def _free(boxes, left: float, right: float, min_gap: float) -> list[tuple[float, float]]:
    """The x intervals within [left, right], at least ``min_gap`` wide, that no box covers."""
    free, end = [], left
    for a, b in sorted((b[0], b[2]) for b in boxes):
        if a - end >= min_gap:
            free.append((end, a))
        end = max(end, b)
    if right - end >= min_gap:
        free.append((end, right))
    return free


def _intersect(xs, ys, min_gap: float) -> list[tuple[float, float]]:
    out = []
    for a, b in xs:
        for c, d in ys:
            lo, hi = max(a, c), min(b, d)
            if hi - lo >= min_gap:
                out.append((lo, hi))
    return out


def _read(boxes, height: float, depth: int = 0) -> list[str]:
    """Lines of text of ``boxes`` in reading order (see :func:`lines_to_text`)."""
    left, right = min(b[0] for b in boxes), max(b[2] for b in boxes)
    bands: list[list] = []
    end = None
    for b in sorted(boxes, key=lambda b: b[1]):
        if end is not None and b[1] < end:
            bands[-1].append(b)
            end = max(end, b[3])
        else:
            bands.append([b])
            end = b[3]
    out: list[str] = []
    group: list = []
    free: list[tuple[float, float]] = []

    def flush() -> None:
        inner = [(a, b) for a, b in free if a > left and b < right]  # boxes on both sides
        if depth < 4 and inner and len(group) > 1:
            cut = (inner[0][0] + inner[0][1]) / 2
            sides = [[b for b in group if b[2] <= cut], [b for b in group if b[0] >= cut]]
            if all(_is_prose(side) for side in sides):
                for side in sides:
                    out.extend(_read(side, height, depth + 1))
                return
        if group:
            out.extend(_lines(group))

    for band in bands:
        band_free = _free(band, left, right, height)
        joined = _intersect(free, band_free, height) if group else band_free
        if group and not any(a > left and b < right for a, b in joined):
            flush()
            group, free = list(band), band_free
        else:
            group += band
            free = joined
    flush()
    return out


def _is_prose(boxes) -> bool:
    ratios = sorted((b[2] - b[0]) / max(b[3] - b[1], 1.0) for b in boxes)
    return len(boxes) >= 2 and ratios[len(ratios) // 2] >= COLUMN_LINE_RATIO


def _lines(boxes) -> list[str]:
    lines: list[list] = []  # [top, bottom, [(x, text)]]
    for left, top, _, bottom, text in sorted(boxes, key=lambda b: (b[1], b[0])):
        if lines:
            line = lines[-1]
            overlap = min(bottom, line[1]) - max(top, line[0])
            if overlap > 0.5 * min(bottom - top, line[1] - line[0]):
                line[0], line[1] = min(top, line[0]), max(bottom, line[1])
                line[2].append((left, text))
                continue
        lines.append([top, bottom, [(left, text)]])
    return [" ".join(t for _, t in sorted(parts)) for _, _, parts in lines]
