"""Requests: CSRF on every change, no GET changes state, headers on every route, access between users."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from flask import Response

from app.extensions import db
from app.models import Certificate, Holder
from app.services import accounts

from .conftest import HOLDER_PASSWORD, csrf_token

ROSTER = "2024年度二级建造师考试合格人员名单.xlsx"
ID_NUMBER = "500109196409269696"
NAME = "田娟"
NUMBER = "202421000001"
OTHER_NUMBER = "202421000002"
CHANGING_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture
def loaded(import_roster):
    import_roster(ROSTER, "二级建造师", "certificate")


@pytest.fixture
def holder_client(app, client):
    with app.app_context():
        accounts.register_holder(name=NAME, id_type="居民身份证", id_number=ID_NUMBER, phone="13800000001", password=HOLDER_PASSWORD)
    page = client.get("/login").get_data(as_text=True)
    response = client.post("/login", data={"login": ID_NUMBER, "password": HOLDER_PASSWORD, "csrf_token": csrf_token(page)})
    assert response.status_code == 303
    return client


def sample_url(rule) -> str:
    """Fill a rule's arguments with values that exist or look plausible."""
    values = {}
    for argument in rule.arguments:
        converter = rule._converters[argument].__class__.__name__
        values[argument] = 1 if converter == "IntegerConverter" else ("x.css" if argument == "filename" else "x")
    url = rule.rule
    for name, value in values.items():
        url = re.sub(r"<(?:[^:<>]+:)?" + name + ">", str(value), url)
    return url


def rules(app, method: str):
    return sorted((rule for rule in app.url_map.iter_rules() if method in rule.methods), key=lambda rule: rule.rule)


def row_counts() -> dict[str, int]:
    return {
        name: db.session.scalar(sa.select(sa.func.count()).select_from(table))
        for name, table in db.metadata.tables.items()
    }


# --- no GET changes state ----------------------------------------------------


@pytest.mark.parametrize("who", ["anonymous", "holder", "staff"])
def test_get_changes_no_rows(app, request, loaded, who, monkeypatch):
    # Lookups buffer their statistics events; a flush on the 10-second timer
    # during a slow run would add rows that no GET itself wrote.
    monkeypatch.setitem(app.config, "LOOKUP_EVENT_FLUSH_SECONDS", 3600)
    monkeypatch.setitem(app.config, "LOOKUP_EVENT_BUFFER", 100_000)
    client = {"anonymous": "client", "holder": "holder_client", "staff": "staff_client"}[who]
    client = request.getfixturevalue(client)
    with app.app_context():
        before = row_counts()

    for rule in rules(app, "GET"):
        client.get(sample_url(rule))

    with app.app_context():
        assert row_counts() == before


# --- CSRF ------------------------------------------------------------------------


def changing_rules(app):
    return [rule for rule in app.url_map.iter_rules() if rule.methods & CHANGING_METHODS]


def test_every_changing_route_needs_csrf(app, staff_client):
    checked = []
    with app.app_context():
        before = row_counts()
    for rule in changing_rules(app):
        url = sample_url(rule)
        response = staff_client.post(url, data={"name": "x", "password": "x"})
        checked.append(rule.rule)

        assert response.status_code in (303, 400), url
        if response.status_code == 303:
            # The CSRF answer sends the user back to the same form, with the message.
            assert response.headers["Location"].split("?")[0] == url, url
    with app.app_context():
        assert row_counts() == before
    assert "/admin/login" in checked


def test_expired_csrf_htmx_gets_message_fragment(app, staff_client):
    response = staff_client.post("/admin/batches/1/confirm", headers={"HX-Request": "true"}, data={"csrf_token": "expired"})
    html = response.get_data(as_text=True)

    assert response.status_code == 200
    assert response.headers["HX-Retarget"] == "#messages"
    assert "页面已过期" in html
    assert "<html" not in html


def test_expired_csrf_full_page_reshows_form(client):
    response = client.post("/login", data={"login": ID_NUMBER, "password": "x", "csrf_token": "expired"})
    page = client.get(response.headers["Location"]).get_data(as_text=True)

    assert response.status_code == 303
    assert "页面已过期" in page
    assert 'name="password"' in page


