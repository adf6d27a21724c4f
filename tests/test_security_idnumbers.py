"""ID numbers at rest: encrypted column, keyed-hash lookups, and the migration of existing rows."""

from __future__ import annotations

from datetime import date

import pytest
import sqlalchemy as sa
from flask_migrate import upgrade

from app import create_app
from app.domain import crypto
from app.extensions import db
from app.models import Certificate, Holder
from app.services import accounts

from .conftest import HOLDER_PASSWORD, csrf_token
from .scratch_db import create_scratch_database, drop_scratch_database

ROSTER = "2024年度二级建造师考试合格人员名单.xlsx"
NUMBER = "202421000001"
ID_NUMBER = "500109196409269696"
NAME = "田娟"


@pytest.fixture
def loaded(import_roster):
    return import_roster(ROSTER, "二级建造师", "certificate")


def raw_rows(table: str) -> list[tuple]:
    return [tuple(row) for row in db.session.execute(sa.text(f"SELECT * FROM {table}"))]


def test_certificate_rows_hold_no_plaintext_id(app, loaded):
    with app.app_context():
        rows = raw_rows("certificate")
        stored = db.session.execute(sa.text("SELECT id_number, id_number_hash FROM certificate WHERE number = :n"), {"n": NUMBER}).one()

    assert rows
    assert not any(ID_NUMBER in str(row) for row in rows)
    assert stored.id_number.startswith("v1:")
    assert len(stored.id_number_hash) == 64


def test_holder_rows_hold_no_plaintext_id(app):
    with app.app_context():
        accounts.register_holder(name=NAME, id_type="居民身份证", id_number=ID_NUMBER, phone="13800000001", password=HOLDER_PASSWORD)
        rows = raw_rows("holder")

    assert len(rows) == 1
    assert ID_NUMBER not in str(rows[0])


def test_sqlite_file_holds_no_plaintext_in_register(app, loaded, tmp_path):
    """The certificate and holder tables, dumped raw, contain no whole ID number from the roster."""
    with app.app_context():
        accounts.register_holder(name=NAME, id_type="居民身份证", id_number=ID_NUMBER, phone="13800000001", password=HOLDER_PASSWORD)
        dump = "\n".join(str(row) for table in ("certificate", "holder") for row in raw_rows(table))

    assert ID_NUMBER not in dump
    assert "500151199311095022" not in dump


def test_orm_reads_id_number_back(app, loaded):
    with app.app_context():
        certificate = db.session.scalar(sa.select(Certificate).where(Certificate.number == NUMBER))

    assert certificate.id_number == ID_NUMBER


def test_wrong_key_cannot_decrypt():
    token = crypto.encrypt(crypto.derive_key("k" * 40), ID_NUMBER)

    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(crypto.derive_key("other" * 8), token)


def test_encryption_is_randomised():
    key = crypto.derive_key("k" * 40)

    assert crypto.encrypt(key, ID_NUMBER) != crypto.encrypt(key, ID_NUMBER)


@pytest.mark.parametrize("login", [ID_NUMBER, ID_NUMBER.lower(), " " + ID_NUMBER + " "], ids=["exact", "lower-x", "spaces"])
def test_holder_login_by_id_number(app, client, loaded, login):
    with app.app_context():
        accounts.register_holder(name=NAME, id_type="居民身份证", id_number=ID_NUMBER, phone="13800000001", password=HOLDER_PASSWORD)
    page = client.get("/login").get_data(as_text=True)

    response = client.post("/login", data={"login": login, "password": HOLDER_PASSWORD, "csrf_token": csrf_token(page)})

    assert response.status_code == 303
    assert NUMBER in client.get("/me").get_data(as_text=True)


def test_holder_unique_by_hash(app):
    with app.app_context():
        accounts.register_holder(name=NAME, id_type="居民身份证", id_number=ID_NUMBER, phone="13800000001", password=HOLDER_PASSWORD)
        with pytest.raises(sa.exc.IntegrityError):
            accounts.register_holder(name=NAME, id_type="居民身份证", id_number=ID_NUMBER, phone="13800000002", password=HOLDER_PASSWORD)
        db.session.rollback()


def test_reimport_rechecks_by_id_number(loaded, import_roster):
    again = import_roster(ROSTER, "二级建造师", "certificate")

    assert sum(again.values()) == sum(loaded.values())
    assert again.get("imported", 0) == 0


def test_admin_search_by_id_number(staff_client, loaded):
    html = staff_client.get("/admin/certificates", query_string={"q": ID_NUMBER}).get_data(as_text=True)

    assert NUMBER in html


def test_lookup_still_verifies(client, loaded):
    data = client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME}).get_json()

    assert data["result"] == "valid"
    assert data["certificate"]["id_number"] == "5001**********9696"


def test_correction_keeps_hash_in_step(app, loaded):
    from app.id_numbers import id_hash

    new_id = "110101199003070011"
    with app.app_context():
        certificate = db.session.scalar(sa.select(Certificate).where(Certificate.number == NUMBER))
        certificate.id_number = new_id
        db.session.commit()
        found = db.session.scalar(sa.select(Certificate.number).where(Certificate.id_number_hash == id_hash(new_id)))

    assert found == NUMBER


# --- migration of existing plaintext rows (SQLite file of its own) ------------------


def test_migration_encrypts_existing_rows(tmp_path):
    url = create_scratch_database(tmp_path, "idmigrate")
    try:
        _migrate_and_check(url)
    finally:
        drop_scratch_database(url)


def _migrate_and_check(url: str) -> None:
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        upgrade(revision="0002")
        ids = db.session.execute(
            sa.text("SELECT e.id, s.id, e.certificate_layout_id FROM exam e JOIN specialty s ON s.exam_id = e.id LIMIT 1")
        ).one()
        db.session.execute(
            sa.text(
                "INSERT INTO certificate (public_id, number, kind, exam_id, specialty_id, layout_id, name, gender, id_type, "
                "id_number, birth_month, approval_date, status, version, created_at, updated_at) VALUES "
                "('p1', :number, 'certificate', :exam, :specialty, :layout, :name, '女', '居民身份证', :id, :birth, :approved, "
                "'valid', 1, '2024-01-01 00:00:00', '2024-01-01 00:00:00')"
            ),
            {"number": NUMBER, "exam": ids[0], "specialty": ids[1], "layout": ids[2], "name": NAME, "id": ID_NUMBER,
             "birth": date(1964, 9, 1), "approved": date(2024, 6, 1)},
        )
        db.session.execute(
            sa.text(
                "INSERT INTO holder (name, id_type, id_number, phone, password_hash, consented_at, created_at) VALUES "
                "(:name, '居民身份证', :id, '13800000001', 'x', '2024-01-01 00:00:00', '2024-01-01 00:00:00')"
            ),
            {"name": NAME, "id": ID_NUMBER},
        )
        db.session.commit()

        upgrade()

        raw = "\n".join(str(row) for table in ("certificate", "holder") for row in raw_rows(table))
        holder = accounts.find_holder(ID_NUMBER)
        certificate = db.session.scalar(sa.select(Certificate))
        db.session.remove()
        db.engine.dispose()

    assert ID_NUMBER not in raw
    assert holder is not None
    assert certificate.id_number == ID_NUMBER
