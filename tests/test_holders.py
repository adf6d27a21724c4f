"""Holders: register, log in, see, download and print their own certificates only."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest
from pypdf import PdfReader

from .conftest import HOLDER_PASSWORD, csrf_token

CONSTRUCTOR_ROSTER = "2024年度二级建造师考试合格人员名单.xlsx"
# First data row of the 2024 二级建造师 roster.
NUMBER, NAME, ID_NUMBER = "202421000001", "田娟", "500109196409269696"


def register(client, log_in=True, **overrides):
    page = client.get("/register").get_data(as_text=True)
    data = {
        "name": NAME,
        "id_type": "居民身份证",
        "id_number": ID_NUMBER,
        "phone": "13800000001",
        "password": HOLDER_PASSWORD,
        "confirm": HOLDER_PASSWORD,
        "consent": "y",
        "csrf_token": csrf_token(page),
    }
    data.update(overrides)
    response = client.post("/register", data=data)
    if response.status_code == 303 and log_in:
        login(client, data["id_number"], data["password"])
    return response


def login(client, login_name=ID_NUMBER, password=HOLDER_PASSWORD):
    page = client.get("/login").get_data(as_text=True)
    return client.post("/login", data={"login": login_name, "password": password, "csrf_token": csrf_token(page)})


def without_tokens(html: str, login_name: str) -> str:
    """Drop what legitimately differs between two answers: the CSRF tokens and the echoed login."""
    return re.sub(r"[\w.-]{40,}", "TOKEN", html).replace(login_name, "LOGIN")


@pytest.fixture
def loaded(import_roster):
    import_roster(CONSTRUCTOR_ROSTER, "二级建造师", "certificate")


def test_register_form_labels_every_field(client):
    html = client.get("/register").get_data(as_text=True)

    for field_id in ["name", "id_type", "id_number", "phone", "password", "confirm", "consent"]:
        assert f'<label for="{field_id}">' in html, field_id
    assert "个人信息保护告知书" in html


def test_register_then_list_certificates(client, loaded):
    response = register(client)
    assert response.status_code == 303

    html = client.get("/me").get_data(as_text=True)
    assert NUMBER in html
    assert "矿业工程" in html
    assert ID_NUMBER not in html


def test_register_requires_consent(client):
    response = register(client, consent="")

    assert response.status_code == 200
    assert "请阅读并同意" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("id_number", "500109196409269697", "校验"),
        ("phone", "12345", "手机号码"),
        ("confirm", "something-else", "不一致"),
        ("password", "short", "至少 8 位"),
    ],
    ids=["bad-checksum", "bad-phone", "mismatch", "short-password"],
)
def test_register_rejects_bad_field(client, field, value, message):
    overrides = {field: value}
    if field == "password":
        overrides["confirm"] = value
    response = register(client, **overrides)

    assert response.status_code == 200
    assert message in response.get_data(as_text=True)


def test_register_twice_answers_like_first(client):
    first = register(client, log_in=False)
    second = register(client, log_in=False, phone="13800000002")

    assert first.status_code == second.status_code == 303
    assert first.headers["Location"] == second.headers["Location"]
    assert login(client, "13800000002").status_code == 200  # the second account was not created


@pytest.mark.parametrize(
    "attack, name, message",
    [
        ("markup, bidi override and control character", '<b>x</b>\u202e"\'\x01', "姓名「<b>x</b>"),
        ("script tag", "<script>alert(1)</script>", "含有标记字符"),
        ("right-to-left override", "田\u202e娟", "含有控制字符"),
        ("control character", "田\x01娟", "含有控制字符"),
        ("digits", "田娟2", "含有数字"),
        ("only punctuation", "·-", "中没有文字"),
        ("other symbols", "田娟★", "含有不允许的字符"),
        ("too long", "田" * 31, "超过 30 个字符的上限"),
    ],
)
def test_register_rejects_bad_name(app, client, attack, name, message):
    from app.extensions import db
    from app.models import Holder

    response = register(client, log_in=False, name=name)
    html = response.get_data(as_text=True)

    assert response.status_code == 200, attack
    assert message.replace("<", "&lt;").replace(">", "&gt;") in html, attack
    with app.app_context():
        assert db.session.query(Holder).count() == 0


@pytest.mark.parametrize(
    "typed, stored",
    [("田 娟", "田娟"), ("Ｌｉ Ｍｉｎｇ", "Li Ming"), ("阿依古丽.买买提", "阿依古丽·买买提")],
    ids=["space-in-chinese-name", "full-width-latin", "dot-between-chinese"],
)
def test_register_normalises_name(app, client, typed, stored):
    from app.extensions import db
    from app.models import Holder

    response = register(client, log_in=False, name=typed)

    assert response.status_code == 303
    with app.app_context():
        assert db.session.query(Holder.name).scalar() == stored


@pytest.mark.parametrize("login_name", [ID_NUMBER, ID_NUMBER.lower(), "13800000001"], ids=["id", "id-lower", "phone"])
def test_login_by_id_or_phone(client, loaded, login_name):
    register(client)
    client.post("/logout", data={"csrf_token": csrf_token(client.get("/me").get_data(as_text=True))})

    response = login(client, login_name)

    assert response.status_code == 303
    assert NUMBER in client.get("/me").get_data(as_text=True)


def test_login_failure_message_is_the_same(client):
    register(client)
    client.post("/logout", data={"csrf_token": csrf_token(client.get("/me").get_data(as_text=True))})

    wrong_password = login(client, ID_NUMBER, "wrong-password").get_data(as_text=True)
    unknown = login(client, "110101199001011237", "wrong-password").get_data(as_text=True)

    assert "不正确" in wrong_password
    assert without_tokens(wrong_password, ID_NUMBER) == without_tokens(unknown, "110101199001011237")


def test_download_pdf(client, loaded):
    register(client)

    response = client.get(f"/me/certificates/{NUMBER}.pdf")

    assert response.status_code == 200
    assert response.mimetype == "application/pdf"
    assert "attachment" in response.headers["Content-Disposition"]
    assert response.headers["Cache-Control"] == "no-store"
    reader = PdfReader(io.BytesIO(response.data))
    assert len(reader.pages) == 1
    assert NAME in reader.pages[0].extract_text()


def test_print_view(client, loaded):
    register(client)

    html = client.get(f"/me/certificates/{NUMBER}/print").get_data(as_text=True)

    assert "打印" in html
    assert f"/me/certificates/{NUMBER}.pdf?inline=1" in html


def csp_directives(policy: str) -> dict[str, str]:
    directives = [directive.strip().split(" ", 1) for directive in policy.split(";") if directive.strip()]
    return {parts[0]: parts[1] if len(parts) > 1 else "" for parts in directives}


def test_print_preview_headers_allow_embedding(client, loaded):
    """The print page's <object> and the inline PDF relax only the directives the embedding needs."""
    from app.security import CONTENT_SECURITY_POLICY

    register(client)
    strict = csp_directives(CONTENT_SECURITY_POLICY)

    page = client.get(f"/me/certificates/{NUMBER}/print")
    embedded = re.search(r'<object[^>]*\sdata="([^"]+)"', page.get_data(as_text=True)).group(1).replace("&amp;", "&")
    pdf = client.get(embedded)

    assert pdf.status_code == 200
    assert pdf.mimetype == "application/pdf"
    assert csp_directives(page.headers["Content-Security-Policy"]) == {**strict, "object-src": "'self'"}
    assert page.headers["X-Frame-Options"] == "DENY"
    assert csp_directives(pdf.headers["Content-Security-Policy"]) == {**strict, "frame-ancestors": "'self'"}
    assert pdf.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert len(pdf.headers.getlist("Content-Security-Policy")) == 1
    assert len(pdf.headers.getlist("X-Frame-Options")) == 1


