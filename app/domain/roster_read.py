"""Reading roster files (XLSX or CSV) into numbered rows under a recognised header.

This module only reads: it finds the header row, maps its column names to
fields and yields raw cell values. `roster.py` validates the values.

XLSX cell values come from python-calamine, which is about ten times faster
than openpyxl's read-only mode on 100,000 rows. Calamine does not report
hidden rows, AutoFilter ranges or which cells hold formulas (it returns a
formula's cached value, or '' when none was saved), so `sheet_scan` reads
those from the sheet XML in one streaming regex pass.
"""

from __future__ import annotations

import codecs
import csv
import functools
import logging
import re
import unicodedata
import zipfile
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol

from python_calamine import CalamineError, CalamineWorkbook, SheetVisibleEnum

from .sheet_scan import FormulaText, SheetFlags, WorkbookSheet, column_letters, scan_sheet, workbook_sheets

logger = logging.getLogger(__name__)

# Field keys, shared with roster.py.
NAME = "name"
GENDER = "gender"
ID_TYPE = "id_type"
ID_NUMBER = "id_number"
BIRTH_MONTH = "birth_month"
SPECIALTY = "specialty"
APPROVAL_DATE = "approval_date"
NUMBER = "number"
EXAM = "exam"
KIND = "kind"
LEVEL = "level"

# The column name staff know each field by, used in every message.
FIELD_LABELS = {
    NAME: "姓名",
    GENDER: "性别",
    ID_TYPE: "证件类型",
    ID_NUMBER: "证件号码",
    BIRTH_MONTH: "出生年月",
    SPECIALTY: "专业名称",
    APPROVAL_DATE: "批准日期",
    NUMBER: "证书编号",
    EXAM: "考试项目",
    KIND: "证书类别",
    LEVEL: "级别",
}

# Header names after `header_key` normalisation, mapped to field keys.
HEADER_SYNONYMS = {
    "姓名": NAME,
    "性别": GENDER,
    "证件类型": ID_TYPE,
    "证件种类": ID_TYPE,
    "证件号码": ID_NUMBER,
    "证件号": ID_NUMBER,
    "身份证号": ID_NUMBER,
    "身份证号码": ID_NUMBER,
    "身份证件号码": ID_NUMBER,
    "出生年月": BIRTH_MONTH,
    "出生日期": BIRTH_MONTH,
    "专业名称": SPECIALTY,
    "专业": SPECIALTY,
    "批准日期": APPROVAL_DATE,
    "发证日期": APPROVAL_DATE,
    "证书编号": NUMBER,
    "编号": NUMBER,
    "证书号": NUMBER,
    "证书号码": NUMBER,
    "考试项目": EXAM,
    "考试名称": EXAM,
    "证书类别": KIND,
    "级别": LEVEL,
}

REQUIRED_FIELDS = (NAME, ID_NUMBER, SPECIALTY, APPROVAL_DATE, NUMBER)

# Staff files put at most a few title lines above the header.
HEADER_SEARCH_ROWS = 20
# A row naming this many known columns is the header, so a title such as
# "…姓名…" in one cell never is.
MIN_HEADER_FIELDS = 3


@dataclass(frozen=True)
class SheetLimits:
    """Bounds on a roster's used range, checked before python-calamine loads a sheet.

    calamine allocates one cell for every position of the used range, empty
    or not, so one stray cell at XFD1048576 made a worker request about
    549 GB (an estimated 32 bytes a cell). A roster has well under 20
    columns of data and at most a few hundred thousand rows. The app passes
    ROSTER_MAX_ROWS, ROSTER_MAX_COLUMNS and ROSTER_MAX_CELLS from its config.
    """

    rows: int = 300_000
    columns: int = 100
    # rows x columns of the used range: 6,000,000 cells is about 200 MB in calamine (estimate at 32 bytes a cell).
    cells: int = 6_000_000


DEFAULT_LIMITS = SheetLimits()

XLSX_EXTENSIONS = frozenset({".xlsx", ".xlsm"})
CSV_EXTENSIONS = frozenset({".csv", ".txt"})
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# Excel 97-2003 files and password-protected workbooks are OLE compound files.
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_CSV_DELIMITERS = (",", "\t", ";")
_SNIFF_CHARS = 65536
_CHUNK_BYTES = 1 << 16

