"""Import batches: store the upload, preview it into `batch_row`, then confirm or discard it.

Small files are previewed and confirmed inside the web request. Files
larger than IMPORT_BACKGROUND_BYTES (config, default 512 KiB, about 5,000
XLSX rows) and batches with more than IMPORT_BACKGROUND_ROWS accepted rows
run as background jobs whose progress the batch page polls.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path

from flask import current_app
from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from ..domain.roster import RosterFileError
from ..domain.roster_read import HEADER_SYNONYMS, NAME, NUMBER, escape_invisible, header_key
from ..domain.sheet_scan import column_letters
from ..extensions import db
from ..models import AuditEntry, BatchRow, ImportBatch, Job, utcnow
from . import jobs
from .issuing import (
    CHANGED,
    REJECTED,
    ImportPlan,
    ProgressFn,
    apply_batch,
    file_sha256,
    iter_batch_rows,
    plan_batch,
    report_csv,
)

logger = logging.getLogger(__name__)

ALLOWED_SUFFIXES = {".xlsx", ".csv"}
DEFAULT_BACKGROUND_BYTES = 512 * 1024
DEFAULT_BACKGROUND_ROWS = 5000
PAGE_SIZE = 50
REASON_COLUMN = "错误原因"
XLSX_MAX_COLUMNS = 16_384  # columns A to XFD
MAX_FILENAME_LENGTH = ImportBatch.__table__.c.filename.type.length  # characters, String(255)

_STATE_LABELS = {"preview": "待确认", "confirmed": "确认导入", "discarded": "放弃"}


# Rosters contain whole ID numbers, so only the service's own user may read them. The modes are
# set explicitly because the web service's unit sets a umask but a shell running the CLI may not.
UPLOAD_DIR_MODE = 0o700
UPLOAD_FILE_MODE = 0o600


def upload_dir() -> Path:
    path = Path(current_app.instance_path) / "uploads"
    path.mkdir(mode=UPLOAD_DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != UPLOAD_DIR_MODE:
        path.chmod(UPLOAD_DIR_MODE)
    return path


def stored_path(batch: ImportBatch) -> Path:
    return upload_dir() / batch.stored_name


def store_upload(source: Path | bytes, filename: str) -> str:
    """Copy an upload under a generated name and return that name; the original name is never a path."""
    suffix = Path(filename).suffix.lower()
    if suffix not in ALLOWED_SUFFIXES:
        raise RosterFileError(f"文件「{filename}」的类型不受支持：请上传 .xlsx 或 .csv 文件。")
    stored_name = secrets.token_hex(16) + suffix
    target = upload_dir() / stored_name
    # Created with its final mode, so the roster is never readable by others, not even briefly.
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, UPLOAD_FILE_MODE)
    with open(descriptor, "wb") as output:
        if isinstance(source, bytes):
            output.write(source)
        else:
            with open(source, "rb") as original:
                shutil.copyfileobj(original, output)
    return stored_name


def display_filename(filename: str) -> str:
    """Return `filename` as `import_batch.filename` stores it: invisible characters escaped, cut to fit the column.

    A longer name keeps its start and its suffix around an ellipsis, because
    staff recognise a roster by its start and the reader picks the format by
    the suffix.
    """
    name = escape_invisible(filename)
    limit = MAX_FILENAME_LENGTH
    if len(name) <= limit:
        return name
    suffix = Path(name).suffix
    if len(suffix) >= limit // 2:
        suffix = ""
    return name[: limit - len(suffix) - 1] + "…" + suffix


def create_batch(
    stored_name: str, filename: str, *, exam: str | None, kind: str | None, actor: str, include_hidden: bool = False
) -> ImportBatch:
    """Record the stored upload `stored_name` as a batch awaiting preview and commit it.

    When the batch cannot be written, the upload file is deleted before the
    error propagates, so no roster is left in instance/uploads without a batch.
    """
    stored = upload_dir() / stored_name
    shown_name = display_filename(filename)
    try:
        batch = ImportBatch(
            filename=shown_name,
            stored_name=stored_name,
            sha256=file_sha256(stored),
            exam=exam,
            kind=kind,
            uploaded_by=actor,
            state="preview",
            include_hidden=include_hidden,
        )
        db.session.add(batch)
        db.session.flush()
        db.session.add(
            AuditEntry(actor=actor, action="batch.upload", target=f"batch:{batch.id}", detail={"filename": shown_name})
        )
        db.session.commit()
    except BaseException:
        db.session.rollback()
        stored.unlink(missing_ok=True)
        logger.error("Batch for upload %s not created, so the upload file was deleted", stored_name)
        raise
    logger.info("Roster %s uploaded by %s as batch %s", shown_name, actor, batch.id)
    return batch


def runs_in_background(batch: ImportBatch) -> bool:
    """Return whether previewing or confirming `batch` is too long for a web request."""
    limit_bytes = current_app.config.get("IMPORT_BACKGROUND_BYTES", DEFAULT_BACKGROUND_BYTES)
    limit_rows = current_app.config.get("IMPORT_BACKGROUND_ROWS", DEFAULT_BACKGROUND_ROWS)
    if batch.previewed_at is not None:
        return batch.imported_count + batch.changed_count > limit_rows
    return stored_path(batch).stat().st_size > limit_bytes


# --- Preview ------------------------------------------------------------


def preview(batch: ImportBatch, progress: ProgressFn | None = None) -> ImportPlan:
    """Judge every row of the batch's file into `batch_row` and commit."""
    _require_preview_state(batch, "预览")
    try:
        plan = plan_batch(batch, stored_path(batch), progress=progress or _quiet)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    logger.info("Batch %s previewed: %s", batch.id, plan.counts)
    return plan


