"""Database models: the catalogue, certificates, accounts, import batches, audit."""

from __future__ import annotations

import base64
import secrets
from datetime import date, datetime, timezone

from flask_login import UserMixin
from sqlalchemy import JSON, event, CheckConstraint, Date, DateTime, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy import false as sa_false
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates
from werkzeug.security import check_password_hash, generate_password_hash

from .extensions import db
from .id_numbers import EncryptedIdNumber, EncryptedJSON, EncryptedText, hash_default, id_hash, mask_id_numbers

STATUS_VALID = "valid"
STATUS_REVOKED = "revoked"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_session_version() -> int:
    """Return a random first session version for a new account.

    SQLite reuses the id of the last deleted row, so a new account can get a
    deleted account's id. A random start keeps that account's old cookies,
    which carry its id and version, from matching the new one.
    """
    return secrets.randbelow(2**30) + 1


def new_public_id() -> str:
    """Return an opaque certificate identifier for QR tokens (no personal data)."""
    return secrets.token_urlsafe(12)


def new_public_ids(count: int) -> list[str]:
    """Return `count` identifiers made as `new_public_id` makes one, from a single read of the OS random source."""
    raw = secrets.token_bytes(12 * count)
    return [
        base64.urlsafe_b64encode(raw[start : start + 12]).rstrip(b"=").decode("ascii") for start in range(0, len(raw), 12)
    ]


class Seal(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)  # 印章编码
    name: Mapped[str] = mapped_column(String(100))  # 印章名称
    # Path of the official image relative to the instance folder; NULL draws the 样章 specimen.
    image_path: Mapped[str | None] = mapped_column(String(255))


class DocumentKind(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(50))
    issuer: Mapped[str] = mapped_column(String(100))
    seal_id: Mapped[int] = mapped_column(ForeignKey("seal.id"))

    seal: Mapped[Seal] = relationship()


class Layout(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(50), unique=True)  # also the template name
    name: Mapped[str] = mapped_column(String(100))
    title: Mapped[str] = mapped_column(String(100))
    document_kind_id: Mapped[int] = mapped_column(ForeignKey("document_kind.id"))
    co_issuers: Mapped[list] = mapped_column(JSON, default=list)
    statement: Mapped[str] = mapped_column(Text, default="")

    document_kind: Mapped[DocumentKind] = relationship()