@pytest.mark.parametrize("path", ["/me", f"/me/certificates/{NUMBER}.pdf"], ids=["list-page", "attachment"])
def test_other_responses_keep_strict_framing(client, loaded, path):
    from app.security import CONTENT_SECURITY_POLICY

    register(client)

    response = client.get(path)

    assert response.status_code == 200
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["X-Frame-Options"] == "DENY"


def test_other_holders_certificate_answers_not_found(client, loaded):
    register(client)
    client.get("/me")  # shows the registration message, so neither answer below carries it

    other = client.get("/me/certificates/202421000002.pdf")
    missing = client.get("/me/certificates/209999999999.pdf")

    assert other.status_code == 404
    assert missing.status_code == 404
    # The CSRF token in the page is timestamped, so it may change between the two requests.
    assert without_tokens(other.get_data(as_text=True), "-") == without_tokens(missing.get_data(as_text=True), "-")


def test_holder_without_certificates_is_told_why(client):
    register(client)

    html = client.get("/me").get_data(as_text=True)

    assert "尚未上传" in html
    assert "分批上线" in html
    assert "继续有效" in html
    assert "不予补发" in html


def test_anonymous_is_sent_to_login(client):
    response = client.get("/me")

    assert response.status_code in (302, 303)
    assert "/login" in response.headers["Location"]