_SAVE_AS_XLSX = "请在 Excel 中打开后“另存为”Excel 工作簿（.xlsx）或 CSV 再上传"

# python-calamine and zipfile raise all of these on damaged workbooks.
_XLSX_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    CalamineError,
    KeyError,
    ValueError,
    TypeError,
    OSError,
    EOFError,
    SyntaxError,
)

# A cell value: str (a `FormulaText` for a formula cell), int, float, bool,
# datetime, date, time or None.
Cell = object

ROW_HIDDEN = "hidden"  # hidden by hand (right-click, Hide)
ROW_FILTERED = "filtered"  # hidden because an AutoFilter excludes it


class RosterFileError(Exception):
    """The roster file as a whole cannot be used; `reason` is the Chinese message for staff."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Header:
    row: int  # spreadsheet row number of the header
    columns: dict[str, int]  # field key -> 0-based column index
    keys: tuple[str, ...]  # normalised text of every header cell, for spotting repeated headers
    labels: tuple[str, ...] = ()  # every header cell as written, for the rejected-rows workbook


@dataclass(frozen=True)
class SheetRow:
    row: int  # spreadsheet row number, 1-based
    cells: tuple[Cell, ...]
    hidden: str = ""  # "", ROW_HIDDEN or ROW_FILTERED

    def cell(self, index: int | None) -> Cell:
        """Return the cell at `index`, or None past the row's end or for a missing column."""
        if index is None or index >= len(self.cells):
            return None
        return self.cells[index]


def header_key(text: str) -> str:
    """Normalise a header cell: full-width folded, whitespace, "*" marks and a bracketed note dropped."""
    key = re.sub(r"\s+", "", unicodedata.normalize("NFKC", text))
    key = key.strip("*")
    return re.sub(r"[(\[【].*[)\]】]$", "", key)


# Invisible characters that change how text around them is shown: controls, bidi overrides, zero-width marks.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Zl", "Zp"})


def escape_invisible(text: str) -> str:
    r"""Return `text` with control and format characters written as \uXXXX, for messages that quote a cell.

    A bidi override such as U+202E would otherwise reverse the rest of the
    message on the staff page and in the report, and a control character
    would vanish.
    """
    if text.isascii() and text.isprintable():
        return text
    return "".join(
        f"\\u{ord(char):04x}" if unicodedata.category(char) in _INVISIBLE_CATEGORIES else char for char in text
    )


def is_blank(value: Cell) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


class RosterTable:
    """An open roster: the header found and the data rows below it.

    Use as a context manager or call `close`, because an XLSX stays open
    while its rows are read.
    """

    def __init__(
        self,
        header: Header,
        rows: Generator[SheetRow, None, None],
        resources: list[Closable],
        notices: tuple[str, ...] = (),
        total: int | None = None,
    ) -> None:
        self.header = header
        # Rows below the header as the sheet's used range counts them, for progress bars.
        self.total = None if total is None else max(total - header.row, 0)
        self._rows = rows
        self._resources = resources
        # File-level warnings for staff, such as hidden worksheets.
        self.notices = notices

    def rows(self) -> Iterator[SheetRow]:
        """Yield the rows below the header; raise RosterFileError if the file breaks mid-way."""
        return self._rows

    def close(self) -> None:
        # A suspended row generator keeps a member of the zip open, so it is closed first.
        _close_all([self._rows, *self._resources])

    def __enter__(self) -> RosterTable:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class Closable(Protocol):
    def close(self) -> None: ...


def _close_all(resources: list[Closable]) -> None:
    for resource in resources:
        resource.close()


def open_roster(path: str | Path, *, filename: str | None = None, limits: SheetLimits = DEFAULT_LIMITS) -> RosterTable:
    """Open a roster file and find its header; raise RosterFileError if it cannot be used.

    `filename` is the name the file was uploaded as, when `path` is a
    temporary file; its extension must agree with the content. A sheet
    whose used range exceeds `limits` is rejected before it is loaded.
    """
    path = Path(path)
    display_name = filename or path.name
    file_format = sniff_format(path, display_name)
    if file_format == "xlsx":
        return _open_xlsx(path, display_name, limits)
    return _open_csv(path, display_name, limits)


