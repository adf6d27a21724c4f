"""Exports: ZIPs of every certificate PDF in an import batch (background jobs) and the audit log as CSV or XLSX.

The audit-log exports stream: entries are read AUDIT_CHUNK at a time and
written out at once, so memory stays flat however many entries match.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from flask import current_app
from openpyxl import Workbook
from sqlalchemy import select

from ..domain.documents import MissingGlyphError
from ..extensions import db
from ..models import AuditEntry, Certificate, ImportBatch, Job
from . import audit
from .certificates import certificate_pdf
from .jobs import ACTIVE_STATES, Progress, create_job, get_job, start_job

logger = logging.getLogger(__name__)

EXPORT_DIR = "exports"  # under the instance folder
JOB_KIND = "batch_zip"
SKIPPED_LIST = "未生成的证书.txt"
PROGRESS_EVERY = 10  # certificates between progress writes
DEFAULT_MAX_CONCURRENT = 2

# Export jobs whose threads run in this process, and the lock that makes checking and starting one step.
_running: set[int] = set()
_running_lock = threading.Lock()


class ExportBusyError(Exception):
    """Raised when EXPORT_MAX_CONCURRENT exports already run in this process; the message names the limit and that staff should retry later."""


def export_path(file_name: str) -> Path:
    return Path(current_app.instance_path) / EXPORT_DIR / file_name


def start_batch_export(batch: ImportBatch, *, actor: str) -> tuple[Job, bool]:
    """Start a job that writes every certificate of `batch` into a ZIP, and return the job and whether it is new.

    An export of the batch that is still queued or running is returned
    instead of starting another. Raises ExportBusyError when
    EXPORT_MAX_CONCURRENT exports already run in this process.
    NOTE: the check and the start are atomic only within one process, so two
    web workers may still start one export each at the same moment.
    """
    limit = current_app.config.get("EXPORT_MAX_CONCURRENT", DEFAULT_MAX_CONCURRENT)
    with _running_lock:
        running = running_export(batch.id)
        if running is not None:
            logger.info("ZIP export of batch %s already runs as job %s; %s gets its progress", batch.id, running.id, actor)
            return running, False
        if len(_running) >= limit:
            logger.warning("ZIP export of batch %s for %s rejected: %s exports running", batch.id, actor, len(_running))
            raise ExportBusyError(
                f"当前已有 {len(_running)} 个证书导出任务在运行，达到同时导出的上限 {limit} 个；"
                f"请等其中一个完成后再导出批次 #{batch.id}。"
            )
        job = create_job(JOB_KIND, actor=actor, target=f"batch:{batch.id}")
        _running.add(job.id)
    batch_id, job_id = batch.id, job.id

    def work(progress: Progress) -> str:
        try:
            return build_batch_zip(batch_id, job_id, progress)
        finally:
            with _running_lock:
                _running.discard(job_id)

    try:
        start_job(job_id, work)
    except BaseException:
        with _running_lock:
            _running.discard(job_id)
        raise
    logger.info("started ZIP export job %s of batch %s for %s", job_id, batch_id, actor)
    return job, True


def running_export(batch_id: int) -> Job | None:
    """Return the latest queued or running export job of the batch, or None. Interrupted jobs do not count."""
    job_id = db.session.scalar(
        select(Job.id)
        .where(Job.kind == JOB_KIND, Job.target == f"batch:{batch_id}", Job.state.in_(ACTIVE_STATES))
        .order_by(Job.id.desc())
        .limit(1)
    )
    job = get_job(job_id) if job_id is not None else None
    return job if job is not None and job.state in ACTIVE_STATES else None


def build_batch_zip(batch_id: int, job_id: int, progress: Progress) -> str:
    """Write the signed PDFs of batch `batch_id` to instance/exports/; return the file name."""
    ids = db.session.scalars(
        select(Certificate.id).where(Certificate.batch_id == batch_id).order_by(Certificate.number)
    ).all()
    total = len(ids)
    progress(0, total, f"0/{total}")
    file_name = f"batch-{batch_id}-job-{job_id}.zip"
    target = export_path(file_name)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{file_name}.{os.getpid()}.tmp")
    # PDFs are already compressed, so the archive only stores them.
    skipped: list[str] = []
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
        for done, certificate_id in enumerate(ids, start=1):
            certificate = db.session.get(Certificate, certificate_id)
            try:
                archive.writestr(f"{certificate.number}.pdf", certificate_pdf(certificate))
            except MissingGlyphError as error:
                logger.error("ZIP export job %s skipped certificate %s: %s", job_id, certificate.number, error)
                skipped.append(f"{certificate.number}：{error}")
            db.session.expunge_all()  # keeps memory flat over thousands of records
            if done % PROGRESS_EVERY == 0 or done == total:
                progress(done, total, f"{done}/{total}")
        if skipped:
            archive.writestr(SKIPPED_LIST, "\n".join(["以下证书含有字体无法显示的字符，未生成 PDF，请更正姓名等信息后重新导出：", *skipped]) + "\n")
    partial.replace(target)
    logger.info("ZIP export job %s wrote %s certificates of batch %s", job_id, total, batch_id)
    return file_name


# --- Audit log ----------------------------------------------------------

# Entries read per query while exporting.
AUDIT_CHUNK = 1000


def iter_audit_rows(criteria: audit.AuditFilter) -> Iterator[list[str]]:
    """Yield the header, then one row per matching entry (newest first, at most audit.EXPORT_LIMIT).

    Every cell goes through `audit.safe_cell`, so no cell starts a formula.
    """
    yield audit.EXPORT_HEADER
    # Plain columns instead of AuditEntry objects: the rows are only read, and objects took 30 % more CPU (20,000 entries).
    query = (
        audit.filtered_query(criteria)
        .with_only_columns(*_AUDIT_COLUMNS)
        .limit(audit.EXPORT_LIMIT)
        .execution_options(yield_per=AUDIT_CHUNK)
    )
    result = db.session.execute(query)
    try:
        for entry in result:
            yield [audit.safe_cell(cell) for cell in _audit_cells(entry)]
    finally:
        # A client that disconnects mid-download closes this generator, and PostgreSQL's server-side cursor with it.
        result.close()


_AUDIT_COLUMNS = (
    AuditEntry.at, AuditEntry.actor, AuditEntry.action, AuditEntry.target,
    AuditEntry.detail, AuditEntry.before, AuditEntry.after,
)  # fmt: skip


def _audit_cells(entry) -> list[str]:
    return [
        audit.local_time(entry.at).strftime("%Y-%m-%d %H:%M:%S"),
        entry.actor,
        audit.ACTION_LABELS.get(entry.action, entry.action),
        entry.action,
        entry.target or "",
        _json_cell(entry.detail),
        _json_cell(entry.before),
        _json_cell(entry.after),
    ]


def _json_cell(value: dict | None) -> str:
    return audit._json_text(value)  # noqa: SLF001 - the same text as the audit page shows


def audit_csv_chunks(criteria: audit.AuditFilter) -> Iterator[str]:
    """Yield the CSV export in pieces of AUDIT_CHUNK rows, starting with a BOM so Excel reads UTF-8."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    buffer.write("\ufeff")
    for count, row in enumerate(iter_audit_rows(criteria), start=1):
        writer.writerow(row)
        if count % AUDIT_CHUNK == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def write_audit_xlsx(criteria: audit.AuditFilter, target: IO[bytes]) -> None:
    """Write the XLSX export to `target` with openpyxl's write-only mode, which keeps no rows in memory."""
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("审计日志")
    for row in iter_audit_rows(criteria):
        # openpyxl stores text starting with "=" as a formula; safe_cell has prefixed every such cell.
        sheet.append(row)
    workbook.save(target)


def audit_xlsx_bytes(criteria: audit.AuditFilter) -> bytes:
    """Return the XLSX export as bytes.

    Only the compressed file is held in memory (3.6 MB for 100,000 entries,
    the export limit): the write-only worksheet spools its rows to a
    temporary file until the workbook is saved.
    """
    buffer = io.BytesIO()
    write_audit_xlsx(criteria, buffer)
    return buffer.getvalue()
