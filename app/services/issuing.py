"""Issue certificates from a roster: plan every row into `batch_row`, then apply all or none.

Planning streams: outcomes come from `roster.iter_outcomes` one row at a
time (or from a worker process, see `_use_worker`), are
compared with the register 500 at a time and written to `batch_row`, so
memory stays flat on a 100,000-row file. Applying reads the accepted rows
back in chunks and inserts them inside one transaction, so a batch is
written completely or not at all. Both write with `BulkInsert`, one DB-API
executemany per chunk.

Rule for a row whose certificate number is already in the register:

- same content as the stored record: skipped;
- same exam and kind, and the same person (the stored ID number or the
  stored name equals the row's), but other content: "changed", a
  correction candidate shown as a before/after difference per field and
  applied only when staff tick it (the CLI only with `--apply-changes`);
- otherwise (another person, where both name and ID number differ, or
  another exam or kind): rejected with the reason, never applied.

A row for a new certificate whose ID number the register already stores
under other names is rejected: one ID number under two names is most often
a mistyped name. A person who changed their name gets the old records
corrected first (更正). The roster layer applies the same rule between
rows of one file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from flask import current_app
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from ..domain.catalogue import Catalogue
from ..domain.identity import mask_id_number
from ..domain.roster import (
    RecordData,
    RosterFileError,
    RowOutcome,
    iter_outcomes,
    iter_outcomes_in_worker,
    worker_available,
)
from ..domain.roster_read import DEFAULT_LIMITS, SheetLimits, escape_invisible
from ..extensions import db
from ..id_numbers import id_hashes, seal_id_numbers
from ..models import (
    AuditEntry,
    BatchRow,
    Certificate,
    CertificateVersion,
    Exam,
    ImportBatch,
    Layout,
    STATUS_VALID,
    Specialty,
    new_public_id,
    new_public_ids,
    utcnow,
)
from .catalogue import load_catalogue

logger = logging.getLogger(__name__)

IMPORTED = "imported"
REJECTED = "rejected"
SKIPPED = "skipped"
CHANGED = "changed"
OUTCOMES = (IMPORTED, REJECTED, SKIPPED, CHANGED)

# Rows per query when comparing numbers with the register, and per INSERT batch.
CHUNK = 500
# Smallest roster file read in a worker process (config IMPORT_WORKER_MIN_BYTES); None is off, see `_use_worker`.
DEFAULT_WORKER_MIN_BYTES = None
# SQLite page cache of an import's connection (config IMPORT_SQLITE_CACHE_KIB), see `_import_page_cache`.
DEFAULT_SQLITE_CACHE_KIB = 16 * 1024

# Fields compared for a changed row, with the labels staff know them by.
CHANGE_LABELS = {
    "name": "姓名",
    "gender": "性别",
    "id_type": "证件类型",
    "id_number": "证件号码",
    "birth_month": "出生年月",
    "specialty": "专业名称",
    "level": "级别",
    "approval_date": "批准日期",
}

# Columns `_CertificateWriter` writes, in the order of its row tuples.
CERTIFICATE_COLUMNS = (
    "public_id", "number", "kind", "exam_id", "specialty_id", "layout_id", "level", "name", "gender", "id_type",
    "id_number", "id_number_hash", "birth_month", "approval_date", "status", "version", "batch_id", "created_at",
    "updated_at",
)  # fmt: skip

# Columns of a `batch_row` as `_batch_rows` returns it, in insert order.
BATCH_ROW_COLUMNS = (
    "batch_id", "row", "outcome", "reason", "hidden", "number", "name", "record", "cells", "changes",
    "certificate_id", "applied",
)  # fmt: skip
_OUTCOME_AT = BATCH_ROW_COLUMNS.index("outcome")
_HIDDEN_AT = BATCH_ROW_COLUMNS.index("hidden")

# Progress callback: (rows done, rows in total or None, message or None).
ProgressFn = Callable[..., None]


def _no_progress(done: int, total: int | None = None, message: str | None = None) -> None:
    return None


@dataclass
class ImportPlan:
    """The result of planning or applying a batch: counts per outcome and file-level notices."""

    filename: str
    sha256: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    # An earlier confirmed batch of the very same file, if any.
    earlier_batch_id: int | None = None
    notices: list[str] = field(default_factory=list)
    batch_id: int | None = None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- Planning -----------------------------------------------------------


def plan_batch(
    batch: ImportBatch,
    path: Path,
    *,
    today: date | None = None,
    catalogue: Catalogue | None = None,
    progress: ProgressFn = _no_progress,
    write_certificates: bool = False,
) -> ImportPlan:
    """Judge every row of `path` and store the outcomes as `batch_row`s of `batch`, without committing.

    Any earlier preview of the batch is replaced. Raises `RosterFileError`
    when the file itself cannot be read.

    With `write_certificates` (the CLI, which confirms in the same
    transaction), each new record is inserted into `certificate` at once and
    its `batch_row` keeps no `record`, so a clean row is neither stored twice
    nor encrypted twice. `apply_batch` then inserts only rows that still
    have a record. The web preview leaves it off, because confirming happens
    in a later request and reads the records from `batch_row`.
    """
    catalogue = catalogue or load_catalogue()
    options = dict(
        exam=batch.exam, kind=batch.kind, filename=batch.filename, today=today or date.today(),
        include_hidden=batch.include_hidden, glyph_cache_dir=glyph_cache_dir(), limits=sheet_limits(),
    )  # fmt: skip
    if _use_worker(path):
        stream = iter_outcomes_in_worker(path, catalogue, **options)
    else:
        stream = iter_outcomes(path, catalogue, **options)
    db.session.execute(delete(BatchRow).where(BatchRow.batch_id == batch.id))
    certificates = _CertificateWriter(catalogue, batch) if write_certificates else None
    row_writer = BulkInsert(BatchRow.__table__, BATCH_ROW_COLUMNS)
    plan = ImportPlan(filename=batch.filename, sha256=batch.sha256, notices=list(stream.notices), batch_id=batch.id)
    hidden = 0
    done = 0
    progress(0, stream.total, "正在检查每一行")
    try:
        with _import_page_cache():
            for chunk in _chunks(stream, CHUNK):
                rows, fresh, fresh_hashes = _batch_rows(chunk, batch.id, row_writer, write_certificates)
                for row in rows:
                    plan.counts[row[_OUTCOME_AT]] += 1
                    hidden += bool(row[_HIDDEN_AT])
                if certificates is not None and fresh:
                    certificates.insert(fresh, fresh_hashes)
                row_writer.execute(rows)
                done += len(chunk)
                progress(done, stream.total)
    finally:
        stream.close()
    if done == 0:
        raise RosterFileError(f"文件「{batch.filename}」在表头下面没有任何数据行，请检查是否选错了文件或工作表。")

    batch.header = list(stream.header.labels)
    batch.notices = plan.notices
    batch.hidden_count = hidden
    _store_counts(batch, plan.counts)
    batch.previewed_at = utcnow()
    plan.earlier_batch_id = db.session.scalar(
        select(ImportBatch.id)
        .where(ImportBatch.sha256 == batch.sha256, ImportBatch.state == "confirmed", ImportBatch.id != batch.id)
        .limit(1)
    )
    progress(done, done, "检查完成")
    return plan


@contextmanager
def _import_page_cache() -> Iterator[None]:
    """Raise SQLite's page cache of the session's connection to IMPORT_SQLITE_CACHE_KIB while inside, then restore it.

    The certificate indexes on random keys (public id, lookup hash, name)
    outgrow SQLite's default 2 MB cache after a few thousand rows, so the
    inserts spill and re-read index pages. With a 16 MB cache, raw
    executemany of 100,000 certificates took 0.62 s instead of 0.94 s of CPU
    on the 2-core AMD EPYC benchmark VM. Other databases are left alone.
    """
    connection = db.session.connection()
    if connection.dialect.name != "sqlite":
        yield
        return
    previous = int(connection.exec_driver_sql("PRAGMA cache_size").scalar() or 0)
    kib = int(current_app.config.get("IMPORT_SQLITE_CACHE_KIB", DEFAULT_SQLITE_CACHE_KIB))
    connection.exec_driver_sql(f"PRAGMA cache_size=-{kib}")
    try:
        yield
    finally:
        try:
            connection.exec_driver_sql(f"PRAGMA cache_size={previous}")
        except SQLAlchemyError as error:  # an error of the import itself may be on its way; it matters more
            logger.warning("SQLite page cache of the import's connection not restored: %s", error.__class__.__name__)


def _chunks(outcomes: Iterable[RowOutcome], size: int) -> Iterator[list[RowOutcome]]:
    chunk: list[RowOutcome] = []
    for outcome in outcomes:
        chunk.append(outcome)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _use_worker(path: Path) -> bool:
    """Return whether to read and validate `path` in a worker process while this one writes.

    Only files of at least IMPORT_WORKER_MIN_BYTES (config) use the worker.
    The default, None, turns it off: on the shared 2-core benchmark VM,
    with other jobs running, the worker cost about 0.7 s more CPU on
    100,000 rows (pickling, rebuilding the outcomes, copy-on-write faults)
    and finished later by wall-clock (docs/benchmarks.md). A server with a
    spare core may set it, e.g. to 262144. A process with other threads (a
    web server running the import as a background job) always reads
    in-process, see `worker_available`.
    """
    minimum = current_app.config.get("IMPORT_WORKER_MIN_BYTES", DEFAULT_WORKER_MIN_BYTES)
    return minimum is not None and path.stat().st_size >= minimum and worker_available()


def sheet_limits() -> SheetLimits:
    """Return the roster sheet bounds from the config (ROSTER_MAX_ROWS, ROSTER_MAX_COLUMNS, ROSTER_MAX_CELLS)."""
    config = current_app.config
    return SheetLimits(
        rows=config.get("ROSTER_MAX_ROWS", DEFAULT_LIMITS.rows),
        columns=config.get("ROSTER_MAX_COLUMNS", DEFAULT_LIMITS.columns),
        cells=config.get("ROSTER_MAX_CELLS", DEFAULT_LIMITS.cells),
    )


def glyph_cache_dir() -> Path:
    """Return the folder under the instance where the fonts' glyph coverage is cached."""
    return Path(current_app.instance_path) / "cache"


