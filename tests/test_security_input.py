"""Hostile input values: NUL characters in fields and file names, out-of-range page numbers and dates.

The log section checks that such requests leave no whole QR token and no row values in the app log.

PostgreSQL rejects NUL in text, so these tests matter most with
TEST_DATABASE_URL set; on SQLite they check the same responses.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import AuditEntry, Certificate, Holder, ImportBatch

from .conftest import QR_KEY, ROSTER_DIR, csrf_token, dispose_engines

ROSTER = "2024年度二级建造师考试合格人员名单.xlsx"
NUL_MESSAGE = "空字符（NUL"
HUGE = "99999999999999999999999"


@pytest.fixture
def loaded(import_roster):
    import_roster(ROSTER, "二级建造师", "certificate")


def certificate_id(app) -> int:
    with app.app_context():
        return db.session.scalar(sa.select(Certificate.id).order_by(Certificate.id))


# --- NUL characters ------------------------------------------------------------

# (case id, form page, post path, fields, label expected in the message)
ANONYMOUS_FORMS = [
    ("holder-login", "/login", "/login", {"login": "1380000000\x001", "password": "whatever-pass"}, "登录账号"),
    ("staff-login", "/admin/login", "/admin/login", {"username": "a\x00b", "password": "whatever-pass"}, "用户名"),
    (
        "register-name",
        "/register",
        "/register",
        {
            "name": "张\x00三", "id_type": "居民身份证", "id_number": "500109196409269696", "phone": "13800000077",
            "password": "Reg-pass-12345", "confirm": "Reg-pass-12345", "consent": "y",
        },
        "姓名",
    ),
    (
        "forgot-id-number",
        "/password/forgot",
        "/password/forgot",
        {"id_number": "50010919640926969\x006", "phone": "13800000001"},
        "证件号码",
    ),
]


@pytest.mark.parametrize(("page", "path", "fields", "label"), [case[1:] for case in ANONYMOUS_FORMS],
                         ids=[case[0] for case in ANONYMOUS_FORMS])
def test_nul_in_anonymous_form_rejected(app, client, page, path, fields, label):
    token = csrf_token(client.get(page).get_data(as_text=True))

    response = client.post(path, data={"csrf_token": token, **fields})
    html = response.get_data(as_text=True)

    assert response.status_code == 400
    assert NUL_MESSAGE in html
    assert label in html
    assert "whatever-pass" not in html
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Holder)) == 0


# (case id, path, query, label expected in the message)
STAFF_QUERIES = [
    ("certificates-q", "/admin/certificates", {"q": "田\x00娟"}, "搜索内容"),
    ("audit-actor", "/admin/audit", {"actor": "a\x00"}, "操作人"),
    ("audit-action", "/admin/audit", {"action": "a\x00"}, "操作"),
    ("audit-target", "/admin/audit", {"target": "a\x00"}, "对象"),
    ("audit-csv-actor", "/admin/audit.csv", {"actor": "a\x00"}, "操作人"),
    ("audit-xlsx-target", "/admin/audit.xlsx", {"target": "a\x00"}, "对象"),
    ("batches-page", "/admin/batches", {"page": "1\x00"}, "page"),
    ("nul-in-field-name", "/admin/certificates", {"q\x00": "x"}, "q\\x00"),
]


@pytest.mark.parametrize(("path", "query", "label"), [case[1:] for case in STAFF_QUERIES],
                         ids=[case[0] for case in STAFF_QUERIES])
def test_nul_in_staff_query_rejected(staff_client, path, query, label):
    response = staff_client.get(path, query_string=query)
    html = response.get_data(as_text=True)

    assert response.status_code == 400
    assert NUL_MESSAGE in html
    assert label in html


def test_nul_in_staff_query_htmx_fragment(staff_client):
    response = staff_client.get("/admin/certificates", query_string={"q": "田\x00娟"}, headers={"HX-Request": "true"})
    html = response.get_data(as_text=True)

    assert response.status_code == 200
    assert response.headers["HX-Retarget"] == "#messages"
    assert NUL_MESSAGE in html
    assert "<html" not in html


def test_nul_in_revoke_reason_rejected(app, loaded, staff_client):
    cert_id = certificate_id(app)
    token = csrf_token(staff_client.get(f"/admin/certificates/{cert_id}").get_data(as_text=True))

    response = staff_client.post(f"/admin/certificates/{cert_id}/revoke", data={"csrf_token": token, "reason": "原因\x00"})

    assert response.status_code == 400
    assert "原因" in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(Certificate, cert_id).status != "revoked"
        assert db.session.scalar(sa.select(AuditEntry).where(AuditEntry.action == "certificate.revoke")) is None


def test_nul_in_upload_file_name_rejected(app, staff_client):
    uploads = Path(app.instance_path) / "uploads"
    before = sorted(uploads.iterdir()) if uploads.exists() else []
    token = csrf_token(staff_client.get("/admin/batches/new").get_data(as_text=True))
    data = {
        "file": (io.BytesIO((ROSTER_DIR / ROSTER).read_bytes()), "2024年度二级建造师\x00名单.xlsx"),
        "exam": "二级建造师",
        "kind": "certificate",
        "csrf_token": token,
    }

    response = staff_client.post("/admin/batches/new", data=data, content_type="multipart/form-data")

    assert response.status_code == 400
    assert "文件名" in response.get_data(as_text=True)
    after = sorted(uploads.iterdir()) if uploads.exists() else []
    assert after == before
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(ImportBatch)) == 0


def test_nul_in_verify_file_name_rejected(client):
    token = csrf_token(client.get("/verify/file").get_data(as_text=True))
    data = {"csrf_token": token, "file": (io.BytesIO(b"%PDF-1.7\n"), "证书\x00.pdf")}

    response = client.post("/verify/file", data=data, content_type="multipart/form-data")

    assert response.status_code == 400
    assert "文件名" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "query",
    [{"number": "202421000001\x00", "name": "田娟"}, {"number": "202421000001", "name": "田\x00娟"}],
    ids=["nul-in-number", "nul-in-name"],
)
def test_nul_in_verify_form_is_miss(client, loaded, query):
    miss = client.get("/verify", query_string={"number": "209999999999", "name": "田娟"})

    response = client.get("/verify", query_string=query)

    assert response.status_code == miss.status_code == 200
    assert NUL_MESSAGE not in response.get_data(as_text=True)
    assert "未查到该证书" in miss.get_data(as_text=True)
    assert "未查到该证书" in response.get_data(as_text=True)


# --- out-of-range page numbers and dates ----------------------------------------

# (case id, path, query)
LIST_PAGE_PARAMETERS = [
    ("batches-huge-page", "/admin/batches", {"page": HUGE}),
    ("batches-negative-page", "/admin/batches", {"page": "-" + HUGE}),
    ("audit-huge-page", "/admin/audit", {"page": HUGE}),
    ("audit-negative-page", "/admin/audit", {"page": "-" + HUGE}),
    ("audit-last-day", "/admin/audit", {"to": "9999-12-31"}),
    ("audit-csv-last-day", "/admin/audit.csv", {"to": "9999-12-31"}),
    ("audit-xlsx-last-day", "/admin/audit.xlsx", {"to": "9999-12-31"}),
    ("audit-first-day", "/admin/audit", {"from": "0001-01-01"}),
    ("audit-csv-first-day", "/admin/audit.csv", {"from": "0001-01-01", "to": "9999-12-31"}),
    ("certificates-huge-page", "/admin/certificates", {"q": "田", "page": HUGE}),
]


@pytest.mark.parametrize(("path", "query"), [case[1:] for case in LIST_PAGE_PARAMETERS],
                         ids=[case[0] for case in LIST_PAGE_PARAMETERS])
def test_list_page_out_of_range_parameter(loaded, staff_client, path, query):
    response = staff_client.get(path, query_string=query)

    assert response.status_code == 200, response.get_data(as_text=True)[-500:]


def test_audit_last_day_includes_entries(loaded, staff_client):
    response = staff_client.get("/admin/audit.csv", query_string={"to": "9999-12-31"})

    assert response.status_code == 200
    assert "工作人员登录" in response.get_data(as_text=True)


def test_batch_problem_rows_huge_page(app, staff_client):
    from .test_batches import upload

    batch_id = upload(staff_client, ROSTER_DIR / ROSTER)

    response = staff_client.get(f"/admin/batches/{batch_id}", query_string={"page": HUGE})

    assert response.status_code == 200


# --- logs -------------------------------------------------------------------


def _fail_lookup(public_id):
    raise RuntimeError("database unavailable")


@pytest.mark.parametrize("case", ["nul-in-query", "server-error"])
def test_qr_token_cut_in_logs(app, client, caplog, monkeypatch, case):
    from app.domain import tokens
    from app.services import lookup

    token = tokens.make_token("abcdefabcdef0123", [QR_KEY])
    query = {"x": "\x00"} if case == "nul-in-query" else {}
    if case == "server-error":
        monkeypatch.setattr(lookup, "by_public_id", _fail_lookup)

    with caplog.at_level(logging.INFO):
        response = client.get(f"/v/{token}", query_string=query)

    assert response.status_code == (400 if case == "nul-in-query" else 500)
    expected = "Rejected a NUL character" if case == "nul-in-query" else "Incident"
    lines = [record.getMessage() for record in caplog.records if expected in record.getMessage()]
    assert lines, [record.getMessage() for record in caplog.records]
    assert f"/v/{token[:6]}..." in lines[0]
    assert token not in caplog.text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Incident 1f2e on GET /v/eyJhYmMiOiIxMjMifQ.sig-nature_x", "Incident 1f2e on GET /v/eyJhYm..."),
        ("http://127.0.0.1:5000/v/eyJhYmMiOiIxMjMifQ.sig scanned", "http://127.0.0.1:5000/v/eyJhYm... scanned"),
        ("'/v/eyJhYmMiOiIxMjMifQ.sig?x=1'", "'/v/eyJhYm...?x=1'"),
        ('"GET /v/abc/defghijk HTTP/1.1" 404', '"GET /v/abc/de... HTTP/1.1" 404'),
        ("GET /v/abcdef", "GET /v/abcdef"),
        ("GET /api/v1/verify", "GET /api/v1/verify"),
    ],
    ids=["incident-line", "whole-url", "quoted-with-query", "extra-segment", "six-characters", "other-path"],
)
def test_log_sanitiser_cuts_qr_tokens(text, expected):
    from app.security import redact_path, redact_qr_tokens, sanitise

    assert redact_qr_tokens(text) == expected
    assert sanitise(text) == expected
    assert redact_path("/v/eyJhYmMiOiIxMjMifQ.sig") == "/v/eyJhYm..."
    assert redact_path("/verify") == "/verify"


# Kept out of the failing line, because a traceback quotes that line of source.
INCOMPLETE_HOLDER = {"name": "韦秀", "phone": "13800000417"}


def _insert_incomplete_holder(*args, **kwargs):
    # holder.id_type and other columns are NOT NULL, so the statement fails with these values bound.
    db.session.execute(sa.text("INSERT INTO holder (name, phone) VALUES (:name, :phone)"), INCOMPLETE_HOLDER)


def test_failed_statement_log_omits_values(app, client, caplog, monkeypatch):
    from app.public import routes

    monkeypatch.setattr(routes.lookup, "verify", _insert_incomplete_holder)

    with caplog.at_level(logging.ERROR):
        response = client.get("/api/v1/verify", query_string={"number": "202421000001", "name": "田娟"})

    assert response.status_code == 500
    assert "Incident" in caplog.text
    assert "IntegrityError" in caplog.text
    assert "SQL parameters hidden" in caplog.text
    assert "13800000417" not in caplog.text
    assert "韦秀" not in caplog.text
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        assert "DETAIL: (left out of the log" in caplog.text


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "null value in column \"id_type\"\nDETAIL:  Failing row contains (1, 韦秀, 13800000417).\n[SQL: INSERT]",
            "null value in column \"id_type\"\nDETAIL: (left out of the log, because it can quote row values)\n[SQL: INSERT]",
        ),
        (
            "duplicate key value\nDETAIL:  Key (phone)=(13800000417) already exists.",
            "duplicate key value\nDETAIL: (left out of the log, because it can quote row values)",
        ),
        (
            "invalid input syntax\nCONTEXT:  COPY lookup_event, line 1: \"韦秀\"",
            "invalid input syntax\nCONTEXT: (left out of the log, because it can quote row values)",
        ),
        ("Batch 7 failed: DETAIL: in the middle stays", "Batch 7 failed: DETAIL: in the middle stays"),
    ],
    ids=["failing-row", "duplicate-key", "copy-context", "not-at-line-start"],
)
def test_log_sanitiser_drops_row_details(text, expected):
    from app.security import drop_database_error_details

    assert drop_database_error_details(text) == expected


def test_every_engine_hides_parameters(app):
    """hide_parameters is set on the default engine and on every bind, over a deployment's own engine options."""
    from app import create_app

    url = app.config["SQLALCHEMY_DATABASE_URI"]
    keys = ("SECRET_KEY", "QR_TOKEN_KEYS", "ID_NUMBER_KEY", "ID_HASH_KEY")
    deployed = create_app(
        {
            **{key: app.config[key] for key in keys},
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": url,
            "SQLALCHEMY_ENGINE_OPTIONS": {"pool_recycle": 1234, "hide_parameters": False},
            "LOOKUP_DATABASE_URL": url,
            "SQLALCHEMY_BINDS": {"reports": url},
        }
    )

    with deployed.app_context():
        engines = dict(db.engines)
        dispose_engines()
    with app.app_context():
        session_engines = dict(db.engines)
    assert set(engines) == {None, "lookup", "reports"}
    assert {name: engine.hide_parameters for name, engine in engines.items()} == dict.fromkeys(engines, True)
    assert engines[None].pool._recycle == 1234
    assert all(engine.hide_parameters for engine in session_engines.values())
