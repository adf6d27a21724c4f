"""Issue certificates from a roster: plan every row against the register, then apply all or none."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

from sqlalchemy import insert, select

from ..domain.catalogue import Catalogue
from ..domain.identity import mask_id_number
from ..domain.roster import RecordData, RowOutcome, iter_outcomes
from ..extensions import db
from ..models import AuditEntry, Certificate, Exam, ImportBatch, Layout, Specialty, new_public_id, utcnow
from .catalogue import load_catalogue

logger = logging.getLogger(__name__)

IMPORTED = "imported"
REJECTED = "rejected"
SKIPPED = "skipped"

# Rows per query when comparing numbers with the register, and per INSERT batch.
CHUNK = 500


@dataclass
class ImportPlan:
    filename: str
    sha256: str
    outcomes: list[RowOutcome]
    # An earlier confirmed batch of the very same file, if any.
    earlier_batch_id: int | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = {IMPORTED: 0, REJECTED: 0, SKIPPED: 0}
        for outcome in self.outcomes:
            self.counts[outcome.outcome] += 1

    @property
    def accepted(self) -> list[RecordData]:
        return [o.record for o in self.outcomes if o.outcome == IMPORTED and o.record is not None]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plan_import(
    path: Path,
    *,
    filename: str | None = None,
    exam: str | None = None,
    kind: str | None = None,
    today: date | None = None,
    catalogue: Catalogue | None = None,
) -> ImportPlan:
    """Read a roster and decide every row's outcome without writing anything.

    Raises `RosterFileError` when the file itself cannot be read.
    """
    catalogue = catalogue or load_catalogue()
    filename = filename or path.name
    outcomes = list(iter_outcomes(path, catalogue, exam=exam, kind=kind, filename=filename, today=today))
    outcomes = compare_with_register(outcomes)

    sha256 = file_sha256(path)
    earlier = db.session.scalar(
        select(ImportBatch.id).where(ImportBatch.sha256 == sha256, ImportBatch.state == "confirmed").limit(1)
    )
    return ImportPlan(filename=filename, sha256=sha256, outcomes=outcomes, earlier_batch_id=earlier)


def compare_with_register(outcomes: list[RowOutcome]) -> list[RowOutcome]:
    """Skip rows already in the register and reject rows whose number belongs to another record."""
    accepted = [o for o in outcomes if o.outcome == IMPORTED and o.record is not None]
    existing = _existing_by_number(o.record.number for o in accepted)
    if not existing:
        return outcomes

    result = []
    for outcome in outcomes:
        stored = existing.get(outcome.record.number) if outcome.outcome == IMPORTED and outcome.record else None
        if stored is not None:
            outcome = _against_stored(outcome, stored)
        result.append(outcome)
    return result


def _existing_by_number(numbers: Iterable[str]) -> dict[str, Certificate]:
    numbers = list(numbers)
    found: dict[str, Certificate] = {}
    for start in range(0, len(numbers), CHUNK):
        chunk = numbers[start : start + CHUNK]
        for certificate in db.session.scalars(select(Certificate).where(Certificate.number.in_(chunk))):
            found[certificate.number] = certificate
    return found


def _against_stored(outcome: RowOutcome, stored: Certificate) -> RowOutcome:
    record = outcome.record
    if record_fingerprint(record) == stored_fingerprint(stored):
        return replace(outcome, outcome=SKIPPED, reason=f"证书编号「{record.number}」已在证书库中，内容相同，未重复导入")
    return replace(
        outcome,
        outcome=REJECTED,
        reason=(
            f"证书编号「{record.number}」已属于证书库中的另一条记录"
            f"（{stored.name}，{mask_id_number(stored.id_number)}），本行未导入；"
            "如需更正原记录，请在证书管理中修改"
        ),
    )


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


def apply_import(plan: ImportPlan, batch: ImportBatch, catalogue: Catalogue | None = None) -> None:
    """Write every accepted row of `plan` and confirm `batch`, in one transaction.

    On any database error nothing of the batch is left behind and the error propagates.
    """
    catalogue = catalogue or load_catalogue()
    try:
        rows = _certificate_rows(plan.accepted, catalogue, batch)
        for start in range(0, len(rows), CHUNK):
            db.session.execute(insert(Certificate), rows[start : start + CHUNK])

        batch.state = "confirmed"
        batch.confirmed_at = utcnow()
        batch.imported_count = plan.counts[IMPORTED]
        batch.rejected_count = plan.counts[REJECTED]
        batch.skipped_count = plan.counts[SKIPPED]
        batch.report_csv = report_csv(plan.outcomes)
        db.session.add(_audit_entry(batch))
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    logger.info("Batch %s (%s) confirmed by %s: %s", batch.id, batch.filename, batch.uploaded_by, plan.counts)


def _certificate_rows(records: list[RecordData], catalogue: Catalogue, batch: ImportBatch) -> list[dict]:
    exam_ids = dict(db.session.execute(select(Exam.name, Exam.id)).all())
    specialty_ids = {
        (exam_id, name): specialty_id
        for specialty_id, exam_id, name in db.session.execute(select(Specialty.id, Specialty.exam_id, Specialty.name))
    }
    layout_ids = _layout_ids()
    now = utcnow()

    rows = []
    for record in records:
        exam_id = exam_ids[record.exam]
        layout = catalogue.layout_for(record.exam, record.kind, record.specialty)
        rows.append(
            {
                "public_id": new_public_id(),
                "number": record.number,
                "kind": record.kind,
                "exam_id": exam_id,
                "specialty_id": specialty_ids[(exam_id, record.specialty)],
                "layout_id": layout_ids[layout.code],
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
        )
    return rows


def _layout_ids() -> dict[str, int]:
    return dict(db.session.execute(select(Layout.code, Layout.id)).all())


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
        },
    )


def report_csv(outcomes: Iterable[RowOutcome]) -> str:
    """Return the per-row report: `row,outcome,reason`, rows numbered as the spreadsheet numbers them."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["row", "outcome", "reason"])
    for outcome in outcomes:
        writer.writerow([outcome.row, outcome.outcome, _safe_cell(outcome.reason)])
    return buffer.getvalue()


def _safe_cell(text: str) -> str:
    # A reason may quote a cell that starts with "=", which a spreadsheet would run as a formula.
    if text and text[0] in "=+-@\t\r":
        return "'" + text
    return text
