"""The audit log: entries for staff actions, filtering, CSV and XLSX exports, and the append-only guard."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from openpyxl import load_workbook
from sqlalchemy import select
from sqlalchemy.exc import DatabaseError

from app.extensions import db
from app.models import AuditEntry, Certificate
from app.services import audit

from .conftest import csrf_token


def add_entries(app, *entries: dict) -> None:
    with app.app_context():
        for entry in entries:
            db.session.add(AuditEntry(**entry))
        db.session.commit()


@pytest.fixture
def sample_entries(app):
    now = datetime.now(timezone.utc)
    add_entries(
        app,
        {"actor": "alice", "action": "certificate.revoke", "target": "certificate:1", "detail": {"reason": "复核取消"},
         "before": {"status": "valid"}, "after": {"status": "revoked"}, "at": now},
        {"actor": "bob", "action": "certificate.correct", "target": "certificate:2", "detail": {"reason": "=HYPERLINK(\"x\")"},
         "before": {"name": "=1+1"}, "after": {"name": "+张三"}, "at": now - timedelta(days=3)},
        {"actor": "bob", "action": "batch.upload", "target": "batch:7", "detail": {"filename": "@名单.xlsx"},
         "at": now - timedelta(days=40)},
        {"actor": "-eve", "action": "=SUM(A1)", "target": "@evil", "detail": {}, "at": now - timedelta(days=1)},
    )


def test_login_is_audited(app, staff_client):
    with app.app_context():
        actions = list(db.session.scalars(select(AuditEntry.action).where(AuditEntry.actor == "operator1")))

    assert "staff.login" in actions


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"actor": "bob"}, {"certificate:2", "batch:7"}),
        ({"action": "certificate.revoke"}, {"certificate:1"}),
        ({"target": "certificate:2"}, {"certificate:2"}),
        ({"from": (datetime.now() - timedelta(days=10)).date().isoformat(), "actor": "bob"}, {"certificate:2"}),
        ({"to": (datetime.now() - timedelta(days=20)).date().isoformat()}, {"batch:7"}),
    ],
    ids=["actor", "action", "target", "from", "to"],
)
def test_filter_by_field(staff_client, sample_entries, query, expected):
    html = staff_client.get("/admin/audit", query_string=query).get_data(as_text=True)
    table = html[html.index("<tbody>"):]

    for target in {"certificate:1", "certificate:2", "batch:7"}:
        assert (f">{target}<" in table) == (target in expected), target


def test_filter_rejects_bad_date(staff_client, sample_entries):
    html = staff_client.get("/admin/audit", query_string={"from": "2024-13-40"}).get_data(as_text=True)

    assert "开始日期「2024-13-40」无法识别" in html


def test_csv_export_is_safe(staff_client, sample_entries):
    response = staff_client.get("/admin/audit.csv", query_string={"actor": "-eve"})
    body = response.get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(body.removeprefix("\ufeff"))))

    assert body.startswith("\ufeff")
    assert rows[0][:3] == ["时间", "操作人", "操作"]
    assert len(rows) == 2
    assert rows[1][1:5] == ["'-eve", "'=SUM(A1)", "'=SUM(A1)", "'@evil"]


@pytest.mark.parametrize(("text", "expected"), [
    ("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("张三", "张三"), ("", ""),
])
def test_safe_cell(text, expected):
    assert audit.safe_cell(text) == expected


def test_xlsx_export_has_no_formulas(staff_client, sample_entries):
    response = staff_client.get("/admin/audit.xlsx", query_string={"actor": "-eve"})
    sheet = load_workbook(io.BytesIO(response.data)).active
    cells = [cell for row in sheet.iter_rows() for cell in row]

    assert response.mimetype.endswith("spreadsheetml.sheet")
    assert sheet.max_row == 2
    assert [cell.value for cell in cells[9:13]] == ["'-eve", "'=SUM(A1)", "'=SUM(A1)", "'@evil"]
    assert all(cell.data_type != "f" for cell in cells)


def test_export_respects_filter(staff_client, sample_entries):
    body = staff_client.get("/admin/audit.csv", query_string={"action": "certificate.revoke"}).get_data(as_text=True)

    assert "复核取消" in body
    assert "batch:7" not in body


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_entry SET actor = 'mallory'", "DELETE FROM audit_entry"],
    ids=["update", "delete"],
)
def test_database_refuses_change(app, sample_entries, statement):
    with app.app_context():
        with pytest.raises(DatabaseError, match="append-only"):
            db.session.execute(sa.text(statement))
        db.session.rollback()
        remaining = db.session.scalar(select(sa.func.count(AuditEntry.id)).where(AuditEntry.actor != "mallory"))

    assert remaining == 4


def test_orm_delete_is_refused(app, sample_entries):
    with app.app_context():
        entry = db.session.scalars(select(AuditEntry)).first()
        db.session.delete(entry)
        with pytest.raises(DatabaseError, match="append-only"):
            db.session.commit()
        db.session.rollback()


def test_no_route_edits_audit(app):
    """No URL rule can change the log: the audit views accept GET only."""
    rules = [rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith("admin.audit")]

    assert rules
    for rule in rules:
        assert rule.methods - {"GET", "HEAD", "OPTIONS"} == set(), rule.rule


def test_staff_account_changes_audited(app, staff_client, make_staff):
    make_staff("clerk01", "operator")
    page = staff_client.get("/admin/staff").get_data(as_text=True)
    token = csrf_token(page)
    with app.app_context():
        from app.models import StaffUser

        clerk = db.session.scalar(select(StaffUser).where(StaffUser.username == "clerk01"))

    staff_client.post(f"/admin/staff/{clerk.id}/deactivate", data={"csrf_token": token})
    staff_client.post(f"/admin/staff/{clerk.id}/password", data={"csrf_token": token, "password": "N3w!Passw0rd-x"})
    staff_client.post("/admin/staff", data={"csrf_token": token, "username": "auditor7", "role": "auditor",
                                            "password": "Aud1t!Passw0rd"})

    with app.app_context():
        actions = set(db.session.scalars(select(AuditEntry.action).where(AuditEntry.actor == "operator1")))
        clerk = db.session.get(StaffUser, clerk.id)
        assert clerk.active is False
    assert {"staff.deactivate", "staff.reset_password", "staff.create"} <= actions


def test_staff_cannot_deactivate_self(app, staff_client):
    page = staff_client.get("/admin/staff").get_data(as_text=True)
    with app.app_context():
        from app.models import StaffUser

        me = db.session.scalar(select(StaffUser).where(StaffUser.username == "operator1"))

    response = staff_client.post(f"/admin/staff/{me.id}/deactivate", data={"csrf_token": csrf_token(page)})

    assert response.status_code == 422
    assert "不能停用自己" in response.get_data(as_text=True)


def test_staff_create_rejects_weak_password(staff_client):
    page = staff_client.get("/admin/staff").get_data(as_text=True)

    response = staff_client.post("/admin/staff", data={"csrf_token": csrf_token(page), "username": "weak01",
                                                       "role": "operator", "password": "short"})

    assert response.status_code == 422
    assert "12" in response.get_data(as_text=True)


@pytest.fixture
def many_entries(app):
    """2,500 entries of actor "bulk", more than two export chunks, every other one starting a formula."""
    now = datetime.now(timezone.utc)
    add_entries(
        app,
        *(
            {"actor": "bulk", "action": "certificate.revoke", "target": f"=cert{index}" if index % 2 else f"certificate:{index}",
             "detail": {"n": index}, "at": now - timedelta(seconds=index)}
            for index in range(2500)
        ),
    )


def test_csv_export_streams_every_row(staff_client, many_entries):
    response = staff_client.get("/admin/audit.csv", query_string={"actor": "bulk"})
    body = response.get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(body.removeprefix("\ufeff"))))

    assert body.count("\ufeff") == 1
    assert len(rows) == 2501
    assert rows[1][4] == "certificate:0"  # newest first
    assert rows[2][4] == "'=cert1"
    assert rows[-1][4] == "'=cert2499"
    assert {row[1] for row in rows[1:]} == {"bulk"}


def test_xlsx_export_writes_every_row(staff_client, many_entries):
    response = staff_client.get("/admin/audit.xlsx", query_string={"actor": "bulk"})
    sheet = load_workbook(io.BytesIO(response.data)).active
    targets = [row[4] for row in sheet.iter_rows(min_row=2, values_only=True)]

    assert sheet.max_row == 2501
    assert targets[:2] == ["certificate:0", "'=cert1"]
    assert all(cell.data_type != "f" for row in sheet.iter_rows() for cell in row)


def test_export_chunks_hold_bounded_rows(app, many_entries):
    from app.services import exports

    with app.app_context():
        chunks = list(exports.audit_csv_chunks(audit.AuditFilter(actor="bulk")))

    assert len(chunks) == 3  # 2,501 rows with the header, AUDIT_CHUNK = 1000 per piece
    assert [chunk.count("\r\n") for chunk in chunks] == [1000, 1000, 501]


def test_csv_export_view_streams(app, many_entries):
    from app.admin.audit import audit_csv

    with app.test_request_context("/admin/audit.csv", query_string={"actor": "bulk"}):
        response = audit_csv()
        first = next(iter(response.response))
        response.close()  # as the WSGI server does when a client disconnects

    assert response.is_streamed
    assert first.startswith("\ufeff时间")


def test_streamed_exports_match_in_memory(app, sample_entries, many_entries):
    from app.services import exports

    everything = audit.AuditFilter()
    with app.app_context():
        streamed_csv = "".join(exports.audit_csv_chunks(everything))
        in_memory_csv = audit.export_csv(everything)
        streamed_rows = list(load_workbook(io.BytesIO(exports.audit_xlsx_bytes(everything))).active.iter_rows(values_only=True))
        in_memory_rows = list(load_workbook(io.BytesIO(audit.export_xlsx(everything))).active.iter_rows(values_only=True))

    assert streamed_csv == in_memory_csv
    assert streamed_rows == in_memory_rows


# --- ID numbers typed into reasons ------------------------------------------------------

TYPED_ID = "500101199001011010"
FULL_WIDTH_ID = TYPED_ID.translate({ord(digit): ord(digit) + 0xFEE0 for digit in "0123456789"})

# (case id, text typed by staff, text stored in the audit log)
TYPED_ID_FORMS = [
    ("plain", f"核对身份证 {TYPED_ID} 后撤销", "核对身份证 5001**********1010 后撤销"),
    ("glued-to-letters", f"核对 ID{TYPED_ID} 后撤销", "核对 ID5001**********1010 后撤销"),
    ("full-width", f"核对身份证 {FULL_WIDTH_ID} 后撤销", "核对身份证 ５００１**********１０１０ 后撤销"),
    ("spaced", f"核对身份证 {TYPED_ID[:6]} {TYPED_ID[6:14]} {TYPED_ID[14:]} 后撤销", "核对身份证 5001** ******** 1010 后撤销"),
    ("hyphens", f"证件 {TYPED_ID[:6]}-{TYPED_ID[6:14]}-{TYPED_ID[14:]}", "证件 5001**-********-1010"),
    ("ideographic-space", f"证件{TYPED_ID[:6]}\u3000{TYPED_ID[6:]}", "证件5001**\u3000********1010"),
    ("x-check-digit", "证件 11010119900307001x", "证件 1101**********001X"),
    ("after-phone", f"电话 13800000001 {TYPED_ID}", "电话 13800000001 5001**********1010"),
]

# (case id, text that contains no ID number and is stored unchanged)
NOT_ID_NUMBERS = [
    ("certificate-number", "证书编号 202421000001 已核对"),
    ("two-certificate-numbers", "证书 202421000001 202421000002 重复"),
    ("certificate-and-short-number", "证书 202421000001 123456 号文"),
    ("phone", "联系电话 138 0000 0001"),
    ("phone-hyphens", "联系电话 138-0000-0001"),
    ("dates", "2024-01-01 至 2024-12-31 有效"),
    ("date-and-phone", "20240101 13800000001"),
    ("nineteen-digits", "银行卡 6222021234567890123"),
]


@pytest.mark.parametrize(("text", "expected"), [case[1:] for case in TYPED_ID_FORMS],
                         ids=[case[0] for case in TYPED_ID_FORMS])
def test_typed_id_number_masked(text, expected):
    from app.id_numbers import mask_id_numbers

    assert mask_id_numbers(text) == expected


@pytest.mark.parametrize("text", [case[1] for case in NOT_ID_NUMBERS], ids=[case[0] for case in NOT_ID_NUMBERS])
def test_other_numbers_kept(text):
    from app.id_numbers import mask_id_numbers

    assert mask_id_numbers(text) == text


def _digits(text: str) -> str:
    import unicodedata

    return "".join(char for char in unicodedata.normalize("NFKC", text) if char.isdigit())


def test_revoke_reasons_leave_no_whole_id_number(app, staff_client, import_roster):
    import_roster("2024年度二级建造师考试合格人员名单.xlsx", "二级建造师", "certificate")
    with app.app_context():
        certificate_ids = list(db.session.scalars(select(Certificate.id).order_by(Certificate.id)))
    assert len(certificate_ids) >= len(TYPED_ID_FORMS)

    for certificate_id, (_case, reason, _expected) in zip(certificate_ids, TYPED_ID_FORMS):
        page = staff_client.get(f"/admin/certificates/{certificate_id}").get_data(as_text=True)
        response = staff_client.post(f"/admin/certificates/{certificate_id}/revoke",
                                     data={"reason": reason, "csrf_token": csrf_token(page)})
        assert response.status_code == 303, _case

    exported = staff_client.get("/admin/audit.csv", query_string={"action": "certificate.revoke"}).get_data(as_text=True)
    with app.app_context():
        stored = [str(row) for row in db.session.execute(sa.text("SELECT target, detail FROM audit_entry"))]

    for case, _reason, expected in TYPED_ID_FORMS:
        assert expected in exported, case
    for text in [exported, *stored]:
        assert TYPED_ID not in _digits(text)
        assert "11010119900307001" not in _digits(text)


def checked_out_connections(app) -> int:
    with app.app_context():
        return db.engine.pool.checkedout()


def test_abandoned_csv_stream_releases_session(app, login_staff, many_entries):
    from flask import has_request_context

    auditor = login_staff("stream-auditor", "auditor")
    idle = checked_out_connections(app)

    response = auditor.get("/admin/audit.csv", query_string={"actor": "bulk"})
    first = next(response.response)
    reading = checked_out_connections(app)
    response.close()  # the client went away after the first chunk

    assert first.startswith("\ufeff时间".encode())
    assert reading == idle + 1  # the stream's session uses a connection while it reads
    assert checked_out_connections(app) == idle
    assert not has_request_context()


def test_csv_head_leaves_no_request_context(app, login_staff):
    from flask import has_request_context

    auditor = login_staff("head-auditor", "auditor")

    response = auditor.head("/admin/audit.csv")  # not closed, as a careless client leaves it

    assert response.status_code == 200
    assert response.headers["Content-Disposition"].startswith("attachment")
    assert not has_request_context()
    # A leaked context would lend the auditor's login to the next visitor.
    assert app.test_client().head("/admin/audit.csv").status_code == 303


def test_audit_page_shows_chinese_values(app, staff_client):
    add_entries(app, {
        "actor": "alice", "action": "certificate.revoke", "target": "certificate:1", "detail": {"reason": "复核取消"},
        "before": {"status": "valid", "revoked_at": None},
        "after": {"status": "revoked", "revoked_at": "2026-12-05T04:11:01.263643+00:00"},
        "at": datetime.now(timezone.utc),
    })

    html = staff_client.get("/admin/audit").get_data(as_text=True)

    assert "状态：有效" in html
    assert "状态：已撤销" in html
    assert "撤销时间：2026-12-05 12:11:01" in html  # Beijing time, UTC+8
    assert "原因：复核取消" in html
    assert "status：" not in html
    assert "+00:00" not in html


def test_batch_times_in_beijing_time(app, staff_client, import_roster):
    from app.models import ImportBatch

    import_roster("2024年度二级建造师考试合格人员名单.xlsx", "二级建造师", "certificate")
    with app.app_context():
        batch = db.session.scalar(select(ImportBatch).order_by(ImportBatch.id.desc()))
        created = audit.local_time(batch.created_at).strftime("%Y-%m-%d %H:%M:%S")
        batch_id = batch.id

    page = staff_client.get(f"/admin/batches/{batch_id}").get_data(as_text=True)
    listing = staff_client.get("/admin/batches").get_data(as_text=True)

    assert created in page
    assert created in listing
