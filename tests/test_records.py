"""Staff certificate records: search, the record page, correction with history, revocation and reinstatement."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select

from app.domain.identity import check_character
from app.domain.tokens import make_token
from app.extensions import db
from app.models import AuditEntry, Certificate, CertificateVersion

from .conftest import HOLDER_PASSWORD, QR_KEY, csrf_token
from .test_holders import login as holder_login
from .test_holders import register

CONSTRUCTOR_ROSTER = "2024年度二级建造师考试合格人员名单.xlsx"
NUMBER, NAME, ID_NUMBER = "202421000001", "田娟", "500109196409269696"
# A valid ID number of a man born in 1964-09, like the sample holder (17th digit odd).
NEW_ID_NUMBER = "11010119640926001" + check_character("11010119640926001")


@pytest.fixture
def other_client(app):
    """A second browser: `client` and `staff_client` share one cookie jar."""
    return app.test_client()


@pytest.fixture
def loaded(import_roster):
    import_roster(CONSTRUCTOR_ROSTER, "二级建造师", "certificate")


def certificate_id(app, number: str = NUMBER) -> int:
    with app.app_context():
        return db.session.scalar(select(Certificate.id).where(Certificate.number == number))


def stored(app, number: str = NUMBER) -> dict:
    with app.app_context():
        certificate = db.session.scalar(select(Certificate).where(Certificate.number == number))
        return {
            "name": certificate.name, "id_number": certificate.id_number, "version": certificate.version,
            "status": certificate.status, "corrected_at": certificate.corrected_at, "public_id": certificate.public_id,
        }


def correction_data(client, cert_id: int, **changes) -> dict:
    """Return the record page's correction form as submitted unchanged, with `changes` applied."""
    html = client.get(f"/admin/certificates/{cert_id}").get_data(as_text=True)
    form = html[html.index('id="correction"'):]
    data = {"csrf_token": csrf_token(form)}
    for name, value in re.findall(r'<input[^>]*name="(\w+)"[^>]*value="([^"]*)"', form):
        data.setdefault(name, value)
    for name, options in re.findall(r'<select[^>]*name="(\w+)"[^>]*>(.*?)</select>', form, re.S):
        selected = re.search(r'<option selected value="([^"]*)"|<option value="([^"]*)" selected', options)
        data[name] = next(group for group in selected.groups() if group is not None) if selected else ""
    data.update(changes)
    return data


def correct(client, cert_id: int, **changes):
    changes.setdefault("reason", "考生提交身份证原件，核对后更正")
    return client.post(f"/admin/certificates/{cert_id}/correct", data=correction_data(client, cert_id, **changes))


def post_reason(client, cert_id: int, action: str, reason: str):
    page = client.get(f"/admin/certificates/{cert_id}").get_data(as_text=True)
    return client.post(f"/admin/certificates/{cert_id}/{action}", data={"reason": reason, "csrf_token": csrf_token(page)})


def audit_actions(app) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)))


# --- search -------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [NUMBER, f" {NUMBER} ", "２０２４２１０００００１", NAME, "田 娟", ID_NUMBER, ID_NUMBER.lower()],
    ids=["number", "spaces", "full-width", "name", "padded-name", "id", "id-lower"],
)
def test_search_finds_record(staff_client, loaded, query):
    html = staff_client.get("/admin/certificates", query_string={"q": query}).get_data(as_text=True)

    assert NUMBER in html


def test_search_needs_whole_id_number(staff_client, loaded):
    html = staff_client.get("/admin/certificates", query_string={"q": ID_NUMBER[:10]}).get_data(as_text=True)

    assert NUMBER not in html
    assert "没有找到" in html


def test_record_page_shows_fields(app, staff_client, loaded):
    html = staff_client.get(f"/admin/certificates/{certificate_id(app)}").get_data(as_text=True)

    assert ID_NUMBER in html
    assert "没有更正过" in html
    assert "撤销证书" in html


def test_record_page_missing_is_404(staff_client):
    assert staff_client.get("/admin/certificates/999999").status_code == 404


# --- correction ---------------------------------------------------------