def _batch_rows(
    outcomes: list[RowOutcome], batch_id: int, writer: BulkInsert, write_certificates: bool
) -> tuple[list[tuple], list[RecordData], list[str]]:
    """Return the `batch_row` values of a chunk, judged against the stored records with the same numbers or ID numbers.

    With `write_certificates` the records of rows that stay "imported" are
    returned with their ID number hashes for the caller to insert as
    certificates, and their rows keep no `record`.
    """
    accepted = [o for o in outcomes if o.outcome == IMPORTED and o.record is not None]
    existing = _existing_by_number([o.record.number for o in accepted])
    hashes, registered = _names_on_record([o.record.id_number for o in accepted if o.record.number not in existing])
    not_applied = writer.converter("applied")(False)
    rows: list[tuple] = []
    fresh: list[RecordData] = []
    fresh_hashes: list[str] = []
    for outcome in outcomes:
        record = outcome.record
        stored = existing.get(record.number) if record is not None and outcome.outcome == IMPORTED else None
        if record is not None and outcome.outcome == IMPORTED and stored is None:
            digest = hashes[record.id_number]
            names = registered.get(digest)
            if names and record.name not in names:
                row = _row_dict(outcome, None)
                row.update(_other_name_values(outcome.row, record, names, outcome.cells), batch_id=batch_id)
                rows.append(writer.values(row))
                continue
            if write_certificates:
                # The common row: built as a tuple directly, its empty reason needing no encryption.
                fresh.append(record)
                fresh_hashes.append(digest)
                rows.append((
                    batch_id, outcome.row, IMPORTED, "", outcome.hidden, record.number, record.name, None, None, None,
                    None, not_applied,
                ))  # fmt: skip
                continue
        row = _row_dict(outcome, stored, keep_new_record=not write_certificates)
        row["batch_id"] = batch_id
        rows.append(writer.values(row))
    return rows, fresh, fresh_hashes