def test_holder_cannot_enter_admin(client):
    register(client)

    response = client.get("/admin/")

    assert response.status_code in (302, 303)
    assert "/admin/login" in response.headers["Location"]


def test_revoked_certificate_is_not_downloadable(app, client, loaded):
    from sqlalchemy import select

    from app.extensions import db
    from app.models import Certificate

    register(client)
    with app.app_context():
        certificate = db.session.scalar(select(Certificate).where(Certificate.number == NUMBER))
        certificate.status = "revoked"
        db.session.commit()

    listing = client.get("/me").get_data(as_text=True)
    pdf = client.get(f"/me/certificates/{NUMBER}.pdf")
    printing = client.get(f"/me/certificates/{NUMBER}/print")

    assert "已撤销" in listing
    assert pdf.status_code == 404
    assert printing.status_code == 404


# --- cached download: ownership on every request, cache key, events, X-Accel-Redirect ---------

PDF_URL = f"/me/certificates/{NUMBER}.pdf"


def update_record(app, **fields) -> None:
    from sqlalchemy import select

    from app.extensions import db
    from app.models import Certificate

    with app.app_context():
        certificate = db.session.scalar(select(Certificate).where(Certificate.number == NUMBER))
        for name, value in fields.items():
            setattr(certificate, name, value)
        db.session.commit()


def cached_file(app) -> Path:
    """Return the cache file of the current version of certificate NUMBER (other tests' files may sit beside it)."""
    from sqlalchemy import select

    from app.extensions import db
    from app.models import Certificate
    from app.services import certificates

    with app.app_context():
        path = certificates.cache_entry(db.session.scalar(select(Certificate).where(Certificate.number == NUMBER))).path
    assert path.is_file(), path
    return path


def download_count(app) -> int:
    from sqlalchemy import func, select

    from app.extensions import db
    from app.models import DownloadEvent

    with app.app_context():
        return db.session.scalar(select(func.count(DownloadEvent.id)))


def test_owned_source_matches_record(app, loaded):
    from sqlalchemy import select

    from app.extensions import db
    from app.id_numbers import id_hash
    from app.models import Certificate
    from app.services import certificates

    with app.app_context():
        record = db.session.scalar(select(Certificate).where(Certificate.number == NUMBER))
        source = certificates.owned_pdf_source(NUMBER, NAME, id_hash(ID_NUMBER))
        other_name = certificates.owned_pdf_source(NUMBER, "别人", id_hash(ID_NUMBER))
        other_id = certificates.owned_pdf_source(NUMBER, NAME, id_hash("110101199001011237"))

        assert source == certificates.source_of(record)
        assert certificates.cache_entry(source) == certificates.cache_entry(record)
    assert other_name is None
    assert other_id is None


def test_render_cached_refuses_changed_record(app, loaded):
    from sqlalchemy import select

    from app.extensions import db
    from app.models import Certificate
    from app.services import certificates

    with app.app_context():
        record = db.session.scalar(select(Certificate).where(Certificate.number == NUMBER))
        source = certificates.source_of(record)
        record.version += 1
        db.session.commit()

        assert certificates.render_cached(source) is None
        assert not certificates.cache_entry(source).path.exists()
        assert not certificates.cache_entry(record).path.exists()


def test_revocation_after_caching_is_404(app, client, loaded):
    register(client)
    etag = client.get(PDF_URL).headers["ETag"]

    update_record(app, status="revoked")

    assert client.get(PDF_URL).status_code == 404
    assert client.get(PDF_URL, headers={"If-None-Match": etag}).status_code == 404