def sniff_format(path: Path, display_name: str) -> str:
    """Return "xlsx" or "csv" from the file's first bytes, checked against its extension."""
    with path.open("rb") as stream:
        head = stream.read(8)
    if not head:
        raise RosterFileError(f"文件「{display_name}」是空的（0 字节），请确认选择了正确的文件后重新上传")
    extension = Path(display_name).suffix.lower()
    if extension == ".xls" or head.startswith(_OLE_MAGIC):
        raise RosterFileError(
            f"文件「{display_name}」是 Excel 97-2003（.xls）格式或设置了打开密码，无法读取；"
            f"请取消密码，{_SAVE_AS_XLSX}"
        )
    is_zip = head.startswith(_ZIP_MAGIC)
    if extension in XLSX_EXTENSIONS or (not extension and is_zip):
        return _expect_zip(is_zip, display_name)
    if extension in CSV_EXTENSIONS or not extension:
        return _expect_text(is_zip, display_name)
    raise RosterFileError(
        f"不支持文件「{display_name}」的类型「{extension}」，请上传 Excel 工作簿（.xlsx）或 CSV 文件（.csv）"
    )


def _expect_zip(is_zip: bool, display_name: str) -> str:
    if not is_zip:
        raise RosterFileError(
            f"文件「{display_name}」的扩展名是 .xlsx，但内容不是 Excel 工作簿（可能是改了扩展名的 CSV 或其他文件）；"
            f"{_SAVE_AS_XLSX}"
        )
    return "xlsx"


def _expect_text(is_zip: bool, display_name: str) -> str:
    if is_zip:
        raise RosterFileError(
            f"文件「{display_name}」的扩展名是 .csv，但内容是 Excel 工作簿；请把扩展名改为 .xlsx 后重新上传"
        )
    return "csv"


# --- XLSX ---------------------------------------------------------------


def _open_xlsx(path: Path, display_name: str, limits: SheetLimits) -> RosterTable:
    from .upload_checks import check_workbook_archive  # imported here: it uses RosterFileError from this module

    check_workbook_archive(path, display_name)  # ZIP bombs and macros, before any XML is parsed
    try:
        sheets = workbook_sheets(path)
        workbook = CalamineWorkbook.from_path(str(path))
    except _XLSX_ERRORS as error:
        logger.warning("Cannot open workbook %s: %s", display_name, type(error).__name__)
        raise _damaged(display_name) from error
    resources: list[Closable] = [workbook]
    try:
        visibility = {meta.name: meta.visible for meta in workbook.sheets_metadata}
        for index, name in enumerate(workbook.sheet_names):
            # The XML pass comes first, so a sheet too large for calamine is rejected before calamine allocates it.
            flags = _scan(path, sheets, name, display_name)
            check_extent(flags, limits, display_name, name)
            sheet = _load_sheet(workbook, index, display_name)
            sheet_rows = _sheet_rows(sheet, display_name)
            try:
                found = _find_header(sheet_rows)
            except BaseException:
                sheet_rows.close()
                raise
            if found is None:
                sheet_rows.close()
                continue
            rows = _flagged_rows(sheet_rows, flags)
            notices = _sheet_notices(name, visibility, display_name)
            height = sheet.end[0] + 1 if sheet.end else 0
            return RosterTable(found, rows, resources, notices, total=height)
    except BaseException:
        _close_all(resources)
        raise
    _close_all(resources)
    raise _no_header(display_name)


def _scan(path: Path, sheets: list[WorkbookSheet], name: str, display_name: str) -> SheetFlags:
    sheet = next((sheet for sheet in sheets if sheet.name == name), None)
    if sheet is None:
        raise _damaged(display_name)
    try:
        return scan_sheet(path, sheet.part)
    except _XLSX_ERRORS as error:
        logger.warning("Cannot scan sheet XML of %s: %s", display_name, type(error).__name__)
        raise _damaged(display_name) from error


