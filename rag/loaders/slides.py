"""PowerPoint decks (.pptx) by python-pptx: one Document per slide, the slide number as its page.

A slide's text, in reading order (the title first, then the shapes top to bottom and left
to right; groups read the same way inside): text boxes and placeholders paragraph by
paragraph, tables as Markdown tables, charts as their title and a small table of their
data, pictures by their alternative text ("Image: ..."), then the speaker notes
("Notes: ..."). markitdown's converter (microsoft/markitdown) reads a deck much the same
way but in the shapes' stacking order, not in reading order, and brings a dozen
converters' dependencies with it; python-pptx is what it uses underneath.
"""
from __future__ import annotations

import logging
from pathlib import Path

from langchain_core.documents import Document

from .base import DocumentLoadError, LoadOptions, check_office_archive, markdown_row

logger = logging.getLogger(__name__)

#: Most data points of a chart written out as a table (a chart of thousands of points is
#: noise to a reader; its title, series and categories still are written).
CHART_MAX_POINTS = 200
#: Most slides of a deck (a thousand-slide deck is a document of another kind).
MAX_SLIDES = 2000


def load(path: Path, name: str, options: LoadOptions) -> list[Document]:
    """One Document per slide with text; ``metadata["page"]`` is the 1-based slide number.

    Raises:
        DocumentLoadError: a zip bomb, not a readable .pptx (damaged, an old .ppt, another
            format, password-protected), more than :data:`MAX_SLIDES` slides, or no text
            on any slide.
    """
    from pptx import Presentation

    check_office_archive(path, name, "PowerPoint")
    try:
        deck = Presentation(str(path))
        slides = list(deck.slides)
    except Exception as exc:  # PackageNotFoundError, BadZipFile, KeyError, XMLSyntaxError ...
        raise DocumentLoadError(
            f"{name}: not a readable PowerPoint .pptx file ({type(exc).__name__}); if it is an old .ppt, "
            "password-protected or damaged, save it again as .pptx in PowerPoint/LibreOffice and upload it again"
        ) from exc
    if len(slides) > MAX_SLIDES:
        raise DocumentLoadError(f"{name}: the deck has {len(slides)} slides (limit {MAX_SLIDES}); "
                                "split it into smaller decks and upload those")
    docs = []
    for number, slide in enumerate(slides, start=1):
        try:
            text = slide_text(slide)
        except Exception as exc:  # noqa: BLE001 - a damaged part of one slide
            raise DocumentLoadError(
                f"{name}: slide {number} cannot be read ({type(exc).__name__}: {exc}); open the deck in "
                "PowerPoint/LibreOffice, save it again as .pptx and upload it again") from exc
        if text.strip():
            docs.append(Document(page_content=text, metadata={"source": name, "page": number}))
    if not docs:
        raise DocumentLoadError(f"{name}: no slide has any text (only pictures without alternative text?); "
                                "upload a deck that contains text")
    return docs


def slide_text(slide) -> str:
    """The text of one python-pptx slide, blocks separated by blank lines (see the module)."""
    title = slide.shapes.title
    blocks = []
    if title is not None and title.has_text_frame and title.text_frame.text.strip():
        blocks.append("# " + " ".join(title.text_frame.text.split()))
    title_id = None if title is None else title.shape_id
    blocks += [b for shape in _reading_order(slide.shapes) if shape.shape_id != title_id for b in _shape_blocks(shape)]
    if slide.has_notes_slide:
        notes = slide.notes_slide.notes_text_frame
        if notes is not None and notes.text.strip():
            blocks.append("Notes: " + notes.text.strip())
    return "\n\n".join(b for b in blocks if b.strip())


def _reading_order(shapes) -> list:
    """Shapes top to bottom, then left to right (shapes without a position last, in stacking order)."""
    far = float("inf")
    return sorted(shapes, key=lambda s: (far if s.top is None else s.top, far if s.left is None else s.left))


def _shape_blocks(shape) -> list[str]:
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
        return [b for child in _reading_order(shape.shapes) for b in _shape_blocks(child)]
    if getattr(shape, "has_table", False) and shape.has_table:
        return [_table_markdown(shape.table)]
    if getattr(shape, "has_chart", False) and shape.has_chart:
        return [_chart_text(shape.chart)]
    blocks = []
    if shape.has_text_frame and shape.text_frame.text.strip():
        blocks.append("\n".join(p.text for p in shape.text_frame.paragraphs if p.text.strip()))
    if shape.shape_type == MSO_SHAPE_TYPE.PICTURE or shape.is_placeholder and hasattr(shape, "image"):
        alt = (shape._element.xpath("./*[1]/p:cNvPr/@descr") or [""])[0].strip()
        if alt:
            blocks.append("Image: " + " ".join(alt.split()))
    return blocks


def _table_markdown(table) -> str:
    """A slide table as a Markdown table, its first row as the header; merged cells written once."""
    rows = []
    for row in table.rows:
        rows.append(["" if cell.is_spanned else " ".join(cell.text.split()) for cell in row.cells])
    rows = [r for r in rows if any(r)]
    if not rows:
        return ""
    lines = [markdown_row(rows[0]), markdown_row(["---"] * len(rows[0]))]
    return "\n".join(lines + [markdown_row(r) for r in rows[1:]])


def _chart_text(chart) -> str:
    """``Chart: <title>`` and, up to :data:`CHART_MAX_POINTS` values, a table of category x series."""
    lines = []
    if chart.has_title and chart.chart_title.has_text_frame:
        title = " ".join(chart.chart_title.text_frame.text.split())
        lines.append(f"Chart: {title}" if title else "Chart")
    else:
        lines.append("Chart")
    try:
        plot = chart.plots[0]
        categories = [str(c) for c in plot.categories]
        series = [(s.name or "", list(s.values)) for p in chart.plots for s in p.series]
    except Exception:  # noqa: BLE001 - charts of types python-pptx reads only in part
        return lines[0]
    if series and sum(len(v) for _, v in series) <= CHART_MAX_POINTS:
        lines += ["", markdown_row(["category"] + [n for n, _ in series]),
                  markdown_row(["---"] * (len(series) + 1))]
        for i, category in enumerate(categories or [str(i + 1) for i in range(len(series[0][1]))]):
            lines.append(markdown_row([category] + ["" if i >= len(v) or v[i] is None else f"{v[i]:g}"
                                                    for _, v in series]))
    elif series:
        lines.append("Series: " + ", ".join(n for n, _ in series if n))
    return "\n".join(lines)
