"""Roster validation: the rows of a roster file in, one outcome per row out.

`iter_outcomes` reads a roster through `roster_read` and judges each row
without a database. An imported row is accepted for import, and the issuing
layer may still skip or reject it against stored records. A rejected row
carries a Chinese reason naming the field, the value and the fix. Blank rows,
footer lines, repeated headers and exact duplicates are skipped.

Rows hidden in Excel, by hand or by an AutoFilter, are judged like any other
row but, unless the caller passes `include_hidden`, a hidden row that would
be imported is skipped with a reason saying so. Staff hide or filter out rows
they mean to leave aside (withdrawn candidates, rows for another office), so
importing what nobody sees on screen would surprise them; dropping such rows
silently would lose records, so the preview shows them with a warning and
staff tick 包括隐藏行 to import them.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

from .catalogue import KIND_CERTIFICATE, KIND_LABELS, KIND_PASS, Catalogue, Exam
from .glyph_coverage import coverage_bitmap, uncovered_characters
from .identity import (
    ID_RESIDENT,
    RESIDENCE_PERMIT_AREA_CODES,
    RESIDENT_PROVINCE_CODES,
    IdentityError,
    check_character,
    infer_id_type,
    mask_id_number,
    normalise_id_number,
    resident_birth_month,
    resident_gender,
    uses_resident_scheme,
)
from .roster_read import (
    APPROVAL_DATE,
    BIRTH_MONTH,
    EXAM,
    FIELD_LABELS,
    GENDER,
    ID_NUMBER,
    ID_TYPE,
    KIND,
    LEVEL,
    MIN_HEADER_FIELDS,
    NAME,
    NUMBER,
    SPECIALTY,
    Cell,
    ROW_FILTERED,
    ROW_HIDDEN,
    FormulaText,
    Header,
    RosterFileError,
    RosterTable,
    DEFAULT_LIMITS,
    SheetLimits,
    SheetRow,
    escape_invisible,
    header_key,
    is_blank,
    open_roster,
)

__all__ = [
    "IMPORTED",
    "OutcomeStream",
    "REJECTED",
    "SKIPPED",
    "FieldError",
    "RecordData",
    "RosterFileError",
    "RowOutcome",
    "check_roster",
    "id_cell_text",
    "guess_from_filename",
    "iter_outcomes",
    "iter_outcomes_in_worker",
    "worker_available",
    "normalise_name",
    "parse_approval_date",
    "parse_birth_month",
    "parse_certificate_number",
    "parse_gender",
    "parse_identity",
    "parse_name",
]

logger = logging.getLogger(__name__)

IMPORTED = "imported"
REJECTED = "rejected"
SKIPPED = "skipped"

MAX_NAME_LENGTH = 30
EARLIEST_APPROVAL = date(1990, 1, 1)
EARLIEST_BIRTH = date(1900, 1, 1)
# Excel's 1900 date system counts days from 1899-12-30 (it treats 1900 as a
# leap year, so the offset is right from 1900-03-01 on).
EXCEL_EPOCH = date(1899, 12, 30)
# NOTE: a bare serial number is always read in the 1900 system. openpyxl converts
# date-formatted cells of 1904-system workbooks itself, but plain numbers there are 4 years off.
MAX_EXCEL_SERIAL = 2958465  # 9999-12-31
# Excel keeps 15 significant digits, so a longer number typed into a cell is rounded.
EXCEL_DIGITS = 15
# Reasons quote at most this many characters of a cell, so one bad cell cannot flood a report.
SHOWN_CHARACTERS = 40

CERTIFICATE_NUMBER = re.compile(r"[A-Z0-9]{6,32}")
KIND_NAMES = {
    "证书": KIND_CERTIFICATE,
    "考试证书": KIND_CERTIFICATE,
    "职业资格证书": KIND_CERTIFICATE,
    "合格证明": KIND_PASS,
    "考试合格证明": KIND_PASS,
}
GENDER_NAMES = {"男": "男", "男性": "男", "M": "男", "MALE": "男", "女": "女", "女性": "女", "F": "女", "FEMALE": "女"}

_CJK = (
    "\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3038-\u303b\u3400-\u4dbf\u4e00-\u9fff"
    "\uf900-\ufaff\U00020000-\U0003134f"
)
_CJK_CHARACTER = re.compile(f"[{_CJK}·]")
_DOT_BETWEEN_CJK = re.compile(f"(?<=[{_CJK}])\\.(?=[{_CJK}])")
# Characters people type in place of the middle dot U+00B7 between parts of a name.
_NAME_SEPARATORS = str.maketrans(dict.fromkeys(
    "\u2022\u2027\u2219\u22c5\u30fb\uff65\u0387\u2e31\u1427\u318d\u25cf\u25e6\ufe52\u2024\u00b7",
    "\u00b7",
))
_FULLWIDTH_ASCII = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
# Kangxi radicals (U+2F00-U+2FD5) look like ordinary characters (⽥ for 田); fold them to those.
_KANGXI_RADICALS = {code: unicodedata.normalize("NFKC", chr(code)) for code in range(0x2F00, 0x2FD6)}
_MARKUP = frozenset("<>&\"'`")
_NAME_PUNCTUATION = frozenset("·.- ")

_DATE_TEXT = re.compile(
    r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?"
    r"(?:\s+\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?"
)
_MONTH_TEXT = re.compile(r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*月?")
_EIGHT_DIGITS = re.compile(r"(\d{4})(\d{2})(\d{2})")
_SIX_DIGITS = re.compile(r"(\d{4})(\d{2})")
_SERIAL_TEXT = re.compile(r"\d{5}(?:\.\d+)?")
_SCIENTIFIC = re.compile(r"\d(?:\.\d+)?E\+?\d+")
_TRAILING_ZERO_FRACTION = re.compile(r"(\d+)\.0+")

T = TypeVar("T")


@dataclass(frozen=True)
class RecordData:
    number: str  # 证书编号
    name: str
    gender: str  # 男 or 女
    id_type: str  # one of identity.ID_TYPES
    id_number: str
    birth_month: date  # first day of the month
    exam: str  # catalogue exam name
    specialty: str  # catalogue specialty name
    level: str | None  # 级别, only for exams that have levels
    kind: str  # KIND_CERTIFICATE or KIND_PASS
    approval_date: date


@dataclass(frozen=True)
class RowOutcome:
    row: int  # spreadsheet row number
    outcome: str  # IMPORTED (accepted for import), REJECTED or SKIPPED
    reason: str  # Chinese, for staff; empty for an imported row
    record: RecordData | None = None  # set only when outcome is IMPORTED
    hidden: str = ""  # "", ROW_HIDDEN or ROW_FILTERED
    cells: tuple[Cell, ...] | None = None  # the raw cells, set for every row that is not skipped


HIDDEN_LABELS = {ROW_HIDDEN: "隐藏行", ROW_FILTERED: "被筛选隐藏的行"}


class OutcomeStream:
    """An iterator of one `RowOutcome` per row, with the header and file-level notices."""

    def __init__(self, table: RosterTable, outcomes: Iterator[RowOutcome]) -> None:
        self.header = table.header
        self.notices = table.notices
        self.total = table.total  # rows below the header, None when unknown before reading (CSV)
        self._outcomes = outcomes

    def __iter__(self) -> OutcomeStream:
        return self

    def __next__(self) -> RowOutcome:
        return next(self._outcomes)

    def close(self) -> None:
        close = getattr(self._outcomes, "close", None)
        if close is not None:
            close()


class FieldError(ValueError):
    """One cell failed a check; `reason` is the Chinese message for staff."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- Public API ---------------------------------------------------------