def record_preview_failure(batch: ImportBatch, message: str, actor: str) -> Job:
    """Store why the batch's file cannot be previewed, as a failed preview job the batch page shows."""
    job = Job(
        kind="batch.preview", state=jobs.JOB_FAILED, created_by=actor, target=f"batch:{batch.id}",
        message=message, started_at=utcnow(), finished_at=utcnow(),
    )  # fmt: skip
    db.session.add(job)
    db.session.flush()
    batch.job_id = job.id
    db.session.commit()
    return job


def set_include_hidden(batch: ImportBatch, include_hidden: bool, actor: str) -> None:
    """Change whether hidden and filtered rows are imported; the preview must then run again."""
    _require_preview_state(batch, "修改")
    batch.include_hidden = include_hidden
    batch.previewed_at = None
    db.session.add(
        AuditEntry(actor=actor, action="batch.include_hidden", target=f"batch:{batch.id}", detail={"include": include_hidden})
    )
    db.session.commit()


def start_preview(batch: ImportBatch, actor: str) -> Job:
    """Preview the batch in a background job; the batch page polls its progress."""
    batch_id = batch.id

    def work(progress: jobs.Progress) -> str:
        target = db.session.get(ImportBatch, batch_id)
        preview(target, progress=_local(progress))
        return f"batch:{batch_id}"

    return _start(batch, "batch.preview", actor, work)


def _start(batch: ImportBatch, kind: str, actor: str, work) -> Job:
    job = jobs.create_job(kind, actor=actor, target=f"batch:{batch.id}")
    batch.job_id = job.id
    db.session.commit()
    jobs.start_job(job.id, work)
    return job


# --- Confirm and discard ------------------------------------------------


def confirm(
    batch: ImportBatch,
    *,
    apply_rows: Iterable[int] = (),
    apply_all_changes: bool = False,
    reject_unapplied_changes: bool = False,
    progress: ProgressFn | None = None,
) -> ImportPlan:
    """Write the previewed batch, checking the register again, all of it or none."""
    _require_preview_state(batch, "确认")
    if batch.previewed_at is None:
        preview(batch, progress)
    try:
        return apply_batch(
            batch,
            apply_rows=apply_rows,
            apply_all_changes=apply_all_changes,
            reject_unapplied_changes=reject_unapplied_changes,
            progress=progress or _quiet,
        )
    except IntegrityError as error:
        raise _concurrent_numbers(batch.id, error) from error


def _concurrent_numbers(batch_id: int | None, error: IntegrityError) -> RosterFileError:
    logger.warning("Batch %s failed to apply: %s", batch_id, error.__class__.__name__)
    return RosterFileError(
        f"批次 #{batch_id} 写入时发现证书编号已被其他批次同时导入，已全部撤回、未写入任何记录；请重新预览后再确认。"
    )


