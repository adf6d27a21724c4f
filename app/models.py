"""Database models: the catalogue, certificates, accounts, import batches, audit."""

from __future__ import annotations

import secrets
from datetime import date, datetime, timezone

from flask_login import UserMixin
from sqlalchemy import JSON, CheckConstraint, Date, DateTime, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from .extensions import db

STATUS_VALID = "valid"
STATUS_REVOKED = "revoked"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_public_id() -> str:
    """Return an opaque certificate identifier for QR tokens (no personal data)."""
    return secrets.token_urlsafe(12)


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
    id_number: Mapped[str] = mapped_column(String(32))
    phone: Mapped[str] = mapped_column(String(20), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    consented_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # privacy notice accepted
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("id_type", "id_number"),)

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
    report_csv: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (CheckConstraint("state IN ('preview', 'confirmed', 'discarded')", name="state"),)


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
    id_number: Mapped[str] = mapped_column(String(32))
    birth_month: Mapped[date] = mapped_column(Date)  # first day of the month
    approval_date: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(20), default=STATUS_VALID)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoke_reason: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(default=1)  # bumped by each correction
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
        Index("ix_certificate_holder", "id_number", "name"),
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