def iter_outcomes(
    path: str | Path,
    catalogue: Catalogue,
    *,
    exam: str | None = None,
    kind: str | None = None,
    filename: str | None = None,
    today: date | None = None,
    include_hidden: bool = False,
    glyph_cache_dir: Path | None = None,
    limits: SheetLimits = DEFAULT_LIMITS,
) -> OutcomeStream:
    """Open a roster and return an iterator of one outcome per row below the header.

    The file, its header and the exam and kind choice are checked before
    this returns, so RosterFileError comes from the call itself. A workbook
    that breaks part-way raises RosterFileError from the generator instead.
    Rows stream, so memory grows only with the certificate and ID numbers seen.
    `glyph_cache_dir` is where the fonts' glyph coverage is cached between processes.
    `limits` bounds the sheet's used range, see `SheetLimits`.
    """
    # Loaded before the sheet, so fontTools' temporary tables are freed before calamine fills memory.
    glyphs = coverage_bitmap(cache_dir=glyph_cache_dir)
    table = open_roster(path, filename=filename, limits=limits)
    try:
        context = _RowContext(
            header=table.header,
            catalogue=catalogue,
            exam=_default_exam(table.header, catalogue, exam),
            kind=_default_kind(table.header, kind),
            today=today or date.today(),
            include_hidden=include_hidden,
            glyphs=glyphs,
        )
    except RosterFileError:
        table.close()
        raise
    return OutcomeStream(table, _outcomes(table, context, filename or Path(path).name))


def iter_outcomes_in_worker(path: str | Path, catalogue: Catalogue, **options: object) -> WorkerOutcomeStream:
    """Return `iter_outcomes(path, catalogue, **options)` computed in a forked worker process.

    The worker reads and validates the roster while the caller writes the
    previous rows to the database, so the two use both cores. Rows come
    over a pipe WORKER_CHUNK at a time, and the pipe blocks the worker while
    the caller is behind, so memory stays bounded. RosterFileError raised in
    the worker is raised here with the same reason.

    Only call this where fork is safe: in a process with a single thread
    (see `worker_available`), because a lock held by another thread at the
    fork would stay locked in the child.
    """
    return WorkerOutcomeStream(Path(path), catalogue, options)


def worker_available() -> bool:
    """Return whether `iter_outcomes_in_worker` may run here: fork exists and this process has one thread."""
    return "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1


def check_roster(
    path: str | Path,
    catalogue: Catalogue,
    *,
    exam: str | None = None,
    kind: str | None = None,
    filename: str | None = None,
    today: date | None = None,
) -> list[RowOutcome]:
    """Return every outcome of `iter_outcomes` as a list."""
    return list(iter_outcomes(path, catalogue, exam=exam, kind=kind, filename=filename, today=today))


def guess_from_filename(filename: str, catalogue: Catalogue) -> tuple[str | None, str | None]:
    """Guess the exam and kind a roster's file name mentions, for a form's defaults.

    The exam is the longest catalogue exam name inside the file name, so
    "初级注册安全工程师" wins over a shorter name it contains. 合格证明
    means a pass certificate and 证书 a certificate; otherwise kind is None.
    """
    text = re.sub(r"\s+", "", unicodedata.normalize("NFKC", Path(filename).stem))
    names = sorted(catalogue.exams, key=len, reverse=True)
    exam = next((name for name in names if _lookup_key(name) in text), None)
    kind = None
    if "合格证明" in text:
        kind = KIND_PASS
    elif "证书" in text:
        kind = KIND_CERTIFICATE
    return exam, kind


# --- Worker process -----------------------------------------------------

# Rows per message from the worker process; the importer writes 500 rows per chunk too.
WORKER_CHUNK = 500
# Seconds `WorkerOutcomeStream.close` waits for a stopped worker to exit.
WORKER_EXIT_SECONDS = 5


