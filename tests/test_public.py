"""Employers' lookup: the form (with and without htmx), the QR landing page and the JSON API."""

from __future__ import annotations

import io

import pypdfium2
import pytest
import zxingcpp
from pypdf import PdfReader
from sqlalchemy import select
from sqlalchemy import text as sa_text

from app.domain.tokens import make_token
from app.extensions import db
from app.models import Certificate

from .conftest import QR_KEY

SAFETY_ROSTER = "2024年度初级注册安全工程师考试合格人员.xlsx"
# First data row of the safety roster.
NUMBER, NAME, ID_NUMBER = "202423000001", "杨宇", "500151199311095022"


@pytest.fixture
def loaded(import_roster):
    import_roster(SAFETY_ROSTER, "初级注册安全工程师", "certificate")


def test_home_page_links_both_groups(client):
    html = client.get("/").get_data(as_text=True)

    assert "/verify" in html
    assert "/login" in html


def test_verify_form_without_javascript(client, loaded):
    response = client.get("/verify", query_string={"number": NUMBER, "name": NAME})
    html = response.get_data(as_text=True)

    assert response.status_code == 200
    assert "<form" in html
    assert "有效" in html
    assert "初级注册安全工程师" in html
    assert "金属冶炼安全" in html
    assert "5001**********5022" in html
    assert ID_NUMBER not in html


def test_verify_htmx_returns_fragment(client, loaded):
    response = client.get("/verify", query_string={"number": NUMBER, "name": NAME}, headers={"HX-Request": "true"})
    html = response.get_data(as_text=True)

    assert "<html" not in html
    assert "有效" in html
    assert "HX-Request" in response.headers["Vary"]


def test_verify_history_restore_gets_full_page(client, loaded):
    headers = {"HX-Request": "true", "HX-History-Restore-Request": "true"}
    html = client.get("/verify", query_string={"number": NUMBER, "name": NAME}, headers=headers).get_data(as_text=True)

    assert "<html" in html


@pytest.mark.parametrize(
    "number, name",
    [
        ("  ２０２４２３０００００１ ", NAME),
        (NUMBER, f" {NAME} "),
        (NUMBER.lower(), NAME),
    ],
    ids=["full-width-number", "spaces-around-name", "lowercase"],
)
def test_verify_normalises_input(client, loaded, number, name):
    html = client.get("/verify", query_string={"number": number, "name": name}).get_data(as_text=True)

    assert "5001**********5022" in html


def test_wrong_name_answers_like_unknown_number(client, loaded):
    wrong_name = client.get("/verify", query_string={"number": NUMBER, "name": "李四"}, headers={"HX-Request": "true"})
    unknown = client.get("/verify", query_string={"number": "209999999999", "name": NAME}, headers={"HX-Request": "true"})

    assert wrong_name.status_code == unknown.status_code
    assert wrong_name.get_data() == unknown.get_data()


def test_verify_empty_form_shows_field_errors(client):
    html = client.get("/verify", query_string={"number": "", "name": ""}).get_data(as_text=True)

    assert "请填写证书编号" in html
    assert "请填写持证人姓名" in html


def test_api_valid(client, loaded):
    body = client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME}).get_json()

    assert body["result"] == "valid"
    assert body["certificate"]["number"] == NUMBER
    assert body["certificate"]["id_number"] == "5001**********5022"
    assert body["certificate"]["specialty"] == "金属冶炼安全"


def test_api_not_found_matches_wrong_name(client, loaded):
    wrong = client.get("/api/v1/verify", query_string={"number": NUMBER, "name": "李四"})
    unknown = client.get("/api/v1/verify", query_string={"number": "209999999999", "name": NAME})

    assert wrong.get_json() == {"result": "not_found", "certificate": None}
    assert wrong.get_data() == unknown.get_data()


def test_api_missing_parameters(client):
    response = client.get("/api/v1/verify", query_string={"number": NUMBER})

    assert response.status_code == 400
    assert "name" in response.get_json()["error"]