def start_confirm(batch: ImportBatch, actor: str, apply_rows: Iterable[int]) -> Job:
    """Confirm the batch in a background job."""
    batch_id = batch.id
    rows = sorted(set(apply_rows))

    def work(progress: jobs.Progress) -> str:
        target = db.session.get(ImportBatch, batch_id)
        confirm(target, apply_rows=rows, progress=_local(progress))
        return f"batch:{batch_id}"

    return _start(batch, "batch.confirm", actor, work)


def discard(batch: ImportBatch, actor: str) -> None:
    _require_preview_state(batch, "放弃")
    batch.state = "discarded"
    batch.discarded_at = utcnow()
    db.session.add(AuditEntry(actor=actor, action="batch.discard", target=f"batch:{batch.id}", detail={}))
    db.session.commit()


def _require_preview_state(batch: ImportBatch, action: str) -> None:
    if batch.state != "preview":
        label = _STATE_LABELS.get(batch.state, batch.state)
        if action == "确认":
            raise RosterFileError(f"批次 #{batch.id} 已{label}，不能再次确认。")
        raise RosterFileError(f"批次 #{batch.id} 已{label}，不能{action}。")


def import_file(
    path: Path,
    *,
    exam: str | None,
    kind: str | None,
    actor: str,
    dry_run: bool = False,
    apply_changes: bool = False,
    include_hidden: bool = False,
    progress: ProgressFn | None = None,
) -> tuple[ImportPlan, ImportBatch | None]:
    """Import a roster from the command line: store, preview and, unless `dry_run`, apply it.

    Rows that would change an existing record are applied only with
    `apply_changes`; otherwise they are reported as rejected with the
    difference. A dry run previews inside a transaction that is rolled back,
    so it leaves nothing behind; its batch is returned detached for the report.

    Otherwise planning writes each new certificate at once, and everything,
    from the batch row to the confirmation, is one transaction: a process
    killed part-way leaves no batch and no certificate behind.
    """
    stored_name = store_upload(path, path.name)
    stored = upload_dir() / stored_name
    filename = display_filename(path.name)
    batch = ImportBatch(
        filename=filename, stored_name=stored_name, sha256=file_sha256(stored), exam=exam, kind=kind,
        uploaded_by=actor, state="preview", include_hidden=include_hidden,
    )  # fmt: skip
    try:
        db.session.add(batch)
        db.session.flush()
        plan = plan_batch(batch, stored, progress=progress or _quiet, write_certificates=not dry_run)
        if dry_run:
            plan.report = report_csv(iter_batch_rows(batch.id))  # type: ignore[attr-defined]
            db.session.rollback()
            stored.unlink(missing_ok=True)
            return plan, None
        db.session.add(AuditEntry(actor=actor, action="batch.upload", target=f"batch:{batch.id}", detail={"filename": filename}))
        db.session.flush()
    except IntegrityError as error:
        db.session.rollback()
        stored.unlink(missing_ok=True)
        raise _concurrent_numbers(batch.id, error) from error
    except BaseException:
        db.session.rollback()
        stored.unlink(missing_ok=True)
        raise
    result = confirm(
        batch, apply_all_changes=apply_changes, reject_unapplied_changes=not apply_changes, progress=progress
    )
    result.earlier_batch_id = plan.earlier_batch_id
    return result, batch


# --- Reading a batch's rows ---------------------------------------------


def problem_rows(batch: ImportBatch, page: int) -> tuple[list[BatchRow], int]:
    """Return one page of the rows staff must look at (rejected, changed, hidden) and the number of pages."""
    condition = (BatchRow.batch_id == batch.id) & (
        BatchRow.outcome.in_([REJECTED, CHANGED]) | (BatchRow.hidden != "")
    )
    total = db.session.scalar(select(func.count(BatchRow.id)).where(condition)) or 0
    pages = max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1)
    page = min(max(page, 1), pages)
    rows = db.session.scalars(
        select(BatchRow).where(condition).order_by(BatchRow.row).offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE)
    ).all()
    return list(rows), pages