def check_extent(flags: SheetFlags, limits: SheetLimits, display_name: str, sheet_name: str) -> None:
    """Raise RosterFileError when the sheet's used range or its <dimension> exceeds `limits`.

    NOTE: cells written without an r attribute are not counted, so a row of
    thousands of such cells passes this check.
    """
    rows, columns = flags.max_row, flags.max_column + 1
    if rows > limits.rows or rows * columns > limits.cells:
        _raise_extent(display_name, sheet_name, flags.max_row_cell, "单元格", rows, columns, limits)
    if columns > limits.columns:
        _raise_extent(display_name, sheet_name, flags.max_column_cell, "单元格", rows, columns, limits)
    if flags.dimension is not None:
        rows, last_column = flags.dimension
        columns = last_column + 1
        if rows > limits.rows or columns > limits.columns or rows * columns > limits.cells:
            far_cell = f"{column_letters(last_column)}{rows}"
            _raise_extent(display_name, sheet_name, far_cell, "工作表尺寸（dimension）的右下角", rows, columns, limits)


def _raise_extent(
    display_name: str, sheet_name: str, far_cell: str, source: str, rows: int, columns: int, limits: SheetLimits
) -> None:
    raise RosterFileError(
        f"文件「{display_name}」的工作表「{escape_invisible(sheet_name)}」中位于 {far_cell} 的{source}"
        f"使表格范围达到 {rows} 行 × {columns} 列，超过名单的上限"
        f"（最多 {limits.rows} 行、{limits.columns} 列，且行数 × 列数不超过 {limits.cells}）；"
        "请在 Excel 中删除名单以外的行和列（包括远处误填的单元格），保存后重新上传"
    )


def _sheet_notices(name: str, visibility: dict[str, Any], display_name: str) -> tuple[str, ...]:
    notices = []
    if visibility.get(name, SheetVisibleEnum.Visible) != SheetVisibleEnum.Visible:
        notices.append(
            f"名单读取自隐藏的工作表「{name}」，在 Excel 中看不到这张表；请核对这是否就是要导入的名单"
        )
    for other, visible in visibility.items():
        if other != name and visible != SheetVisibleEnum.Visible:
            notices.append(
                f"文件「{display_name}」中有隐藏的工作表「{other}」，其中的内容不会导入；"
                "如需导入，请在 Excel 中取消隐藏并把这些行复制到名单所在的工作表"
            )
    return tuple(notices)


def _load_sheet(workbook: Any, index: int, display_name: str) -> Any:
    try:
        return workbook.get_sheet_by_index(index)
    except _XLSX_ERRORS as error:
        logger.warning("Cannot read sheet %s of %s: %s", index, display_name, type(error).__name__)
        raise _damaged(display_name) from error


def _sheet_rows(sheet: Any, display_name: str) -> Generator[SheetRow, None, None]:
    try:
        rows = sheet.iter_rows()
        # calamine numbers rows from the top of the sheet but starts columns at the first used one.
        padding = (None,) * sheet.start[1] if sheet.start else ()
    except _XLSX_ERRORS as error:
        logger.warning("Cannot read a sheet of %s: %s", display_name, type(error).__name__)
        raise _damaged(display_name) from error
    number = 0
    convert = _calamine_value
    try:
        for number, cells in enumerate(rows, start=1):
            values = tuple(map(convert, cells))
            yield SheetRow(number, padding + values if padding else values)
    except _XLSX_ERRORS as error:
        logger.warning("Workbook %s broke after row %s: %s", display_name, number, type(error).__name__)
        raise _damaged(display_name) from error


def _calamine_value(value: Cell) -> Cell:
    # calamine returns '' for an empty cell and a float for every number. Whole
    # numbers Excel stores exactly (up to 15 digits) become int, as openpyxl returned them.
    kind = type(value)
    if kind is str:
        return value or None
    if kind is float and value.is_integer() and abs(value) < _EXACT_WHOLE:
        return int(value)
    return value


_EXACT_WHOLE = 10**15


def _flagged_rows(rows: Generator[SheetRow, None, None], flags: SheetFlags) -> Generator[SheetRow, None, None]:
    """Mark hidden and filtered rows and put `FormulaText` in formula cells."""
    if not flags.hidden_rows and not flags.formulas:
        yield from rows
        return
    try:
        for row in rows:
            hidden = flags.row_state(row.row)
            formulas = flags.formulas.get(row.row)
            if formulas:
                cells = list(row.cells)
                for column, formula in formulas.items():
                    cells.extend([None] * (column + 1 - len(cells)))
                    cells[column] = formula
                row = SheetRow(row.row, tuple(cells), hidden)
            elif hidden:
                row = SheetRow(row.row, row.cells, hidden)
            yield row
    finally:
        rows.close()


