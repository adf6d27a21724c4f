"""Signed certificate PDFs: demo keys, pyHanko validation, /verify/file and the PDF cache."""

from __future__ import annotations

import io
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.fields import MDPPerm
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko_certvalidator import ValidationContext
from pypdf import PdfReader
from sqlalchemy import select

from app.domain import signing
from app.domain.documents import render_pdf
from app.extensions import db
from app.models import STATUS_REVOKED, Certificate
from app.services import certificates as certificate_service

from .conftest import HOLDER_PASSWORD, csrf_token
from .test_documents import STATIC_DIR, sample_document

CONSTRUCTOR_ROSTER = "2024年度二级建造师考试合格人员名单.xlsx"
# First data row of the 2024 二级建造师 roster.
NUMBER, NAME, ID_NUMBER = "202421000001", "田娟", "500109196409269696"


@pytest.fixture(scope="module")
def demo_keys(tmp_path_factory: pytest.TempPathFactory) -> signing.SigningKeys:
    return signing.generate_demo_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def instance_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("instance")


@pytest.fixture(scope="module")
def unsigned_pair(instance_dir: Path) -> tuple[bytes, bytes]:
    """The same certificate rendered for 张晓明 and for 张晓亮, unsigned."""
    first = render_pdf(sample_document("qual_constructor", name="张晓明"), static_dir=STATIC_DIR, instance_dir=instance_dir)
    second = render_pdf(sample_document("qual_constructor", name="张晓亮"), static_dir=STATIC_DIR, instance_dir=instance_dir)
    return first, second


@pytest.fixture(scope="module")
def signed(unsigned_pair: tuple[bytes, bytes], demo_keys: signing.SigningKeys) -> bytes:
    return signing.sign_pdf(unsigned_pair[0], demo_keys, public_id="pub-0001", version=3)


def name_edited(signed_pdf: bytes, unsigned_pair: tuple[bytes, bytes]) -> bytes:
    """Change one byte of the signed PDF: the first byte where the page drawing 张晓亮 differs.

    The signed file starts with the unsigned bytes unchanged (the signature is
    an incremental update), so that offset lies in the page content that
    draws the holder's name.
    """
    first, second = unsigned_pair
    offset = next(index for index, (a, b) in enumerate(zip(first, second)) if a != b)
    edited = bytearray(signed_pdf)
    edited[offset] = second[offset]
    return bytes(edited)


def pyhanko_status(pdf: bytes, keys: signing.SigningKeys):
    reader = PdfFileReader(io.BytesIO(pdf), strict=False)
    context = ValidationContext(trust_roots=signing.load_trust_roots(keys.ca_files))
    return validate_pdf_signature(reader.embedded_signatures[0], context)


# --- keys ------------------------------------------------------------------


def test_generate_refuses_overwrite(demo_keys: signing.SigningKeys) -> None:
    with pytest.raises(signing.KeysExistError):
        signing.generate_demo_keys(demo_keys.key_file.parent)


def test_private_key_mode_0600(demo_keys: signing.SigningKeys) -> None:
    assert demo_keys.key_file.stat().st_mode & 0o777 == 0o600


