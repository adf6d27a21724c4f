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
import functools
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

    def __reduce__(self) -> tuple:
        # Pickled rows cross from the roster worker process (roster.iter_outcomes_in_worker) to the importer.
        return (FormulaText, (str(self)[1:], self.ref, self.cached))


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
    """Widen `flags`' used range by the cells in `text`, as python-calamine sizes it from cell references.

    Each search looks only for a reference beyond the largest seen so far,
    so a chunk where the range does not grow costs one regex pass per
    direction instead of a list of every cell's reference.
    """
    if flags.dimension is None and flags.max_row == 0:
        dimension = _DIMENSION.search(text)
        if dimension:
            letters, row = dimension.group(3) or dimension.group(1), dimension.group(4) or dimension.group(2)
            flags.dimension = (int(row), _column_index(letters))
    _widen_columns(text, flags)
    _widen_rows(text, flags)


# Searches for "a reference beyond the maximum" in one chunk before the rest of
# the chunk is read linearly. Each search compiles a pattern (about 100 µs), so
# a hostile sheet whose references keep growing would otherwise cost one
# compile per cell.
MAX_WIDENINGS_PER_CHUNK = 16


def _widen_columns(text: bytes, flags: SheetFlags) -> None:
    position = 0
    for _ in range(MAX_WIDENINGS_PER_CHUNK):
        found = _cell_reference(_columns_beyond(flags.max_column), text, position)
        if found is None:
            return
        # The first reference beyond the old maximum is also the first one with the new maximum's letters.
        flags.max_column = _column_index(found.group(1))
        flags.max_column_cell = (found.group(1) + found.group(2)).decode()
        position = found.end()
    _widen_columns_linearly(text, flags, position)


def _widen_columns_linearly(text: bytes, flags: SheetFlags, position: int) -> None:
    """Widen the column maximum from every cell reference after `position`, one pass, no pattern per step."""
    while (found := _cell_reference(_REFERENCE, text, position)) is not None:
        column = _column_index(found.group(1))
        if column > flags.max_column:
            flags.max_column = column
            flags.max_column_cell = (found.group(1) + found.group(2)).decode()
        position = found.end()


def _widen_rows(text: bytes, flags: SheetFlags) -> None:
    # Rows are nearly always in order, so the last cell's row is the likely maximum, and one search checks it.
    row = max(_last_cell_row(text), flags.max_row)
    position = 0
    for _ in range(MAX_WIDENINGS_PER_CHUNK):
        found = _cell_reference(_rows_beyond(row), text, position)
        if found is None:
            break
        row = int(found.group(2))
        position = found.end()
    else:
        while (found := _cell_reference(_REFERENCE, text, position)) is not None:
            row = max(row, int(found.group(2)))
            position = found.end()
    if row > flags.max_row:
        flags.max_row = row
        first = _cell_reference(re.compile(rb'r="([A-Z]+)(0*' + str(row).encode() + rb')"'), text, 0)
        flags.max_row_cell = (first.group(1) + first.group(2)).decode() if first else str(row)


def _cell_reference(pattern: re.Pattern[bytes], text: bytes, position: int) -> re.Match[bytes] | None:
    """Return the next match of `pattern` (which starts with r=") that is an attribute, preceded by whitespace."""
    while (found := pattern.search(text, position)) is not None:
        if found.start() > 0 and text[found.start() - 1] in _WHITESPACE:
            return found
        position = found.start() + 1
    return None


_WHITESPACE = frozenset(b" \t\r\n\f\v")


def _last_cell_row(text: bytes) -> int:
    """Return the row number of the last cell reference in `text`, or 0 when it has none."""
    position = len(text)
    while (position := text.rfind(b'r="', 0, position)) != -1:
        found = _ROW_REFERENCE.match(text, position)
        if found is not None and position > 0 and text[position - 1] in _WHITESPACE:
            return int(found.group(1))
    return 0


# A cell's reference. Only cells have an r attribute with column letters (a row's r is digits only).
_REFERENCE = re.compile(rb'r="([A-Z]+)(\d+)')
_ROW_REFERENCE = re.compile(rb'r="[A-Z]+(\d+)"')


@functools.lru_cache(maxsize=64)
def _columns_beyond(column: int) -> re.Pattern[bytes]:
    """Return a pattern for a cell reference whose column is after the 0-based `column`."""
    if column < 0:
        return _REFERENCE
    letters = _column_letters(column)
    width = len(letters)
    alternatives = [f"[A-Z]{{{width + 1},}}"]
    for index, letter in enumerate(letters):
        if letter != "Z":
            alternatives.append(f"{letters[:index]}[{chr(ord(letter) + 1)}-Z][A-Z]{{{width - index - 1}}}")
    return re.compile(f'r="({"|".join(alternatives)})(\\d+)'.encode())


@functools.lru_cache(maxsize=64)
def _rows_beyond(row: int) -> re.Pattern[bytes]:
    """Return a pattern for a cell reference whose row number is greater than `row`, leading zeros allowed."""
    digits = str(row)
    width = len(digits)
    alternatives = [f"[1-9]\\d{{{width},}}"]
    for index, digit in enumerate(digits):
        if digit != "9":
            alternatives.append(f"{digits[:index]}[{int(digit) + 1}-9]\\d{{{width - index - 1}}}")
    return re.compile(f'r="([A-Z]+)(0*(?:{"|".join(alternatives)}))"'.encode())


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
    if b"autoFilter" not in text:
        return  # a substring test is about ten times faster than the regex on a chunk without a filter
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
