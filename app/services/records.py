"""Certificate records for staff: search, correct, revoke and reinstate, each audited.

A correction keeps the replaced fields in `certificate_version`, bumps
`Certificate.version` and sets `corrected_at`. The `public_id` never changes,
so the QR code printed on the old document keeps working and shows the
corrected data.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload

from ..domain.catalogue import Catalogue
from ..domain.identity import IdentityError, clean_id_number, mask_id_number
from ..domain.roster import (
    FieldError,
    normalise_name,
    parse_approval_date,
    parse_certificate_number,
    parse_identity,
    parse_name,
)
from ..extensions import db
from ..id_numbers import id_hash, mask_id_numbers
from ..models import STATUS_REVOKED, STATUS_VALID, AuditEntry, Certificate, CertificateVersion, Layout, Specialty, utcnow
from . import audit
from .catalogue import load_catalogue
from .lookup import normalise_number

logger = logging.getLogger(__name__)

SEARCH_LIMIT = 100
MAX_REASON_LENGTH = 500

# Correctable fields in form order, with their Chinese labels.
FIELD_LABELS = {
    "number": "证书编号",
    "name": "姓名",
    "gender": "性别",
    "id_type": "证件类型",
    "id_number": "证件号码",
    "birth_month": "出生年月",
    "specialty": "专业",
    "level": "级别",
    "approval_date": "批准日期",
}

# Labels for the keys of audit before/after values on the record page.
HISTORY_LABELS = FIELD_LABELS | {"layout": "证书版式", "status": "状态", "revoked_at": "撤销时间", "revoke_reason": "撤销原因"}


class RecordError(ValueError):
    """A change staff asked for cannot be made; `errors` maps a form field (or "") to Chinese messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("；".join(message for messages in errors.values() for message in messages))
        self.errors = errors


@dataclass
class CorrectionResult:
    certificate: Certificate
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)  # field -> (before, after), as shown


def get(certificate_id: int) -> Certificate | None:
    query = select(Certificate).where(Certificate.id == certificate_id).options(
        joinedload(Certificate.exam), joinedload(Certificate.specialty), joinedload(Certificate.layout)
    )
    return db.session.scalar(query)


def search(text: str) -> list[Certificate]:
    """Find certificates whose number, name or whole ID number equals `text` after normalisation."""
    text = (text or "").strip()
    if not text:
        return []
    number = normalise_number(text)
    name = normalise_name(text)
    id_number = clean_id_number(text)
    query = (
        select(Certificate)
        .where(or_(Certificate.number == number, Certificate.name == name, Certificate.id_number_hash == id_hash(id_number)))
        .options(joinedload(Certificate.exam), joinedload(Certificate.specialty))
        .order_by(Certificate.approval_date.desc(), Certificate.number)
        .limit(SEARCH_LIMIT)
    )
    return list(db.session.scalars(query))


def versions(certificate: Certificate) -> list[CertificateVersion]:
    """Return the certificate's earlier versions, newest first."""
    query = (
        select(CertificateVersion)
        .where(CertificateVersion.certificate_id == certificate.id)
        .order_by(CertificateVersion.version.desc())
    )
    return list(db.session.scalars(query))


def history(certificate: Certificate) -> list[AuditEntry]:
    """Return every audit entry about the certificate, newest first."""
    query = (
        select(AuditEntry)
        .where(AuditEntry.target == target_of(certificate))
        .order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
    )
    return list(db.session.scalars(query))


def target_of(certificate: Certificate) -> str:
    return f"certificate:{certificate.id}"


def snapshot(certificate: Certificate) -> dict[str, str | None]:
    """Return the correctable fields as text; `certificate_version.fields` stores all but the ID number."""
    return {
        "number": certificate.number,
        "name": certificate.name,
        "gender": certificate.gender,
        "id_type": certificate.id_type,
        "id_number": certificate.id_number,
        "birth_month": certificate.birth_month.strftime("%Y-%m"),
        "specialty": certificate.specialty.name,
        "level": certificate.level,
        "approval_date": certificate.approval_date.isoformat(),
        "layout": certificate.layout.code,
    }