def test_api_revoked(app, client, loaded):
    with app.app_context():
        certificate = db.session.scalar(select(Certificate).where(Certificate.number == NUMBER))
        certificate.status = "revoked"
        db.session.commit()

    body = client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME}).get_json()

    assert body["result"] == "revoked"


def _token_for(app, number: str) -> str:
    with app.app_context():
        public_id = db.session.scalar(select(Certificate.public_id).where(Certificate.number == number))
    return make_token(public_id, [QR_KEY])


def test_token_page_shows_status(app, client, loaded):
    response = client.get(f"/v/{_token_for(app, NUMBER)}")
    html = response.get_data(as_text=True)

    assert response.status_code == 200
    assert "有效" in html
    assert NAME in html
    assert 'name="viewport"' in html


@pytest.mark.parametrize(
    "mangle",
    [lambda t: t[:-3], lambda t: t[:5], lambda t: "x" + t, lambda t: t.replace(".", "!"), lambda t: "%00%ff", lambda t: "a" * 500],
    ids=["truncated", "short", "altered", "bad-separator", "binary", "long"],
)
def test_bad_token_gets_clear_page(app, client, loaded, mangle):
    response = client.get(f"/v/{mangle(_token_for(app, NUMBER))}")

    assert response.status_code == 404
    assert "验证链接无效" in response.get_data(as_text=True)


def test_token_signed_with_other_key_is_invalid(app, client, loaded):
    with app.app_context():
        public_id = db.session.scalar(select(Certificate.public_id).where(Certificate.number == NUMBER))
    response = client.get(f"/v/{make_token(public_id, ['some-other-key'])}")

    assert "验证链接无效" in response.get_data(as_text=True)


def test_token_contains_no_personal_data(app, loaded):
    token = _token_for(app, NUMBER)

    assert NUMBER not in token
    assert ID_NUMBER not in token


def test_rotated_key_still_verifies_old_token(app, loaded):
    from app.domain.tokens import read_token

    with app.app_context():
        public_id = db.session.scalar(select(Certificate.public_id).where(Certificate.number == NUMBER))
    old = make_token(public_id, ["old-key"])

    assert read_token(old, ["old-key", "new-key"]) == public_id
    assert read_token(old, ["new-key"]) is None


def test_pdf_qr_leads_to_valid_page(app, client, loaded):
    from app.services.certificates import certificate_pdf

    with app.app_context():
        certificate = db.session.scalar(select(Certificate).where(Certificate.number == NUMBER))
        pdf = certificate_pdf(certificate)

    page = pypdfium2.PdfDocument(pdf)[0]
    image = page.render(scale=200 / 72).to_pil()
    codes = zxingcpp.read_barcodes(image)
    assert len(codes) == 1
    url = codes[0].text
    assert url.startswith("http://127.0.0.1:5000/v/")
    html = client.get(url.removeprefix("http://127.0.0.1:5000")).get_data(as_text=True)
    assert "有效" in html
    assert NUMBER in PdfReader(io.BytesIO(pdf)).pages[0].extract_text()


@pytest.mark.parametrize(
    "number, name",
    [
        ("20242300\u200b0001", NAME),
        (NUMBER, "杨\u00ad宇"),
        (NUMBER, "杨\u200b宇"),
        (NUMBER + "\u00ad", NAME),
    ],
    ids=["zero-width-in-number", "soft-hyphen-in-name", "zero-width-in-name", "soft-hyphen-in-number"],
)
def test_verify_ignores_invisible_characters(client, loaded, number, name):
    body = client.get("/api/v1/verify", query_string={"number": number, "name": name}).get_json()

    assert body["result"] == "valid"


def test_verify_folds_kangxi_radicals(client, import_roster):
    import_roster("2024年度二级建造师考试合格人员名单.xlsx", "二级建造师", "certificate")

    body = client.get("/api/v1/verify", query_string={"number": "202421000001", "name": "⽥娟"}).get_json()

    assert body["result"] == "valid"