def _damaged(display_name: str) -> RosterFileError:
    return RosterFileError(
        f"无法读取 Excel 文件「{display_name}」，文件可能已损坏或不是 .xlsx 工作簿；{_SAVE_AS_XLSX}"
    )


# --- CSV ----------------------------------------------------------------


def _open_csv(path: Path, display_name: str, limits: SheetLimits) -> RosterTable:
    encoding = detect_encoding(path, display_name)
    stream = path.open("r", encoding=encoding, newline="")
    try:
        rows = _csv_rows(stream, _sniff_delimiter(stream), display_name, limits)
        found = _find_header(rows)
    except BaseException:
        stream.close()
        raise
    if found is None:
        _close_all([rows, stream])
        raise _no_header(display_name)
    return RosterTable(found, rows, [stream])


def detect_encoding(path: Path, display_name: str) -> str:
    """Return the codec for a CSV: a BOM decides, else UTF-8 if the whole file decodes, else GB18030.

    A file that decodes as GB18030 only by accident (Latin-1 or Windows-1252
    text, whose accented letters pair up with the next byte into rare
    ideographs) is rejected, see `_check_gb18030_text`.
    """
    with path.open("rb") as stream:
        head = stream.read(4)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if b"\x00" in _first_bytes(path):
        raise RosterFileError(
            f"文件「{display_name}」不是文本格式的 CSV 文件；{_SAVE_AS_XLSX}"
        )
    if _decodes(path, "utf-8"):
        return "utf-8"
    if _decodes(path, "gb18030"):
        _check_gb18030_text(path, display_name)
        return "gb18030"
    raise RosterFileError(
        f"无法识别文件「{display_name}」的文字编码（既不是 UTF-8 也不是 GB18030）；"
        "请在 Excel 中另存为“CSV UTF-8（逗号分隔）”后重新上传"
    )


def _check_gb18030_text(path: Path, display_name: str) -> None:
    """Raise RosterFileError when GB18030 text looks like a Western encoding decoded by mistake.

    Chinese text exported as GBK/GB18030 is mostly characters of GB 2312
    (the header alone has a dozen). A Latin-1 or Windows-1252 file decodes
    into characters outside GB 2312, because an accented letter (0xC0-0xFF)
    followed by an ASCII letter falls in GBK's extension area. So a file is
    rejected when most of its non-ASCII characters are outside GB 2312, or
    when such a character touches an ASCII letter ("M黮ler" for "Müller"),
    which happens when a few Western names were pasted into a Chinese file.
    """
    outside = 0
    non_ascii = 0
    first_line = 0
    first_sample = ""
    with path.open("r", encoding="gb18030", newline="") as stream:
        for line_number, line in enumerate(stream, start=1):
            if line.isascii():
                continue
            for index, char in enumerate(line):
                if char.isascii():
                    continue
                non_ascii += 1
                if _in_gb2312(char):
                    continue
                outside += 1
                sample = line[max(index - 3, 0) : index + 4].strip()
                if _touches_ascii_letter(line, index):
                    raise _misread_encoding(display_name, line_number, sample)
                if not first_line:
                    first_line, first_sample = line_number, sample
    if non_ascii and outside * 2 > non_ascii:
        raise _misread_encoding(display_name, first_line, first_sample)


def _touches_ascii_letter(line: str, index: int) -> bool:
    before = line[index - 1] if index > 0 else ""
    after = line[index + 1] if index + 1 < len(line) else ""
    return any(neighbour.isascii() and neighbour.isalpha() for neighbour in (before, after))


def _misread_encoding(display_name: str, line: int, sample: str) -> RosterFileError:
    return RosterFileError(
        f"文件「{display_name}」的文字编码无法识别：它既不是 UTF-8，按 GB18030 读出的内容又是乱码"
        f"（如文件第 {line} 行的「{sample}」），可能是 Latin-1 或 Windows-1252 等西文编码；"
        "请在 Excel 中另存为“CSV UTF-8（逗号分隔）”后重新上传"
    )