class Exam(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    category: Mapped[str] = mapped_column(String(20))  # qualification or title
    levels: Mapped[list] = mapped_column(JSON, default=list)  # 级别, title exams only
    certificate_layout_id: Mapped[int] = mapped_column(ForeignKey("layout.id"))
    pass_layout_id: Mapped[int] = mapped_column(ForeignKey("layout.id"))

    certificate_layout: Mapped[Layout] = relationship(foreign_keys=[certificate_layout_id])
    pass_layout: Mapped[Layout] = relationship(foreign_keys=[pass_layout_id])
    specialties: Mapped[list[Specialty]] = relationship(back_populates="exam", order_by="Specialty.id")

    __table_args__ = (CheckConstraint("category IN ('qualification', 'title')", name="category"),)


class Specialty(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    exam_id: Mapped[int] = mapped_column(ForeignKey("exam.id"))
    name: Mapped[str] = mapped_column(String(50))
    # Overrides the exam's certificate layout for a co-issued group of specialties.
    certificate_layout_id: Mapped[int | None] = mapped_column(ForeignKey("layout.id"))

    exam: Mapped[Exam] = relationship(back_populates="specialties")
    certificate_layout: Mapped[Layout | None] = relationship()

    __table_args__ = (UniqueConstraint("exam_id", "name"),)


class StaffUser(UserMixin, db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(50), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Base32 TOTP secret; NULL until the second factor is enrolled at the first login.
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    # Time step (Unix time // 30) of the last accepted TOTP code; a code of this step or an earlier one is refused.
    totp_last_step: Mapped[int | None] = mapped_column()
    # Bumped by logout and password changes; sessions carrying an older value are ended.
    session_version: Mapped[int] = mapped_column(default=new_session_version, server_default="1")

    __table_args__ = (CheckConstraint("role IN ('admin', 'operator', 'auditor')", name="role"),)

    is_staff = True

    def get_id(self) -> str:
        return f"staff:{self.id}"

    @property
    def is_active(self) -> bool:
        return self.active

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)


class Holder(UserMixin, db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    id_type: Mapped[str] = mapped_column(String(20))
    # Encrypted at rest (ID_NUMBER_KEY); look holders up by id_number_hash, never by this column.
    id_number: Mapped[str] = mapped_column(EncryptedIdNumber)
    id_number_hash: Mapped[str] = mapped_column(String(64), index=True, default=hash_default)  # HMAC, ID_HASH_KEY
    phone: Mapped[str] = mapped_column(String(20), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    consented_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # privacy notice accepted
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Bumped by logout and password changes; sessions carrying an older value are ended.
    session_version: Mapped[int] = mapped_column(default=new_session_version, server_default="1")

    __table_args__ = (UniqueConstraint("id_type", "id_number_hash"),)

    is_staff = False

    def get_id(self) -> str:
        return f"holder:{self.id}"

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)


class ImportBatch(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    filename: Mapped[str] = mapped_column(String(255))  # as uploaded, shown to staff only
    stored_name: Mapped[str] = mapped_column(String(64))  # generated name under instance/uploads/
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    exam: Mapped[str | None] = mapped_column(String(50))  # chosen by staff where the file is silent
    kind: Mapped[str | None] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(20), default="preview")
    uploaded_by: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    imported_count: Mapped[int] = mapped_column(default=0)
    rejected_count: Mapped[int] = mapped_column(default=0)
    skipped_count: Mapped[int] = mapped_column(default=0)
    # Batches confirmed before batch_row existed; encrypted, because reasons may quote an ID number.
    report_csv: Mapped[str | None] = mapped_column(EncryptedText("import_batch.report_csv"))
    # Rows that would change an existing record of the same person; applied only when staff tick them.
    changed_count: Mapped[int] = mapped_column(default=0, server_default="0")
    applied_count: Mapped[int] = mapped_column(default=0, server_default="0")  # changes applied at confirm
    hidden_count: Mapped[int] = mapped_column(default=0, server_default="0")  # rows hidden or filtered in Excel
    include_hidden: Mapped[bool] = mapped_column(default=False, server_default=sa_false())
    header: Mapped[list | None] = mapped_column(JSON)  # header cells as written, for the rejected-rows workbook
    notices: Mapped[list | None] = mapped_column(JSON)  # file-level warnings such as hidden worksheets
    previewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # set when batch_row is filled
    discarded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("job.id", ondelete="SET NULL"))  # latest preview/confirm job

    __table_args__ = (CheckConstraint("state IN ('preview', 'confirmed', 'discarded')", name="state"),)


class BatchRow(db.Model):
    """One spreadsheet row of a batch's preview: its outcome and what confirming does with it.

    Outcomes are those of `roster.py` plus "changed": the row's certificate
    number belongs to a stored record of the same person with other content.
    """

    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("import_batch.id", ondelete="CASCADE"))
    row: Mapped[int] = mapped_column()  # spreadsheet row number
    outcome: Mapped[str] = mapped_column(String(20))
    # record, cells, changes and reason hold ID numbers, so each is encrypted with ID_NUMBER_KEY (app/id_numbers.py).
    reason: Mapped[str] = mapped_column(EncryptedText("batch_row.reason"), default="")
    hidden: Mapped[str] = mapped_column(String(10), default="")  # "", "hidden" or "filtered"
    number: Mapped[str | None] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(50))
    record: Mapped[dict | None] = mapped_column(EncryptedJSON("batch_row.record"))  # RecordData, dates as ISO text; imported and changed rows
    cells: Mapped[list | None] = mapped_column(EncryptedJSON("batch_row.cells"))  # raw cells of a rejected row, for the rejected-rows workbook
    changes: Mapped[dict | None] = mapped_column(EncryptedJSON("batch_row.changes"))  # field -> [stored, new] for a changed row
    certificate_id: Mapped[int | None] = mapped_column(ForeignKey("certificate.id", ondelete="SET NULL"))
    applied: Mapped[bool] = mapped_column(default=False)  # a changed row that confirm applied

    __table_args__ = (
        CheckConstraint("outcome IN ('imported', 'rejected', 'skipped', 'changed')", name="outcome"),
        UniqueConstraint("batch_id", "row"),
        Index("ix_batch_row_batch_outcome", "batch_id", "outcome", "row"),
    )


