"""Import batches: store the upload, preview it, then confirm or discard it."""

from __future__ import annotations

import logging
import secrets
import shutil
from pathlib import Path

from flask import current_app
from sqlalchemy.exc import IntegrityError

from ..domain.roster import RosterFileError
from ..extensions import db
from ..models import AuditEntry, ImportBatch
from .issuing import ImportPlan, apply_import, file_sha256, plan_import

logger = logging.getLogger(__name__)

ALLOWED_SUFFIXES = {".xlsx", ".csv"}


def upload_dir() -> Path:
    path = Path(current_app.instance_path) / "uploads"
    path.mkdir(parents=True, exist_ok=True)
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
    if isinstance(source, bytes):
        target.write_bytes(source)
    else:
        shutil.copyfile(source, target)
    return stored_name


def create_batch(stored_name: str, filename: str, *, exam: str | None, kind: str | None, actor: str) -> ImportBatch:
    batch = ImportBatch(
        filename=filename,
        stored_name=stored_name,
        sha256=file_sha256(upload_dir() / stored_name),
        exam=exam,
        kind=kind,
        uploaded_by=actor,
        state="preview",
    )
    db.session.add(batch)
    db.session.add(AuditEntry(actor=actor, action="batch.upload", target=None, detail={"filename": filename}))
    db.session.commit()
    logger.info("Roster %s uploaded by %s as batch %s", filename, actor, batch.id)
    return batch


def preview(batch: ImportBatch) -> ImportPlan:
    return plan_import(stored_path(batch), filename=batch.filename, exam=batch.exam, kind=batch.kind)


def confirm(batch: ImportBatch) -> ImportPlan:
    """Plan the batch again against the register as it is now, then apply all of it or none."""
    if batch.state != "preview":
        raise RosterFileError(f"批次 #{batch.id} 已{_STATE_LABELS.get(batch.state, batch.state)}，不能再次确认。")
    plan = preview(batch)
    try:
        apply_import(plan, batch)
    except IntegrityError as error:
        logger.warning("Batch %s failed to apply: %s", batch.id, error.__class__.__name__)
        raise RosterFileError(
            f"批次 #{batch.id} 写入时发现证书编号已被其他批次同时导入，已全部撤回、未写入任何记录；请重新预览后再确认。"
        ) from error
    return plan


def discard(batch: ImportBatch, actor: str) -> None:
    if batch.state != "preview":
        raise RosterFileError(f"批次 #{batch.id} 已{_STATE_LABELS.get(batch.state, batch.state)}，不能放弃。")
    batch.state = "discarded"
    db.session.add(AuditEntry(actor=actor, action="batch.discard", target=f"batch:{batch.id}", detail={}))
    db.session.commit()


_STATE_LABELS = {"preview": "待确认", "confirmed": "确认导入", "discarded": "放弃"}


def import_file(
    path: Path, *, exam: str | None, kind: str | None, actor: str, dry_run: bool = False
) -> tuple[ImportPlan, ImportBatch | None]:
    """Import a roster from the command line: plan, and unless `dry_run`, store and apply it."""
    if dry_run:
        return plan_import(path, exam=exam, kind=kind), None

    plan_import(path, exam=exam, kind=kind)  # reject an unreadable file before storing it
    stored_name = store_upload(path, path.name)
    batch = create_batch(stored_name, path.name, exam=exam, kind=kind, actor=actor)
    return confirm(batch), batch
