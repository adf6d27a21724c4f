"""ID numbers at rest: encrypted columns, keyed-hash lookups, the migrations of existing rows, and masking in free text."""

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

from .conftest import HOLDER_PASSWORD, csrf_token, dispose_engines
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
    assert stored.id_number.startswith("v2:")
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
        dispose_engines()

    assert ID_NUMBER not in raw
    assert holder is not None
    assert certificate.id_number == ID_NUMBER


# --- migration 0007: upload previews written in clear before it ----------------------

PREVIEW_RECORD = {"number": NUMBER, "name": NAME, "id_number": ID_NUMBER, "birth_month": "1964-09-01"}
PREVIEW_CELLS = [3, NAME, "男", ID_NUMBER, "1964-09"]
PREVIEW_CHANGES = {"id_number": [ID_NUMBER, "110101199003070011"]}
PREVIEW_REASON = f"性别「女」与证件号码「{ID_NUMBER}」不符"
LEGACY_REPORT = f"row,outcome,reason\n3,rejected,{PREVIEW_REASON}\n"


def test_migration_0007_encrypts_previews(tmp_path):
    url = create_scratch_database(tmp_path, "previews")
    try:
        _migrate_previews_and_check(url)
    finally:
        drop_scratch_database(url)


def _migrate_previews_and_check(url: str) -> None:
    import json

    from flask_migrate import downgrade

    from app.models import BatchRow, ImportBatch

    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        upgrade(revision="0006")
        db.session.execute(
            sa.text(
                "INSERT INTO import_batch (filename, stored_name, sha256, state, uploaded_by, created_at, "
                "imported_count, rejected_count, skipped_count, report_csv) VALUES "
                "('名单.xlsx', 'x.xlsx', 'abc', 'confirmed', 'test', '2024-01-01 00:00:00', 0, 1, 0, :report)"
            ),
            {"report": LEGACY_REPORT},
        )
        rows = [
            {"row": 2, "outcome": "imported", "reason": "", "record": json.dumps(PREVIEW_RECORD), "cells": None, "changes": None},
            {"row": 3, "outcome": "rejected", "reason": PREVIEW_REASON, "record": None, "cells": json.dumps(PREVIEW_CELLS), "changes": None},
            {"row": 4, "outcome": "changed", "reason": "更正", "record": json.dumps(PREVIEW_RECORD), "cells": "null",
             "changes": json.dumps(PREVIEW_CHANGES)},
        ]  # fmt: skip
        cast = "CAST(:{0} AS JSON)" if db.engine.dialect.name == "postgresql" else ":{0}"
        for row in rows:
            db.session.execute(
                sa.text(
                    "INSERT INTO batch_row (batch_id, row, outcome, reason, hidden, record, cells, changes, applied) "
                    f"SELECT id, :row, :outcome, :reason, '', {cast.format('record')}, {cast.format('cells')}, "
                    f"{cast.format('changes')}, false FROM import_batch"
                ),
                row,
            )
        db.session.commit()

        upgrade()
        raw = "\n".join(str(row) for table in ("batch_row", "import_batch") for row in raw_rows(table))
        read = {row.row: (row.record, row.cells, row.changes, row.reason) for row in db.session.scalars(sa.select(BatchRow))}
        report = db.session.scalar(sa.select(ImportBatch.report_csv))
        db.session.commit()

        downgrade(revision="0006")
        restored = db.session.execute(sa.text("SELECT reason FROM batch_row WHERE row = 3")).scalar_one()
        db.session.remove()
        dispose_engines()

    assert ID_NUMBER not in raw
    assert read == {
        2: (PREVIEW_RECORD, None, None, ""),
        3: (None, PREVIEW_CELLS, None, PREVIEW_REASON),
        4: (PREVIEW_RECORD, None, PREVIEW_CHANGES, "更正"),
    }
    assert report == LEGACY_REPORT
    assert restored == PREVIEW_REASON


# --- free text kept in clear: audit entries and staff reasons ---------------------------

MASKED = "5001**********9696"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"申请人证件号码 {ID_NUMBER}，已核对", f"申请人证件号码 {MASKED}，已核对"),
        (f"（{ID_NUMBER}）", f"（{MASKED}）"),
        ("50011219920730183x", "5001**********183X"),
        ("证书编号 202421000001", "证书编号 202421000001"),
        ("银行卡 6222021234567890123", "银行卡 6222021234567890123"),
        ("ABC500109196409269696", "ABC5001**********9696"),
        ({"reason": ID_NUMBER, "rows": [ID_NUMBER, 3], "count": 1}, {"reason": MASKED, "rows": [MASKED, 3], "count": 1}),
        (None, None),
    ],
    ids=["in-sentence", "in-brackets", "lower-x", "certificate-number", "19-digits", "inside-word", "nested", "none"],
)
def test_mask_id_numbers(value, expected):
    from app.id_numbers import mask_id_numbers

    assert mask_id_numbers(value) == expected


def test_audit_entry_masks_whole_id_numbers(app):
    from app.models import AuditEntry
    from app.services import audit

    with app.app_context():
        audit.record("test", "certificate.revoke", "certificate:1", detail={"reason": f"见 {ID_NUMBER}"},
                     before={"id_number": ID_NUMBER}, after={"note": [ID_NUMBER]})
        db.session.commit()
        raw = str(db.session.execute(sa.text("SELECT detail, before, after FROM audit_entry")).one())
        entry = db.session.scalar(sa.select(AuditEntry))

    assert ID_NUMBER not in raw
    assert entry.detail == {"reason": f"见 {MASKED}"}
    assert entry.before == {"id_number": MASKED}
    assert entry.after == {"note": [MASKED]}


def test_revoke_reason_masks_id_number(app, loaded):
    from app.services import records

    with app.app_context():
        certificate = db.session.scalar(sa.select(Certificate).where(Certificate.number == NUMBER))
        records.revoke(certificate, reason=f"重复发证，申请人 {ID_NUMBER}", actor="test")
        stored = db.session.execute(sa.text("SELECT revoke_reason FROM certificate WHERE number = :n"), {"n": NUMBER}).scalar_one()

    assert stored == f"重复发证，申请人 {MASKED}"
