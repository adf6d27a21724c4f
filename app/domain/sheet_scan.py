"""A streaming pass over one worksheet's XML for what python-calamine does not report.

It finds hidden rows, the AutoFilter range (rows Excel hides inside it are
filtered out, not hidden by hand) and formula cells with their text and
whether the file saved a computed value. The pass runs regular expressions
over the decompressed XML in chunks that end on a row boundary, so memory
stays flat however long the sheet is, and 100,000 rows take well under a
second because the C regex engine does the scanning.
"""

from __future__ import annotations

import bisect
import html
import posixpath
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from defusedxml import ElementTree

_MAIN_NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_REL_NS = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_PACKAGE_REL_NS = "{http://schemas.openxmlformats.org/package/2006/relationships}"

_PREFIX = rb"(?:[A-Za-z_][\w.-]*:)?"
_ROW_TAG = re.compile(rb"<" + _PREFIX + rb"row\b([^>]*)>")
_ROW_CLOSE = re.compile(rb"</" + _PREFIX + rb"row>")
_CELL_TAG = re.compile(rb"<" + _PREFIX + rb"c\b([^>]*?)/?>")
_CELL_CLOSE = re.compile(rb"</" + _PREFIX + rb"c>")
_FORMULA_TAG = re.compile(rb"<" + _PREFIX + rb"f\b[^>]*?(/?)>")
_FORMULA_CLOSE = re.compile(rb"</" + _PREFIX + rb"f>")
_VALUE = re.compile(rb"<" + _PREFIX + rb"v>([^<]+)</" + _PREFIX + rb"v>")
_AUTO_FILTER = re.compile(rb"<" + _PREFIX + rb"autoFilter\b[^>]*?\bref=\"[A-Z]+(\d+)(?::[A-Z]+(\d+))?\"")
_ROW_NUMBER = re.compile(rb"\br=\"(\d+)\"")
_HIDDEN = re.compile(rb"\bhidden=\"(?:1|true)\"")
_CELL_REF = re.compile(rb"\br=\"([A-Z]+)\d+\"")

_CHUNK_BYTES = 1 << 22


class FormulaText(str):
    """A formula cell's text with a leading "=", and where it is and whether a value was saved."""

    ref: str  # cell reference such as "B5"
    cached: bool  # False when the file saved no computed value (never calculated)

    def __new__(cls, text: str, ref: str, cached: bool) -> FormulaText:
        value = super().__new__(cls, "=" + text)
        value.ref = ref
        value.cached = cached
        return value


@dataclass(frozen=True)
class WorkbookSheet:
    name: str
    part: str  # path of the sheet XML inside the zip, e.g. "xl/worksheets/sheet1.xml"
    state: str  # "visible", "hidden" or "veryHidden"


@dataclass
class SheetFlags:
    hidden_rows: set[int] = field(default_factory=set)
    # AutoFilter range as (first row, last row), the first being the filter's header row.
    filter_rows: tuple[int, int] | None = None
    # Row number -> 0-based column -> formula.
    formulas: dict[int, dict[int, FormulaText]] = field(default_factory=dict)

    def row_state(self, row: int) -> str:
        """Return "", "hidden" or "filtered" for spreadsheet row `row`."""
        if row not in self.hidden_rows:
            return ""
        if self.filter_rows and self.filter_rows[0] < row <= self.filter_rows[1]:
            return "filtered"
        return "hidden"


def workbook_sheets(path: Path) -> list[WorkbookSheet]:
    """Return the workbook's sheets in tab order with their XML part and visibility."""
    with zipfile.ZipFile(path) as archive:
        workbook = ElementTree.fromstring(archive.read("xl/workbook.xml"))
        relations = ElementTree.fromstring(archive.read("xl/_rels/workbook.xml.rels"))
    targets = {rel.get("Id"): rel.get("Target", "") for rel in relations.iter(f"{_PACKAGE_REL_NS}Relationship")}
    sheets = []
    for sheet in workbook.iter(f"{_MAIN_NS}sheet"):
        target = targets.get(sheet.get(f"{_REL_NS}id"), "")
        part = target.lstrip("/") if target.startswith("/") else posixpath.normpath(posixpath.join("xl", target))
        sheets.append(WorkbookSheet(sheet.get("name", ""), part, sheet.get("state", "visible")))
    return sheets


