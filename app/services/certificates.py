"""Turn stored certificates into documents and PDFs."""

from __future__ import annotations

from pathlib import Path

from flask import current_app

from ..domain.documents import CertificateDocument, render_pdf
from ..domain.tokens import make_token
from ..models import Certificate
from .catalogue import load_catalogue


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


def certificate_pdf(certificate: Certificate) -> bytes:
    return render_pdf(
        document_of(certificate),
        static_dir=Path(current_app.static_folder),
        instance_dir=Path(current_app.instance_path),
    )