def _names_on_record(id_numbers: list[str]) -> tuple[dict[str, str], dict[str, set[str]]]:
    """Return ID number -> its `id_hash`, and hash -> the names stored with it, for the hashes on record."""
    unique = list(dict.fromkeys(id_numbers))
    hashes = dict(zip(unique, id_hashes(unique), strict=True))
    return hashes, _registered_names(list(hashes.values()))


def _registered_names(hashes: list[str]) -> dict[str, set[str]]:
    """Return ID number hash -> the names of the stored certificates with it, for those of `hashes` on record."""
    found: dict[str, set[str]] = {}
    connection = db.session.connection()
    marker = BulkInsert.MARKERS[connection.dialect.paramstyle]
    for start in range(0, len(hashes), CHUNK):
        chunk = hashes[start : start + CHUNK]
        # Driver SQL for the same reason as in `_existing_by_number`. The index ix_certificate_holder covers both columns.
        markers = ", ".join([marker] * len(chunk))
        rows = connection.exec_driver_sql(
            f"SELECT DISTINCT id_number_hash, name FROM certificate WHERE id_number_hash IN ({markers})", tuple(chunk)
        )
        for digest, name in rows:
            found.setdefault(digest, set()).add(name)
    return found


def _other_name_values(row: int, record: RecordData, names: set[str], cells: tuple | None) -> dict:
    """Return the `batch_row` fields that reject a new row whose ID number the register stores under other names."""
    listed_names = "、".join(f"「{name}」" for name in sorted(names))
    return {
        "outcome": REJECTED,
        "record": None,
        "cells": cells_json(cells),
        "reason": (
            f"第 {row} 行：证件号码 {mask_id_number(record.id_number)} 已登记在姓名{listed_names}名下，"
            f"与本行姓名「{record.name}」不一致，本行未导入；请核对姓名，"
            "如确为同一人改名，请先在“更正”中修改原记录的姓名后再导入"
        ),
    }