def scan_sheet(path: Path, part: str) -> SheetFlags:
    """Read one sheet's XML part and return its hidden rows, AutoFilter range and formulas."""
    flags = SheetFlags()
    last_row = 0
    with zipfile.ZipFile(path) as archive, archive.open(part) as stream:
        pending = b""
        while True:
            chunk = stream.read(_CHUNK_BYTES)
            buffer = pending + chunk
            cut = len(buffer) if not chunk else _last_row_end(buffer)
            last_row = _scan_rows(buffer[:cut], flags, last_row)
            pending = buffer[cut:]
            if not chunk:
                break
    return flags


def _last_row_end(buffer: bytes) -> int:
    """Return the offset just past the last closing row tag, or 0 when the buffer has none."""
    end = 0
    position = buffer.rfind(b"row>")
    while position != -1:
        start = buffer.rfind(b"<", 0, position)
        if start != -1 and buffer[start + 1 : start + 2] == b"/":
            end = position + len(b"row>")
            break
        position = buffer.rfind(b"row>", 0, position)
    return end


def _scan_rows(text: bytes, flags: SheetFlags, last_row: int) -> int:
    """Record the flags of every row in `text`; return the number of the last row seen."""
    starts: list[int] = []
    numbers: list[int] = []
    for match in _ROW_TAG.finditer(text):
        attributes = match.group(1)
        number_match = _ROW_NUMBER.search(attributes)
        last_row = int(number_match.group(1)) if number_match else last_row + 1
        starts.append(match.end())
        numbers.append(last_row)
        if b"hidden" in attributes and _HIDDEN.search(attributes):
            flags.hidden_rows.add(last_row)

    if b"<f" in text or b":f" in text:
        for match in _FORMULA_TAG.finditer(text):
            _record_formula(text, match, starts, numbers, flags)

    auto_filter = _AUTO_FILTER.search(text)
    if auto_filter:
        first = int(auto_filter.group(1))
        flags.filter_rows = (first, int(auto_filter.group(2) or first))
    return last_row


def _record_formula(text: bytes, match: re.Match, starts: list[int], numbers: list[int], flags: SheetFlags) -> None:
    index = bisect.bisect_right(starts, match.start()) - 1
    if index < 0:
        return  # a formula outside sheetData, e.g. in conditional formatting
    row_start, row = starts[index], numbers[index]
    row_end_match = _ROW_CLOSE.search(text, match.end())
    if row_end_match is None or row_end_match.start() < match.start():
        return

    cells = list(_CELL_TAG.finditer(text, row_start, match.start()))
    if not cells:
        return
    cell = cells[-1]
    ref_match = _CELL_REF.search(cell.group(1))
    column = _column_index(ref_match.group(1)) if ref_match else len(cells) - 1

    formula = ""
    after = match.end()
    if not match.group(1):  # not self-closing: <f>text</f>
        close = _FORMULA_CLOSE.search(text, match.end())
        if close is None:
            return
        formula = html.unescape(text[match.end() : close.start()].decode("utf-8", "replace"))
        after = close.end()
    cell_close = _CELL_CLOSE.search(text, after)
    cell_end = cell_close.start() if cell_close else row_end_match.start()
    cached = _VALUE.search(text, after, cell_end) is not None

    ref = _column_letters(column) + str(row)
    flags.formulas.setdefault(row, {})[column] = FormulaText(formula, ref, cached)


def _column_index(letters: bytes) -> int:
    index = 0
    for letter in letters:
        index = index * 26 + letter - ord("A") + 1
    return index - 1


def _column_letters(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        letters = chr(ord("A") + remainder) + letters
    return letters
