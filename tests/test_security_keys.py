"""ID numbers at rest in every table, and the rotation of ID_NUMBER_KEY and ID_HASH_KEY.

Each test works on a scratch database of its own: an SQLite file, or a
PostgreSQL database beside TEST_DATABASE_URL's. `populate` fills it through the
services the way staff do. It imports a roster, a roster with faulty rows and a
roster row that changes an ID number, then corrects, revokes and reinstates a
certificate and registers a holder.
"""

from __future__ import annotations

import base64
import csv
import io
import os
import re
import unicodedata
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from openpyxl import Workbook, load_workbook

from app.domain import crypto
from app.domain.identity import check_character
from app.extensions import db
from app.models import BatchRow, Certificate, CertificateVersion, ImportBatch
from app.services import accounts, batches, records

from .conftest import HOLDER_PASSWORD, ROSTER_DIR, csrf_token, dispose_engines
from .scratch_db import ID_HASH_KEY, ID_NUMBER_KEY, create_scratch_database, drop_scratch_database, scratch_app

ROSTER = "2024年度二级建造师考试合格人员名单.xlsx"
FAULTY = "二级建造师_问题数据样例.xlsx"
NUMBER, NAME, ID_NUMBER = "202421000001", "田娟", "500109196409269696"
# Valid ID numbers of men born in 1964-09 (17th digit odd), so they agree with 田娟's row.
CHANGED_ID = "11010119640926001" + check_character("11010119640926001")
CORRECTED_ID = "11010119640926003" + check_character("11010119640926003")
PHONE = "13800000001"
NEW_KEY = "rotated-id-number-key-" + "n" * 30
OTHER_KEY = "unrelated-id-number-key-" + "o" * 30
NEW_HASH_KEY = "rotated-id-hash-key-" + "h" * 30
ID_SHAPE = re.compile(r"[1-9]\d{16}[\dX]")


# Apps made by the current test; the `scratch` fixture closes their connections before dropping the database.
_apps: list = []


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    url = create_scratch_database(tmp_path, "keys")
    monkeypatch.setenv("CERT_INSTANCE_PATH", str(tmp_path / "instance"))
    try:
        yield url
    finally:
        while _apps:
            with _apps.pop().app_context():
                db.session.remove()
                dispose_engines()
        drop_scratch_database(url)


def migrated_app(url: str):
    """Return an app on the scratch database, migrated to the latest revision, with the fixture keys."""
    app = scratch_app(url, migrate=True)
    _apps.append(app)
    return app


def keyed_app(url: str, **keys):
    """Return an app on the scratch database with the fixture keys, overridden by `keys`."""
    app = scratch_app(url, migrate=False)
    app.config.update(keys)
    _apps.append(app)
    return app


def populate(app, tmp_path: Path) -> set[str]:
    """Fill the database through the services and return every whole ID number that went in."""
    with app.app_context():
        batches.import_file(ROSTER_DIR / ROSTER, exam="二级建造师", kind="certificate", actor="test")
        batches.import_file(ROSTER_DIR / FAULTY, exam="二级建造师", kind="certificate", actor="test")
        changed = tmp_path / "changed.xlsx"
        workbook = Workbook()
        workbook.active.append(["序号", "姓名", "性别", "证件号码", "出生年月", "专业名称", "批准日期", "证书编号"])
        workbook.active.append([1, NAME, "男", CHANGED_ID, "1964-09", "建筑工程", "2024-10-18", NUMBER])
        workbook.save(changed)
        batches.import_file(changed, exam="二级建造师", kind="certificate", actor="test", apply_changes=True)

        certificate = db.session.scalar(sa.select(Certificate).where(Certificate.number == NUMBER))
        values = records.snapshot(certificate) | {"id_number": CORRECTED_ID}
        records.correct(certificate, values, reason="考生申请更正证件号码，已核对原件", actor="test")
        records.revoke(certificate, reason=f"重复发证（申请人证件号码 {ID_NUMBER}）", actor="test")
        records.reinstate(certificate, reason="撤销有误", actor="test")
        accounts.register_holder(name=NAME, id_type="居民身份证", id_number=CORRECTED_ID, phone=PHONE, password=HOLDER_PASSWORD)
    return roster_id_numbers() | {ID_NUMBER, CHANGED_ID, CORRECTED_ID}


def roster_id_numbers() -> set[str]:
    found = set()
    for name in (ROSTER, FAULTY):
        workbook = load_workbook(ROSTER_DIR / name, read_only=True)
        for row in workbook.active.iter_rows(values_only=True):
            for value in row:
                found.update(ID_SHAPE.findall(unicodedata.normalize("NFKC", str(value or "")).upper()))
        workbook.close()
    with open(ROSTER_DIR / FAULTY.replace(".xlsx", ".expected.csv"), encoding="utf-8") as handle:
        found.update(row["id_number"] for row in csv.DictReader(handle) if row["id_number"])
    return found