def _row_dict(outcome: RowOutcome, stored: Certificate | None, keep_new_record: bool = True) -> dict:
    record = outcome.record
    keep_record = record is not None and outcome.outcome == IMPORTED and (keep_new_record or stored is not None)
    row = {
        "row": outcome.row,
        "outcome": outcome.outcome,
        # Reasons quote cells, so a bidi override in a cell must not reorder the message.
        "reason": escape_invisible(outcome.reason) if outcome.reason else outcome.reason,
        "hidden": outcome.hidden,
        "number": record.number if record else None,
        "name": record.name if record else None,
        "record": record_json(record) if keep_record else None,
        "cells": cells_json(outcome.cells) if outcome.outcome == REJECTED else None,
        "changes": None,
        "certificate_id": None,
        "applied": False,
    }
    if stored is not None and record is not None:
        row.update(_against_stored(record, stored, outcome.cells))
    return row


def _existing_by_number(numbers: list[str]) -> dict[str, Certificate]:
    found: dict[str, Certificate] = {}
    connection = db.session.connection()
    marker = BulkInsert.MARKERS[connection.dialect.paramstyle]
    for start in range(0, len(numbers), CHUNK):
        chunk = numbers[start : start + CHUNK]
        # Numbers only first, in driver SQL: most chunks of a new roster match nothing, and this skips
        # SQLAlchemy's expansion of 500 IN parameters, which cost about 1 ms per chunk.
        stored = connection.exec_driver_sql(
            f"SELECT number FROM certificate WHERE number IN ({', '.join([marker] * len(chunk))})", tuple(chunk)
        ).scalars().all()
        if not stored:
            continue
        for certificate in db.session.scalars(select(Certificate).where(Certificate.number.in_(stored))):
            found[certificate.number] = certificate
    return found


def _against_stored(record: RecordData, stored: Certificate, cells: tuple | None) -> dict:
    """Return the `batch_row` fields that judge `record` against the stored record with its number."""
    if record_fingerprint(record) == stored_fingerprint(stored):
        return {
            "outcome": SKIPPED,
            "record": None,
            "reason": f"证书编号「{record.number}」已在证书库中，内容相同，未重复导入",
        }
    same_person = record.id_number == stored.id_number or record.name == stored.name
    same_certificate = record.exam == stored.exam.name and record.kind == stored.kind
    if not (same_person and same_certificate):
        other = "另一人" if not same_person else f"另一项考试或类别（{stored.exam.name}）"
        return {
            "outcome": REJECTED,
            "record": None,
            "cells": cells_json(cells),
            "reason": (
                f"证书编号「{record.number}」已属于证书库中{other}的记录"
                f"（{stored.name}，{mask_id_number(stored.id_number)}），本行未导入；请核对证书编号"
            ),
        }
    changes = record_changes(record, stored)
    return {
        "outcome": CHANGED,
        "certificate_id": stored.id,
        "changes": changes,
        "reason": f"证书编号「{record.number}」已在证书库中，勾选后本行将更正原记录：{changes_text(changes)}",
    }


def changes_text(changes: dict[str, list[str | None]]) -> str:
    """Return "姓名：甲 → 乙；…" for a changed row, ID numbers masked."""
    return "；".join(
        f"{CHANGE_LABELS[key]}：{_shown_value(key, old)} → {_shown_value(key, new)}" for key, (old, new) in changes.items()
    )


def record_changes(record: RecordData, stored: Certificate) -> dict[str, list[str | None]]:
    """Return field -> [stored, new] as text for every field where `record` differs from `stored`."""
    new = _comparable(record_json(record))
    old = _comparable(
        {
            "name": stored.name, "gender": stored.gender, "id_type": stored.id_type, "id_number": stored.id_number,
            "birth_month": stored.birth_month.isoformat(), "specialty": stored.specialty.name,
            "level": stored.level, "approval_date": stored.approval_date.isoformat(),
        }
    )  # fmt: skip
    return {key: [old[key], new[key]] for key in CHANGE_LABELS if old[key] != new[key]}


def _comparable(values: dict) -> dict[str, str | None]:
    result = {key: values.get(key) or None for key in CHANGE_LABELS}
    result["birth_month"] = (result["birth_month"] or "")[:7] or None
    return result