class WorkerOutcomeStream:
    """An `OutcomeStream` whose rows are read and validated in a forked child process."""

    def __init__(self, path: Path, catalogue: Catalogue, options: dict[str, object]) -> None:
        context = multiprocessing.get_context("fork")
        self._receiver, sender = context.Pipe(duplex=False)
        # Not a daemon: the worker ends when its rows are sent, when close() stops it, or when a send
        # fails because this process died and closed the pipe (BrokenPipeError).
        self._process = context.Process(
            target=_worker_main, args=(sender, self._receiver, path, catalogue, options), name="roster-worker"
        )
        self._process.start()
        sender.close()  # the worker's end; this process keeps only the receiving end
        self._pending: list[RowOutcome] = []
        self._finished = False
        try:
            message = self._receive()
        except BaseException:
            self.close()
            raise
        _kind, self.header, self.notices, self.total = message

    def __iter__(self) -> WorkerOutcomeStream:
        return self

    def __next__(self) -> RowOutcome:
        while not self._pending:
            if self._finished:
                raise StopIteration
            message = self._receive()
            if message[0] == "end":
                self._finished = True
            else:
                self._pending = [_unpack(packed) for packed in reversed(message[1])]
        return self._pending.pop()

    def _receive(self) -> tuple:
        try:
            message = self._receiver.recv()
        except EOFError:
            self._process.join(WORKER_EXIT_SECONDS)
            raise RuntimeError(f"roster worker process exited with code {self._process.exitcode} before sending all rows") from None
        if message[0] == "error":
            raise RosterFileError(message[1])
        if message[0] == "crash":
            raise RuntimeError(f"roster worker process failed: {message[1]}")
        return message

    def close(self) -> None:
        self._finished = True
        self._receiver.close()
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(WORKER_EXIT_SECONDS)


def _worker_main(sender, receiver, path: Path, catalogue: Catalogue, options: dict) -> None:
    """Run `iter_outcomes` and send its header, then its rows in chunks, then "end" or the error."""
    receiver.close()  # inherited through fork; holding it open would hide the importer's death from send()
    try:
        stream = iter_outcomes(path, catalogue, **options)
    except RosterFileError as error:
        sender.send(("error", error.reason))
        return
    except Exception as error:  # noqa: BLE001 - reported to the importer, which raises it
        sender.send(("crash", f"{type(error).__name__}: {error}"))
        return
    try:
        sender.send(("open", stream.header, stream.notices, stream.total))
        chunk = []
        for outcome in stream:
            chunk.append(_pack(outcome))
            if len(chunk) == WORKER_CHUNK:
                sender.send(("rows", chunk))
                chunk = []
        sender.send(("rows", chunk))
        sender.send(("end",))
    except RosterFileError as error:
        sender.send(("error", error.reason))
    except BrokenPipeError:
        logger.warning("Roster worker for %s stopped: the importing process closed the pipe", path.name)
    except Exception as error:  # noqa: BLE001 - reported to the importer, which raises it
        sender.send(("crash", f"{type(error).__name__}: {error}"))
    finally:
        stream.close()
        sender.close()


def _pack(outcome: RowOutcome) -> tuple:
    # Plain tuples pickle about three times faster than the dataclasses.
    record = None if outcome.record is None else tuple(outcome.record.__dict__.values())
    return outcome.row, outcome.outcome, outcome.reason, record, outcome.hidden, outcome.cells


def _unpack(packed: tuple) -> RowOutcome:
    row, outcome, reason, record, hidden, cells = packed
    return RowOutcome(row, outcome, reason, None if record is None else RecordData(*record), hidden, cells)


# --- Exam and kind choice -----------------------------------------------


@dataclass
class _RowContext:
    header: Header
    catalogue: Catalogue
    exam: Exam | None  # the caller's choice, used where the row names none
    kind: str | None
    today: date
    include_hidden: bool = False
    glyphs: bytes = b""  # glyph_coverage bitmap
    _exams: dict[str, Exam] = field(default_factory=dict)
    _specialties: dict[str, dict[str, str]] = field(default_factory=dict)
    fast: _FastPath | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.fast = _FastPath(self)

    def find_exam(self, text: str) -> Exam | None:
        if not self._exams:
            self._exams = {_lookup_key(name): exam for name, exam in self.catalogue.exams.items()}
        key = _lookup_key(text)
        for suffix in ("职业资格考试", "考试"):
            if key.endswith(suffix) and key[: -len(suffix)] in self._exams:
                key = key[: -len(suffix)]
        return self._exams.get(key)

    def find_specialty(self, exam: Exam, text: str) -> str | None:
        index = self._specialties.get(exam.name)
        if index is None:
            index = {_lookup_key(name): name for name in exam.specialties}
            self._specialties[exam.name] = index
        return index.get(_lookup_key(text))


def _lookup_key(text: str) -> str:
    # NFKC makes "（" and "(" equal, so a specialty typed either way matches the catalogue.
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text))


def _default_exam(header: Header, catalogue: Catalogue, exam: str | None) -> Exam | None:
    if exam is None or not exam.strip():
        if EXAM not in header.columns:
            raise RosterFileError("文件中没有「考试项目」列，请选择考试项目后重新上传")
        return None
    found = catalogue.exam(exam.strip())
    if found is None:
        raise RosterFileError(
            f"考试项目「{exam}」不在考试目录中，请从以下考试中选择：{'、'.join(catalogue.exams)}"
        )
    return found


def _default_kind(header: Header, kind: str | None) -> str | None:
    if kind is None or not kind.strip():
        if KIND not in header.columns:
            raise RosterFileError("文件中没有「证书类别」列，请选择证书类别（证书或合格证明）后重新上传")
        return None
    if kind in KIND_LABELS:
        return kind
    found = KIND_NAMES.get(_lookup_key(kind))
    if found is None:
        raise RosterFileError(f"证书类别「{kind}」无法识别，请选择“证书”或“合格证明”")
    return found


# --- Row loop -----------------------------------------------------------