def rejected_identities(batch: ImportBatch, rows: Iterable[BatchRow]) -> dict[int, tuple[str, str]]:
    """Return (姓名, 证书编号) as written in the file for each rejected row of `rows` that has no record.

    A row rejected before a record was built stores only its raw cells, so
    the two columns are found by the batch's header labels, the way the
    importer recognises them.
    """
    columns: dict[str, int] = {}
    for index, label in enumerate(batch.header or []):
        field = HEADER_SYNONYMS.get(header_key(label)) if isinstance(label, str) else None
        if field in (NAME, NUMBER) and field not in columns:
            columns[field] = index
    identities = {}
    for row in rows:
        if row.outcome != REJECTED or not row.cells:
            continue
        identities[row.id] = (_cell_text(row.cells, columns.get(NAME)), _cell_text(row.cells, columns.get(NUMBER)))
    return identities


def _cell_text(cells: list, index: int | None) -> str:
    if index is None or index >= len(cells) or cells[index] is None:
        return ""
    value = cells[index]
    # Excel stores a typed certificate number as a float, such as 202421000001.0.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return escape_invisible(str(value))


def batch_report_csv(batch: ImportBatch) -> str:
    if batch.report_csv is not None and batch.previewed_at is None:
        return batch.report_csv  # a batch confirmed before rows were kept in batch_row
    return report_csv(iter_batch_rows(batch.id))


def rejected_xlsx(batch: ImportBatch) -> bytes:
    """Return the rejected rows as an XLSX: the file's header row plus 错误原因, one row per rejected row.

    Staff correct the cells and upload the workbook again. Cells keep their
    values as read, except that text starting with "=" gets a leading "'"
    and control characters XLSX cannot store are removed, which the
    错误原因 cell then says. Dates come back as ISO text, which the import reads.
    """
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("被拒绝的行")
    # Rosters wider than ROSTER_MAX_COLUMNS are rejected when read, so this guards only batches stored before that check.
    header = list(batch.header or [])[: XLSX_MAX_COLUMNS - 1]
    sheet.append([_xlsx_cell(label)[0] for label in header] + [REASON_COLUMN])
    width = len(header)
    for row in iter_batch_rows(batch.id, [REJECTED], (BatchRow.row, BatchRow.cells, BatchRow.reason)):
        cells = list(row.cells or [])[:width]
        cells += [None] * (width - len(cells))
        values = []
        cleaned = []
        for index, value in enumerate(cells):
            value, changed = _xlsx_cell(value)
            values.append(value)
            if changed:
                cleaned.append(column_letters(index))
        reason, _changed = _xlsx_cell(row.reason)
        if cleaned:
            reason = f"{reason}；（第 {'、'.join(cleaned)} 列的值含有 Excel 无法保存的控制字符，本文件中已删除这些字符）"
        sheet.append(values + [reason])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def _xlsx_cell(value: object) -> tuple[object, bool]:
    """Return a cell value openpyxl can write as plain data, and whether control characters were removed from it."""
    if not isinstance(value, str):
        return value, False
    cleaned = ILLEGAL_CHARACTERS_RE.sub("", value)
    changed = cleaned != value
    # openpyxl stores "=..." text as a formula, which must not come back to life in the fixed file.
    if cleaned.startswith("="):
        cleaned = "'" + cleaned
    return cleaned, changed


# --- Progress -----------------------------------------------------------

# Progress of jobs running in this process, for SQLite, where a job's open
# write transaction blocks the progress UPDATE from another connection.
# NOTE: on SQLite only the process running the job sees its progress; with
# PostgreSQL every worker reads it from the job table.
_local_progress: dict[int, tuple[int, int | None]] = {}
_local_lock = threading.Lock()


def _quiet(done: int, total: int | None = None, message: str | None = None) -> None:
    return None


def _local(progress: jobs.Progress) -> ProgressFn:
    """Wrap a job's Progress so this process always sees the live figure."""
    sqlite = db.engine.dialect.name == "sqlite"
    state: dict[str, int | None] = {"total": None}

    def report(done: int, total: int | None = None, message: str | None = None) -> None:
        if total is not None:
            state["total"] = total
        with _local_lock:
            _local_progress[progress.job_id] = (done, state["total"])
        if sqlite:
            return
        try:
            progress(done, total, message)
        except OperationalError:
            logger.warning("Progress of job %s not written: database busy", progress.job_id)

    return report


def job_progress(job: Job) -> tuple[int, int | None]:
    """Return (done, total) for a job, preferring this process's live figure."""
    with _local_lock:
        local = _local_progress.get(job.id)
    if local and job.state in (jobs.JOB_QUEUED, jobs.JOB_RUNNING) and local[0] >= (job.done or 0):
        return local
    return job.done or 0, job.total