@functools.lru_cache(maxsize=8192)
def _in_gb2312(char: str) -> bool:
    try:
        char.encode("gb2312")
    except UnicodeEncodeError:
        return False
    return True


def _first_bytes(path: Path) -> bytes:
    with path.open("rb") as stream:
        return stream.read(_CHUNK_BYTES)


def _decodes(path: Path, encoding: str) -> bool:
    # Decode in chunks so a 100,000-row file is checked without holding it in memory.
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        with path.open("rb") as stream:
            while chunk := stream.read(_CHUNK_BYTES):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _sniff_delimiter(stream: IO[str]) -> str:
    sample = stream.read(_SNIFF_CHARS)
    stream.seek(0)
    return max(_CSV_DELIMITERS, key=sample.count)


def _csv_rows(
    stream: IO[str], delimiter: str, display_name: str, limits: SheetLimits = DEFAULT_LIMITS
) -> Generator[SheetRow, None, None]:
    # Numbered by record, as Excel numbers them even when a quoted cell spans lines.
    # Each record is yielded once the next one is read, so the last one can be checked for a quote left open at the end.
    tap = _LineTap(stream)
    reader = csv.reader(tap, delimiter=delimiter)
    number = 0
    last_line = 0
    pending: SheetRow | None = None
    try:
        for number, fields in enumerate(reader, start=1):
            _check_quotes(fields, delimiter, number, last_line + 1, reader.line_num, display_name)
            _check_width(fields, number, limits, display_name)
            if number > limits.rows:
                raise RosterFileError(
                    f"文件「{display_name}」超过 {limits.rows} 行，超过名单的行数上限；请把名单拆成几个文件分别上传"
                )
            raw_lines = tap.take()
            first_line, last_line = last_line + 1, reader.line_num
            if pending is not None:
                yield pending
            pending = SheetRow(number, tuple(field if field.strip() else None for field in fields))
        if pending is not None:
            _check_last_quote(fields, raw_lines, delimiter, number, first_line, display_name)
            yield pending
    except (csv.Error, UnicodeDecodeError) as error:
        logger.warning("CSV %s broke after row %s: %s", display_name, number, type(error).__name__)
        raise RosterFileError(
            f"文件「{display_name}」第 {number + 1} 行附近无法按 CSV 读取；{_SAVE_AS_XLSX}"
        ) from error


class _LineTap:
    """An iterator over a text stream's lines that keeps the lines read since the last `take`."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lines: list[str] = []

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        line = next(self._stream)
        self._lines.append(line)
        return line

    def take(self) -> list[str]:
        lines, self._lines = self._lines, []
        return lines


def _check_width(fields: list[str], number: int, limits: SheetLimits, display_name: str) -> None:
    if len(fields) <= limits.columns:
        return
    width = len(fields)
    while width and not fields[width - 1].strip():
        width -= 1
    if width > limits.columns:
        raise RosterFileError(
            f"文件「{display_name}」第 {number} 行有 {width} 列（最后一个非空单元格在第 {column_letters(width - 1)} 列），"
            f"超过名单最多 {limits.columns} 列的上限；请删除名单以外的列后重新上传"
        )


def _check_quotes(fields: list[str], delimiter: str, number: int, first_line: int, last_line: int, display_name: str) -> None:
    """Raise RosterFileError for a quoted cell that swallowed the lines after it.

    Python's csv module reads an opening quote without its closing quote as
    one cell up to the next quote or the end of the file. A cell spanning
    lines that also contains the delimiter is taken as such a broken quote,
    because a roster cell with a line break and a comma is far rarer than a
    missing quote.
    """
    if last_line == first_line:
        return
    for column, field in enumerate(fields, start=1):
        if ("\n" in field or "\r" in field) and delimiter in field:
            swallowed = f"第 {last_line} 行" if last_line == first_line + 1 else f"第 {first_line + 1} 至 {last_line} 行"
            raise _open_quote_error(display_name, number, first_line, column, field, f"后面{swallowed}被并进了这一个单元格")


def _check_last_quote(
    fields: list[str], raw_lines: list[str], delimiter: str, number: int, first_line: int, display_name: str
) -> None:
    """Raise RosterFileError when the file's last record ends inside a quoted cell.

    There the csv module ends the cell at the end of the file without an
    error, so the rest of the row sits in one cell and the row would
    otherwise be skipped as a non-person row.
    """
    if not any(delimiter in field for field in fields) or not _ends_in_quotes("".join(raw_lines), delimiter):
        return
    column = next(index for index, field in enumerate(fields, start=1) if delimiter in field)
    raise _open_quote_error(display_name, number, first_line, column, fields[column - 1], "这一行余下的内容直到文件末尾都被并进了这一个单元格")


def _ends_in_quotes(text: str, delimiter: str) -> bool:
    """Return whether `text`, one CSV record, ends inside a quoted field as the csv module's default dialect reads it."""
    special = re.compile('["\\r\\n' + re.escape(delimiter) + "]")
    in_quotes = False
    field_begin = 0
    position = 0
    while (match := special.search(text, position)) is not None:
        char, index = match.group(), match.start()
        position = index + 1
        if in_quotes:
            if char == '"':
                if text.startswith('"', position):
                    position += 1  # a doubled quote inside a quoted field
                else:
                    in_quotes = False
            continue
        if char == '"':
            # Only a quote that opens a field starts a quoted field, as in csv's non-strict mode.
            in_quotes = index == field_begin
        else:
            field_begin = position
    return in_quotes


