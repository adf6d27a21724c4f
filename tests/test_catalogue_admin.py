"""Catalogue editing by admins: add an exam and a specialty, edit a layout; imports and PDFs use the changes."""

from __future__ import annotations

import io

import pytest
import sqlalchemy as sa
from pypdf import PdfReader
from sqlalchemy import select

from app.extensions import db
from app.models import AuditEntry, Certificate, Exam, Layout, Specialty
from app.services import batches
from app.services.certificates import certificate_pdf

from .conftest import RECORD_TABLES, _delete_audit_entries, csrf_token

ROSTER = """序号,姓名,性别,身份证号,出生年月,专业,批准日期,编号
1,韦秀,男,500107197304164195,1973.04,矿山救援,2024/12/1,202599000001
2,万天诺,男,500108199911308678,1999.11,消防设施,2024/10/8,202599000002
"""


@pytest.fixture(autouse=True)
def restore_catalogue(app):
    """Put the seeded catalogue back after each test, since the record cleanup keeps catalogue rows."""
    with app.app_context():
        last_exam = db.session.scalar(sa.select(sa.func.max(Exam.id)))
        last_specialty = db.session.scalar(sa.select(sa.func.max(Specialty.id)))
        layouts = {row.id: (list(row.co_issuers or []), row.statement) for row in db.session.scalars(sa.select(Layout))}
    yield
    with app.app_context():
        db.session.rollback()
        # Certificates of the added exams must go before the exams themselves.
        for model in RECORD_TABLES:
            if model is AuditEntry:
                _delete_audit_entries()
            else:
                db.session.execute(sa.delete(model))
        db.session.execute(sa.delete(Specialty).where(Specialty.id > last_specialty))
        db.session.execute(sa.delete(Exam).where(Exam.id > last_exam))
        for layout in db.session.scalars(sa.select(Layout)):
            layout.co_issuers, layout.statement = layouts[layout.id]
        db.session.commit()


def catalogue_token(client) -> str:
    return csrf_token(client.get("/admin/catalogue").get_data(as_text=True))


def add_exam(client, **overrides):
    data = {
        "name": "一级应急救援员",
        "category": "qualification",
        "specialties": "矿山救援\n消防设施",
        "levels": "",
        "certificate_layout": "qual_safety",
        "pass_layout": "pass_safety",
        "csrf_token": catalogue_token(client),
    }
    data.update(overrides)
    return client.post("/admin/catalogue/exams", data=data)


def test_added_exam_imports_roster(app, staff_client, tmp_path):
    response = add_exam(staff_client)
    roster = tmp_path / "一级应急救援员.csv"
    roster.write_text(ROSTER, encoding="utf-8")

    with app.app_context():
        plan, _batch = batches.import_file(roster, exam="一级应急救援员", kind="certificate", actor="test")
        imported = db.session.scalars(select(Certificate).join(Exam).where(Exam.name == "一级应急救援员")).all()
        entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "catalogue.exam.create"))

    assert response.status_code == 303
    assert plan.counts["imported"] == 2
    assert len(imported) == 2
    assert entry.after["specialties"] == ["矿山救援", "消防设施"]


def test_exam_appears_in_upload_choices(staff_client):
    add_exam(staff_client)

    html = staff_client.get("/admin/batches/new").get_data(as_text=True)

    assert "一级应急救援员" in html


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": ""}, "考试名称为空"),
        ({"name": "二级建造师"}, "考试「二级建造师」已在目录中"),
        ({"specialties": ""}, "请至少填写一个专业"),
        ({"certificate_layout": "pass_safety"}, "不能用于此处"),
        ({"pass_layout": "nope"}, "合格证明版式「nope」不存在"),
        ({"category": "other"}, "请选择考试类别"),
    ],
    ids=["empty-name", "duplicate", "no-specialty", "wrong-kind", "unknown-layout", "category"],
)
def test_add_exam_rejects_invalid(staff_client, overrides, message):
    response = add_exam(staff_client, **overrides)

    assert response.status_code == 422
    assert message in response.get_data(as_text=True)


def test_added_specialty_is_importable(app, staff_client, import_roster, tmp_path):
    with app.app_context():
        exam_id = db.session.scalar(select(Exam.id).where(Exam.name == "初级注册安全工程师"))
    response = staff_client.post(
        f"/admin/catalogue/exams/{exam_id}/specialties",
        data={"name": "消防设施", "layout": "", "csrf_token": catalogue_token(staff_client)},
    )
    roster = tmp_path / "r.csv"
    roster.write_text(ROSTER.replace("矿山救援", "消防设施"), encoding="utf-8")

    with app.app_context():
        plan, _batch = batches.import_file(roster, exam="初级注册安全工程师", kind="certificate", actor="test")

    assert response.status_code == 303
    assert plan.counts["imported"] == 2


def test_duplicate_specialty_is_refused(app, staff_client):
    with app.app_context():
        exam_id = db.session.scalar(select(Exam.id).where(Exam.name == "二级建造师"))

    response = staff_client.post(
        f"/admin/catalogue/exams/{exam_id}/specialties",
        data={"name": "矿业工程", "layout": "", "csrf_token": catalogue_token(staff_client)},
    )

    assert response.status_code == 422
    assert "已是二级建造师的专业" in response.get_data(as_text=True)


def test_layout_edit_reaches_pdf(app, staff_client, import_roster):
    import_roster("2024年度二级建造师考试合格人员名单.xlsx", "二级建造师", "certificate")
    with app.app_context():
        layout = db.session.scalar(select(Layout).where(Layout.code == "qual_constructor"))
        layout_id, old = layout.id, layout.co_issuers
    page = staff_client.get(f"/admin/catalogue/layouts/{layout_id}").get_data(as_text=True)

    response = staff_client.post(
        f"/admin/catalogue/layouts/{layout_id}",
        data={"co_issuers": "重庆市住房和城乡建设委员会\n重庆市应急管理局", "statement": "持证人通过{exam}考试。",
              "csrf_token": csrf_token(page)},
    )

    assert response.status_code == 303
    with app.app_context():
        certificate = db.session.scalar(select(Certificate).where(Certificate.number == "202421000001"))
        text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(certificate_pdf(certificate))).pages)
        entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "catalogue.layout.update"))
    assert "持证人通过二级建造师考试" in text.replace("\n", "")
    assert entry.before["co_issuers"] == old
    assert entry.after["co_issuers"] == ["重庆市住房和城乡建设委员会", "重庆市应急管理局"]


def test_layout_rejects_unknown_placeholder(app, staff_client):
    with app.app_context():
        layout_id = db.session.scalar(select(Layout.id).where(Layout.code == "title_exam"))
    page = staff_client.get(f"/admin/catalogue/layouts/{layout_id}").get_data(as_text=True)

    response = staff_client.post(
        f"/admin/catalogue/layouts/{layout_id}",
        data={"co_issuers": "", "statement": "持证人{name}通过考试", "csrf_token": csrf_token(page)},
    )

    assert response.status_code == 422
    assert "「{name}」不是可用的占位符" in response.get_data(as_text=True)