def test_corrected_id_number_after_caching_is_404(app, client, loaded):
    register(client)
    assert client.get(PDF_URL).status_code == 200

    update_record(app, id_number="110101199001011237", version=2)

    assert client.get(PDF_URL).status_code == 404


def test_catalogue_change_gives_new_etag(app, client, loaded):
    from sqlalchemy import select

    from app.extensions import db
    from app.models import Certificate

    register(client)
    first = client.get(PDF_URL)
    with app.app_context():
        layout = db.session.scalar(select(Certificate).where(Certificate.number == NUMBER)).layout
        original = layout.statement
        layout.statement = (original or "") + "（测试修改）"
        db.session.commit()
    try:
        second = client.get(PDF_URL)
    finally:
        with app.app_context():
            layout = db.session.scalar(select(Certificate).where(Certificate.number == NUMBER)).layout
            layout.statement = original
            db.session.commit()

    assert second.status_code == 200
    assert second.headers["ETag"] != first.headers["ETag"]
    assert second.data != first.data


def test_download_sends_cached_bytes(app, client, loaded):
    register(client)

    response = client.get(PDF_URL)

    assert response.status_code == 200
    assert "X-Accel-Redirect" not in response.headers
    assert response.data == cached_file(app).read_bytes()
    assert response.headers["ETag"] == '"%s"' % cached_file(app).stem.rsplit("-", 1)[1]


def test_cached_download_runs_one_query(app, client, loaded):
    from sqlalchemy import event

    from app.extensions import db

    register(client)
    client.get(PDF_URL)  # renders and caches the file
    statements = []

    def record(_connection, _cursor, statement, *_args):
        statements.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        response = client.get(PDF_URL)
    finally:
        event.remove(engine, "before_cursor_execute", record)

    assert response.status_code == 200
    assert len(statements) == 1
    assert "JOIN holder" in statements[0]


def test_download_with_copied_cookie_after_logout(app, client, loaded):
    register(client)
    assert client.get(PDF_URL).status_code == 200
    copied = client.get_cookie("session").value
    page = client.get("/me").get_data(as_text=True)
    client.post("/logout", data={"csrf_token": csrf_token(page)})
    thief = app.test_client()
    thief.set_cookie("session", copied)

    response = thief.get(PDF_URL)

    assert response.status_code in (302, 303)
    assert "/login" in response.headers["Location"]


def test_download_after_account_removed(app, client, loaded):
    from sqlalchemy import delete

    from app.extensions import db
    from app.models import Holder

    register(client)
    assert client.get(PDF_URL).status_code == 200
    with app.app_context():
        db.session.execute(delete(Holder))
        db.session.commit()

    response = client.get(PDF_URL)

    assert response.status_code in (302, 303)
    assert "/login" in response.headers["Location"]


def test_download_after_idle_limit(app, client, loaded, monkeypatch):
    import app.security as security

    register(client)
    assert client.get(PDF_URL).status_code == 200
    start = security.clock()
    monkeypatch.setattr(security, "clock", lambda: start + app.config["SESSION_IDLE_MINUTES"] * 60 + 5)

    response = client.get(PDF_URL)

    assert response.status_code in (302, 303)
    assert "/login" in response.headers["Location"]


def test_download_from_other_user_agent(client, loaded):
    # Flask-Login's session protection marks the permanent session as not fresh
    # and keeps it, so the full path serves the file.
    register(client)

    response = client.get(PDF_URL, headers={"User-Agent": "another-browser/1.0"})

    assert response.status_code == 200
    assert response.mimetype == "application/pdf"


def test_staff_session_cannot_download(staff_client, loaded):
    response = staff_client.get(PDF_URL)

    assert response.status_code == 403


def test_download_with_accel_redirect(app, client, loaded, monkeypatch):
    monkeypatch.setitem(app.config, "PDF_ACCEL_REDIRECT_PREFIX", "/_protected/pdf-cache/")
    register(client)

    response = client.get(PDF_URL)
    inline = client.get(PDF_URL, query_string={"inline": 1})

    cached = cached_file(app)
    etag = cached.stem.rsplit("-", 1)[1]
    assert response.status_code == 200
    assert response.data == b""
    assert response.headers["X-Accel-Redirect"] == f"/_protected/pdf-cache/{cached.name}"
    assert response.headers["Content-Type"] == "application/pdf"
    assert response.headers["Content-Disposition"] == f"attachment; filename={NUMBER}.pdf"
    assert response.headers["ETag"] == f'"{etag}"'
    assert response.headers["Cache-Control"] == "no-store"
    assert inline.headers["Content-Disposition"] == f"inline; filename={NUMBER}.pdf"
    assert inline.headers["X-Accel-Redirect"] == response.headers["X-Accel-Redirect"]