def _open_quote_error(display_name: str, number: int, first_line: int, column: int, field: str, swallowed: str) -> RosterFileError:
    # Ten characters are enough to find the cell and never show a whole ID number.
    shown = field.splitlines()[0][:10] if field.strip() else ""
    return RosterFileError(
        f"文件「{display_name}」第 {number} 行（文件第 {first_line} 行）第 {column} 列的单元格「{shown}…」"
        f"以双引号开始但没有对应的结束双引号，{swallowed}；"
        "请补上或删除这个双引号后重新上传"
    )


# --- Header -------------------------------------------------------------


def _find_header(rows: Iterator[SheetRow]) -> Header | None:
    """Consume rows up to and including the header and return it, or None if the first rows contain none."""
    for row in rows:
        if row.row > HEADER_SEARCH_ROWS:
            return None
        header = _header_from(row)
        if header is not None:
            _check_required(header)
            return header
    return None


def _header_from(row: SheetRow) -> Header | None:
    keys = tuple(header_key(value) if isinstance(value, str) else "" for value in row.cells)
    columns: dict[str, int] = {}
    repeated: list[tuple[int, int]] = []  # (first column, repeated column), 0-based
    for index, key in enumerate(keys):
        field = HEADER_SYNONYMS.get(key)
        if field is None:
            continue
        if field in columns:
            repeated.append((columns[field], index))
        else:
            columns[field] = index
    if len(columns) < MIN_HEADER_FIELDS:
        return None
    labels = tuple("" if value is None else str(value) for value in row.cells)
    if repeated:
        raise _repeated_column(row.row, labels, repeated)
    return Header(row=row.row, columns=columns, keys=keys, labels=labels)


def _repeated_column(row: int, labels: tuple[str, ...], repeated: list[tuple[int, int]]) -> RosterFileError:
    """Return the error for a header naming one field in two columns, where either could be the right one."""
    pairs = "、".join(
        f"第 {column_letters(first)} 列「{escape_invisible(labels[first].strip())}」和第 {column_letters(second)} 列「{escape_invisible(labels[second].strip())}」"
        for first, second in repeated
    )
    return RosterFileError(
        f"第 {row} 行的表头中，{pairs}是同一列名，无法确定以哪一列为准；"
        "请删除或改名多余的一列后重新上传"
    )


def _check_required(header: Header) -> None:
    missing = [FIELD_LABELS[field] for field in REQUIRED_FIELDS if field not in header.columns]
    if missing:
        raise RosterFileError(
            f"第 {header.row} 行的表头缺少必填列：{'、'.join(missing)}；"
            "请在表头加上这些列后重新上传"
        )


def _no_header(display_name: str) -> RosterFileError:
    expected = "、".join(FIELD_LABELS[field] for field in REQUIRED_FIELDS)
    return RosterFileError(
        f"在文件「{display_name}」前 {HEADER_SEARCH_ROWS} 行中没有找到表头；"
        f"表头行应包含 {expected} 等列名，请确认选择了正确的文件"
    )