def test_base_page_sends_csrf_header_for_htmx(client):
    html = client.get("/").get_data(as_text=True)

    assert re.search(r'<body hx-headers=\'\{"X-CSRFToken": "[^"]+"\}\'>', html)


# --- headers ---------------------------------------------------------------------

EXPECTED_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


@pytest.mark.parametrize("who", ["anonymous", "holder", "staff"])
def test_every_route_sends_security_headers(app, request, loaded, who):
    client = request.getfixturevalue({"anonymous": "client", "holder": "holder_client", "staff": "staff_client"}[who])
    for rule in rules(app, "GET"):
        url = sample_url(rule) if rule.endpoint != "static" else "/static/css/site.css"
        response = client.get(url)
        csp = response.headers.get("Content-Security-Policy", "")

        for name, value in EXPECTED_HEADERS.items():
            assert response.headers.get(name) == value, (url, name)
        assert "frame-ancestors 'none'" in csp, url
        assert "unsafe-inline" not in csp, url
        assert "unsafe-eval" not in csp, url
        assert response.headers.get("Strict-Transport-Security", "").startswith("max-age="), url
        if rule.endpoint != "static":
            assert response.headers.get("Cache-Control") == "no-store", url
        response.close()


def test_pdf_download_not_cached(app, loaded, holder_client):
    response = holder_client.get(f"/me/certificates/{NUMBER}.pdf")

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"


def test_templates_have_no_inline_script_or_style():
    from pathlib import Path

    templates = Path(__file__).resolve().parent.parent / "templates"
    for path in templates.rglob("*.html"):
        if path.parent.name == "certificates":
            continue  # PDF layouts, rendered by xhtml2pdf on the server, never served to a browser
        text = re.sub(r"\{#.*?#\}", "", path.read_text(encoding="utf-8"), flags=re.S)
        assert "<style" not in text, path.name
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), path.name
        assert not re.search(r"\s(on\w+|style)=", text), path.name
        assert "hx-on" not in text, path.name


# --- access between users ------------------------------------------------------


@pytest.mark.parametrize(
    "number",
    [OTHER_NUMBER, "209999999999", "202421000000", "../" + NUMBER, NUMBER.lower() + "x"],
    ids=["other-holders", "missing", "sequential-guess", "path-trick", "garbage"],
)
def test_holder_guess_answers_like_missing(loaded, holder_client, number):
    holder_client.get("/me")
    missing = holder_client.get("/me/certificates/209999999999.pdf")

    response = holder_client.get(f"/me/certificates/{number}.pdf")

    assert response.status_code == missing.status_code == 404
    # The CSRF tokens on the page carry the second they were signed in, so the two may differ there only.
    assert without_csrf_tokens(response.get_data(as_text=True)) == without_csrf_tokens(missing.get_data(as_text=True))


def without_csrf_tokens(html: str) -> str:
    return re.sub(r'("X-CSRFToken": "|name="csrf_token" value=")[^"]+', r"\1-", html)


@pytest.mark.parametrize("url", ["/admin/", "/admin/certificates", "/admin/batches/new", "/admin/audit", "/admin/staff"])
def test_staff_routes_refuse_holders(holder_client, url):
    response = holder_client.get(url)

    assert response.status_code == 303
    assert "/admin/login" in response.headers["Location"]


def test_holder_posting_to_admin_refused(app, holder_client):
    page = holder_client.get("/me").get_data(as_text=True)

    response = holder_client.post("/admin/staff", data={"username": "mallory", "role": "admin", "csrf_token": csrf_token(page)})

    assert response.status_code == 303
    assert "/admin/login" in response.headers["Location"]