def _outcomes(table: RosterTable, context: _RowContext, display_name: str) -> Iterator[RowOutcome]:
    counts: Counter[str] = Counter()
    # Certificate number -> (row, name, ID number, record hash) of the first accepted row using it.
    seen: dict[str, tuple[int, str, str, int]] = {}
    # ID number -> (row, name) of the first accepted row with it.
    names: dict[str, tuple[int, str]] = {}
    with table:
        for row in table.rows():
            outcome = _judge_row(row, context, seen, names)
            counts[outcome.outcome] += 1
            yield outcome
    logger.info(
        # The register is not read here, so rows it already contains count as accepted until the import skips them.
        "Checked roster %s: %s rows accepted, %s rejected, %s skipped within the file",
        display_name, counts[IMPORTED], counts[REJECTED], counts[SKIPPED],
    )


def _judge_row(
    row: SheetRow, context: _RowContext, seen: dict[str, tuple[int, str, str, int]], names: dict[str, tuple[int, str]]
) -> RowOutcome:
    # A fast record has digits in its ID number, so `_skip_reason` would return "" for it.
    record = context.fast.record(row.cells) if context.fast else None
    if record is None:
        skip_reason = _skip_reason(row, context.header)
        if skip_reason:
            return RowOutcome(row.row, SKIPPED, skip_reason, hidden=row.hidden)
        errors: list[str] = []
        record = _parse_record(row, context, errors)
        if record is None:
            reason = "；".join(errors)
            if row.hidden:
                reason = f"（{HIDDEN_LABELS[row.hidden]}）{reason}"
            return RowOutcome(row.row, REJECTED, reason, hidden=row.hidden, cells=row.cells)
    if row.hidden and not context.include_hidden:
        # Not recorded in `seen`, so a visible row with the same number is judged on its own.
        label = HIDDEN_LABELS[row.hidden]
        return RowOutcome(
            row.row, SKIPPED,
            f"第 {row.row} 行是 Excel 中的{label}，内容检查通过但未导入；如需导入，请勾选“包括隐藏行”后重新预览",
            hidden=row.hidden,
        )  # fmt: skip
    if record.number not in seen:
        first = names.setdefault(record.id_number, (row.row, record.name))
        if first[1] != record.name:
            return RowOutcome(row.row, REJECTED, _other_name_reason(row.row, record, *first), hidden=row.hidden,
                              cells=row.cells)  # fmt: skip
        # The common case, built once instead of through _check_duplicate's outcome.
        seen[record.number] = (row.row, record.name, record.id_number, hash(record))
        return RowOutcome(row.row, IMPORTED, "", record, row.hidden, row.cells)
    outcome = _check_duplicate(row.row, record, seen)
    if outcome.outcome == REJECTED:
        return RowOutcome(outcome.row, REJECTED, outcome.reason, hidden=row.hidden, cells=row.cells)
    return RowOutcome(outcome.row, outcome.outcome, outcome.reason, outcome.record, row.hidden, row.cells)


def _skip_reason(row: SheetRow, header: Header) -> str:
    # Nearly every row has digits in its ID or number cell, so check that first and cheaply.
    if _has_key_digits(row, header):
        return ""
    filled = [value for value in row.cells if not is_blank(value)]
    if not filled:
        return "空行，已跳过"
    if _is_repeated_header(row, header):
        return "重复的表头行，已跳过"
    if len(filled) <= 2:
        text = " ".join(str(value).strip() for value in filled)
        return f"「{_shown(text)}」没有证件号码和证书编号，不是人员记录（如表尾的制表人、备注），已跳过"
    return ""


def _has_key_digits(row: SheetRow, header: Header) -> bool:
    # Every ID and certificate number has digits, and a footer such as
    # "审核人：陈某某" that spills into those columns has none.
    for key in (ID_NUMBER, NUMBER):
        value = row.cell(header.columns.get(key))
        if not is_blank(value) and any(c.isdigit() for c in str(value)):
            return True
    return False


def _is_repeated_header(row: SheetRow, header: Header) -> bool:
    matches = 0
    for index, value in enumerate(row.cells):
        if isinstance(value, str) and index < len(header.keys) and header.keys[index]:
            matches += header_key(value) == header.keys[index]
    return matches >= MIN_HEADER_FIELDS


def _check_duplicate(row: int, record: RecordData, seen: dict[str, tuple[int, str, str, int]]) -> RowOutcome:
    # Only a hash of the earlier record is kept, so 100,000 rows do not hold 100,000 records in memory.
    earlier = seen.get(record.number)
    if earlier is None:
        seen[record.number] = (row, record.name, record.id_number, hash(record))
        return RowOutcome(row, IMPORTED, "", record)
    first_row, first_name, first_id_number, first_hash = earlier
    if first_hash == hash(record):
        return RowOutcome(row, SKIPPED, f"与第 {first_row} 行完全相同，已跳过")
    if (first_id_number, first_name) != (record.id_number, record.name):
        reason = f"证书编号「{record.number}」已在第 {first_row} 行用于另一人（{first_name}），请核对证书编号"
    else:
        reason = (
            f"证书编号「{record.number}」已在第 {first_row} 行使用，两行的专业、日期等内容不同，"
            "请核对后只保留正确的一行"
        )
    return RowOutcome(row, REJECTED, reason)


def _other_name_reason(row: int, record: RecordData, first_row: int, first_name: str) -> str:
    # One ID number under two names is most often a mistyped name, and importing it would give one holder two names.
    return (
        f"第 {row} 行：证件号码 {mask_id_number(record.id_number)} 已在第 {first_row} 行登记在姓名「{first_name}」名下，"
        f"与本行姓名「{record.name}」不一致，本行未导入；请核对两行的姓名和证件号码"
    )


# --- One record ---------------------------------------------------------


def _attempt(errors: list[str], parse: Callable[..., T], *args: object) -> T | None:
    """Call `parse`, recording its reason in `errors` instead of raising, so a row lists every fault."""
    try:
        return parse(*args)
    except (FieldError, IdentityError) as error:
        errors.append(error.reason)
        return None