def _shown_value(key: str, value: str | None) -> str:
    if value is None:
        return "（空）"
    return mask_id_number(value) if key == "id_number" else value


def record_fingerprint(record: RecordData) -> tuple:
    return (
        record.number, record.name, record.gender, record.id_type, record.id_number, record.birth_month,
        record.exam, record.specialty, record.level or None, record.kind, record.approval_date,
    )  # fmt: skip


def stored_fingerprint(certificate: Certificate) -> tuple:
    return (
        certificate.number, certificate.name, certificate.gender, certificate.id_type, certificate.id_number,
        certificate.birth_month, certificate.exam.name, certificate.specialty.name, certificate.level or None,
        certificate.kind, certificate.approval_date,
    )  # fmt: skip


def record_json(record: RecordData) -> dict:
    return {
        "number": record.number, "name": record.name, "gender": record.gender, "id_type": record.id_type,
        "id_number": record.id_number, "birth_month": record.birth_month.isoformat(), "exam": record.exam,
        "specialty": record.specialty, "level": record.level, "kind": record.kind,
        "approval_date": record.approval_date.isoformat(),
    }  # fmt: skip


def record_from_json(data: dict) -> RecordData:
    return RecordData(
        **{**data, "birth_month": date.fromisoformat(data["birth_month"]),
           "approval_date": date.fromisoformat(data["approval_date"])}
    )  # fmt: skip


def cells_json(cells: tuple | None) -> list | None:
    """Return raw cells as JSON values: text, numbers and booleans as they are, dates as ISO text."""
    if cells is None:
        return None
    result: list = []
    for value in cells:
        if value is None or isinstance(value, (bool, int, float)):
            result.append(value)
        elif isinstance(value, str):
            result.append(str(value))  # a FormulaText becomes its "=..." text
        elif hasattr(value, "isoformat"):
            result.append(value.isoformat())
        else:
            result.append(str(value))
    return result


def _store_counts(batch: ImportBatch, counts: dict[str, int]) -> None:
    batch.imported_count = counts[IMPORTED]
    batch.rejected_count = counts[REJECTED]
    batch.skipped_count = counts[SKIPPED]
    batch.changed_count = counts[CHANGED]


def batch_counts(batch_id: int) -> dict[str, int]:
    counts = dict.fromkeys(OUTCOMES, 0)
    query = select(BatchRow.outcome, func.count()).where(BatchRow.batch_id == batch_id).group_by(BatchRow.outcome)
    for outcome, number in db.session.execute(query):
        counts[outcome] = number
    return counts


# --- Applying -----------------------------------------------------------


def apply_batch(
    batch: ImportBatch,
    *,
    apply_rows: Iterable[int] = (),
    apply_all_changes: bool = False,
    reject_unapplied_changes: bool = False,
    catalogue: Catalogue | None = None,
    progress: ProgressFn = _no_progress,
) -> ImportPlan:
    """Write the accepted rows of a planned batch and confirm it, in one transaction.

    Accepted rows are checked against the register again, because another
    batch may have been confirmed since the preview. Changed rows are
    applied as corrections when their spreadsheet row is in `apply_rows`
    (or all of them with `apply_all_changes`); the rest stay unapplied, or
    become rejected rows with the difference as the reason when
    `reject_unapplied_changes` is set (the CLI). On any database error
    nothing of the batch is left behind and the error propagates.
    """
    catalogue = catalogue or load_catalogue()
    chosen = set(apply_rows)
    try:
        _claim(batch)
        total = batch.imported_count + batch.changed_count
        progress(0, total, "正在写入证书库")
        inserted = _insert_accepted(batch, catalogue, progress, total)
        applied = _apply_changes(batch, chosen, apply_all_changes, reject_unapplied_changes)

        counts = batch_counts(batch.id)
        _store_counts(batch, counts)
        batch.applied_count = applied
        batch.state = "confirmed"
        batch.confirmed_at = utcnow()
        db.session.add(_audit_entry(batch))
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    progress(total, total, "导入完成")
    # The CLI writes its rows while planning, so `inserted` counts only the rows written by this step.
    logger.info(
        "Batch %s (%s) confirmed by %s: %s certificates imported (%s inserted at confirmation), "
        "%s corrections applied, counts %s",
        batch.id, batch.filename, batch.uploaded_by, counts.get("imported", 0), inserted, applied, counts,
    )  # fmt: skip
    return ImportPlan(filename=batch.filename, sha256=batch.sha256, counts=counts, batch_id=batch.id,
                      notices=list(batch.notices or []))  # fmt: skip