def test_keys_init_cli(app, runner, tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    settings = {
        "SIGNING_KEY_FILE": str(keys_dir / signing.KEY_FILE),
        "SIGNING_CERT_FILE": str(keys_dir / signing.CERT_FILE),
        "SIGNING_CA_FILES": [str(keys_dir / signing.CA_FILE)],
    }
    previous = {key: app.config[key] for key in settings}
    app.config.update(settings)
    try:
        created = runner.invoke(args=["keys", "init"])
        first_cert = (keys_dir / signing.CERT_FILE).read_bytes()
        refused = runner.invoke(args=["keys", "init"])
        kept = runner.invoke(args=["keys", "init", "--if-missing"])
        unchanged_cert = (keys_dir / signing.CERT_FILE).read_bytes()
        forced = runner.invoke(args=["keys", "init", "--force"])
        forced_cert = (keys_dir / signing.CERT_FILE).read_bytes()
    finally:
        app.config.update(previous)

    assert created.exit_code == 0, created.output
    assert refused.exit_code != 0
    assert "--force" in refused.output
    assert kept.exit_code == 0
    assert unchanged_cert == first_cert
    assert forced.exit_code == 0
    assert forced_cert != first_cert


# --- pyHanko ---------------------------------------------------------------


def test_signed_pdf_intact(signed: bytes, demo_keys: signing.SigningKeys) -> None:
    status = pyhanko_status(signed, demo_keys)
    assert status.intact
    assert status.valid
    assert status.trusted
    assert status.bottom_line


def test_signed_pdf_certified_no_changes(signed: bytes) -> None:
    reader = PdfFileReader(io.BytesIO(signed), strict=False)
    signature = reader.embedded_signatures[0]
    assert signature.docmdp_level == MDPPerm.NO_CHANGES


def test_signed_pdf_pades_subfilter(signed: bytes) -> None:
    reader = PdfFileReader(io.BytesIO(signed), strict=False)
    assert reader.embedded_signatures[0].sig_object["/SubFilter"] == "/ETSI.CAdES.detached"


def test_signed_pdf_still_one_page(signed: bytes) -> None:
    assert len(PdfReader(io.BytesIO(signed)).pages) == 1


def test_metadata_identity_no_personal_data(signed: bytes) -> None:
    metadata = PdfReader(io.BytesIO(signed)).metadata
    assert metadata[signing.INFO_PUBLIC_ID] == "pub-0001"
    assert int(metadata[signing.INFO_VERSION]) == 3
    assert "张晓明" not in " ".join(str(value) for value in metadata.values())


def test_name_edit_fails_pyhanko(signed: bytes, unsigned_pair, demo_keys: signing.SigningKeys) -> None:
    edited = name_edited(signed, unsigned_pair)
    assert sum(a != b for a, b in zip(signed, edited)) == 1
    status = pyhanko_status(edited, demo_keys)
    assert not status.intact


@pytest.mark.parametrize(("case", "expected"), [
    ("untouched", signing.FILE_INTACT),
    ("name_edited", signing.FILE_MODIFIED),
    ("unsigned", signing.FILE_FOREIGN),
    ("other_ca", signing.FILE_FOREIGN),
    ("appended_update", signing.FILE_MODIFIED),
    ("truncated", signing.FILE_UNREADABLE),
    ("garbage", signing.FILE_UNREADABLE),
    ("png", signing.FILE_UNREADABLE),
    ("empty", signing.FILE_UNREADABLE),
])
def test_check_signed_file(case, expected, signed, unsigned_pair, demo_keys, tmp_path) -> None:
    data = {
        "untouched": lambda: signed,
        "name_edited": lambda: name_edited(signed, unsigned_pair),
        "unsigned": lambda: unsigned_pair[0],
        "other_ca": lambda: signing.sign_pdf(unsigned_pair[0], signing.generate_demo_keys(tmp_path),
                                             public_id="pub-0001", version=3),
        "appended_update": lambda: appended_update(signed),
        "truncated": lambda: signed[: len(signed) // 2],
        "garbage": lambda: b"%PDF-1.7\n" + bytes(range(256)) * 40,
        "png": lambda: b"\x89PNG\r\n\x1a\n" + b"\0" * 100,
        "empty": lambda: b"",
    }[case]()
    check = signing.check_signed_file(data, signing.load_trust_roots(demo_keys.ca_files))
    assert check.outcome == expected


def appended_update(signed_pdf: bytes) -> bytes:
    """Add a valid incremental update after the certification (a new Info title)."""
    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter

    writer = IncrementalPdfFileWriter(io.BytesIO(signed_pdf), strict=False)
    info = writer.trailer["/Info"].get_object()
    info[generic.NameObject("/Title")] = generic.TextStringObject("changed")
    writer.update_container(info)
    output = io.BytesIO()
    writer.write(output)
    return output.getvalue()


# --- the web: download cache and /verify/file -----------------------------


@pytest.fixture
def loaded(import_roster):
    import_roster(CONSTRUCTOR_ROSTER, "二级建造师", "certificate")


def register(client) -> None:
    page = client.get("/register").get_data(as_text=True)
    response = client.post("/register", data={
        "name": NAME, "id_type": "居民身份证", "id_number": ID_NUMBER, "phone": "13800000001",
        "password": HOLDER_PASSWORD, "confirm": HOLDER_PASSWORD, "consent": "y", "csrf_token": csrf_token(page),
    })
    assert response.status_code == 303
    # Registration does not log in (it responds the same for taken ID numbers), so log in next.
    page = client.get("/login").get_data(as_text=True)
    response = client.post("/login", data={"login": ID_NUMBER, "password": HOLDER_PASSWORD, "csrf_token": csrf_token(page)})
    assert response.status_code == 303


def certificate_record() -> Certificate:
    return db.session.scalar(select(Certificate).where(Certificate.number == NUMBER))


def downloaded_pdf(app) -> bytes:
    with app.app_context():
        return certificate_service.certificate_pdf(certificate_record())


def upload(client, data: bytes, *, htmx: bool = False, filename: str = "证书.pdf"):
    page = client.get("/verify/file").get_data(as_text=True)
    headers = {"HX-Request": "true"} if htmx else {}
    return client.post("/verify/file", headers=headers, content_type="multipart/form-data", data={
        "csrf_token": csrf_token(page), "file": (io.BytesIO(data), filename),
    })


def test_download_etag_and_no_store(client, loaded) -> None:
    register(client)
    response = client.get(f"/me/certificates/{NUMBER}.pdf")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["ETag"]


def test_download_conditional_304(client, loaded) -> None:
    register(client)
    etag = client.get(f"/me/certificates/{NUMBER}.pdf").headers["ETag"]
    response = client.get(f"/me/certificates/{NUMBER}.pdf", headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert response.data == b""
    assert response.headers["Cache-Control"] == "no-store"


def test_download_served_from_cache(app, client, loaded) -> None:
    register(client)
    first = client.get(f"/me/certificates/{NUMBER}.pdf").data
    second = client.get(f"/me/certificates/{NUMBER}.pdf").data
    # Each signature carries its signing time, so equal bytes mean the cache served both.
    assert first == second


def test_new_version_new_cache_entry(app, client, loaded) -> None:
    register(client)
    old_etag = client.get(f"/me/certificates/{NUMBER}.pdf").headers["ETag"]
    with app.app_context():
        record = certificate_record()
        old_path = certificate_service.cache_entry(record).path
        record.version += 1
        db.session.commit()
    response = client.get(f"/me/certificates/{NUMBER}.pdf", headers={"If-None-Match": old_etag})
    assert response.status_code == 200
    assert response.headers["ETag"] != old_etag
    assert not old_path.exists()


def test_downloaded_pdf_validates(app, loaded) -> None:
    pdf = downloaded_pdf(app)
    with app.app_context():
        keys = certificate_service.signing_keys()
    assert pyhanko_status(pdf, keys).bottom_line


def test_verify_file_page_has_form(client) -> None:
    html = client.get("/verify/file").get_data(as_text=True)
    assert 'enctype="multipart/form-data"' in html
    assert 'name="csrf_token"' in html


def test_verify_file_valid(app, client, loaded) -> None:
    response = upload(client, downloaded_pdf(app))
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "真实有效" in html
    assert NUMBER in html
    assert ID_NUMBER not in html


def test_verify_file_htmx_fragment(app, client, loaded) -> None:
    html = upload(client, downloaded_pdf(app), htmx=True).get_data(as_text=True)
    assert "真实有效" in html
    assert "<html" not in html


def test_verify_file_one_byte_edit(app, client, loaded, instance_dir) -> None:
    pdf = downloaded_pdf(app)
    with app.app_context():
        record = certificate_record()
        document = certificate_service.document_of(record)
    from dataclasses import replace

    first = render_pdf(document, static_dir=STATIC_DIR, instance_dir=instance_dir)
    second = render_pdf(replace(document, name="田娥"), static_dir=STATIC_DIR, instance_dir=instance_dir)
    # The cached PDF was rendered from the same document, so its unsigned
    # prefix matches `first` except for the creation date in the metadata.
    offset = next(index for index, (a, b) in enumerate(zip(first, second)) if a != b)
    edited = bytearray(pdf)
    edited[offset] ^= 0x01
    html = upload(client, bytes(edited)).get_data(as_text=True)
    assert "文件已被修改" in html


def test_verify_file_revoked(app, client, loaded) -> None:
    pdf = downloaded_pdf(app)
    with app.app_context():
        record = certificate_record()
        record.status = STATUS_REVOKED
        record.revoked_at = datetime(2025, 3, 1, tzinfo=timezone.utc)
        db.session.commit()
    html = upload(client, pdf).get_data(as_text=True)
    assert "已撤销" in html
    assert "真实有效" not in html


def test_verify_file_corrected(app, client, loaded) -> None:
    pdf = downloaded_pdf(app)
    with app.app_context():
        certificate_record().version += 1
        db.session.commit()
    html = upload(client, pdf).get_data(as_text=True)
    assert "信息已更正" in html
    assert "真实有效" in html


def test_verify_file_unknown_certificate(app, client, loaded) -> None:
    pdf = downloaded_pdf(app)
    with app.app_context():
        db.session.delete(certificate_record())
        db.session.commit()
    html = upload(client, pdf).get_data(as_text=True)
    assert "非本系统签发" in html


@pytest.mark.parametrize(("case", "data", "expected"), [
    ("text", "这不是 PDF".encode(), "无法读取该文件"),
    ("truncated_header", b"%PDF-1.4\n1 0 obj <<", "无法读取该文件"),
    ("zip", b"PK\x03\x04" + b"\0" * 200, "无法读取该文件"),
])
def test_verify_file_garbage(client, case, data, expected) -> None:
    response = upload(client, data)
    assert response.status_code == 200
    assert expected in response.get_data(as_text=True)


def test_verify_file_truncated_pdf(app, client, loaded) -> None:
    pdf = downloaded_pdf(app)
    response = upload(client, pdf[: len(pdf) * 2 // 3])
    assert response.status_code == 200
    assert "无法读取该文件" in response.get_data(as_text=True)


def test_verify_file_unsigned_pdf(client, unsigned_pair) -> None:
    assert "非本系统签发" in upload(client, unsigned_pair[0]).get_data(as_text=True)


def test_verify_file_empty(client) -> None:
    response = upload(client, b"")
    assert response.status_code == 400
    assert "请选择" in response.get_data(as_text=True) or "空的" in response.get_data(as_text=True)


@pytest.fixture
def small_upload_limit(app):
    # Kept under the test client's 500 KB spooling threshold: a spooled body
    # becomes a temporary file that the test client never closes.
    previous = app.config["VERIFY_FILE_MAX_BYTES"]
    app.config["VERIFY_FILE_MAX_BYTES"] = 100 * 1024
    yield app.config["VERIFY_FILE_MAX_BYTES"]
    app.config["VERIFY_FILE_MAX_BYTES"] = previous


def test_verify_file_too_large(client, small_upload_limit) -> None:
    response = upload(client, b"%PDF-1.7\n" + b"0" * (small_upload_limit + 64 * 1024))
    assert response.status_code == 413
    assert "超过 100 KB" in response.get_data(as_text=True)


def test_verify_file_requires_csrf(client) -> None:
    response = client.post("/verify/file", content_type="multipart/form-data",
                           data={"file": (io.BytesIO(b"%PDF-1.7"), "a.pdf")})
    # The shared CSRF handler returns 400 or redirects back with a message, and in both cases nothing is checked.
    assert response.status_code in (303, 400)
    assert "无法读取该文件" not in response.get_data(as_text=True)


# --- /verify/file in Chromium, with and without JavaScript -----------------

from .test_browser import CHROMIUM, CHROMIUM_ARGS, live_server  # noqa: E402,F401


@pytest.fixture
def certificate_file(app, loaded, tmp_path) -> Path:
    # Signed before the browser starts: Playwright's sync API runs an event
    # loop in this thread, and pyHanko calls asyncio.run().
    path = tmp_path / f"{NUMBER}.pdf"
    path.write_bytes(downloaded_pdf(app))
    return path


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium")
@pytest.mark.parametrize("javascript", [True, False], ids=["htmx", "no-js"])
def test_verify_file_in_browser(certificate_file, live_server, browser, javascript) -> None:
    pdf_path = certificate_file
    context = browser.new_context(java_script_enabled=javascript, locale="zh-CN")
    page = context.new_page()
    try:
        page.goto(f"{live_server}/verify/file")
        page.get_by_label("证书 PDF 文件").set_input_files(str(pdf_path))
        page.get_by_role("button", name="查验文件").click()
        page.get_by_text("真实有效").wait_for()
        # htmx swaps the fragment in place; without JavaScript the form posts and the page reloads.
        assert page.locator("#verify-file-result").get_by_text(NUMBER).count() == 1
        assert page.locator("h1").count() == 1
    finally:
        context.close()


def classic_pdf(objects: dict[int, bytes]) -> bytes:
    """Assemble a one-revision PDF with a classic cross-reference table from {object number: body}."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (max(objects) + 1)
    for number in range(1, max(objects) + 1):
        out += b"%010d 00000 n \n" % offsets[number]
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (max(objects) + 1, xref)
    return bytes(out)


PAGES = b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"
PAGE = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>"
NESTED_PDFS = {
    "deep-array": {1: b"<< /Type /Catalog /Pages 2 0 R /X " + b"[" * 50_000 + b"]" * 50_000 + b" >>", 2: PAGES, 3: PAGE},
    "deep-dict": {1: b"<< /Type /Catalog /Pages 2 0 R /X " + b"<< /A " * 20_000 + b"1" + b" >>" * 20_000 + b" >>",
                  2: PAGES, 3: PAGE},
}


@pytest.mark.parametrize("case", sorted(NESTED_PDFS))
def test_deeply_nested_pdf_unreadable(case, demo_keys, tmp_path) -> None:
    path = tmp_path / f"{case}.pdf"
    path.write_bytes(classic_pdf(NESTED_PDFS[case]))

    check = signing.check_signed_file(path.read_bytes(), signing.load_trust_roots(demo_keys.ca_files))

    assert check.outcome == signing.FILE_UNREADABLE


@pytest.mark.parametrize("case", sorted(NESTED_PDFS))
def test_verify_file_deeply_nested_pdf(client, case, tmp_path) -> None:
    path = tmp_path / f"{case}.pdf"
    path.write_bytes(classic_pdf(NESTED_PDFS[case]))

    response = upload(client, path.read_bytes())

    assert response.status_code == 200
    assert "无法读取该文件" in response.get_data(as_text=True)