def _parse_record(row: SheetRow, context: _RowContext, errors: list[str]) -> RecordData | None:
    def cell(key: str) -> Cell:
        return row.cell(context.header.columns.get(key))

    name = _attempt(errors, parse_name, cell(NAME))
    if name is not None:
        _attempt(errors, check_printable, name, context.glyphs)
    identity = _attempt(errors, parse_identity, cell(ID_TYPE), cell(ID_NUMBER), cell(GENDER),
                        cell(BIRTH_MONTH), context.today)
    exam = _attempt(errors, _row_exam, cell(EXAM), context)
    kind = _attempt(errors, _row_kind, cell(KIND), context.kind)
    specialty = level = None
    if exam is not None:
        specialty = _attempt(errors, _parse_specialty, cell(SPECIALTY), exam, context)
        level = _attempt(errors, _parse_level, cell(LEVEL), exam)
    approval_date = _attempt(errors, parse_approval_date, cell(APPROVAL_DATE), context.today)
    number = _attempt(errors, parse_certificate_number, cell(NUMBER))
    if errors:
        return None
    assert name and identity and exam and kind and specialty and approval_date and number
    id_type, id_number, gender, birth_month = identity
    return RecordData(
        number=number, name=name, gender=gender, id_type=id_type, id_number=id_number,
        birth_month=birth_month, exam=exam.name, specialty=specialty, level=level, kind=kind,
        approval_date=approval_date,
    )


class _FastPath:
    """Validation of the common clean row with precompiled checks and per-value caches.

    `record` returns the same RecordData as `_parse_record` for a row whose
    cells are plain. That is a name of CJK ideographs, an 18-digit 居民身份证
    number as text, 男/女, known exam, kind and specialty texts, dates, and a
    certificate number already in canonical form. For any other row, and for
    any row that fails a check, it returns None. `_parse_record` then judges
    the row again and writes the messages. `test_roster` compares both paths.
    """

    # Distinct values cached per column; a roster repeats a few hundred dates and specialties.
    CACHE_LIMIT = 4096
    _PLAIN_NAME = re.compile(f"[\u4e00-\u9fff]{{1,{MAX_NAME_LENGTH}}}")
    _PLAIN_RESIDENT_NUMBER = re.compile(r"[1-9][0-9]{16}[0-9X]")
    _GENDERS = {"男": "男", "女": "女"}

    def __init__(self, context: _RowContext) -> None:
        self.context = context
        columns = context.header.columns
        self.indices = tuple(
            columns.get(key) for key in (NAME, ID_TYPE, ID_NUMBER, GENDER, BIRTH_MONTH, EXAM, KIND, SPECIALTY, LEVEL,
                                         APPROVAL_DATE, NUMBER)
        )  # fmt: skip
        self.width = max((index for index in self.indices if index is not None), default=0) + 1
        # The ideographs a plain name may use that some font covers; a name with another character takes the slow path.
        self._covered_ideographs = frozenset(
            char for char in map(chr, range(0x4E00, 0xA000)) if not uncovered_characters(char, context.glyphs)
        )
        self._months: dict[str, date | None] = {}
        self._dates: dict[str, date | None] = {}
        self._exams: dict[str, Exam | None] = {}
        self._kinds: dict[str, str | None] = {}
        self._specialties: dict[tuple[str, str], str | None] = {}
        # Valid birth date digits -> birth month: at most one entry per day since EARLIEST_BIRTH (about 46,000).
        self._births: dict[str, date] = {}

    def record(self, cells: tuple[Cell, ...]) -> RecordData | None:
        if len(cells) < self.width:
            cells = cells + (None,) * (self.width - len(cells))
        name_at, type_at, id_at, gender_at, birth_at, exam_at, kind_at, specialty_at, level_at, date_at, number_at = (
            self.indices
        )

        name = cells[name_at]
        id_number = cells[id_at]
        number = cells[number_at]
        if type(number) is int:
            number = str(number)
        if not self._plain_keys(name, id_number, number):
            return None
        if type_at is not None and cells[type_at] is not None:
            return None

        birth_month = self._resident_birth_month(id_number)  # type: ignore[arg-type]
        if birth_month is None:
            return None
        gender = "男" if int(id_number[16]) % 2 else "女"  # type: ignore[index]
        if gender_at is not None and cells[gender_at] is not None and self._GENDERS.get(cells[gender_at]) != gender:
            return None
        if birth_at is not None and cells[birth_at] is not None and self._month(cells[birth_at]) != birth_month:
            return None

        exam = self._exam(None if exam_at is None else cells[exam_at])
        kind = self._kind(None if kind_at is None else cells[kind_at])
        if exam is None or kind is None:
            return None
        specialty = self._specialty(exam, None if specialty_at is None else cells[specialty_at])
        if specialty is None:
            return None
        level = None
        if level_at is not None and cells[level_at] is not None:
            try:
                level = _parse_level(cells[level_at], exam)
            except FieldError:
                return None

        approval_date = self._date(None if date_at is None else cells[date_at])
        if approval_date is None or not EARLIEST_APPROVAL <= approval_date <= self.context.today:
            return None
        return RecordData(
            number=number, name=name, gender=gender, id_type=ID_RESIDENT, id_number=id_number,  # type: ignore[arg-type]
            birth_month=birth_month, exam=exam.name, specialty=specialty, level=level, kind=kind,
            approval_date=approval_date,
        )  # fmt: skip

    def _plain_keys(self, name: Cell, id_number: Cell, number: Cell) -> bool:
        """Return whether the name, ID number and certificate number are text already in canonical form."""
        return (
            type(name) is str
            and type(id_number) is str
            and type(number) is str
            and self._PLAIN_NAME.fullmatch(name) is not None
            and self._PLAIN_RESIDENT_NUMBER.fullmatch(id_number) is not None
            and CERTIFICATE_NUMBER.fullmatch(number) is not None
            and self._covered_ideographs.issuperset(name)
        )

    def _resident_birth_month(self, number: str) -> date | None:
        """Return the birth month of a valid 居民身份证 number, or None for any other number."""
        if number[:6] in RESIDENCE_PERMIT_AREA_CODES or number[:2] not in RESIDENT_PROVINCE_CODES:
            return None
        digits = number[6:14]
        birth_month = self._births.get(digits)
        if birth_month is None:
            birth_month = self._birth_month(digits)
            if birth_month is not None:
                self._births[digits] = birth_month
        if birth_month is None or check_character(number[:17]) != number[17]:
            return None
        return birth_month

    def _birth_month(self, digits: str) -> date | None:
        """Return the first of the month of a YYYYMMDD birth date, or None when it is no date or out of range."""
        try:
            born = date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
        except ValueError:
            return None
        if not EARLIEST_BIRTH <= born <= self.context.today:
            return None
        return born.replace(day=1)

    def _cached(self, cache: dict, key: object, compute: Callable[[], T]) -> T:
        if key in cache:
            return cache[key]
        value = compute()
        if len(cache) < self.CACHE_LIMIT:
            cache[key] = value
        return value

    def _month(self, value: Cell) -> date | None:
        if type(value) is str:
            return self._cached(self._months, value, lambda: _read_month(value) if value.strip() else None)
        if isinstance(value, (date, int, float)) and not isinstance(value, bool):
            return _read_month(value)
        return None

    def _date(self, value: Cell) -> date | None:
        if type(value) is datetime:
            return value.date()
        if type(value) is date:
            return value
        if type(value) is str:
            return self._cached(self._dates, value, lambda: _read_date(value))
        return None

    def _exam(self, value: Cell) -> Exam | None:
        if value is None:
            return self.context.exam
        if type(value) is not str or value.lstrip().startswith("="):
            return None
        return self._cached(self._exams, value, lambda: self.context.find_exam(value.strip()) if value.strip() else None)

    def _kind(self, value: Cell) -> str | None:
        if value is None:
            return self.context.kind
        if type(value) is not str or value.lstrip().startswith("="):
            return None
        return self._cached(self._kinds, value, lambda: KIND_NAMES.get(_lookup_key(value)))

    def _specialty(self, exam: Exam, value: Cell) -> str | None:
        if type(value) is not str or value.lstrip().startswith("=") or not value.strip():
            return None
        key = (exam.name, value)
        return self._cached(self._specialties, key, lambda: self.context.find_specialty(exam, value.strip()))