class Certificate(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)
    number: Mapped[str] = mapped_column(String(32), unique=True)
    kind: Mapped[str] = mapped_column(String(20))  # certificate or pass
    exam_id: Mapped[int] = mapped_column(ForeignKey("exam.id"))
    specialty_id: Mapped[int] = mapped_column(ForeignKey("specialty.id"))
    layout_id: Mapped[int] = mapped_column(ForeignKey("layout.id"))
    level: Mapped[str | None] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(50), index=True)
    gender: Mapped[str] = mapped_column(String(2))
    id_type: Mapped[str] = mapped_column(String(20))
    # Encrypted at rest (ID_NUMBER_KEY); equality lookups use id_number_hash.
    id_number: Mapped[str] = mapped_column(EncryptedIdNumber)
    id_number_hash: Mapped[str] = mapped_column(String(64), default=hash_default)  # HMAC, ID_HASH_KEY
    birth_month: Mapped[date] = mapped_column(Date)  # first day of the month
    approval_date: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(20), default=STATUS_VALID)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoke_reason: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(default=1)  # bumped by each correction
    corrected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # latest correction
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("import_batch.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    exam: Mapped[Exam] = relationship()
    specialty: Mapped[Specialty] = relationship()
    layout: Mapped[Layout] = relationship()

    __table_args__ = (
        CheckConstraint("kind IN ('certificate', 'pass')", name="kind"),
        CheckConstraint("status IN ('valid', 'revoked')", name="status"),
        CheckConstraint("gender IN ('男', '女')", name="gender"),
        Index("ix_certificate_holder", "id_number_hash", "name"),
    )


class Job(db.Model):
    """A background task (large import, ZIP export) and its progress, polled by the pages that started it."""

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(30))
    state: Mapped[str] = mapped_column(String(20), default="queued")
    target: Mapped[str | None] = mapped_column(String(100))  # e.g. "batch:12"
    done: Mapped[int] = mapped_column(default=0)
    total: Mapped[int | None] = mapped_column()
    message: Mapped[str | None] = mapped_column(Text)  # shown to staff: progress note or failure reason
    result: Mapped[str | None] = mapped_column(String(255))  # e.g. a file name under instance/
    created_by: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Latest progress write of a running job; a job silent for JOB_STALE_SECONDS counts as interrupted.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (CheckConstraint("state IN ('queued', 'running', 'done', 'failed')", name="state"),)


class AuditEntry(db.Model):
    """One staff action. Rows are only ever inserted."""

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(50))
    action: Mapped[str] = mapped_column(String(50))
    target: Mapped[str | None] = mapped_column(String(100))
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    # Field values of the target before and after a change; NULL for actions that change no record.
    before: Mapped[dict | None] = mapped_column(JSON)
    after: Mapped[dict | None] = mapped_column(JSON)

    @validates("detail", "before", "after")
    def _mask_id_numbers(self, _key: str, value):
        # Kept in clear and never updated, so no whole ID number goes in and a key rotation need not touch it.
        return mask_id_numbers(value)


class CertificateVersion(db.Model):
    """A certificate's fields as they were before a correction replaced them."""

    id: Mapped[int] = mapped_column(primary_key=True)
    certificate_id: Mapped[int] = mapped_column(ForeignKey("certificate.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column()  # the Certificate.version these fields belonged to
    # Snapshot of the correctable fields, dates as ISO strings (see services.records.snapshot),
    # without the ID number, which is kept encrypted in its own column.
    fields: Mapped[dict] = mapped_column(JSON)
    id_number: Mapped[str] = mapped_column(EncryptedIdNumber)
    corrected_by: Mapped[str] = mapped_column(String(50))
    corrected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    reason: Mapped[str] = mapped_column(Text)

    __table_args__ = (UniqueConstraint("certificate_id", "version"),)

    @validates("fields")
    def _move_id_number(self, _key: str, fields: dict) -> dict:
        # Callers may pass a whole snapshot; its ID number goes to the encrypted column, never into JSON.
        if "id_number" in fields:
            fields = dict(fields)
            self.id_number = fields.pop("id_number")
        return fields


class LookupEvent(db.Model):
    """One public lookup, counted for statistics. It contains no personal data and no address."""

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    day: Mapped[date] = mapped_column(Date, index=True)  # local date (BABEL_DEFAULT_TIMEZONE) of `at`
    channel: Mapped[str] = mapped_column(String(10))
    result: Mapped[str] = mapped_column(String(10))

    __table_args__ = (
        CheckConstraint("channel IN ('form', 'qr', 'api', 'file')", name="channel"),
        CheckConstraint("result IN ('valid', 'revoked', 'not_found')", name="result"),
    )


class DownloadEvent(db.Model):
    """One PDF download by a holder, counted for statistics."""

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    day: Mapped[date] = mapped_column(Date, index=True)  # local date (BABEL_DEFAULT_TIMEZONE) of `at`
    certificate_id: Mapped[int] = mapped_column(ForeignKey("certificate.id", ondelete="CASCADE"), index=True)


class LoginThrottle(db.Model):
    """Failed logins counted per account or per address, and the lock they lead to.

    `key` is an HMAC of "account:<kind>:<login>" or "address:<ip>", so the table
    holds no ID number or address in clear.
    """

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    failures: Mapped[int] = mapped_column(default=0)
    window_started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PasswordResetCode(db.Model):
    """A one-time code sent to a holder's mobile number to set a new password."""

    id: Mapped[int] = mapped_column(primary_key=True)
    holder_id: Mapped[int] = mapped_column(ForeignKey("holder.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64))  # HMAC-SHA256 of the code, never the code
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(default=0)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


@event.listens_for(Holder.id_number, "set")
@event.listens_for(Certificate.id_number, "set")
def _keep_id_number_hash(target, value, _old, _initiator) -> None:
    """Recompute the lookup hash whenever an ID number is assigned through the ORM."""
    target.id_number_hash = id_hash(value) if value is not None else None
