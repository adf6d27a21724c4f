"""Holders: register, log in, see, download and print their own certificates only."""

from __future__ import annotations

import io
import re

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
