"""Turn stored certificates into documents and signed PDFs, with an on-disk PDF cache."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import astuple, dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

from flask import current_app
from pypdf import PdfReader
from sqlalchemy import bindparam, select

from ..domain import signing
from ..domain.documents import TEMPLATE_DIR, CertificateDocument, document_fields, render_pdf
from ..domain.tokens import make_token
from ..extensions import db
from ..models import STATUS_REVOKED, Certificate, DocumentKind, Exam, Holder, Layout, Seal, Specialty
from . import lookup
from .catalogue import load_catalogue
from .lookup import CertificateView

logger = logging.getLogger(__name__)

PDF_CACHE_DIR = "pdf-cache"  # under the instance folder
# Bump when the renderer changes output without a template change.
RENDERER_REVISION = "2"


def qr_url(certificate: Certificate) -> str:
    token = make_token(certificate.public_id, current_app.config["QR_TOKEN_KEYS"])
    return f"{current_app.config['BASE_URL'].rstrip('/')}/v/{token}"


def document_of(certificate: Certificate) -> CertificateDocument:
    layout = load_catalogue().layouts[certificate.layout.code]
    return CertificateDocument(
        layout=layout,
        number=certificate.number,
        name=certificate.name,
        gender=certificate.gender,
        id_type=certificate.id_type,
        id_number=certificate.id_number,
        birth_month=certificate.birth_month,
        exam=certificate.exam.name,
        specialty=certificate.specialty.name,
        level=certificate.level,
        approval_date=certificate.approval_date,
        qr_url=qr_url(certificate),
        lookup_url=f"{current_app.config['BASE_URL'].rstrip('/')}/verify",
    )


# --- signing keys ----------------------------------------------------------


def _instance_path(value: str | os.PathLike) -> Path:
    path = Path(value)
    return path if path.is_absolute() else Path(current_app.instance_path) / path


def signing_keys() -> signing.SigningKeys:
    """Return the configured signing key, certificate and CA files, resolved against instance/."""
    config = current_app.config
    passphrase = config.get("SIGNING_KEY_PASSPHRASE")
    if isinstance(passphrase, str):
        passphrase = passphrase.encode()
    return signing.SigningKeys(
        key_file=_instance_path(config["SIGNING_KEY_FILE"]),
        cert_file=_instance_path(config["SIGNING_CERT_FILE"]),
        ca_files=tuple(_instance_path(path) for path in config["SIGNING_CA_FILES"]),
        passphrase=passphrase or None,
    )


def ensure_demo_keys() -> bool:
    """Create demo keys at the configured paths unless they exist, and return True when it created them."""
    keys = signing_keys()
    if keys.exist():
        return False
    signing.generate_demo_keys(keys.key_file.parent)
    return True


# --- the PDF and its cache -------------------------------------------------


@dataclass(frozen=True)
class CachedPdf:
    path: Path
    etag: str  # hex digest of everything the bytes depend on


@dataclass(frozen=True)
class PdfSource:
    """The record and catalogue fields a certificate's PDF depends on, besides templates and settings.

    Built from a loaded certificate (`source_of`) or from one narrow query
    (`owned_pdf_source`); both give the same cache entry. The printed fields
    are part of it because a version number alone does not identify the
    content: after a restore, a new correction reuses the version number of
    a lost one. The ID number is represented by its HMAC, so the key needs no
    decryption.
    """

    certificate_id: int
    version: int
    public_id: str
    number: str
    name: str
    gender: str
    id_type: str
    id_number_hash: str
    birth_month: date
    approval_date: date
    level: str | None
    exam_name: str
    specialty_name: str
    layout_code: str
    layout_title: str
    layout_statement: str
    co_issuers: tuple[str, ...]
    kind_name: str
    kind_issuer: str
    seal_code: str
    seal_name: str
    seal_image_path: str | None


def source_of(certificate: Certificate) -> PdfSource:
    """Return the PDF source of a loaded certificate, loading its catalogue rows, document kind and seal if needed."""
    layout = certificate.layout
    kind = layout.document_kind
    seal = kind.seal
    return PdfSource(
        certificate_id=certificate.id,
        version=certificate.version,
        public_id=certificate.public_id,
        number=certificate.number,
        name=certificate.name,
        gender=certificate.gender,
        id_type=certificate.id_type,
        id_number_hash=certificate.id_number_hash,
        birth_month=certificate.birth_month,
        approval_date=certificate.approval_date,
        level=certificate.level,
        exam_name=certificate.exam.name,
        specialty_name=certificate.specialty.name,
        layout_code=layout.code,
        layout_title=layout.title,
        layout_statement=layout.statement,
        co_issuers=tuple(layout.co_issuers or ()),
        kind_name=kind.name,
        kind_issuer=kind.issuer,
        seal_code=seal.code,
        seal_name=seal.name,
        seal_image_path=seal.image_path,
    )


# One join over the certificate and the catalogue rows its PDF prints, each
# column labelled with its PdfSource field. Built once at import, so a request
# only binds parameters and hits SQLAlchemy's compiled cache. It runs on the
# session's connection and loads no ORM objects.
_SOURCE_JOIN = (
    select(
        Certificate.id.label("certificate_id"), Certificate.version, Certificate.public_id,
        Certificate.number, Certificate.name, Certificate.gender, Certificate.id_type, Certificate.id_number_hash,
        Certificate.birth_month, Certificate.approval_date, Certificate.level,
        Exam.name.label("exam_name"), Specialty.name.label("specialty_name"),
        Layout.code.label("layout_code"), Layout.title.label("layout_title"),
        Layout.statement.label("layout_statement"), Layout.co_issuers,
        DocumentKind.name.label("kind_name"), DocumentKind.issuer.label("kind_issuer"),
        Seal.code.label("seal_code"), Seal.name.label("seal_name"), Seal.image_path.label("seal_image_path"),
    )
    .join(Exam, Exam.id == Certificate.exam_id)
    .join(Specialty, Specialty.id == Certificate.specialty_id)
    .join(Layout, Layout.id == Certificate.layout_id)
    .join(DocumentKind, DocumentKind.id == Layout.document_kind_id)
    .join(Seal, Seal.id == DocumentKind.seal_id)
)
_OWNED_SOURCE = _SOURCE_JOIN.where(
    Certificate.number == bindparam("number"),
    Certificate.id_number_hash == bindparam("id_number_hash"),
    Certificate.name == bindparam("name"),
    Certificate.status != STATUS_REVOKED,
)
# The same join, matched against a holder row instead of a name and hash: it
# also checks that the holder exists and that the session's version is current.
_SESSION_OWNED_SOURCE = _SOURCE_JOIN.join(
    Holder,
    (Holder.id == bindparam("holder_id"))
    & (Holder.session_version == bindparam("session_version"))
    & (Holder.name == Certificate.name)
    & (Holder.id_number_hash == Certificate.id_number_hash),
).where(
    Certificate.number == bindparam("number"),
    Certificate.status != STATUS_REVOKED,
)


def session_owned_pdf_source(number: str, holder_id: int, session_version: int) -> PdfSource | None:
    """Return the PDF source of certificate `number` when it belongs to holder `holder_id` at `session_version`.

    One query replaces loading the holder and then checking ownership. It
    returns None when the holder is gone, the version has moved on (a logout
    or password change elsewhere), or the number is missing, revoked or
    someone else's. The caller then takes the full path, which
    distinguishes these cases.
    """
    row = db.session.connection().execute(
        _SESSION_OWNED_SOURCE,
        {"number": number, "holder_id": holder_id, "session_version": session_version},
    ).first()
    return None if row is None else _source_from_row(row)


def owned_pdf_source(number: str, name: str, id_number_hash: str) -> PdfSource | None:
    """Return the PDF source of certificate `number` when it is issued to this name and ID number and not revoked.

    The match uses the record's current name and ID number, like
    `lookup.certificates_of`, so a correction or revocation takes effect on the
    next request. Returns None for a missing, revoked or someone else's number.
    """
    row = db.session.connection().execute(
        _OWNED_SOURCE, {"number": number, "id_number_hash": id_number_hash, "name": name}
    ).first()
    return None if row is None else _source_from_row(row)


def _source_from_row(row) -> PdfSource:
    values = row._asdict()
    values["co_issuers"] = tuple(values["co_issuers"] or ())
    return PdfSource(**values)


@lru_cache(maxsize=8)
def _template_digest(template_dir: Path, signing_cert_mtime: int, signing_cert: Path) -> str:
    digest = hashlib.sha256(RENDERER_REVISION.encode())
    for path in sorted(template_dir.glob("*.html")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    if signing_cert.is_file():
        digest.update(signing_cert.read_bytes())
    return digest.hexdigest()


def render_digest() -> str:
    """Return a digest of the templates, renderer revision and signing certificate.

    The templates are read once per process, like Jinja's compiled templates,
    so a template edit takes effect after a restart.
    """
    cert = _resolved_path(current_app.instance_path, current_app.config["SIGNING_CERT_FILE"])
    try:
        mtime = cert.stat().st_mtime_ns
    except FileNotFoundError:
        mtime = 0
    return _template_digest(TEMPLATE_DIR, mtime, cert)


def cache_entry(certificate: Certificate | PdfSource) -> CachedPdf:
    """Return where the signed PDF of `certificate` is cached and its ETag.

    The key covers the record id and version, every field the page prints
    (the ID number by its HMAC), the template digest, the public address and
    the catalogue entries the page prints (title, statement, issuers, seal), so
    any of those changing gives a new file name. A version number reused after
    a restore therefore never serves the lost version's file.
    """
    source = certificate if isinstance(certificate, PdfSource) else source_of(certificate)
    etag = _etag(render_digest(), current_app.config["BASE_URL"], source)
    name = f"{source.certificate_id}-v{source.version}-{etag}.pdf"
    return CachedPdf(path=_resolved_path(current_app.instance_path, PDF_CACHE_DIR) / name, etag=etag)


@lru_cache(maxsize=16)
def _resolved_path(instance_path: str, value: str | os.PathLike) -> Path:
    # Cached because a cached download resolves two paths and pathlib parsing costs more than the rest of the key.
    path = Path(value)
    return path if path.is_absolute() else Path(instance_path) / path


@lru_cache(maxsize=4096)
def _etag(render_digest: str, base_url: str, source: PdfSource) -> str:
    parts = [render_digest, base_url, *astuple(source)]
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, default=str).encode()).hexdigest()[:32]


def render_signed_pdf(certificate: Certificate) -> bytes:
    """Render and sign the PDF of `certificate`, without the cache."""
    pdf = render_pdf(
        document_of(certificate),
        static_dir=Path(current_app.static_folder),
        instance_dir=Path(current_app.instance_path),
    )
    return signing.sign_pdf(pdf, signing_keys(), public_id=certificate.public_id, version=certificate.version)


def cached_pdf(certificate: Certificate) -> CachedPdf:
    """Return the cache entry of `certificate`, rendering and signing it first when missing."""
    entry = cache_entry(certificate)
    if entry.path.is_file():
        return entry
    pdf = render_signed_pdf(certificate)
    _store(entry.path, pdf, certificate.id)
    return entry


def render_cached(source: PdfSource) -> CachedPdf | None:
    """Render, sign and cache the PDF that `source` describes, and return its cache entry.

    Returns None when the record is revoked or no longer matches `source`
    (corrected, or its layout or seal changed since `source` was read).
    """
    certificate = db.session.get(Certificate, source.certificate_id)
    if certificate is None or certificate.status == STATUS_REVOKED or source_of(certificate) != source:
        return None
    return cached_pdf(certificate)


def certificate_pdf(certificate: Certificate) -> bytes:
    """Return the signed PDF of `certificate`, from the cache when it is there."""
    return cached_pdf(certificate).path.read_bytes()


def _store(path: Path, pdf: bytes, certificate_id: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside and renamed, so a concurrent reader never sees half a file.
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_bytes(pdf)
    partial.replace(path)
    # Earlier versions of this certificate can never be served again.
    for stale in path.parent.glob(f"{certificate_id}-v*.pdf"):
        if stale != path:
            stale.unlink(missing_ok=True)
    logger.info("cached PDF of certificate %s at %s", certificate_id, path.name)


# --- checking an uploaded PDF ----------------------------------------------

VERDICT_VALID = "valid"  # 真实有效
VERDICT_REVOKED = "revoked"  # 已撤销
VERDICT_MODIFIED = "modified"  # 文件已被修改
VERDICT_FOREIGN = "foreign"  # 非本系统签发
VERDICT_UNREADABLE = "unreadable"  # not a readable PDF


@dataclass(frozen=True)
class FileVerdict:
    verdict: str
    view: CertificateView | None = None  # the live record, masked, for VALID and REVOKED
    corrected: bool = False  # the record has a newer version than the file


def verify_uploaded_pdf(data: bytes) -> FileVerdict:
    """Check an uploaded certificate PDF against the signing CA and the live record."""
    roots = signing.load_trust_roots(signing_keys().ca_files)
    check = signing.check_signed_file(data, roots)
    if check.outcome != signing.FILE_INTACT:
        logger.info("uploaded PDF rejected as %s: %s", check.outcome, check.detail)
        return FileVerdict({
            signing.FILE_MODIFIED: VERDICT_MODIFIED,
            signing.FILE_FOREIGN: VERDICT_FOREIGN,
            signing.FILE_UNREADABLE: VERDICT_UNREADABLE,
        }[check.outcome])

    certificate = db.session.scalar(select(Certificate).where(Certificate.public_id == check.public_id))
    if certificate is None or check.version > certificate.version:
        logger.warning("signed PDF names unknown certificate %s version %s", check.public_id, check.version)
        return FileVerdict(VERDICT_FOREIGN)
    if check.version == certificate.version and not _text_matches(data, certificate):
        logger.warning("signed PDF of certificate %s does not match the record", check.public_id)
        return FileVerdict(VERDICT_MODIFIED)

    result = lookup.result_for(certificate)
    verdict = VERDICT_REVOKED if result.result == lookup.REVOKED else VERDICT_VALID
    return FileVerdict(verdict, view=result.certificate, corrected=check.version < certificate.version)


def _text_matches(data: bytes, certificate: Certificate) -> bool:
    # The signature already proves the bytes. This catches a file whose version
    # number the record reuses with other content (a record changed without a
    # version bump, or corrected again after a restore lost a correction), so
    # the page never vouches for stale content. Whitespace is dropped on both
    # sides because long values wrap across lines.
    text = "".join(PdfReader(io.BytesIO(data)).pages[0].extract_text().split())
    return all("".join(field.value.split()) in text for field in document_fields(document_of(certificate)))