@pytest.mark.parametrize(
    "extra",
    [{"role": "admin"}, {"is_admin": "1"}, {"is_staff": "true"}, {"id": "1"}, {"session_version": "99"}],
    ids=["role", "is_admin", "is_staff", "id", "session_version"],
)
def test_registration_ignores_extra_fields(app, client, extra):
    page = client.get("/register").get_data(as_text=True)
    data = {
        "name": NAME, "id_type": "居民身份证", "id_number": ID_NUMBER, "phone": "13800000001",
        "password": HOLDER_PASSWORD, "confirm": HOLDER_PASSWORD, "consent": "y", "csrf_token": csrf_token(page), **extra,
    }

    client.post("/register", data=data)

    with app.app_context():
        holder = db.session.scalar(sa.select(Holder))
        assert holder.session_version != 99
        assert not getattr(holder, "is_staff", False)
        assert not hasattr(holder, "role")


@pytest.mark.parametrize("field", ["id_number", "name"])
def test_holder_login_cannot_switch_identity(app, loaded, holder_client, field):
    """A holder's pages are chosen by the session, never by a submitted ID number or name."""
    response = holder_client.get("/me", query_string={field: "500151199311095022" if field == "id_number" else "杨宇"})
    html = response.get_data(as_text=True)

    assert NUMBER in html
    assert "202423000001" not in html


@pytest.mark.parametrize("url", ["/me", "/admin/", "/admin/certificates"])
def test_htmx_expired_session_redirects_whole_page(client, url):
    response = client.get(url, headers={"HX-Request": "true"})

    assert "HX-Redirect" in response.headers
    assert "login" in response.headers["HX-Redirect"]
    assert "<form" not in response.get_data(as_text=True)


# --- markup in names -------------------------------------------------------------

MARKUP = "<b>x</b><script>alert(1)</script>"


@pytest.fixture
def markup_certificate(app, loaded):
    with app.app_context():
        certificate = db.session.scalar(sa.select(Certificate).where(Certificate.number == NUMBER))
        certificate.name = MARKUP
        db.session.commit()


def test_markup_name_escaped_in_lookup(markup_certificate, client):
    html = client.get("/verify", query_string={"number": NUMBER, "name": MARKUP}).get_data(as_text=True)

    assert "&lt;b&gt;x&lt;/b&gt;" in html
    assert "<b>x</b>" not in html
    assert "<script>alert" not in html


def test_markup_name_escaped_in_api(markup_certificate, client):
    data = client.get("/api/v1/verify", query_string={"number": NUMBER, "name": MARKUP}).get_json()

    assert data["certificate"]["name"] == MARKUP  # JSON carries text; the mimetype keeps browsers from rendering it


def test_markup_name_escaped_in_admin(markup_certificate, staff_client):
    html = staff_client.get("/admin/certificates", query_string={"q": NUMBER}).get_data(as_text=True)

    assert "&lt;b&gt;x&lt;/b&gt;" in html
    assert "<b>x</b>" not in html


def test_markup_name_escaped_in_holder_pages(app, markup_certificate, client):
    with app.app_context():
        accounts.register_holder(name=MARKUP, id_type="居民身份证", id_number=ID_NUMBER, phone="13800000001", password=HOLDER_PASSWORD)
    page = client.get("/login").get_data(as_text=True)
    client.post("/login", data={"login": ID_NUMBER, "password": HOLDER_PASSWORD, "csrf_token": csrf_token(page)})

    html = client.get("/me").get_data(as_text=True)

    assert NUMBER in html
    assert "<b>x</b>" not in html


def test_markup_name_is_text_in_pdf(app, markup_certificate):
    import io

    from pypdf import PdfReader

    from app.services.certificates import certificate_pdf

    with app.app_context():
        certificate = db.session.scalar(sa.select(Certificate).where(Certificate.number == NUMBER))
        text = PdfReader(io.BytesIO(certificate_pdf(certificate))).pages[0].extract_text()

    assert "<b>x</b>" in text.replace(" ", "")


def test_view_header_kept_once(app):
    """A header the view set, in any letter case, keeps the view's value and is not added a second time."""
    hook = next(function for function in app.after_request_funcs[None] if function.__name__ == "add_security_headers")
    with app.test_request_context("/"):
        response = hook(Response("ok", headers=[("x-frame-options", "SAMEORIGIN")]))

    assert response.headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
