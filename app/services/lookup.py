"""The one certificate lookup behind /verify, /v/<token> and the JSON API."""

from __future__ import annotations

import hmac
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.orm import joinedload

from ..domain.identity import mask_id_number
from ..domain.roster import normalise_name
from ..extensions import db
from ..id_numbers import id_hash
from ..models import STATUS_REVOKED, Certificate, Layout

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

    certificate = db.session.scalar(_query().where(Certificate.number == number))
    stored_name = certificate.name if certificate else ""
    # Compare even when nothing was found, so both paths cost the same.
    # Latin names match whatever their case (SMITH JOHN, Smith John).
    if not hmac.compare_digest(stored_name.casefold().encode(), name.casefold().encode()) or certificate is None:
        return LookupResult(NOT_FOUND)
    return result_for(certificate)


def by_public_id(public_id: str) -> LookupResult:
    certificate = db.session.scalar(_query().where(Certificate.public_id == public_id))
    if certificate is None:
        return LookupResult(NOT_FOUND)
    return result_for(certificate)


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
