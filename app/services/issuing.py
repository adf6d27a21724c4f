"""Issue certificates from a roster: plan every row into `batch_row`, then apply all or none.

Planning streams: outcomes come from `roster.iter_outcomes` one row at a
time, are compared with the register 500 at a time and written to
`batch_row`, so memory stays flat on a 100,000-row file. Applying reads the
accepted rows back in chunks and inserts them with Core `INSERT`s inside
one transaction, so a batch is written completely or not at all.

Rule for a row whose certificate number is already in the register:

- same content as the stored record: skipped;
- same exam and kind, and the same person (the stored ID number or the
  stored name equals the row's), but other content: "changed", a
  correction candidate shown as a before/after difference per field and
  applied only when staff tick it (the CLI only with `--apply-changes`);
- otherwise (another person, where both name and ID number differ, or
  another exam or kind): rejected with the reason, never applied.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from flask import current_app
from sqlalchemy import delete, func, insert, select, update

from ..domain.catalogue import Catalogue
from ..domain.identity import mask_id_number
from ..domain.roster import RecordData, RosterFileError, RowOutcome, iter_outcomes
from ..domain.roster_read import DEFAULT_LIMITS, SheetLimits, escape_invisible
from ..extensions import db
from ..models import (
    AuditEntry,
    BatchRow,
    Certificate,
    CertificateVersion,
    Exam,
    ImportBatch,
    Layout,
    Specialty,
    new_public_id,
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
    stream = iter_outcomes(
        path, catalogue, exam=batch.exam, kind=batch.kind, filename=batch.filename, today=today,
        include_hidden=batch.include_hidden, glyph_cache_dir=glyph_cache_dir(), limits=sheet_limits(),
    )  # fmt: skip
    ids = _catalogue_ids() if write_certificates else None
    db.session.execute(delete(BatchRow).where(BatchRow.batch_id == batch.id))
    plan = ImportPlan(filename=batch.filename, sha256=batch.sha256, notices=list(stream.notices), batch_id=batch.id)
    hidden = 0
    done = 0
    progress(0, stream.total, "正在检查每一行")
    try:
        for chunk in _chunks(stream, CHUNK):
            rows = compare_with_register(chunk, keep_new_records=not write_certificates)
            fresh = []
            for outcome, row in zip(chunk, rows, strict=True):
                row["batch_id"] = batch.id
                plan.counts[row["outcome"]] += 1
                hidden += bool(row["hidden"])
                if ids is not None and row["outcome"] == IMPORTED:
                    fresh.append(outcome.record)
            if ids is not None and fresh:
                _insert_certificates(fresh, catalogue, batch, ids)
            # Core executemany on the session's connection: the ORM bulk path costs ~3x more per row.
            db.session.connection().execute(insert(BatchRow.__table__), rows)
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


def _chunks(outcomes: Iterable[RowOutcome], size: int) -> Iterator[list[RowOutcome]]:
    chunk: list[RowOutcome] = []
    for outcome in outcomes:
        chunk.append(outcome)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


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


def compare_with_register(outcomes: list[RowOutcome], *, keep_new_records: bool = True) -> list[dict]:
    """Return one `batch_row` dict per outcome, judged against the stored records with the same numbers.

    Without `keep_new_records` a row that stays "imported" gets no `record`,
    because the caller writes its certificate directly.
    """
    numbers = [o.record.number for o in outcomes if o.outcome == IMPORTED and o.record is not None]
    existing = _existing_by_number(numbers)
    rows = []
    for outcome in outcomes:
        stored = existing.get(outcome.record.number) if outcome.outcome == IMPORTED and outcome.record else None
        rows.append(_row_dict(outcome, stored, keep_new_records))
    return rows


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
    for start in range(0, len(numbers), CHUNK):
        chunk = numbers[start : start + CHUNK]
        for certificate in db.session.scalars(select(Certificate).where(Certificate.number.in_(chunk))):
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
    logger.info(
        "Batch %s (%s) confirmed by %s: %s inserted, %s corrections applied, counts %s",
        batch.id, batch.filename, batch.uploaded_by, inserted, applied, counts,
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
    ids = _catalogue_ids()
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
        # Another batch may have taken some of these numbers since the preview.
        existing = _existing_by_number([record.number for record in records])
        fresh = []
        for row, record in zip(chunk, records, strict=True):
            stored = existing.get(record.number)
            if stored is None:
                fresh.append(record)
                continue
            values = _against_stored(record, stored, None)
            values.pop("cells", None)
            db.session.execute(update(BatchRow).where(BatchRow.id == row.id).values(**values))
        if fresh:
            _insert_certificates(fresh, catalogue, batch, ids)
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


def _insert_certificates(records: list[RecordData], catalogue: Catalogue, batch: ImportBatch, ids: _CatalogueIds) -> None:
    # Core executemany through the model's table, so the column types (ID number encryption) and defaults apply.
    now = utcnow()
    db.session.connection().execute(
        insert(Certificate.__table__), [_certificate_row(record, catalogue, batch, ids, now) for record in records]
    )


def _certificate_row(
    record: RecordData, catalogue: Catalogue, batch: ImportBatch, ids: _CatalogueIds, now: datetime | None = None
) -> dict:
    now = now or utcnow()
    exam_id = ids.exams[record.exam]
    layout = catalogue.layout_for(record.exam, record.kind, record.specialty)
    return {
        "public_id": new_public_id(),
        "number": record.number,
        "kind": record.kind,
        "exam_id": exam_id,
        "specialty_id": ids.specialties[(exam_id, record.specialty)],
        "layout_id": ids.layouts[layout.code],
        "level": record.level or None,
        "name": record.name,
        "gender": record.gender,
        "id_type": record.id_type,
        "id_number": record.id_number,
        "birth_month": record.birth_month,
        "approval_date": record.approval_date,
        "status": "valid",
        "version": 1,
        "batch_id": batch.id,
        "created_at": now,
        "updated_at": now,
    }


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
