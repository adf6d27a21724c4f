"""ZIP exports of every certificate PDF in an import batch, built as background jobs."""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

from flask import current_app
from sqlalchemy import select

from ..domain.documents import MissingGlyphError
from ..extensions import db
from ..models import Certificate, ImportBatch, Job
from .certificates import certificate_pdf
from .jobs import Progress, create_job, start_job

logger = logging.getLogger(__name__)

EXPORT_DIR = "exports"  # under the instance folder
JOB_KIND = "batch_zip"
SKIPPED_LIST = "未生成的证书.txt"
PROGRESS_EVERY = 10  # certificates between progress writes


def export_path(file_name: str) -> Path:
    return Path(current_app.instance_path) / EXPORT_DIR / file_name


def start_batch_export(batch: ImportBatch, *, actor: str) -> Job:
    """Create a job that writes every certificate of `batch` into a ZIP, and start it in a thread."""
    job = create_job(JOB_KIND, actor=actor, target=f"batch:{batch.id}")
    batch_id, job_id = batch.id, job.id
    start_job(job_id, lambda progress: build_batch_zip(batch_id, job_id, progress))
    logger.info("started ZIP export job %s of batch %s for %s", job_id, batch_id, actor)
    return job


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
