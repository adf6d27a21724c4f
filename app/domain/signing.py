"""PAdES signatures on certificate PDFs: demo keys, signing, and checking an uploaded file.

Every PDF is certified (DocMDP level 1, `MDPPerm.NO_CHANGES`), so any later
edit, even a valid incremental update, breaks the certification. The signed
revision carries the certificate's public_id and record version in custom
document-information entries; it carries no personal data.

This module does not import Flask. Paths come from the caller.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.misc import PdfReadError
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import fields, signers
from pyhanko.sign.general import SigningError
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

logger = logging.getLogger(__name__)

# Custom document-information keys of the signed revision.
INFO_PUBLIC_ID = "/CertPublicId"
INFO_VERSION = "/CertVersion"
SIGNATURE_FIELD = "Signature"
# Room for the CMS container: an ECDSA signature and a two-certificate chain take about 2 KB.
SIGNATURE_BYTES_RESERVED = 8192

KEY_FILE = "signing-key.pem"
CERT_FILE = "signing-cert.pem"
CA_FILE = "ca-cert.pem"
CA_KEY_FILE = "ca-key.pem"

# Outcomes of checking an uploaded file.
FILE_INTACT = "intact"  # signed by a trusted key, nothing changed since
FILE_MODIFIED = "modified"  # signature present but the bytes or revisions changed
FILE_FOREIGN = "foreign"  # unsigned, or signed by a key the configured CA did not issue
FILE_UNREADABLE = "unreadable"  # not a PDF, or truncated beyond reading

# pyHanko's parser recurses once per nesting level, so a file of 50,000 nested
# arrays raises RecursionError; a huge declared length or count can raise MemoryError.
PARSER_EXHAUSTION = (RecursionError, MemoryError)


class SigningKeyError(RuntimeError):
    """The configured signing key or certificate is missing or unreadable."""


class KeysExistError(FileExistsError):
    """`generate_demo_keys` would overwrite existing keys."""


@dataclass(frozen=True)
class SigningKeys:
    key_file: Path
    cert_file: Path
    ca_files: tuple[Path, ...]  # issuer chain embedded in signatures, and the trust roots for uploads
    passphrase: bytes | None = None

    def exist(self) -> bool:
        return self.key_file.is_file() and self.cert_file.is_file()


@dataclass(frozen=True)
class FileCheck:
    outcome: str  # FILE_INTACT, FILE_MODIFIED, FILE_FOREIGN or FILE_UNREADABLE
    public_id: str | None = None
    version: int | None = None
    detail: str = ""  # English reason for the log, never shown to visitors


# --- keys ------------------------------------------------------------------


def generate_demo_keys(directory: Path, *, force: bool = False, common_name: str = "电子证书演示签章") -> SigningKeys:
    """Write a demo CA and a document-signing certificate it issued into `directory`.

    Raises KeysExistError when a key file is already there and `force` is False.
    The private keys are written unencrypted with mode 0600; a real deployment
    installs its own key and certificate instead.
    """
    targets = [directory / name for name in (KEY_FILE, CERT_FILE, CA_FILE, CA_KEY_FILE)]
    existing = [path for path in targets if path.exists()]
    if existing and not force:
        raise KeysExistError(f"签名密钥已存在：{existing[0]}。如确需重新生成，请加 --force（旧密钥签发的 PDF 将无法通过本站查验）。")
    directory.mkdir(parents=True, exist_ok=True)

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Demo certificate service"),
        x509.NameAttribute(NameOID.COMMON_NAME, "Demo signing CA (not for production)"),
    ])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    # ECDSA rather than RSA: pyHanko 0.38 reparses the key for every signature,
    # and cryptography validates an RSA key on each load (about 90 ms here).
    signer_key = ec.generate_private_key(ec.SECP256R1())
    signer_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Demo certificate service"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]))
        .issuer_name(ca_name)
        .public_key(signer_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    _write_private(directory / CA_KEY_FILE, _pem_key(ca_key))
    _write_private(directory / KEY_FILE, _pem_key(signer_key))
    (directory / CA_FILE).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (directory / CERT_FILE).write_bytes(signer_cert.public_bytes(serialization.Encoding.PEM))
    logger.info("generated demo signing keys in %s", directory)
    return SigningKeys(directory / KEY_FILE, directory / CERT_FILE, (directory / CA_FILE,))


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


_signer_lock = threading.Lock()
_signer_cache: dict[tuple, signers.SimpleSigner] = {}


def load_signer(keys: SigningKeys) -> signers.SimpleSigner:
    """Load the signer for `keys`, once per process and key-file modification time."""
    try:
        cache_key = (keys, keys.key_file.stat().st_mtime_ns, keys.cert_file.stat().st_mtime_ns)
    except OSError as error:
        raise SigningKeyError(f"找不到签名密钥或证书（{error.filename}），请运行 flask --app wsgi keys init 或配置 SIGNING_KEY_FILE、SIGNING_CERT_FILE") from error
    with _signer_lock:
        signer = _signer_cache.get(cache_key)
        if signer is None:
            signer = signers.SimpleSigner.load(
                str(keys.key_file), str(keys.cert_file),
                ca_chain_files=tuple(str(path) for path in keys.ca_files),
                key_passphrase=keys.passphrase,
            )
            if signer is None:
                raise SigningKeyError(f"无法读取签名密钥 {keys.key_file} 或证书 {keys.cert_file}，请检查文件格式和口令 SIGNING_KEY_PASSPHRASE")
            _signer_cache.clear()
            _signer_cache[cache_key] = signer
    return signer


def certificate_fingerprint(keys: SigningKeys) -> str:
    """Return the SHA-256 fingerprint of the signing certificate, hex."""
    cert = x509.load_pem_x509_certificate(keys.cert_file.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex()


# --- signing ---------------------------------------------------------------


def sign_pdf(pdf: bytes, keys: SigningKeys, *, public_id: str, version: int) -> bytes:
    """Certify `pdf` with no changes allowed, recording `public_id` and `version` in the signed revision.

    NOTE: pyHanko's synchronous API calls asyncio.run(), so this and
    `check_signed_file` fail inside a running event loop (an async worker);
    gunicorn's sync workers and background threads are fine.
    """
    signer = load_signer(keys)
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf), strict=False)
    info = writer.trailer["/Info"].get_object()
    info[generic.NameObject(INFO_PUBLIC_ID)] = generic.TextStringObject(public_id)
    info[generic.NameObject(INFO_VERSION)] = generic.NumberObject(version)
    writer.update_container(info)
    metadata = signers.PdfSignatureMetadata(
        field_name=SIGNATURE_FIELD,
        certify=True,
        docmdp_permissions=fields.MDPPerm.NO_CHANGES,
        subfilter=fields.SigSeedSubFilter.PADES,
        md_algorithm="sha256",
        reason="电子证书签发",
    )
    # A fixed reservation skips pyHanko's trial signature that sizes the field.
    output = signers.sign_pdf(writer, metadata, signer=signer, bytes_reserved=SIGNATURE_BYTES_RESERVED)
    return output.getvalue()


# --- checking --------------------------------------------------------------


def load_trust_roots(ca_files: tuple[Path, ...]) -> list[asn1_x509.Certificate]:
    roots = []
    for path in ca_files:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        roots.append(asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER)))
    return roots


def check_signed_file(data: bytes, trust_roots: list[asn1_x509.Certificate]) -> FileCheck:
    """Decide whether `data` is an untouched PDF that a key under `trust_roots` certified.

    Never raises for bad input: garbage, truncated and non-PDF bytes give
    FILE_UNREADABLE.
    """
    if not data.lstrip()[:5].startswith(b"%PDF-"):
        return FileCheck(FILE_UNREADABLE, detail="no %PDF- header")
    try:
        reader = PdfFileReader(io.BytesIO(data), strict=False)
        signatures = reader.embedded_signatures
    except (PdfReadError, ValueError, KeyError, TypeError, IndexError, AttributeError, OSError) as error:
        return FileCheck(FILE_UNREADABLE, detail=f"unreadable: {error!r}"[:200])
    except PARSER_EXHAUSTION as error:
        return FileCheck(FILE_UNREADABLE, detail=f"parser exhausted: {type(error).__name__}")
    if not signatures:
        return FileCheck(FILE_FOREIGN, detail="no signature")

    signature = signatures[0]
    context = ValidationContext(trust_roots=trust_roots)
    try:
        status = validate_pdf_signature(signature, context)
    except (SigningError, PdfReadError, ValueError, KeyError, TypeError) as error:
        return FileCheck(FILE_MODIFIED, detail=f"validation error: {error!r}"[:200])
    except PARSER_EXHAUSTION as error:
        return FileCheck(FILE_UNREADABLE, detail=f"parser exhausted during validation: {type(error).__name__}")

    if not status.intact or not status.valid:
        return FileCheck(FILE_MODIFIED, detail="digest or signature mismatch")
    if not status.trusted:
        return FileCheck(FILE_FOREIGN, detail="signer not issued by the configured CA")
    coverage = getattr(status.coverage, "name", str(status.coverage))
    if len(signatures) != 1 or coverage != "ENTIRE_FILE" or status.docmdp_ok is False:
        return FileCheck(FILE_MODIFIED, detail=f"revisions added after certification ({coverage})")

    public_id, version = _signed_identity(signature)
    if public_id is None or version is None:
        return FileCheck(FILE_FOREIGN, detail="signed revision has no certificate identity")
    return FileCheck(FILE_INTACT, public_id=public_id, version=version)


def _signed_identity(signature) -> tuple[str | None, int | None]:
    # Read from the signed revision itself, so a later update cannot relabel the file.
    revision = signature.reader.get_historical_resolver(signature.signed_revision)
    trailer = revision.trailer_view
    try:
        info = trailer["/Info"].get_object()
        public_id = str(info[INFO_PUBLIC_ID])
        version = int(info[INFO_VERSION])
    except (KeyError, TypeError, ValueError):
        return None, None
    return public_id, version