def _require_reason(reason: str | None, action: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise RecordError({"reason": [f"请填写{action}原因，例如“考生申请更正姓名，已核对身份证原件”。"]})
    if len(reason) > MAX_REASON_LENGTH:
        raise RecordError({"reason": [f"{action}原因有 {len(reason)} 个字，超过 {MAX_REASON_LENGTH} 字的上限，请精简。"]})
    # Reasons are stored in clear (certificate, certificate_version, audit), so a whole ID number typed in is masked.
    return mask_id_numbers(reason)


# --- Correction ---------------------------------------------------------


def correct(
    certificate: Certificate,
    values: dict[str, str],
    *,
    reason: str,
    actor: str,
    expected_version: int | None = None,
    today: date | None = None,
) -> CorrectionResult:
    """Replace the certificate's fields with `values`, keeping the old ones as a version.

    `values` contains the form's text for every key of FIELD_LABELS. They are
    checked with the import's rules. Raise RecordError naming each field that
    fails, when nothing changed, or when another correction came first.
    """
    reason = _require_reason(reason, "更正")
    if expected_version is not None and expected_version != certificate.version:
        raise RecordError({"": [
            f"该证书已被他人更正为第 {certificate.version} 版，您看到的是第 {expected_version} 版；请刷新页面核对后重新提交。"
        ]})

    catalogue = load_catalogue()
    parsed = _parse_values(certificate, values, catalogue, today or date.today())
    before = snapshot(certificate)
    layout = catalogue.layout_for(certificate.exam.name, certificate.kind, parsed["specialty"].name)
    layout_code = layout.code if layout else before["layout"]
    after_text = _text_of(parsed, layout_code)
    changed = {key: (before[key], after_text[key]) for key in FIELD_LABELS if before[key] != after_text[key]}
    if not changed:
        raise RecordError({"": ["提交的内容与当前记录完全相同，没有需要更正的信息。"]})

    if "number" in changed:
        _check_number_free(parsed["number"], certificate)

    now = utcnow()
    db.session.add(
        CertificateVersion(
            certificate_id=certificate.id,
            version=certificate.version,
            fields=before,  # the model moves the ID number to its encrypted column
            corrected_by=actor,
            corrected_at=now,
            reason=reason,
        )
    )
    _apply(certificate, parsed, layout_code)
    certificate.version += 1
    certificate.corrected_at = now
    certificate.updated_at = now
    audit.record(
        actor,
        "certificate.correct",
        target_of(certificate),
        detail={"number": certificate.number, "version": certificate.version, "reason": reason},
        before={key: _audit_value(key, old) for key, (old, _new) in changed.items()},
        after={key: _audit_value(key, new) for key, (_old, new) in changed.items()},
    )
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise RecordError({"number": [f"证书编号「{parsed['number']}」刚被另一条记录使用，请核对后重新填写。"]}) from None
    logger.info("Certificate %s corrected to version %s by %s: %s", certificate.id, certificate.version, actor, sorted(changed))
    return CorrectionResult(certificate, changed)


def _audit_value(key: str, value: str | None) -> str | None:
    # The audit log is exported and kept for months, so it never contains a whole ID number.
    if key == "id_number" and value:
        return mask_id_number(value)
    return value


def _parse_values(certificate: Certificate, values: dict[str, str], catalogue: Catalogue, today: date) -> dict:
    errors: dict[str, list[str]] = {}

    def attempt(key: str, parse, *args):
        try:
            return parse(*args)
        except (FieldError, IdentityError) as error:
            errors.setdefault(key, []).append(error.reason)
            return None

    def text(key: str) -> str:
        return unicodedata.normalize("NFKC", values.get(key) or "").strip()

    parsed: dict = {
        "number": attempt("number", parse_certificate_number, values.get("number") or ""),
        "name": attempt("name", parse_name, values.get("name") or ""),
        "approval_date": attempt("approval_date", parse_approval_date, text("approval_date"), today),
    }
    identity = attempt(
        "id_number", parse_identity, values.get("id_type") or "", values.get("id_number") or "",
        text("gender"), text("birth_month"), today,
    )
    if identity:
        parsed["id_type"], parsed["id_number"], parsed["gender"], parsed["birth_month"] = identity
    elif "id_number" in errors:
        _move_identity_errors(errors)

    exam = catalogue.exam(certificate.exam.name)
    parsed["specialty"] = _specialty(certificate, text("specialty"), errors)
    parsed["level"] = None
    level = text("level")
    if exam and exam.levels:
        if level not in exam.levels:
            shown = f"「{level}」" if level else "为空"
            errors.setdefault("level", []).append(f"级别{shown}不是{exam.name}的级别，应为以下之一：{'、'.join(exam.levels)}")
        parsed["level"] = level
    if errors:
        raise RecordError(errors)
    return parsed


def _move_identity_errors(errors: dict[str, list[str]]) -> None:
    """File an identity message under the field it names first, so the form shows it beside that field."""
    messages = errors.pop("id_number")
    for message in messages:
        key = "id_number"
        if message.startswith("性别") or message.startswith("请填写性别"):
            key = "gender"
        elif message.startswith("出生年月"):
            key = "birth_month"
        elif message.startswith("证件类型"):
            key = "id_type"
        errors.setdefault(key, []).append(message)


def _specialty(certificate: Certificate, name: str, errors: dict[str, list[str]]) -> Specialty | None:
    specialties = {s.name: s for s in certificate.exam.specialties}
    found = specialties.get(name)
    if found is None:
        shown = f"「{name}」" if name else "为空"
        errors.setdefault("specialty", []).append(
            f"专业{shown}不是{certificate.exam.name}的专业，应为以下之一：{'、'.join(specialties)}"
        )
    return found


def _text_of(parsed: dict, layout_code: str) -> dict[str, str | None]:
    return {
        "number": parsed["number"],
        "name": parsed["name"],
        "gender": parsed["gender"],
        "id_type": parsed["id_type"],
        "id_number": parsed["id_number"],
        "birth_month": parsed["birth_month"].strftime("%Y-%m"),
        "specialty": parsed["specialty"].name,
        "level": parsed["level"] or None,
        "approval_date": parsed["approval_date"].isoformat(),
        "layout": layout_code,
    }


def _check_number_free(number: str, certificate: Certificate) -> None:
    other = db.session.scalar(select(Certificate).where(Certificate.number == number, Certificate.id != certificate.id))
    if other is not None:
        raise RecordError({"number": [
            f"证书编号「{number}」已属于另一张证书（{other.name}，{mask_id_number(other.id_number)}），"
            "同一编号不能用于两张证书；请核对后填写正确的编号。"
        ]})


def _apply(certificate: Certificate, parsed: dict, layout_code: str) -> None:
    certificate.number = parsed["number"]
    certificate.name = parsed["name"]
    certificate.gender = parsed["gender"]
    certificate.id_type = parsed["id_type"]
    certificate.id_number = parsed["id_number"]
    certificate.birth_month = parsed["birth_month"]
    certificate.specialty = parsed["specialty"]
    certificate.level = parsed["level"] or None
    certificate.approval_date = parsed["approval_date"]
    if layout_code != certificate.layout.code:
        certificate.layout = db.session.scalar(select(Layout).where(Layout.code == layout_code))


# --- Revocation ---------------------------------------------------------


def revoke(certificate: Certificate, *, reason: str, actor: str) -> Certificate:
    """Revoke a valid certificate; every lookup shows 已撤销 with the date from the next request on."""
    reason = _require_reason(reason, "撤销")
    if certificate.status == STATUS_REVOKED:
        raise RecordError({"": [f"证书「{certificate.number}」已于 {certificate.revoked_at:%Y-%m-%d} 撤销，无需重复撤销。"]})
    now = utcnow()
    certificate.status = STATUS_REVOKED
    certificate.revoked_at = now
    certificate.revoke_reason = reason
    certificate.updated_at = now
    audit.record(
        actor, "certificate.revoke", target_of(certificate),
        detail={"number": certificate.number, "reason": reason},
        before={"status": STATUS_VALID}, after={"status": STATUS_REVOKED, "revoked_at": now.isoformat()},
    )
    db.session.commit()
    logger.info("Certificate %s revoked by %s", certificate.id, actor)
    return certificate


def reinstate(certificate: Certificate, *, reason: str, actor: str) -> Certificate:
    """Make a revoked certificate valid again; the revocation stays in the audit log."""
    reason = _require_reason(reason, "恢复")
    if certificate.status != STATUS_REVOKED:
        raise RecordError({"": [f"证书「{certificate.number}」当前有效，未被撤销，无需恢复。"]})
    before = {
        "status": STATUS_REVOKED,
        "revoked_at": certificate.revoked_at.isoformat() if certificate.revoked_at else None,
        "revoke_reason": certificate.revoke_reason,
    }
    certificate.status = STATUS_VALID
    certificate.revoked_at = None
    certificate.revoke_reason = None
    certificate.updated_at = utcnow()
    audit.record(
        actor, "certificate.reinstate", target_of(certificate),
        detail={"number": certificate.number, "reason": reason},
        before=before, after={"status": STATUS_VALID},
    )
    db.session.commit()
    logger.info("Certificate %s reinstated by %s", certificate.id, actor)
    return certificate