def test_accel_redirect_conditional_304(app, client, loaded, monkeypatch):
    monkeypatch.setitem(app.config, "PDF_ACCEL_REDIRECT_PREFIX", "/_protected/pdf-cache/")
    register(client)
    etag = client.get(PDF_URL).headers["ETag"]

    response = client.get(PDF_URL, headers={"If-None-Match": etag})

    assert response.status_code == 304
    assert "X-Accel-Redirect" not in response.headers
    assert response.headers["ETag"] == etag
    assert response.headers["Cache-Control"] == "no-store"


def test_accel_redirect_not_for_others(app, client, loaded, monkeypatch):
    monkeypatch.setitem(app.config, "PDF_ACCEL_REDIRECT_PREFIX", "/_protected/pdf-cache/")
    register(client)

    response = client.get("/me/certificates/202421000002.pdf")

    assert response.status_code == 404
    assert "X-Accel-Redirect" not in response.headers


def test_download_events_buffered_until_stats(app, client, loaded, monkeypatch):
    from app.services import events, stats

    monkeypatch.setitem(app.config, "LOOKUP_EVENT_BUFFER", 100)
    monkeypatch.setitem(app.config, "LOOKUP_EVENT_FLUSH_SECONDS", 3600)
    with app.app_context():
        events.flush_downloads()
    register(client)

    client.get(PDF_URL)
    client.get(PDF_URL)
    before = download_count(app)
    with app.app_context():
        today = stats.days()[-1]

    assert before == 0
    assert today.downloads == 2
    assert download_count(app) == 2


def test_download_events_written_in_batches(app, client, loaded, monkeypatch):
    from app.services import events

    monkeypatch.setitem(app.config, "LOOKUP_EVENT_BUFFER", 3)
    monkeypatch.setitem(app.config, "LOOKUP_EVENT_FLUSH_SECONDS", 3600)
    with app.app_context():
        events.flush_downloads()
    register(client)

    client.get(PDF_URL)
    client.get(PDF_URL)
    before = download_count(app)
    client.get(PDF_URL)

    assert before == 0
    assert download_count(app) == 3


def test_refused_downloads_are_logged(app, client, loaded, caplog):
    register(client)

    with caplog.at_level(logging.INFO, logger="app.holders.routes"):
        client.get("/me/certificates/202421000002.pdf")
        client.get("/me/certificates/209999999999.pdf")

    records = [record for record in caplog.records if record.name == "app.holders.routes"]
    warnings = [record.getMessage() for record in records if record.levelno == logging.WARNING]
    assert any("which is not theirs" in message for message in warnings), warnings
    assert any("which does not exist" in message for message in warnings), warnings
    assert not any(ID_NUMBER in record.getMessage() for record in records)


def test_revoked_download_logged_as_revoked(app, client, loaded, caplog):
    register(client)
    update_record(app, status="revoked")

    with caplog.at_level(logging.INFO, logger="app.holders.routes"):
        response = client.get(PDF_URL)

    assert response.status_code == 404
    assert any("which is revoked" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("number", ["2" * 40, "2024%00", "202421000001%20"], ids=["too-long", "nul", "trailing-space"])
def test_odd_numbers_answer_not_found(client, loaded, number):
    register(client)

    response = client.get(f"/me/certificates/{number}.pdf")

    assert response.status_code == 404


def test_session_cookie_rewritten_only_when_seen_moves(client, loaded, monkeypatch):
    import app.security as security

    register(client)
    client.get("/me")
    quiet = client.get("/me")
    start = security.clock()
    monkeypatch.setattr(security, "clock", lambda: start + security.SEEN_RESOLUTION_SECONDS + 5)
    moved = client.get("/me")

    assert quiet.status_code == 200
    assert "Set-Cookie" not in quiet.headers
    assert moved.status_code == 200
    assert "session=" in moved.headers.get("Set-Cookie", "")