def test_verify_latin_name_ignores_case(client, import_roster):
    import_roster("二级建造师_问题数据样例.xlsx", "二级建造师", "certificate")

    body = client.get("/api/v1/verify", query_string={"number": "202421900019", "name": "smith john"}).get_json()

    assert body["result"] == "valid"


@pytest.mark.parametrize(
    "query",
    [{"number": NUMBER + "\x00", "name": NAME}, {"number": NUMBER, "name": "杨\x00宇"}],
    ids=["nul-in-number", "nul-in-name"],
)
def test_verify_nul_byte_is_not_found(client, loaded, query):
    response = client.get("/api/v1/verify", query_string=query)

    assert response.status_code == 200
    assert response.get_json() == {"result": "not_found", "certificate": None}


def _lookup_events(app) -> list[tuple[str, str]]:
    from app.models import LookupEvent
    from app.services import events

    with app.app_context():
        events.flush_lookups()
        return [tuple(row) for row in db.session.execute(select(LookupEvent.channel, LookupEvent.result).order_by(LookupEvent.id))]


def test_invalid_token_counted_not_logged(app, client, loaded, caplog):
    token = _token_for(app, NUMBER)
    altered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")

    with caplog.at_level("WARNING", logger="app.public.routes"):
        response = client.get(f"/v/{altered}")

    assert response.status_code == 404
    assert _lookup_events(app) == [("qr", "not_found")]
    assert "Invalid QR token" in caplog.text
    assert altered not in caplog.text
    assert token[:20] not in caplog.text


def _set_certificate(app, number: str, **values) -> None:
    with app.app_context():
        certificate = db.session.scalar(select(Certificate).where(Certificate.number == number))
        for key, value in values.items():
            setattr(certificate, key, value)
        db.session.commit()


def test_revocation_shows_on_next_api_lookup(app, client, loaded):
    from datetime import datetime, timezone

    query = {"number": NUMBER, "name": NAME}
    before = client.get("/api/v1/verify", query_string=query).get_json()
    _set_certificate(app, NUMBER, status="revoked", revoked_at=datetime(2025, 3, 1, 12, tzinfo=timezone.utc))
    after = client.get("/api/v1/verify", query_string=query).get_json()

    assert before["result"] == "valid"
    assert after["result"] == "revoked"
    assert after["certificate"]["revoked_at"] == "2025-03-01"


@pytest.mark.parametrize("channel", ["form", "qr"])
def test_revocation_shows_on_next_page(app, client, loaded, channel):
    from datetime import datetime, timezone

    def look() -> str:
        if channel == "qr":
            return client.get(f"/v/{_token_for(app, NUMBER)}").get_data(as_text=True)
        return client.get("/verify", query_string={"number": NUMBER, "name": NAME}).get_data(as_text=True)

    before = look()
    _set_certificate(app, NUMBER, status="revoked", revoked_at=datetime(2025, 3, 1, 12, tzinfo=timezone.utc))
    after = look()

    assert "已撤销" not in before
    assert "已撤销" in after
    assert "2025年3月1日" in after


def test_correction_shows_on_next_lookup(app, client, loaded):
    from datetime import datetime, timezone

    client.get("/verify", query_string={"number": NUMBER, "name": NAME})
    _set_certificate(app, NUMBER, corrected_at=datetime(2025, 4, 2, 8, tzinfo=timezone.utc))

    html = client.get("/verify", query_string={"number": NUMBER, "name": NAME}).get_data(as_text=True)
    body = client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME}).get_json()

    assert "信息已更正" in html
    assert body["certificate"]["corrected_at"] == "2025-04-02"


def test_lookup_leaves_pool_transactional(app, client, loaded):
    """A lookup's pooled connection must go back to the pool outside autocommit, or the ORM's rollback would do nothing."""
    for _ in range(3):
        client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME})

    with app.app_context():
        certificate = db.session.scalar(select(Certificate).where(Certificate.number == NUMBER))
        certificate.name = "改名测试"
        db.session.flush()
        db.session.rollback()
        stored = db.session.scalar(select(Certificate.name).where(Certificate.number == NUMBER))

    assert stored == NAME