def table_dump(app) -> dict[str, str]:
    """Return every table's rows as text, NFKC-normalised, read past the model's column types."""
    with app.app_context():
        names = sa.inspect(db.engine).get_table_names()
        dump = {}
        for name in names:
            rows = db.session.execute(sa.text(f'SELECT * FROM "{name}"')).all()
            dump[name] = unicodedata.normalize("NFKC", "\n".join(str(tuple(row)) for row in rows)).upper()
        db.session.remove()
    return dump


def raw_values(app) -> dict[str, list[str]]:
    """Return the stored ciphertexts of every encrypted column, keyed "table.column"."""
    from app.id_numbers import encrypted_columns

    with app.app_context():
        found = {}
        for column in encrypted_columns(db.metadata):
            text = sa.table(column.table.name, sa.column(column.name, sa.Text)).c[column.name]
            found[f"{column.table.name}.{column.name}"] = [
                value for value in db.session.scalars(sa.select(text).where(text.is_not(None), text != "")) if value
            ]
        db.session.remove()
    return found


def key_id(secret: str) -> str:
    return crypto.key_id(crypto.derive_key(secret))


def holder_login(client, login=CORRECTED_ID):
    page = client.get("/login").get_data(as_text=True)
    return client.post("/login", data={"login": login, "password": HOLDER_PASSWORD, "csrf_token": csrf_token(page)})


def readable_everywhere(app) -> dict[str, object]:
    """Read back what each encrypted column feeds: lookup, holder page, batch rows, versions, reports."""
    client = app.test_client()
    lookup = client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME}).get_json()
    login = holder_login(client)
    me = client.get("/me").get_data(as_text=True)
    with app.app_context():
        faulty = db.session.scalar(sa.select(ImportBatch).where(ImportBatch.filename == FAULTY))
        rejected = batches.rejected_xlsx(faulty)
        report = batches.batch_report_csv(faulty)
        changed_row = db.session.scalar(sa.select(BatchRow).where(BatchRow.outcome == "changed"))
        version_ids = set(db.session.scalars(sa.select(CertificateVersion.id_number)))
        found = records.search(CORRECTED_ID)
        db.session.remove()
    return {
        "lookup": lookup["result"],
        "masked": lookup["certificate"]["id_number"],
        "login": login.status_code,
        "me": NUMBER in me,
        "rejected": len(load_workbook(io.BytesIO(rejected)).active["A"]),
        "report": report.count("\n"),
        "changes": changed_row.changes["id_number"] if changed_row else None,
        "versions": version_ids,
        "search": [certificate.number for certificate in found],
    }


# --- at rest -----------------------------------------------------------------------


def test_no_table_holds_plaintext_id(scratch, tmp_path):
    app = migrated_app(scratch)
    id_numbers = populate(app, tmp_path)

    dump = table_dump(app)

    assert len(id_numbers) > 20
    leaks = {table: sorted(n for n in id_numbers if n in text) for table, text in dump.items()}
    assert {table: found for table, found in leaks.items() if found} == {}


def test_sqlite_file_holds_no_plaintext_id(scratch, tmp_path):
    if not scratch.startswith("sqlite"):
        pytest.skip("the file check reads the SQLite database file; PostgreSQL is covered by the table dump")
    app = migrated_app(scratch)
    id_numbers = populate(app, tmp_path)
    with app.app_context():
        dispose_engines()  # checkpoints the WAL into the file
    path = Path(scratch.removeprefix("sqlite:///"))

    content = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))

    assert [n for n in sorted(id_numbers) if n.encode() in content] == []


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("batch_row.record", "v2:"),
        ("batch_row.cells", "v2:"),
        ("batch_row.changes", "v2:"),
        ("batch_row.reason", "v2:"),
        ("certificate_version.id_number", "v2:"),
        ("certificate.id_number", "v2:"),
        ("holder.id_number", "v2:"),
    ],
)
def test_encrypted_column_holds_ciphertext(scratch, tmp_path, column, expected):
    app = migrated_app(scratch)
    populate(app, tmp_path)

    values = raw_values(app)[column]

    assert values
    assert {value[:3] for value in values} == {expected}