def test_correction_keeps_old_version(app, staff_client, loaded):
    cert_id = certificate_id(app)
    before = stored(app)

    response = correct(staff_client, cert_id, name="田娟娟")

    assert response.status_code == 303
    after = stored(app)
    assert after["name"] == "田娟娟"
    assert after["version"] == 2
    assert after["corrected_at"] is not None
    assert after["public_id"] == before["public_id"]
    with app.app_context():
        version = db.session.scalar(select(CertificateVersion).where(CertificateVersion.certificate_id == cert_id))
        assert version.version == 1
        assert version.fields["name"] == NAME
        assert version.id_number == ID_NUMBER
        assert "id_number" not in version.fields
        assert version.corrected_by == "operator1"
        assert version.reason == "考生提交身份证原件，核对后更正"
        entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "certificate.correct"))
        assert entry.before == {"name": NAME}
        assert entry.after == {"name": "田娟娟"}
        assert entry.target == f"certificate:{cert_id}"


def test_version_id_number_encrypted(app, staff_client, loaded):
    correct(staff_client, certificate_id(app), name="田娟娟")

    with app.app_context():
        raw = db.session.execute(sa.text("SELECT id_number, fields FROM certificate_version")).one()

    assert ID_NUMBER not in str(raw.id_number)
    assert ID_NUMBER not in str(raw.fields)


def test_correction_history_on_record_page(app, staff_client, loaded):
    cert_id = certificate_id(app)
    correct(staff_client, cert_id, name="田娟娟")

    html = staff_client.get(f"/admin/certificates/{cert_id}").get_data(as_text=True)

    assert "第 1 版" in html
    assert "当前信息（第 2 版）" in html
    assert "更正证书信息" in html


def test_corrected_record_on_every_lookup(app, other_client, staff_client, loaded):
    cert_id = certificate_id(app)
    correct(staff_client, cert_id, name="田娟娟")
    token = make_token(stored(app)["public_id"], [QR_KEY])

    form = other_client.get("/verify", query_string={"number": NUMBER, "name": "田娟娟"}).get_data(as_text=True)
    qr = other_client.get(f"/v/{token}").get_data(as_text=True)
    api = other_client.get("/api/v1/verify", query_string={"number": NUMBER, "name": "田娟娟"}).get_json()
    old_name = other_client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME}).get_json()

    assert "信息已更正" in form
    assert "田娟娟" in form
    assert "信息已更正" in qr
    assert "田娟娟" in qr
    assert api["certificate"]["name"] == "田娟娟"
    assert api["certificate"]["corrected_at"] is not None
    assert old_name["result"] == "not_found"


def test_correction_changes_id_number(app, staff_client, loaded):
    response = correct(staff_client, certificate_id(app), id_number=NEW_ID_NUMBER)

    assert response.status_code == 303
    assert stored(app)["id_number"] == NEW_ID_NUMBER
    with app.app_context():
        entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "certificate.correct"))
        assert ID_NUMBER not in str(entry.before)
        assert entry.before["id_number"] == "5001**********9696"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": ""}, "姓名为空"),
        ({"name": "田娟1"}, "含有数字"),
        ({"id_number": "500109196409269697"}, "500109196409269697"),
        ({"gender": "女"}, "性别「女」与证件号码"),
        ({"birth_month": "1970-01"}, "出生年月「1970-01」与证件号码"),
        ({"approval_date": "2999-01-01"}, "不能是将来的日期"),
        ({"approval_date": "昨天"}, "无法识别"),
        ({"specialty": "烹饪"}, "专业「烹饪」不是二级建造师的专业"),
        ({"number": "12"}, "格式不正确"),
        ({"reason": ""}, "请填写"),
        ({}, "完全相同"),
    ],
    ids=["empty-name", "digit-name", "checksum", "gender", "birth", "future", "bad-date", "specialty", "number",
         "no-reason", "unchanged"],
)
def test_correction_rejects_invalid(app, staff_client, loaded, changes, message):
    response = correct(staff_client, certificate_id(app), **changes)

    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    assert stored(app)["version"] == 1


def test_correction_cannot_reuse_number(app, staff_client, loaded):
    with app.app_context():
        other = db.session.scalars(select(Certificate.number).where(Certificate.number != NUMBER)).first()

    response = correct(staff_client, certificate_id(app), number=other)

    assert response.status_code == 422
    assert f"证书编号「{other}」已属于另一张证书" in response.get_data(as_text=True)
    assert stored(app)["version"] == 1


