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
from app.models import AuditEntry
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