# --- the autocommit lookup engine (PostgreSQL) ----------------------------------------


@pytest.fixture
def postgresql_app(app):
    with app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("the autocommit lookup engine is used on PostgreSQL only")
    return app


def _lookup_backend_pid(app) -> int:
    """Return the server process id of the connection the lookup pool hands out next."""
    from app.services import lookup

    with app.app_context():
        pooled = lookup.lookup_engine().raw_connection()
    try:
        return pooled.driver_connection.info.backend_pid
    finally:
        pooled.close()


def test_lookup_engine_autocommit_on_primary(postgresql_app):
    from app.services import lookup

    with postgresql_app.app_context():
        engine = lookup.lookup_engine()
        pooled = engine.raw_connection()
        try:
            autocommit = pooled.driver_connection.autocommit
        finally:
            pooled.close()

        assert engine is not db.engine
        assert engine.url == db.engine.url
    assert autocommit is True


def test_lookup_recovers_from_closed_connection(postgresql_app, client, loaded):
    """The server ends the pooled lookup connection (a restart, an idle timeout), and the next lookup still succeeds."""
    query = {"number": NUMBER, "name": NAME}
    assert client.get("/api/v1/verify", query_string=query).get_json()["result"] == "valid"
    backend = _lookup_backend_pid(postgresql_app)
    with postgresql_app.app_context():
        with db.engine.connect() as connection:
            connection.execute(sa_text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})

    response = client.get("/api/v1/verify", query_string=query)

    assert response.status_code == 200
    assert response.get_json()["result"] == "valid"
    assert _lookup_backend_pid(postgresql_app) != backend


def test_threaded_lookups_reuse_pool(postgresql_app, loaded):
    """A threaded server gives each request a new thread: lookups reuse the pool's connections."""
    from concurrent.futures import ThreadPoolExecutor

    from app.services import lookup

    def look(_index: int) -> str:
        response = postgresql_app.test_client().get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME})
        return response.get_json()["result"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(look, range(40)))
    with postgresql_app.app_context():
        idle = lookup.lookup_engine().pool.checkedin()

    assert results == ["valid"] * 40
    assert 1 <= idle <= 4


# --- no session for pages without a POST ----------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"HX-Request": "true"}], ids=["page", "htmx"])
def test_anonymous_lookup_sets_no_cookie(client, loaded, headers):
    found = client.get("/verify", query_string={"number": NUMBER, "name": NAME}, headers=headers)
    empty = client.get("/verify", headers=headers)

    for response in (found, empty):
        assert response.status_code == 200
        assert "Set-Cookie" not in response.headers
        assert "X-CSRFToken" not in response.get_data(as_text=True)


def test_page_with_post_keeps_csrf_header(client):
    """/verify/file has an htmx POST: its page still carries the CSRF token in htmx's headers."""
    response = client.get("/verify/file")

    assert 'hx-headers=\'{"X-CSRFToken": "' in response.get_data(as_text=True)
    assert any(cookie.startswith("session=") for cookie in response.headers.getlist("Set-Cookie"))


def test_cached_layout_only_for_anonymous(app, staff_client, loaded):
    """The anonymous navigation is rendered once per process and reused; signed-in staff get their own."""
    visitor = app.test_client()
    anonymous = visitor.get("/verify").get_data(as_text=True)
    staff = staff_client.get("/verify").get_data(as_text=True)
    anonymous_again = visitor.get("/verify").get_data(as_text=True)

    assert 'href="/login"' in anonymous
    assert 'href="/login"' not in staff
    assert 'href="/admin/"' in staff
    assert anonymous_again == anonymous
    assert staff.count('href="/static/css/site.css"') == 1
    assert "重庆市人事考试中心" in staff


def test_cached_layout_follows_script_root(client):
    """An app mounted under a path prefix (SCRIPT_NAME) gets links under that prefix, not the cached root ones."""
    client.get("/verify")

    mounted = client.get("/verify", base_url="http://localhost/certs").get_data(as_text=True)

    assert 'href="/certs/static/css/site.css"' in mounted
    assert 'href="/certs/login"' in mounted
    assert 'action="/certs/verify"' in mounted