def test_correction_of_stale_page_is_refused(app, staff_client, loaded):
    cert_id = certificate_id(app)
    stale = correction_data(staff_client, cert_id, name="田娟娟", reason="第一次更正")
    correct(staff_client, cert_id, name="田小娟", reason="第二次更正")

    response = staff_client.post(f"/admin/certificates/{cert_id}/correct", data=stale)

    assert response.status_code == 422
    assert "已被他人更正" in response.get_data(as_text=True)
    assert stored(app)["name"] == "田小娟"


# --- holders after a correction --------------------------------------------


def test_holder_with_right_data_sees_corrected(app, other_client, staff_client, loaded):
    correct(staff_client, certificate_id(app), id_number=NEW_ID_NUMBER)
    register(other_client, id_number=NEW_ID_NUMBER)
    holder_login(other_client, NEW_ID_NUMBER, HOLDER_PASSWORD)

    html = other_client.get("/me").get_data(as_text=True)

    assert NUMBER in html
    assert "信息已更正" in html


def test_holder_with_old_data_loses_certificate(app, other_client, staff_client, loaded):
    register(other_client)
    holder_login(other_client, ID_NUMBER, HOLDER_PASSWORD)
    assert NUMBER in other_client.get("/me").get_data(as_text=True)

    correct(staff_client, certificate_id(app), id_number=NEW_ID_NUMBER)
    html = other_client.get("/me").get_data(as_text=True)

    assert NUMBER not in html
    assert other_client.get(f"/me/certificates/{NUMBER}.pdf").status_code == 404


# --- revocation -----------------------------------------------------------


def test_revocation_shows_on_every_path(app, other_client, staff_client, loaded):
    cert_id = certificate_id(app)
    register(other_client)
    holder_login(other_client, ID_NUMBER, HOLDER_PASSWORD)

    response = post_reason(staff_client, cert_id, "revoke", "考生资格经复核被取消")

    assert response.status_code == 303
    token = make_token(stored(app)["public_id"], [QR_KEY])
    form = other_client.get("/verify", query_string={"number": NUMBER, "name": NAME}).get_data(as_text=True)
    qr = other_client.get(f"/v/{token}").get_data(as_text=True)
    api = other_client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME}).get_json()
    mine = other_client.get("/me").get_data(as_text=True)
    assert "已撤销" in form
    assert re.search(r"该证书已于 \d{4}年\d{1,2}月\d{1,2}日 撤销", form)
    assert "已撤销" in qr
    assert re.search(r"该证书已于 \d{4}年\d{1,2}月\d{1,2}日 撤销", qr)
    assert api["result"] == "revoked"
    assert api["certificate"]["revoked_at"] is not None
    assert "已撤销" in mine
    assert re.search(r"\d{4}年\d{1,2}月\d{1,2}日 撤销", mine)


def test_revocation_requires_reason(app, staff_client, loaded):
    response = post_reason(staff_client, certificate_id(app), "revoke", "  ")

    assert response.status_code == 422
    assert "请填写" in response.get_data(as_text=True)
    assert stored(app)["status"] == "valid"


def test_reinstatement_restores_validity(app, other_client, staff_client, loaded):
    cert_id = certificate_id(app)
    post_reason(staff_client, cert_id, "revoke", "误撤销测试")

    response = post_reason(staff_client, cert_id, "reinstate", "撤销有误，经科室负责人同意恢复")

    assert response.status_code == 303
    assert stored(app)["status"] == "valid"
    api = other_client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME}).get_json()
    assert api["result"] == "valid"
    actions = audit_actions(app)
    assert "certificate.revoke" in actions
    assert "certificate.reinstate" in actions


def test_reinstatement_requires_reason(app, staff_client, loaded):
    cert_id = certificate_id(app)
    post_reason(staff_client, cert_id, "revoke", "考生资格经复核被取消")

    response = post_reason(staff_client, cert_id, "reinstate", "")

    assert response.status_code == 422
    assert stored(app)["status"] == "revoked"


def test_revoking_twice_is_refused(app, staff_client, loaded):
    cert_id = certificate_id(app)
    post_reason(staff_client, cert_id, "revoke", "考生资格经复核被取消")

    response = post_reason(staff_client, cert_id, "revoke", "再次撤销")

    assert response.status_code == 422
    with app.app_context():
        count = db.session.scalar(select(func.count(AuditEntry.id)).where(AuditEntry.action == "certificate.revoke"))
    assert count == 1
