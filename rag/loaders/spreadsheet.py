"""Spreadsheets (.xlsx by openpyxl, .xls by xlrd, .csv by the csv module): rows kept as rows.

Every sheet is read; its first non-empty row is taken as the header. The rows become
Markdown table rows, and they are grouped into Documents of at most
:data:`ROW_BLOCK_CHARS` characters, each starting with the header (and the Markdown
separator row), so that a chunk cut from one keeps its column names. Each Document
records the sheet and its row range (``metadata["sheet"]``, ``"rows"``, ``"location"``,
shown in the citation), rows numbered as the spreadsheet program shows them (the
header is row 1 of a CSV).

Why not LangChain's loaders: ``CSVLoader`` needs the encoding given and makes one
Document per row ("column: value" lines), ``UnstructuredExcelLoader`` needs the
``unstructured`` stack (tens of packages) and renders a sheet as one HTML table.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import logging
from pathlib import Path
from typing import Iterable, Iterator

from langchain_core.documents import Document

from .base import DocumentLoadError, LoadOptions, check_office_archive, markdown_row
from .text import decode_text_with_encoding

logger = logging.getLogger(__name__)

#: Most characters of one row block (header included). Below the default chunk size (500
#: characters, --chunk-size), so the splitter keeps a block whole and its header with it.
ROW_BLOCK_CHARS = 450
#: Most rows (all sheets together) and most non-empty cells of one file. 1M cells make
#: ~50k chunks of ~20 cells, whose embedding alone takes about an hour at the ~13 chunks/s
#: measured on 2 CPU cores (shared/corpus/README.md); beyond that, a database is the tool.
MAX_ROWS = 100_000
MAX_CELLS = 1_000_000
#: Bytes of a CSV file read to detect its encoding and delimiter.
CSV_SAMPLE_BYTES = 1 << 20
#: Delimiters a CSV file may use (detected by ``csv.Sniffer``; "," when it cannot tell).
CSV_DELIMITERS = ",;\t|"


def load(path: Path, name: str, options: LoadOptions) -> list[Document]:
    """Documents of row blocks of every sheet (see the module's description).

    Raises:
        DocumentLoadError: not a readable workbook/CSV (damaged, another format, a zip bomb,
            password-protected), more than :data:`MAX_ROWS` rows or :data:`MAX_CELLS`
            cells, or no cell with text in any sheet.
    """
    suffix = Path(name).suffix.lower() or path.suffix.lower()
    budget = _Budget(name)
    docs = []
    if suffix == ".csv":
        docs = _blocks(name, None, budget.count(_csv_rows(path, name)))
    elif suffix == ".xls":
        for sheet, rows in _xls_sheets(path, name):
            docs += _blocks(name, sheet, budget.count(rows))
    else:
        workbook = _open_xlsx(path, name)
        try:
            for ws in workbook.worksheets:
                if hasattr(ws, "iter_rows"):  # not a chart sheet
                    docs += _blocks(name, ws.title, budget.count(_xlsx_rows(ws, name)))
        finally:
            workbook.close()
    if not docs:
        raise DocumentLoadError(f"{name}: the spreadsheet has no cell with text; upload one that contains data")
    return docs


class _Budget:
    """Counts rows and cells across the sheets of a file and refuses beyond the limits."""

    def __init__(self, name: str):
        self.name, self.rows, self.cells = name, 0, 0

    def count(self, rows: Iterable[tuple[int, list[str]]]) -> Iterator[tuple[int, list[str]]]:
        for number, cells in rows:
            self.rows += 1
            self.cells += sum(1 for c in cells if c)
            if self.rows > MAX_ROWS or self.cells > MAX_CELLS:
                raise too_big(self.name, f"more than {MAX_ROWS:,} rows" if self.rows > MAX_ROWS
                              else f"more than {MAX_CELLS:,} non-empty cells")
            yield number, cells


def too_big(name: str, what: str) -> DocumentLoadError:
    """The refusal of a spreadsheet beyond :data:`MAX_ROWS` / :data:`MAX_CELLS`."""
    return DocumentLoadError(
        f"{name}: the spreadsheet has {what} (limits: {MAX_ROWS:,} rows, {MAX_CELLS:,} cells); "
        "split it into smaller files, or keep only the rows and columns worth searching, and upload those")


def _blocks(name: str, sheet: str | None, rows: Iterable[tuple[int, list[str]]]) -> list[Document]:
    """Row blocks of one sheet: title line, header, separator and rows, at most
    :data:`ROW_BLOCK_CHARS` characters each (a single longer row makes a block of its own)."""
    docs: list[Document] = []
    header: list[str] | None = None
    lines: list[str] = []
    first = last = 1
    for number, cells in rows:
        while cells and not cells[-1]:
            cells = cells[:-1]
        if not any(cells):
            continue
        if header is None:
            header, first = cells, number
            head = [markdown_row(header), markdown_row(["---"] * len(header))]
            continue
        line = markdown_row(cells + [""] * (len(header) - len(cells)))
        if lines and _size(name, sheet, head, lines, first, number) + len(line) + 1 > ROW_BLOCK_CHARS:
            docs.append(_block_document(name, sheet, head + lines, first, last))
            lines = []
        if not lines:
            first = number
        lines.append(line)
        last = number
    if header is not None and (lines or not docs):  # the last block, or a sheet of a header row only
        docs.append(_block_document(name, sheet, head + lines, first, last if lines else first))
    return docs


def _size(name: str, sheet: str | None, head: list[str], lines: list[str], first: int, last: int) -> int:
    return len(_title(name, sheet, first, last)) + sum(len(x) + 1 for x in head) + sum(len(x) + 1 for x in lines)


def _location(sheet: str | None, first: int, last: int) -> str:
    rows = f"{first}-{last}" if last != first else str(first)
    return (f"sheet {sheet}, " if sheet is not None else "") + f"rows {rows}"


def _title(name: str, sheet: str | None, first: int, last: int) -> str:
    return f"{name} · {_location(sheet, first, last)}"


def _block_document(name: str, sheet: str | None, lines: list[str], first: int, last: int) -> Document:
    meta = {"source": name, "rows": f"{first}-{last}" if last != first else str(first),
            "location": _location(sheet, first, last)}
    if sheet is not None:
        meta["sheet"] = sheet
    return Document(page_content=_title(name, sheet, first, last) + "\n" + "\n".join(lines), metadata=meta)


def cell_text(value) -> str:
    """A cell as text: integers without ".0", dates as ISO 8601, None as ""."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat(sep=" ")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return " ".join(str(value).split())


# --------------------------------------------------------------------- xlsx

def _open_xlsx(path: Path, name: str):
    import openpyxl

    check_office_archive(path, name, "Excel")
    try:
        # read_only streams the sheets' XML; data_only gives the values formulas last computed.
        return openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # InvalidFileException, BadZipFile, KeyError, ...
        raise DocumentLoadError(
            f"{name}: not a readable Excel .xlsx file ({type(exc).__name__}); if it is password-protected "
            "remove the password, if it is another format save it as .xlsx in Excel/LibreOffice, "
            "then upload it again") from exc


def _xlsx_rows(ws, name: str) -> Iterator[tuple[int, list[str]]]:
    declared = getattr(ws, "max_row", None)  # from the sheet's <dimension>, when it has one
    if declared and declared > MAX_ROWS:
        raise too_big(name, f"{declared:,} rows in sheet {ws.title!r}")
    try:
        for row in ws.iter_rows():
            number = next((c.row for c in row if getattr(c, "row", None)), None)
            if number is not None:
                yield number, [cell_text(getattr(c, "value", None)) for c in row]
    except DocumentLoadError:
        raise
    except Exception as exc:  # damaged sheet XML
        raise DocumentLoadError(
            f"{name}: sheet {ws.title!r} cannot be read ({type(exc).__name__}: {exc}); open the file in "
            "Excel/LibreOffice, save it again as .xlsx and upload it again") from exc


# ---------------------------------------------------------------------- xls

def _xls_sheets(path: Path, name: str) -> list[tuple[str, Iterator[tuple[int, list[str]]]]]:
    import xlrd

    def refusal(exc: Exception) -> DocumentLoadError:
        return DocumentLoadError(
            f"{name}: not a readable Excel 97-2003 .xls file ({type(exc).__name__}: {exc}); if it is "
            "password-protected remove the password, otherwise save it as .xlsx in Excel/LibreOffice "
            "and upload that")

    try:
        # xlrd writes its warnings about damaged files to logfile (stdout by default)
        book = xlrd.open_workbook(str(path), logfile=io.StringIO())
        sheets = [book.sheet_by_index(i) for i in range(book.nsheets)]
    except Exception as exc:  # XLRDError, CompDocError, KeyError, struct.error ... on damaged files
        raise refusal(exc) from exc
    out = []
    for sheet in sheets:
        if sheet.nrows > MAX_ROWS:
            raise too_big(name, f"{sheet.nrows:,} rows in sheet {sheet.name!r}")
        out.append((sheet.name, _guarded(_xls_rows(sheet, book.datemode), refusal)))
    return out


def _guarded(rows: Iterator[tuple[int, list[str]]], refusal) -> Iterator[tuple[int, list[str]]]:
    try:
        yield from rows
    except DocumentLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged cell record
        raise refusal(exc) from exc


def _xls_rows(sheet, datemode: int) -> Iterator[tuple[int, list[str]]]:
    import xlrd

    for r in range(sheet.nrows):
        cells = []
        for cell in sheet.row(r):
            if cell.ctype == xlrd.XL_CELL_DATE:
                try:
                    cells.append(cell_text(xlrd.xldate.xldate_as_datetime(cell.value, datemode)))
                    continue
                except (ValueError, OverflowError):
                    pass
            if cell.ctype == xlrd.XL_CELL_BOOLEAN:
                cells.append(cell_text(bool(cell.value)))
            elif cell.ctype == xlrd.XL_CELL_ERROR:
                cells.append(xlrd.error_text_from_code.get(cell.value, "#ERROR"))
            else:
                cells.append(cell_text(cell.value))
        yield r + 1, cells


# ---------------------------------------------------------------------- csv

def _csv_rows(path: Path, name: str) -> Iterator[tuple[int, list[str]]]:
    """Records of a CSV file, 1-based; encoding and delimiter detected from its first MB."""
    with path.open("rb") as f:
        sample = f.read(CSV_SAMPLE_BYTES)
    if len(sample) == CSV_SAMPLE_BYTES and b"\n" in sample:
        sample = sample[:sample.rindex(b"\n") + 1]  # no character cut in two
    text, encoding = decode_text_with_encoding(sample, name)
    try:
        delimiter = csv.Sniffer().sniff(text[:64 * 1024], delimiters=CSV_DELIMITERS).delimiter
    except csv.Error:
        delimiter = ","
    logger.info("%s: CSV in %s, delimiter %r", name, encoding, delimiter)
    return _csv_records(path, name, "utf-8-sig" if encoding == "utf-8" else encoding, delimiter)


def _csv_records(path: Path, name: str, encoding: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    csv.field_size_limit(10 * 1024 * 1024)
    with path.open("rb") as raw, io.TextIOWrapper(raw, encoding=encoding, newline="") as f:
        try:
            for number, record in enumerate(csv.reader(f, delimiter=delimiter), start=1):
                yield number, [" ".join(c.split()) for c in record]
        except UnicodeDecodeError as exc:
            raise DocumentLoadError(
                f"{name}: the CSV file is not {encoding} throughout (it changes encoding after the "
                "start); save it as UTF-8 CSV and upload it again") from exc
        except csv.Error as exc:
            raise DocumentLoadError(
                f"{name}: not a readable CSV file ({exc}); save it again as CSV (UTF-8) and upload it again"
            ) from exc