def _row_exam(value: Cell, context: _RowContext) -> Exam:
    text = cell_text(EXAM, value).strip()
    if not text:
        if context.exam is None:
            raise FieldError("考试项目为空，请填写考试项目")
        return context.exam
    exam = context.find_exam(text)
    if exam is None:
        names = "、".join(context.catalogue.exams)
        raise FieldError(f"考试项目「{_shown(text)}」不在考试目录中，应为以下之一：{names}")
    return exam


def _row_kind(value: Cell, default: str | None) -> str:
    text = cell_text(KIND, value).strip()
    if not text:
        if default is None:
            raise FieldError("证书类别为空，请填写“证书”或“合格证明”")
        return default
    kind = KIND_NAMES.get(_lookup_key(text))
    if kind is None:
        raise FieldError(f"证书类别「{_shown(text)}」无法识别，请填写“证书”“考试证书”“职业资格证书”或“合格证明”")
    return kind


def _parse_specialty(value: Cell, exam: Exam, context: _RowContext) -> str:
    text = cell_text(SPECIALTY, value).strip()
    if not text:
        raise FieldError("专业名称为空，请填写专业名称")
    specialty = context.find_specialty(exam, text)
    if specialty is None:
        raise FieldError(
            f"专业名称「{_shown(text)}」不是{exam.name}的专业，应为以下之一：{'、'.join(exam.specialties)}"
        )
    return specialty


def _parse_level(value: Cell, exam: Exam) -> str | None:
    # An exam without levels prints none, so a stray 级别 value there is ignored.
    text = _lookup_key(cell_text(LEVEL, value))
    if not text or not exam.levels:
        return None
    if text not in exam.levels:
        raise FieldError(f"级别「{_shown(text)}」不是{exam.name}的级别，应为以下之一：{'、'.join(exam.levels)}")
    return text


# --- Identity within a row ----------------------------------------------


def parse_identity(
    type_value: Cell, number_value: Cell, gender_value: Cell, birth_value: Cell, today: date
) -> tuple[str, str, str, date]:
    """Return (id_type, id_number, gender, birth_month), cross-checked for an 18-character ID."""
    number_text, from_number = id_cell_text(number_value)
    id_type = infer_id_type(cell_text(ID_TYPE, type_value), number_text)
    try:
        id_number = normalise_id_number(number_text, id_type, today=today)
    except IdentityError as error:
        if from_number:
            raise FieldError(error.reason + "；该号码在表格中存成了数字，可能已丢失精度，请把该列设置为文本格式后重新导出") from None
        raise
    gender = parse_gender(gender_value)
    birth_month = parse_birth_month(birth_value, today)
    if uses_resident_scheme(id_type):
        return id_type, id_number, _agreed_gender(id_number, gender), _agreed_birth(id_number, birth_month)
    if gender is None or birth_month is None:
        missing = "、".join(label for label, value in (("性别", gender), ("出生年月", birth_month)) if value is None)
        raise FieldError(f"{id_type}号码中没有性别和出生年月，请填写{missing}")
    return id_type, id_number, gender, birth_month


def _agreed_gender(id_number: str, gender: str | None) -> str:
    derived = resident_gender(id_number)
    if gender is not None and gender != derived:
        parity = "奇数" if derived == "男" else "偶数"
        raise FieldError(
            f"性别「{gender}」与证件号码「{id_number}」不符：第 17 位 {id_number[16]} 是{parity}，"
            f"应为{derived}；请核对性别或证件号码"
        )
    return derived