def _claim(batch: ImportBatch) -> None:
    """Move the batch out of preview first, so of two simultaneous confirms only one goes on.

    The conditional UPDATE locks the row (PostgreSQL) or the database (SQLite)
    until commit, and the loser finds the state no longer 'preview'.
    """
    claimed = db.session.execute(
        update(ImportBatch)
        .where(ImportBatch.id == batch.id, ImportBatch.state == "preview")
        .values(state="confirmed")
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:
        raise RosterFileError(f"批次 #{batch.id} 已被确认或放弃，不能再次确认。")


def _insert_accepted(batch: ImportBatch, catalogue: Catalogue, progress: ProgressFn, total: int) -> int:
    certificates = _CertificateWriter(catalogue, batch)
    inserted = 0
    last_id = 0
    while True:
        # An imported row without a record was written by `plan_batch(write_certificates=True)` already.
        chunk = db.session.execute(
            select(BatchRow.id, BatchRow.row, BatchRow.record, BatchRow.hidden)
            .where(
                BatchRow.batch_id == batch.id, BatchRow.outcome == IMPORTED, BatchRow.record.is_not(None),
                BatchRow.id > last_id,
            )
            .order_by(BatchRow.id)
            .limit(CHUNK)
        ).all()
        if not chunk:
            return inserted
        last_id = chunk[-1].id
        records = [record_from_json(row.record) for row in chunk]
        # Another batch may have taken some of these numbers, or ID numbers under other names, since the preview.
        existing = _existing_by_number([record.number for record in records])
        hashes, registered = _names_on_record([record.id_number for record in records if record.number not in existing])
        fresh: list[RecordData] = []
        fresh_hashes: list[str] = []
        for row, record in zip(chunk, records, strict=True):
            stored = existing.get(record.number)
            if stored is not None:
                values = _against_stored(record, stored, None)
            else:
                digest = hashes[record.id_number]
                names = registered.get(digest)
                if not names or record.name in names:
                    fresh.append(record)
                    fresh_hashes.append(digest)
                    continue
                values = _other_name_values(row.row, record, names, None)
            values.pop("cells", None)
            db.session.execute(update(BatchRow).where(BatchRow.id == row.id).values(**values))
        if fresh:
            certificates.insert(fresh, fresh_hashes)
        inserted += len(fresh)
        progress(inserted, total)


@dataclass
class _CatalogueIds:
    exams: dict[str, int]
    specialties: dict[tuple[int, str], int]
    layouts: dict[str, int]


def _catalogue_ids() -> _CatalogueIds:
    return _CatalogueIds(
        exams=dict(db.session.execute(select(Exam.name, Exam.id)).all()),
        specialties={
            (exam_id, name): specialty_id
            for specialty_id, exam_id, name in db.session.execute(select(Specialty.id, Specialty.exam_id, Specialty.name))
        },
        layouts=dict(db.session.execute(select(Layout.code, Layout.id)).all()),
    )


class _CertificateWriter:
    """Inserts new certificates with one executemany per chunk, in the session's transaction.

    The ID numbers are encrypted and hashed in bulk by `seal_id_numbers` and
    `id_hashes`, the functions behind the `EncryptedIdNumber` column type and
    the `id_number_hash` default, so the ORM reads these rows like any other.
    """

    def __init__(self, catalogue: Catalogue, batch: ImportBatch) -> None:
        self.catalogue = catalogue
        self.batch_id = batch.id
        self.ids = _catalogue_ids()
        self.writer = BulkInsert(Certificate.__table__, CERTIFICATE_COLUMNS, prepared=("id_number", "id_number_hash"))
        # A roster repeats a few hundred dates, so each is converted once per import.
        self.birth_month = self.writer.cached_converter("birth_month")
        self.approval_date = self.writer.cached_converter("approval_date")
        # (exam, kind, specialty) -> (exam id, specialty id, layout id)
        self._keys: dict[tuple[str, str, str], tuple[int, int, int]] = {}

    def insert(self, records: list[RecordData], hashes: list[str] | None = None) -> None:
        """Insert `records`; `hashes` are their `id_hash` values when the caller has them already."""
        id_numbers = [record.id_number for record in records]
        sealed = seal_id_numbers(id_numbers)
        hashes = hashes if hashes is not None else id_hashes(id_numbers)
        public_ids = new_public_ids(len(records))
        now = self.writer.converter("created_at")(utcnow())
        rows = []
        for record, public_id, ciphertext, digest in zip(records, public_ids, sealed, hashes, strict=True):
            key = (record.exam, record.kind, record.specialty)
            keys = self._keys.get(key)
            if keys is None:
                keys = self._keys[key] = _catalogue_keys(record, self.catalogue, self.ids)
            exam_id, specialty_id, layout_id = keys
            rows.append((
                public_id, record.number, record.kind, exam_id, specialty_id, layout_id, record.level or None,
                record.name, record.gender, record.id_type, ciphertext, digest, self.birth_month(record.birth_month),
                self.approval_date(record.approval_date), STATUS_VALID, 1, self.batch_id, now, now,
            ))  # fmt: skip
        self.writer.execute(rows)



def _catalogue_keys(record: RecordData, catalogue: Catalogue, ids: _CatalogueIds) -> tuple[int, int, int]:
    """Return the exam, specialty and layout ids of a record."""
    exam_id = ids.exams[record.exam]
    layout = catalogue.layout_for(record.exam, record.kind, record.specialty)
    return exam_id, ids.specialties[(exam_id, record.specialty)], ids.layouts[layout.code]


def _certificate_row(
    record: RecordData, catalogue: Catalogue, batch: ImportBatch, ids: _CatalogueIds, now: datetime | None = None
) -> dict:
    """Return one certificate as a dict of column values, for Core inserts that go through the column types."""
    now = now or utcnow()
    exam_id, specialty_id, layout_id = _catalogue_keys(record, catalogue, ids)
    return {
        "public_id": new_public_id(),
        "number": record.number,
        "kind": record.kind,
        "exam_id": exam_id,
        "specialty_id": specialty_id,
        "layout_id": layout_id,
        "level": record.level or None,
        "name": record.name,
        "gender": record.gender,
        "id_type": record.id_type,
        "id_number": record.id_number,
        "birth_month": record.birth_month,
        "approval_date": record.approval_date,
        "status": STATUS_VALID,
        "version": 1,
        "batch_id": batch.id,
        "created_at": now,
        "updated_at": now,
    }


class BulkInsert:
    """An INSERT of fixed columns of `table`, run as one DB-API executemany on the session's connection.

    SQLAlchemy's Core executemany processes every parameter of every row in
    Python, which cost more than SQLite's own work on a 100,000-row import.
    Here each column type's bind processor for the dialect (encryption,
    dates as text on SQLite, booleans) is applied only where a column has
    one, and not at all to the `prepared` columns, whose values the caller
    has converted already. Column defaults do not apply: every NOT NULL
    column without a server default must be given. Errors come wrapped as
    SQLAlchemy exceptions (IntegrityError for a unique violation), as from
    any other statement.
    """

    # Positional parameter markers of the DB-API paramstyles of the drivers in use (sqlite3, psycopg).
    MARKERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}

    def __init__(self, table, columns: tuple[str, ...], prepared: tuple[str, ...] = ()) -> None:
        self.connection = db.session.connection()
        dialect = self.connection.dialect
        marker = self.MARKERS[dialect.paramstyle]  # KeyError: a driver with another paramstyle needs a marker here
        quote = dialect.identifier_preparer.quote
        self.columns = columns
        self.statement = (
            f"INSERT INTO {quote(table.name)} ({', '.join(quote(name) for name in columns)}) "
            f"VALUES ({', '.join([marker] * len(columns))})"
        )
        self._processors = {
            name: processor
            for name in columns
            if name not in prepared
            and (processor := table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }

    def converter(self, name: str) -> Callable[[object], object]:
        """Return the function that turns a Python value of column `name` into the driver's value."""
        processor = self._processors.get(name)
        return (lambda value: value) if processor is None else processor

    def cached_converter(self, name: str) -> Callable[[object], object]:
        """Return `converter(name)` remembering its results, for columns with few distinct values such as dates."""
        convert = self.converter(name)
        cache: dict = {}

        def cached(value: object) -> object:
            result = cache.get(value, cache)
            if result is cache:
                result = cache[value] = convert(value)
            return result

        return cached

    def execute(self, rows: list[tuple]) -> None:
        """Insert `rows`, tuples in `columns` order whose values are already converted."""
        if rows:
            self.connection.exec_driver_sql(self.statement, rows)

    def values(self, row: dict) -> tuple:
        """Return a dict of Python values by column name as an `execute` tuple; None stays NULL unprocessed."""
        values = []
        for name in self.columns:
            value = row[name]
            convert = self._processors.get(name)
            values.append(value if convert is None or value is None else convert(value))
        return tuple(values)


def _apply_changes(batch: ImportBatch, chosen: set[int], apply_all: bool, reject_rest: bool) -> int:
    """Apply the chosen changed rows as corrections of their stored records; return how many."""
    rows = db.session.scalars(
        select(BatchRow).where(BatchRow.batch_id == batch.id, BatchRow.outcome == CHANGED).order_by(BatchRow.row)
    ).all()
    applied = 0
    for row in rows:
        if apply_all or row.row in chosen:
            certificate = db.session.get(Certificate, row.certificate_id) if row.certificate_id else None
            if certificate is None:
                row.outcome = REJECTED
                row.reason = f"证书编号「{row.number}」的原记录已被删除，本行未导入；请重新上传"
                continue
            correct_from_row(certificate, record_from_json(row.record), batch, row.row)
            row.applied = True
            applied += 1
        elif reject_rest:
            row.outcome = REJECTED
            row.reason = (
                f"证书编号「{row.number}」已属于证书库中的另一条记录（同一人，内容不同：{changes_text(row.changes or {})}）；"
                "命令行导入不会自动更正已有记录，本行未导入，如需更正请加 --apply-changes 重新导入"
            )
    return applied


def correct_from_row(certificate: Certificate, record: RecordData, batch: ImportBatch, row: int) -> None:
    """Replace a stored record's fields with a roster row's, keeping the old ones as a version.

    NOTE: `services.records.correct` does the same for the staff form but
    commits on its own, so the batch writes the same `certificate_version`
    row and audit entry here, inside the batch's single transaction.
    """
    from .records import snapshot

    before = snapshot(certificate)
    now = utcnow()
    db.session.add(
        CertificateVersion(
            certificate_id=certificate.id,
            version=certificate.version,
            fields=before,
            corrected_by=batch.uploaded_by,
            corrected_at=now,
            reason=f"批次 #{batch.id}（{batch.filename}）第 {row} 行更正",
        )
    )
    changes = record_changes(record, certificate)
    specialty = db.session.scalar(
        select(Specialty).where(Specialty.exam_id == certificate.exam_id, Specialty.name == record.specialty)
    )
    certificate.name = record.name
    certificate.gender = record.gender
    certificate.id_type = record.id_type
    certificate.id_number = record.id_number
    certificate.birth_month = record.birth_month
    certificate.specialty = specialty
    certificate.level = record.level or None
    certificate.approval_date = record.approval_date
    certificate.version += 1
    certificate.corrected_at = now
    certificate.updated_at = now
    db.session.add(
        AuditEntry(
            actor=batch.uploaded_by,
            action="certificate.correct",
            target=f"certificate:{certificate.id}",
            detail={"number": certificate.number, "version": certificate.version, "batch": batch.id, "row": row},
            before={key: _audit_value(key, old) for key, (old, _new) in changes.items()},
            after={key: _audit_value(key, new) for key, (_old, new) in changes.items()},
        )
    )


def _audit_value(key: str, value: str | None) -> str | None:
    return mask_id_number(value) if key == "id_number" and value else value


def _audit_entry(batch: ImportBatch) -> AuditEntry:
    return AuditEntry(
        actor=batch.uploaded_by,
        action="batch.confirm",
        target=f"batch:{batch.id}",
        detail={
            "filename": batch.filename,
            "sha256": batch.sha256,
            "imported": batch.imported_count,
            "rejected": batch.rejected_count,
            "skipped": batch.skipped_count,
            "changed": batch.changed_count,
            "applied": batch.applied_count,
        },
    )


# --- Reports ------------------------------------------------------------


def iter_batch_rows(batch_id: int, outcomes: Iterable[str] | None = None, columns: tuple = ()) -> Iterator:
    """Yield a batch's rows in spreadsheet order, reading CHUNK at a time."""
    wanted = columns or (BatchRow.row, BatchRow.outcome, BatchRow.reason)
    last_row = 0
    while True:
        query = select(*wanted).where(BatchRow.batch_id == batch_id, BatchRow.row > last_row)
        if outcomes is not None:
            query = query.where(BatchRow.outcome.in_(list(outcomes)))
        chunk = db.session.execute(query.order_by(BatchRow.row).limit(CHUNK)).all()
        if not chunk:
            return
        yield from chunk
        last_row = chunk[-1].row


def report_csv(rows: Iterable) -> str:
    """Return the per-row report: `row,outcome,reason`, rows numbered as the spreadsheet numbers them."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["row", "outcome", "reason"])
    for row in rows:
        writer.writerow([row.row, row.outcome, _safe_cell(row.reason)])
    return buffer.getvalue()


def _safe_cell(text: str) -> str:
    # A reason may quote a cell that starts with "=", which a spreadsheet would run as a formula.
    text = escape_invisible(text) if text else text
    if text and text[0] in "=+-@\t\r":
        return "'" + text
    return text
