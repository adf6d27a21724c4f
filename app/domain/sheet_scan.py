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
# Every cell's reference, for the sheet's extent. Only cells have an r attribute with column letters.
_CELL_COLUMN = re.compile(rb"\sr=\"([A-Z]+)\d")
_CELL_ROW = re.compile(rb"\sr=\"[A-Z]+(\d+)\"")
_DIMENSION = re.compile(rb"<" + _PREFIX + rb"dimension\b[^>]*?\bref=\"([A-Z]+)(\d+)(?::([A-Z]+)(\d+))?\"")

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
    # The used range as python-calamine sizes it: the largest row number and 0-based column of any cell.
    # Row tags without cells do not count, because Excel writes them for rows that only have a height or style.
    max_row: int = 0
    max_column: int = -1
    # References of the cells that set max_row and max_column, such as "A1048576", for messages.
    max_row_cell: str = ""
    max_column_cell: str = ""
    # The <dimension> element's far corner as (row, 0-based column), when the sheet has one.
    dimension: tuple[int, int] | None = None

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
            text = buffer[:cut]
            last_row = _scan_rows(text, flags, last_row)
            _record_extent(text, flags)
            pending = buffer[cut:]
            if not chunk:
                break
    return flags


def _record_extent(text: bytes, flags: SheetFlags) -> None:
    """Widen `flags`' used range by the cells in `text`, as python-calamine sizes it from cell references."""
    if flags.dimension is None and flags.max_row == 0:
        dimension = _DIMENSION.search(text)
        if dimension:
            letters, row = dimension.group(3) or dimension.group(1), dimension.group(4) or dimension.group(2)
            flags.dimension = (int(row), _column_index(letters))
    # A set first, because a roster has a few distinct column letters however many cells it has.
    for letters in set(_CELL_COLUMN.findall(text)):
        column = _column_index(letters)
        if column > flags.max_column:
            flags.max_column = column
            found = re.search(rb"\sr=\"(" + letters + rb"\d+)\"", text)
            flags.max_column_cell = found.group(1).decode() if found else letters.decode()
    rows = _CELL_ROW.findall(text)
    row = max(map(int, rows)) if rows else 0
    if row > flags.max_row:
        flags.max_row = row
        found = re.search(rb"\sr=\"([A-Z]+" + str(row).encode() + rb")\"", text)
        flags.max_row_cell = found.group(1).decode() if found else str(row)


def column_letters(index: int) -> str:
    """Return the Excel column letters of a 0-based column index, such as "XFD" for 16383."""
    return _column_letters(index)


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
    has_formulas = b"<f" in text or b":f" in text
    if b"hidden" not in text and not has_formulas:
        # Nothing to record row by row, as in most chunks of a plain roster.
        numbered = _last_numbered_row(text)
        if numbered is not None:
            _find_auto_filter(text, flags)
            return numbered
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

    if has_formulas:
        for match in _FORMULA_TAG.finditer(text):
            _record_formula(text, match, starts, numbers, flags)

    _find_auto_filter(text, flags)
    return last_row


def _find_auto_filter(text: bytes, flags: SheetFlags) -> None:
    auto_filter = _AUTO_FILTER.search(text)
    if auto_filter:
        first = int(auto_filter.group(1))
        flags.filter_rows = (first, int(auto_filter.group(2) or first))


def _last_numbered_row(text: bytes) -> int | None:
    """Return the r attribute of the last row tag in `text`, or None when there is no tag or it has no r.

    Without an r, a row's number is one more than the row before it, so the
    caller must count every row tag instead.
    """
    position = len(text)
    while True:
        position = text.rfind(b"row", 0, position)
        if position == -1:
            return None
        start = text.rfind(b"<", 0, position)
        match = _ROW_TAG.match(text, start) if start != -1 else None
        if match is not None and match.start(1) == position + len(b"row"):
            number = _ROW_NUMBER.search(match.group(1))
            return int(number.group(1)) if number else None


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