# --- htmx answers, API errors, htmx history --------------------------------------------


def _htmx_config(page: str) -> dict:
    import json
    import re

    match = re.search(r"<meta name=\"htmx-config\" content='([^']*)'", page)
    return json.loads(match.group(1)) if match else {}


@pytest.mark.parametrize(
    "content, message",
    [(b"", "上传的文件是空的"), (b"%PDF-1.7\n" + b"0" * 4096, "上传的文件超过")],
    ids=["empty-file", "too-large"],
)
def test_htmx_file_check_error_swapped(app, client, monkeypatch, content, message):
    """htmx 2 swaps no 4xx response, so /verify/file answers htmx with a 200 fragment that replaces the last verdict."""
    import re

    monkeypatch.setitem(app.config, "VERIFY_FILE_MAX_BYTES", 1024)
    page = client.get("/verify/file").get_data(as_text=True)
    token = re.search(r'"X-CSRFToken": "([^"]+)"', page).group(1)
    data = {"file": (io.BytesIO(content), "certificate.pdf")}

    htmx = client.post("/verify/file", data=data, headers={"X-CSRFToken": token, "HX-Request": "true"})
    data = {"file": (io.BytesIO(content), "certificate.pdf")}
    plain = client.post("/verify/file", data=data, headers={"X-CSRFToken": token})

    html = htmx.get_data(as_text=True)
    assert htmx.status_code == 200
    assert "responseHandling" not in _htmx_config(page)  # so only 2xx responses are swapped
    assert message in html
    assert "<html" not in html
    assert "HX-Retarget" not in htmx.headers  # it goes to #verify-file-result, replacing an earlier verdict
    assert plain.status_code == (400 if not content else 413)
    assert message in plain.get_data(as_text=True)


@pytest.mark.parametrize(
    "method, path, status",
    [("post", "/api/v1/verify", 405), ("get", "/api/v1/certificates", 404), ("get", "/api/v1/verify", 500)],
    ids=["wrong-method", "unknown-path", "server-error"],
)
def test_api_errors_are_json(client, monkeypatch, method, path, status):
    """API clients parse JSON, so every error under /api/ is JSON with a Chinese message, not the HTML error page."""
    from app.public import routes

    def broken(*args, **kwargs):
        raise RuntimeError("database unavailable")

    monkeypatch.setattr(routes.lookup, "verify", broken)
    response = getattr(client, method)(path, query_string={"number": NUMBER, "name": NAME})

    body = response.get_json()
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert any("\u4e00" <= c <= "\u9fff" for c in body["error"]), body
    if status == 405:
        assert "GET" in response.headers["Allow"]
    if status == 500:
        assert body["incident"] in body["error"]


def test_html_405_keeps_allow_header(client):
    response = client.post("/verify")

    assert response.status_code == 405
    assert response.mimetype == "text/html"
    assert "GET" in response.headers["Allow"]
    assert "不支持的请求方式" in response.get_data(as_text=True)


def test_verify_page_out_of_htmx_history(client, loaded):
    """hx-push-url would make htmx copy the page with its results (names, masked ID numbers) into sessionStorage.

    hx-history="false" anywhere in the page stops that; Back and Forward then
    fetch the page again with HX-History-Restore-Request, which gets the
    whole page (test_verify_history_restore_gets_full_page).
    """
    page = client.get("/verify", query_string={"number": NUMBER, "name": NAME}).get_data(as_text=True)
    fragment = client.get("/verify", query_string={"number": NUMBER, "name": NAME}, headers={"HX-Request": "true"})

    assert 'hx-push-url="true"' in page
    assert 'id="verify-result" aria-live="polite" hx-history="false"' in page
    # The attribute sits on the swap target, outside the swapped content, so it stays after every answer.
    assert 'hx-target="#verify-result"' in page
    assert 'id="verify-result"' not in fragment.get_data(as_text=True)