def test_previews_and_reports_still_read(scratch, tmp_path):
    app = migrated_app(scratch)
    populate(app, tmp_path)

    seen = readable_everywhere(app)

    assert seen["lookup"] == "valid"
    assert seen["masked"] == CORRECTED_ID[:4] + "*" * 10 + CORRECTED_ID[-4:]
    assert seen["login"] == 303
    assert seen["me"] is True
    assert seen["rejected"] > 1
    assert seen["report"] > 1
    assert seen["changes"] == [ID_NUMBER, CHANGED_ID]
    assert seen["versions"] == {ID_NUMBER, CHANGED_ID}
    assert seen["search"] == [NUMBER]


def test_audit_entries_hold_masked_id_numbers(scratch, tmp_path):
    app = migrated_app(scratch)
    populate(app, tmp_path)

    audit = table_dump(app)["audit_entry"]

    assert ID_NUMBER[:4] + "*" * 10 + ID_NUMBER[-4:] in audit
    assert ID_NUMBER not in audit


# --- ID_NUMBER_KEY rotation ---------------------------------------------------------


def rotate(app, *args):
    return app.test_cli_runner().invoke(args=["keys", "rotate-id-key", *args])


def test_rotation_end_to_end(scratch, tmp_path):
    old = migrated_app(scratch)
    populate(old, tmp_path)
    before = readable_everywhere(old)
    during = keyed_app(scratch, ID_NUMBER_KEY=NEW_KEY, ID_NUMBER_OLD_KEYS=[ID_NUMBER_KEY])

    readable_during = readable_everywhere(during)
    result = rotate(during)
    after = keyed_app(scratch, ID_NUMBER_KEY=NEW_KEY)
    stored = raw_values(after)

    assert result.exit_code == 0, result.output
    assert "完成" in result.output
    assert readable_during == before
    assert {crypto.token_key_id(value) for values in stored.values() for value in values} == {key_id(NEW_KEY)}
    assert readable_everywhere(after) == before


def test_rotation_check_changes_nothing(scratch, tmp_path):
    populate(migrated_app(scratch), tmp_path)
    during = keyed_app(scratch, ID_NUMBER_KEY=NEW_KEY, ID_NUMBER_OLD_KEYS=[ID_NUMBER_KEY])
    stored = raw_values(during)

    result = rotate(during, "--check")

    assert result.exit_code == 0, result.output
    assert key_id(ID_NUMBER_KEY) in result.output
    assert raw_values(during) == stored


def test_rotation_twice_is_a_no_op(scratch, tmp_path):
    populate(migrated_app(scratch), tmp_path)
    during = keyed_app(scratch, ID_NUMBER_KEY=NEW_KEY, ID_NUMBER_OLD_KEYS=[ID_NUMBER_KEY])
    rotate(during)
    stored = raw_values(during)

    result = rotate(during)

    assert result.exit_code == 0, result.output
    assert "无需轮换" in result.output
    assert raw_values(during) == stored


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"ID_NUMBER_KEY": NEW_KEY}, "old key not listed"),
        ({"ID_NUMBER_KEY": OTHER_KEY, "ID_NUMBER_OLD_KEYS": [NEW_KEY]}, "wrong old key"),
    ],
    ids=["old-key-missing", "wrong-old-key"],
)
def test_rotation_refuses_unknown_key(scratch, tmp_path, keys, named):
    populate(migrated_app(scratch), tmp_path)
    app = keyed_app(scratch, **keys)
    stored = raw_values(app)

    result = rotate(app)

    assert result.exit_code != 0, named
    assert key_id(ID_NUMBER_KEY) in result.output
    assert "ID_NUMBER_OLD_KEYS" in result.output
    assert "未做任何改动" in result.output
    assert raw_values(app) == stored


def test_removed_key_cannot_read_old_values(scratch, tmp_path):
    populate(migrated_app(scratch), tmp_path)
    app = keyed_app(scratch, ID_NUMBER_KEY=NEW_KEY)

    with app.app_context(), pytest.raises(crypto.DecryptionError, match="ID_NUMBER_OLD_KEYS"):
        db.session.scalar(sa.select(Certificate.id_number).limit(1))


def legacy_token(secret: str, text: str, associated_data: bytes) -> str:
    """Return `text` in the "v1:" form (no key id) that migration 0006 wrote before key ids existed."""
    nonce = os.urandom(crypto.NONCE_BYTES)
    sealed = AESGCM(crypto.derive_key(secret)).encrypt(nonce, text.encode(), associated_data)
    return "v1:" + base64.urlsafe_b64encode(nonce + sealed).decode()