def _agreed_birth(id_number: str, birth_month: date | None) -> date:
    derived = resident_birth_month(id_number)
    if birth_month is not None and birth_month != derived:
        raise FieldError(
            f"出生年月「{birth_month:%Y-%m}」与证件号码「{id_number}」中的出生年月 {derived:%Y-%m} 不符；"
            "请核对出生年月或证件号码"
        )
    return derived


def id_cell_text(value: Cell) -> tuple[str, bool]:
    """Return an ID cell as text and whether it was stored as an exact whole number.

    Raise FieldError for a number Excel has rounded: a float of more than 15
    digits, or text in scientific notation as a CSV export shows it.
    """
    if isinstance(value, float) and not isinstance(value, bool):
        return _id_from_float(value), False
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), True
    text = cell_text(ID_NUMBER, value)
    if _SCIENTIFIC.fullmatch(_lookup_key(text).upper()):
        raise FieldError(
            f"证件号码「{text.strip()}」是科学计数法显示的数字，完整号码已丢失；"
            "请把该列设置为文本格式，重新录入完整号码后再导出"
        )
    return text, False


def _id_from_float(value: float) -> str:
    if not value.is_integer():
        raise FieldError(f"证件号码「{value}」是带小数的数字，不是证件号码，请核对")
    # Show the digits Excel displays (15 significant), not the binary float's tail.
    digits = str(int(Decimal(f"{value:.{EXCEL_DIGITS}g}")))
    if len(digits) <= EXCEL_DIGITS:
        return digits
    checksum = ""
    if len(digits) == 18 and check_character(digits[:17]) != digits[17]:
        checksum = "，按前 17 位校验位不符"
    raise FieldError(
        f"证件号码「{digits}」在 Excel 中存成了数字，超过 15 位的部分已丢失精度{checksum}；"
        "请把该列设置为文本格式，重新录入完整号码后再导出"
    )


# --- Cell values --------------------------------------------------------


def cell_text(key: str, value: Cell) -> str:
    """Return a cell as text; raise FieldError for a formula, which must never be imported."""
    label = FIELD_LABELS[key]
    if value is None:
        return ""
    if isinstance(value, FormulaText) and not value.cached:
        raise FieldError(
            f"{label}（单元格 {value.ref}）是 Excel 公式「{_shown(value)}」，文件中没有保存它的计算结果；"
            "请在 Excel 中复制该列并“选择性粘贴为数值”后重新上传"
        )
    if isinstance(value, str):
        if value.lstrip().startswith("="):
            raise _formula_error(label, value)
        return value
    if isinstance(value, bool):
        return str(value).upper()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ") if value.time() else value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    # openpyxl returns ArrayFormula and DataTableFormula objects for those formulas.
    raise _formula_error(label, str(getattr(value, "text", None) or type(value).__name__))


def _formula_error(label: str, text: str) -> FieldError:
    return FieldError(
        f"{label}「{_shown(text.strip())}」是 Excel 公式而不是文字；"
        "请在 Excel 中复制该列并“选择性粘贴为数值”后重新上传"
    )


def _shown(text: str) -> str:
    """Return a cell value for a message: cut to SHOWN_CHARACTERS, with invisible characters written as \\uXXXX."""
    if len(text) > SHOWN_CHARACTERS:
        return escape_invisible(text[:SHOWN_CHARACTERS]) + "…"
    return escape_invisible(text)


def parse_name(value: Cell) -> str:
    """Return a normalised name, or raise FieldError naming why it is not a name."""
    name = normalise_name(cell_text(NAME, value))
    if not name:
        raise FieldError("姓名为空，请填写姓名")
    _check_name(name)
    return name


def normalise_name(raw: str) -> str:
    """Normalise a name's spacing, full-width letters and separators without judging it.

    Lookup forms use this too, so a name typed there matches the stored one.
    """
    text = raw.translate(_ZERO_WIDTH).translate(_FULLWIDTH_ASCII).translate(_NAME_SEPARATORS).translate(_KANGXI_RADICALS)
    parts = text.split()
    name = parts[0] if parts else ""
    for part in parts[1:]:
        # Spaces inside a Chinese name are padding, but they separate Latin name parts.
        joined = _CJK_CHARACTER.match(name[-1]) and _CJK_CHARACTER.match(part[0])
        name += part if joined else " " + part
    return _DOT_BETWEEN_CJK.sub("·", name)


def _check_name(name: str) -> None:
    shown = _shown(name)
    markup = sorted({c for c in name if c in _MARKUP})
    if markup:
        raise FieldError(f"姓名「{shown}」含有标记字符「{''.join(markup)}」，请只填写姓名本身")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs") for c in name):
        raise FieldError(f"姓名「{shown}」含有控制字符，请删除后重新填写")
    if any(c.isdigit() for c in name):
        raise FieldError(f"姓名「{shown}」含有数字，请只填写姓名本身")
    if not any(unicodedata.category(c)[0] == "L" for c in name):
        raise FieldError(f"姓名「{shown}」中没有文字，请填写姓名")
    if len(name) > MAX_NAME_LENGTH:
        raise FieldError(f"姓名「{shown}」有 {len(name)} 个字符，超过 {MAX_NAME_LENGTH} 个字符的上限，请核对")
    other = sorted({c for c in name if c not in _NAME_PUNCTUATION and unicodedata.category(c)[0] not in "LM"})
    if other:
        raise FieldError(f"姓名「{shown}」含有不允许的字符「{''.join(other)}」，姓名只能包含文字、间隔号·、空格、点和连字符")


