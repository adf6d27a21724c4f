"""The one certificate lookup behind /verify, /v/<token> and the JSON API."""

from __future__ import annotations

import hmac
import logging
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime
from typing import NamedTuple

from sqlalchemy import String, bindparam, select, type_coerce
from sqlalchemy.orm import joinedload

from ..domain.identity import mask_id_number
from ..domain.roster import normalise_name
from ..extensions import db
from ..id_numbers import id_hash
from ..models import STATUS_REVOKED, Certificate, DocumentKind, Exam, Layout, Specialty

logger = logging.getLogger(__name__)

VALID = "valid"
REVOKED = "revoked"
NOT_FOUND = "not_found"


@dataclass(frozen=True)
class CertificateView:
    """The fields a public lookup may show, with personal data masked."""

    number: str
    name: str
    masked_id_number: str
    document_kind: str
    exam: str
    specialty: str
    level: str | None
    approval_date: date
    issuer: str
    status: str
    revoked_at: datetime | None
    corrected_at: datetime | None = None  # set once staff have corrected the record

    def as_json(self) -> dict:
        return {
            "number": self.number,
            "name": self.name,
            "id_number": self.masked_id_number,
            "document_kind": self.document_kind,
            "exam": self.exam,
            "specialty": self.specialty,
            "level": self.level,
            "approval_date": self.approval_date.isoformat(),
            "issuer": self.issuer,
            "status": self.status,
            "revoked_at": self.revoked_at.date().isoformat() if self.revoked_at else None,
            "corrected_at": self.corrected_at.date().isoformat() if self.corrected_at else None,
        }


@dataclass(frozen=True)
class LookupResult:
    result: str  # VALID, REVOKED or NOT_FOUND
    certificate: CertificateView | None = None

    def as_json(self) -> dict:
        return {"result": self.result, "certificate": self.certificate.as_json() if self.certificate else None}


def normalise_number(value: str) -> str:
    """Fold full-width forms, drop whitespace and upper-case a typed certificate number."""
    folded = unicodedata.normalize("NFKC", value or "")
    # Drop spaces and invisible format characters (zero-width space, soft hyphen) pasted along with the number.
    return "".join(c for c in folded if not c.isspace() and unicodedata.category(c) != "Cf").upper()


def _query():
    return select(Certificate).options(
        joinedload(Certificate.exam),
        joinedload(Certificate.specialty),
        joinedload(Certificate.layout).joinedload(Layout.document_kind),
    )


class _LookupRow(NamedTuple):
    """One row of the lookup SELECT, in the order of its columns."""

    number: str
    name: str
    id_number_ciphertext: str
    level: str | None
    approval_date: date
    status: str
    revoked_at: datetime | None
    corrected_at: datetime | None
    exam: str
    specialty: str
    document_kind: str
    issuer: str


# The public lookup reads one row: the certificate's public columns joined with
# the names of its catalogue rows, in one SELECT, with no ORM objects. The
# statements are built once, so SQLAlchemy compiles each once per process.
# The ID number comes back as stored (ciphertext) and is decrypted only for a
# match, so a wrong name costs the same as an unknown number.
_id_number_type = Certificate.__table__.c.id_number.type
_LOOKUP_COLUMNS = select(
    Certificate.number,
    Certificate.name,
    type_coerce(Certificate.id_number, String).label("id_number_ciphertext"),
    Certificate.level,
    Certificate.approval_date,
    Certificate.status,
    Certificate.revoked_at,
    Certificate.corrected_at,
    Exam.name.label("exam"),
    Specialty.name.label("specialty"),
    DocumentKind.name.label("document_kind"),
    DocumentKind.issuer,
).select_from(
    Certificate.__table__.join(Exam.__table__, Exam.id == Certificate.exam_id)
    .join(Specialty.__table__, Specialty.id == Certificate.specialty_id)
    .join(Layout.__table__, Layout.id == Certificate.layout_id)
    .join(DocumentKind.__table__, DocumentKind.id == Layout.document_kind_id)
)
_BY_NUMBER = _LOOKUP_COLUMNS.where(Certificate.number == bindparam("key"))
_BY_PUBLIC_ID = _LOOKUP_COLUMNS.where(Certificate.public_id == bindparam("key"))
# SQL text of each statement for PostgreSQL, compiled on first use.
_postgresql_sql: dict[int, str] = {}


def lookup_engine():
    """Return the engine anonymous lookups read: the LOOKUP_DATABASE_URL replica when set, else the primary."""
    return db.engines.get("lookup") or db.engine


def _fetch(statement, key: str) -> _LookupRow | None:
    """Run one lookup SELECT with `key` as its parameter and return the row, or None."""
    engine = lookup_engine()
    if engine.dialect.name == "postgresql":
        row = _fetch_postgresql(engine, statement, key)
    else:
        with engine.connect() as connection:
            row = connection.execute(statement, {"key": key}).first()
    return _LookupRow._make(row) if row is not None else None