def test_interrupted_rotation_resumes(scratch, tmp_path):
    """A value no configured key opens stops the run with a message; the fixed configuration finishes it."""
    populate(migrated_app(scratch), tmp_path)
    with keyed_app(scratch).app_context():
        last = db.session.scalar(sa.select(sa.func.max(BatchRow.id)))
        db.session.execute(
            sa.text("UPDATE batch_row SET reason = :reason WHERE id = :id"),
            {"reason": legacy_token(OTHER_KEY, "原因", b"batch_row.reason"), "id": last},
        )
        db.session.commit()
        db.session.remove()
    during = keyed_app(scratch, ID_NUMBER_KEY=NEW_KEY, ID_NUMBER_OLD_KEYS=[ID_NUMBER_KEY])

    stopped = rotate(during, "--chunk", "5")
    partly = raw_values(during)
    fixed = keyed_app(scratch, ID_NUMBER_KEY=NEW_KEY, ID_NUMBER_OLD_KEYS=[ID_NUMBER_KEY, OTHER_KEY])
    finished = rotate(fixed, "--chunk", "5")

    assert stopped.exit_code != 0
    assert f"batch_row.reason 中有值无法用已配置的密钥解密（row id {last}:" in stopped.output
    assert "重新运行" in stopped.output
    assert {crypto.token_key_id(v) for v in partly["certificate.id_number"]} == {key_id(NEW_KEY)}
    assert finished.exit_code == 0, finished.output
    assert {crypto.token_key_id(v) for values in raw_values(fixed).values() for v in values} == {key_id(NEW_KEY)}
    with fixed.app_context():
        assert db.session.get(BatchRow, last).reason == "原因"
        db.session.remove()


def test_rotation_keeps_value_changed_meanwhile(scratch, tmp_path):
    """An update matching the old ciphertext only: a value the app rewrote since the read is left as it is."""
    from app.cli_keys import rotate_column
    from app.id_numbers import keyring

    populate(migrated_app(scratch), tmp_path)
    during = keyed_app(scratch, ID_NUMBER_KEY=NEW_KEY, ID_NUMBER_OLD_KEYS=[ID_NUMBER_KEY])
    with during.app_context():
        certificate = db.session.scalar(sa.select(Certificate).where(Certificate.number == NUMBER))
        real_execute = db.session.execute

        def execute_after_a_correction(statement, params=None, *args, **kwargs):
            if isinstance(params, list):  # the rotation's batch of updates: a correction lands first
                db.session.execute(
                    sa.update(Certificate).where(Certificate.id == certificate.id).values(id_number=ID_NUMBER)
                )
            return real_execute(statement, params, *args, **kwargs)

        db.session.execute = execute_after_a_correction
        try:
            rotate_column(Certificate.__table__.c.id_number, keyring(), 1000)
        finally:
            db.session.execute = real_execute
        db.session.expire_all()
        stored = db.session.scalar(sa.select(Certificate.id_number).where(Certificate.number == NUMBER))
        db.session.remove()

    assert stored == ID_NUMBER


# --- ID_HASH_KEY rotation -----------------------------------------------------------


def test_hash_key_rotation(scratch, tmp_path):
    populate(migrated_app(scratch), tmp_path)
    rotated = keyed_app(scratch, ID_HASH_KEY=NEW_HASH_KEY)
    login_before = holder_login(rotated.test_client()).status_code

    result = rotated.test_cli_runner().invoke(args=["keys", "rotate-hash-key"])
    seen = readable_everywhere(rotated)
    old = keyed_app(scratch, ID_HASH_KEY=ID_HASH_KEY)

    assert login_before == 200  # the old hashes no longer match: login fails until the command runs
    assert result.exit_code == 0, result.output
    assert seen["login"] == 303
    assert seen["me"] is True
    assert seen["search"] == [NUMBER]
    assert holder_login(old.test_client()).status_code == 200


def test_hash_rotation_stops_on_duplicate_holder(scratch, tmp_path):
    """A holder registered with the new key before the command ran duplicates one with the old hash."""
    populate(migrated_app(scratch), tmp_path)
    rotated = keyed_app(scratch, ID_HASH_KEY=NEW_HASH_KEY)
    with rotated.app_context():
        accounts.register_holder(name=NAME, id_type="居民身份证", id_number=CORRECTED_ID, phone="13800000002",
                                 password=HOLDER_PASSWORD)
        hashes = sorted(db.session.scalars(sa.text("SELECT id_number_hash FROM holder")))
        db.session.remove()

    result = rotated.test_cli_runner().invoke(args=["keys", "rotate-hash-key"])
    with rotated.app_context():
        after = sorted(db.session.scalars(sa.text("SELECT id_number_hash FROM holder")))
        db.session.remove()

    assert result.exit_code != 0
    assert "证件类型和证件号码相同" in result.output
    assert "未做任何改动" in result.output
    assert after == hashes
