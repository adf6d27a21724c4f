"""Staff: log in, upload a roster, preview every row, confirm or discard, download the report."""

from __future__ import annotations

import csv
import io
import re

from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditEntry, Certificate, ImportBatch

from .conftest import ROSTER_DIR, STAFF_PASSWORD, csrf_token

FAULTY = "二级建造师_问题数据样例.xlsx"


def upload(client, filename: str, exam: str = "", kind: str = ""):
    page = client.get("/admin/batches/new").get_data(as_text=True)
    with open(ROSTER_DIR / filename, "rb") as handle:
        data = {"file": (io.BytesIO(handle.read()), filename), "exam": exam, "kind": kind, "csrf_token": csrf_token(page)}
    return client.post("/admin/batches/new", data=data, content_type="multipart/form-data")


def batch_id_of(response) -> int:
    return int(re.search(r"/admin/batches/(\d+)", response.headers["Location"]).group(1))


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count(model.id)))


def test_admin_requires_login(client):
    response = client.get("/admin/batches/new")

    assert response.status_code == 303
    assert "/admin/login" in response.headers["Location"]


def test_wrong_password_is_refused(client, make_staff):
    make_staff("eve")
    page = client.get("/admin/login").get_data(as_text=True)

    response = client.post("/admin/login", data={"username": "eve", "password": "nope", "csrf_token": csrf_token(page)})

    assert response.status_code == 200
    assert "用户名或密码不正确" in response.get_data(as_text=True)


def test_upload_preview_writes_nothing(app, staff_client):
    response = upload(staff_client, FAULTY, exam="二级建造师", kind="certificate")
    html = staff_client.get(response.headers["Location"]).get_data(as_text=True)

    assert "尚未写入任何记录" in html
    assert "将导入 12 行，拒绝 11 行，跳过 3 行" in html
    assert "校验" in html
    assert count(app, Certificate) == 0


def test_confirm_imports_accepted_rows(app, staff_client):
    response = upload(staff_client, FAULTY, exam="二级建造师", kind="certificate")
    batch_url = response.headers["Location"]
    token = csrf_token(staff_client.get(batch_url).get_data(as_text=True))

    confirmed = staff_client.post(f"/admin/batches/{batch_id_of(response)}/confirm", data={"csrf_token": token})

    assert confirmed.status_code == 303
    assert count(app, Certificate) == 12
    with app.app_context():
        batch = db.session.get(ImportBatch, batch_id_of(response))
        assert batch.state == "confirmed"
        assert batch.uploaded_by == "operator1"
        assert db.session.scalar(select(func.count(AuditEntry.id)).where(AuditEntry.action == "batch.confirm")) == 1


def test_report_download_has_every_row(staff_client):
    response = upload(staff_client, FAULTY, exam="二级建造师", kind="certificate")

    report = staff_client.get(f"/admin/batches/{batch_id_of(response)}/report.csv")

    assert report.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(report.get_data(as_text=True).lstrip("\ufeff"))))
    assert [int(r["row"]) for r in rows] == list(range(3, 29))


def test_discard_writes_nothing(app, staff_client):
    response = upload(staff_client, FAULTY, exam="二级建造师", kind="certificate")
    token = csrf_token(staff_client.get(response.headers["Location"]).get_data(as_text=True))

    staff_client.post(f"/admin/batches/{batch_id_of(response)}/discard", data={"csrf_token": token})

    assert count(app, Certificate) == 0
    with app.app_context():
        assert db.session.get(ImportBatch, batch_id_of(response)).state == "discarded"


def test_confirm_twice_is_refused(app, staff_client):
    response = upload(staff_client, FAULTY, exam="二级建造师", kind="certificate")
    batch_id = batch_id_of(response)
    token = csrf_token(staff_client.get(response.headers["Location"]).get_data(as_text=True))
    staff_client.post(f"/admin/batches/{batch_id}/confirm", data={"csrf_token": token})

    second = staff_client.post(f"/admin/batches/{batch_id}/confirm", data={"csrf_token": token}, follow_redirects=True)

    assert "不能再次确认" in second.get_data(as_text=True)
    assert count(app, Certificate) == 12


def test_exam_guessed_from_filename(staff_client):
    response = upload(staff_client, "2024年度二级建造师考试合格人员名单.xlsx", kind="certificate")
    html = staff_client.get(response.headers["Location"]).get_data(as_text=True)

    assert "将导入 1500 行" in html


def test_file_without_exam_asks_staff_to_choose(staff_client, tmp_path):
    page = staff_client.get("/admin/batches/new").get_data(as_text=True)
    source = (ROSTER_DIR / "2024年度二级建造师考试合格人员名单.xlsx").read_bytes()
    data = {"file": (io.BytesIO(source), "名单.xlsx"), "exam": "", "kind": "certificate", "csrf_token": csrf_token(page)}
    response = staff_client.post("/admin/batches/new", data=data, content_type="multipart/form-data")

    html = staff_client.get(response.headers["Location"]).get_data(as_text=True)

    assert "考试" in html
    assert "确认导入" not in html


def test_upload_rejects_other_file_types(staff_client):
    page = staff_client.get("/admin/batches/new").get_data(as_text=True)
    data = {"file": (io.BytesIO(b"hello"), "roster.txt"), "csrf_token": csrf_token(page)}

    response = staff_client.post("/admin/batches/new", data=data, content_type="multipart/form-data")

    assert response.status_code == 200
    assert ".xlsx" in response.get_data(as_text=True)


def test_post_without_csrf_token_is_refused(staff_client):
    response = upload(staff_client, FAULTY, exam="二级建造师", kind="certificate")

    refused = staff_client.post(f"/admin/batches/{batch_id_of(response)}/confirm", data={})

    assert refused.status_code == 400


def test_certificate_search(staff_client, import_roster):
    import_roster("2024年度初级注册安全工程师考试合格人员.xlsx", "初级注册安全工程师", "certificate")

    html = staff_client.get("/admin/certificates", query_string={"q": "202423000001"}).get_data(as_text=True)

    assert "杨宇" in html
    assert "500151199311095022" not in html


def test_staff_login_password_is_checked(client, make_staff):
    make_staff("frank")
    page = client.get("/admin/login").get_data(as_text=True)

    response = client.post(
        "/admin/login", data={"username": "frank", "password": STAFF_PASSWORD, "csrf_token": csrf_token(page)}
    )

    assert response.status_code == 303