def check_printable(name: str, glyphs: bytes | None = None) -> None:
    """Raise FieldError when no shipped font has a glyph for a character of `name`.

    Such a certificate could never be rendered, so the row is rejected.
    `glyphs` is a `glyph_coverage` bitmap, loaded here when not given.
    """
    missing = uncovered_characters(name, glyphs or coverage_bitmap())
    if missing:
        shown = "、".join(f"「{char}」（U+{ord(char):04X}）" for char in missing)
        raise FieldError(
            f"姓名「{_shown(name)}」中的字符{shown}没有可用的字体，证书无法显示；"
            "请核对是否录入了生僻字的异体或错字，必要时联系系统管理员添加字体"
        )


def parse_gender(value: Cell) -> str | None:
    """Return 男 or 女, None for a blank cell, or raise FieldError."""
    text = _lookup_key(cell_text(GENDER, value)).upper()
    if not text:
        return None
    gender = GENDER_NAMES.get(text)
    if gender is None:
        raise FieldError(f"性别「{_shown(text)}」无法识别，请填写“男”或“女”")
    return gender


def parse_certificate_number(value: Cell) -> str:
    """Return a certificate number in capitals without spaces, or raise FieldError."""
    if isinstance(value, float) and not value.is_integer():
        raise FieldError(f"证书编号「{value}」是带小数的数字，请核对")
    if isinstance(value, float) and value >= 10**EXCEL_DIGITS:
        raise FieldError(
            f"证书编号「{int(value)}」在 Excel 中存成了数字，超过 15 位的部分已丢失精度；"
            "请把该列设置为文本格式，重新录入完整编号后再导出"
        )
    text = _lookup_key(cell_text(NUMBER, value)).upper()
    if not text:
        raise FieldError("证书编号为空，请填写证书编号")
    # A number cell exported as text keeps Excel's ".0".
    whole = _TRAILING_ZERO_FRACTION.fullmatch(text)
    if whole:
        text = whole.group(1)
    if not CERTIFICATE_NUMBER.fullmatch(text):
        raise FieldError(f"证书编号「{_shown(text)}」格式不正确，应为 6 至 32 位字母或数字，请核对")
    return text


# --- Dates --------------------------------------------------------------


def excel_serial_date(serial: float) -> date:
    """Return the date of an Excel serial number in the 1900 date system."""
    if not 1 <= serial <= MAX_EXCEL_SERIAL:
        raise ValueError(f"Excel serial {serial} is out of range")
    return EXCEL_EPOCH + timedelta(days=int(serial))


def parse_approval_date(value: Cell, today: date) -> date:
    """Return the approval date, or raise FieldError when missing, unreadable, before 1990 or after `today`."""
    label = FIELD_LABELS[APPROVAL_DATE]
    if is_blank(value):
        raise FieldError(f"{label}为空，请填写批准日期，如 2024-10-18")
    found = _read_date(value)
    if found is None:
        shown = _shown(cell_text(APPROVAL_DATE, value).strip())
        raise FieldError(f"{label}「{shown}」无法识别，请写成 2024-10-18 这样的日期")
    if found < EARLIEST_APPROVAL:
        raise FieldError(f"{label}「{found.isoformat()}」早于 1990 年，请核对")
    if found > today:
        raise FieldError(f"{label}「{found.isoformat()}」晚于今天（{today.isoformat()}），不能是将来的日期，请核对")
    return found


def _read_date(value: Cell) -> date | None:
    """Return the date in a cell, or None when it is not one."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        if isinstance(value, str):
            return _date_from_text(_clean(value))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _date_from_number(value)
    except ValueError:
        return None
    return None


def _date_from_number(value: float) -> date:
    # A number cell holds either an Excel serial or digits typed as 20241018.
    match = _EIGHT_DIGITS.fullmatch(_number_text(value))
    if match:
        return date(*(int(group) for group in match.groups()))
    return excel_serial_date(value)


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _clean(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip()


def _date_from_text(text: str) -> date | None:
    for pattern in (_DATE_TEXT, _EIGHT_DIGITS):
        match = pattern.fullmatch(text)
        if match:
            year, month, day = (int(group) for group in match.groups())
            return date(year, month, day)
    if _SERIAL_TEXT.fullmatch(text):
        return excel_serial_date(float(text))
    return None


def parse_birth_month(value: Cell, today: date) -> date | None:
    """Return the first day of the birth month, None for a blank cell, or raise FieldError."""
    if is_blank(value):
        return None
    found = _read_month(value)
    if found is None:
        shown = _shown(cell_text(BIRTH_MONTH, value).strip())
        raise FieldError(f"出生年月「{shown}」无法识别，请写成 1990-01 这样的年月")
    if not EARLIEST_BIRTH <= found <= today:
        raise FieldError(f"出生年月「{found:%Y-%m}」不可能，请核对")
    return found


def _read_month(value: Cell) -> date | None:
    if isinstance(value, datetime):
        return value.date().replace(day=1)
    if isinstance(value, date):
        return value.replace(day=1)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    if isinstance(value, float) and not value.is_integer() and 1900 <= value < 2100:
        return _month_from_decimal(value)
    text = _clean(value) if isinstance(value, str) else _number_text(value)
    try:
        return _month_from_text(text)
    except ValueError:
        return None


def _month_from_decimal(value: float) -> date | None:
    # Excel stores "1990.01" typed into a number cell as 1990.01 and "1990.10" as 1990.1,
    # so the fraction times 100 is the month.
    year = int(value)
    month = round((value - year) * 100)
    if not 1 <= month <= 12:
        return None
    return date(year, month, 1)


def _month_from_text(text: str) -> date | None:
    for pattern in (_DATE_TEXT, _EIGHT_DIGITS):
        match = pattern.fullmatch(text)
        if match:
            year, month, day = (int(group) for group in match.groups())
            return date(year, month, day).replace(day=1)
    for pattern in (_MONTH_TEXT, _SIX_DIGITS):
        match = pattern.fullmatch(text)
        if match:
            return date(int(match.group(1)), int(match.group(2)), 1)
    if _SERIAL_TEXT.fullmatch(text):
        return excel_serial_date(float(text)).replace(day=1)
    return None