def _fetch_postgresql(engine, statement, key: str) -> tuple | None:
    """Run the SELECT through the driver's cursor on the lookup engine, whose pooled connections stay in autocommit.

    Autocommit makes the lookup one round trip instead of three (BEGIN, the
    SELECT, and the ROLLBACK at the end). A single SELECT reads one snapshot
    in any mode and returns the latest committed row, so a revocation or
    correction shows at once. The driver's cursor skips SQLAlchemy's result
    handling, which has nothing to convert here, because psycopg already
    returns dates, aware datetimes and text. The "lookup" bind (create_app)
    is an engine of its own with `isolation_level="AUTOCOMMIT"` and no reset
    on return, so its pool hands out connections that need no switching.
    When the server has closed the connections (a restart, an idle timeout),
    the pool is replaced and the SELECT runs once more; it changes nothing,
    so running it twice is safe. Measured on the 2-core benchmark VM
    (bench/throughput.py's database), the lookup took about 90 µs of CPU
    through the driver's cursor and 240 µs through a SQLAlchemy Connection.
    """
    sql = _postgresql_sql.get(id(statement))
    if sql is None:
        sql = _postgresql_sql[id(statement)] = statement.compile(dialect=engine.dialect).string
    for attempt in (1, 2):
        pooled = engine.raw_connection()
        try:
            # One cursor per pooled connection, kept in the pool's per-connection info, so it closes with it.
            cursor = pooled.info.get("lookup_cursor")
            if cursor is None:
                cursor = pooled.info["lookup_cursor"] = pooled.driver_connection.cursor()
            cursor.execute(sql, {"key": key})
            return cursor.fetchone()
        except engine.dialect.loaded_dbapi.Error as error:
            if attempt == 2 or not engine.dialect.is_disconnect(error, pooled.dbapi_connection, None):
                raise
            logger.warning("Lookup connection lost (%s); reconnecting and retrying once", type(error).__name__)
            pooled.invalidate(error)
            # The server has most likely closed the pool's other connections too.
            engine.dispose()
        finally:
            pooled.close()
    raise AssertionError("unreachable")


def verify(number: str, name: str) -> LookupResult:
    """Look a certificate up by number and name.

    A wrong name returns exactly the result an unknown number returns, so the
    form cannot be used to learn which numbers exist.
    """
    number = normalise_number(number)
    name = normalise_name(name or "")
    # PostgreSQL rejects NUL in text, so such input never reaches the query.
    if not number or not name or len(number) > 32 or len(name) > 60 or "\x00" in number + name:
        return LookupResult(NOT_FOUND)

    row = _fetch(_BY_NUMBER, number)
    stored_name = row.name if row is not None else ""
    # Compare even when nothing was found, so both paths cost the same.
    # Latin names match whatever their case (SMITH JOHN, Smith John).
    if not hmac.compare_digest(stored_name.casefold().encode(), name.casefold().encode()) or row is None:
        return LookupResult(NOT_FOUND)
    return _result_of_row(row)


def by_public_id(public_id: str) -> LookupResult:
    row = _fetch(_BY_PUBLIC_ID, public_id)
    if row is None:
        return LookupResult(NOT_FOUND)
    return _result_of_row(row)


def _result_of_row(row: _LookupRow) -> LookupResult:
    view = CertificateView(
        number=row.number,
        name=row.name,
        masked_id_number=mask_id_number(_id_number_type.process_result_value(row.id_number_ciphertext, None)),
        document_kind=row.document_kind,
        exam=row.exam,
        specialty=row.specialty,
        level=row.level,
        approval_date=row.approval_date,
        issuer=row.issuer,
        status=row.status,
        revoked_at=row.revoked_at,
        corrected_at=row.corrected_at,
    )
    return LookupResult(REVOKED if row.status == STATUS_REVOKED else VALID, view)


def result_for(certificate: Certificate) -> LookupResult:
    view = view_of(certificate)
    return LookupResult(REVOKED if certificate.status == STATUS_REVOKED else VALID, view)


def view_of(certificate: Certificate) -> CertificateView:
    kind = certificate.layout.document_kind
    return CertificateView(
        number=certificate.number,
        name=certificate.name,
        masked_id_number=mask_id_number(certificate.id_number),
        document_kind=kind.name,
        exam=certificate.exam.name,
        specialty=certificate.specialty.name,
        level=certificate.level,
        approval_date=certificate.approval_date,
        issuer=kind.issuer,
        status=certificate.status,
        revoked_at=certificate.revoked_at,
        corrected_at=certificate.corrected_at,
    )


def certificates_of(name: str, id_number: str) -> list[Certificate]:
    """Return every certificate whose current name and ID number are these, newest first.

    Only the current data counts, never a version replaced by a correction: a
    correction usually fixes a wrong ID number or name, and that wrong value
    may belong to someone else, who must stop seeing the certificate. A holder
    who registered with the corrected data sees it from the next page load.
    """
    query = (
        _query()
        .where(Certificate.id_number_hash == id_hash(id_number), Certificate.name == name)
        .order_by(Certificate.approval_date.desc(), Certificate.number)
    )
    return list(db.session.scalars(query).unique())
