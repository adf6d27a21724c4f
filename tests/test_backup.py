"""Backup and restore: `flask --app wsgi backup` and `restore`, proved by a restore drill.

The drill backs up the session database, restores the file into a second,
empty database and compares every table's row count and content hash. It
then looks a certificate up through the lookup service on the restored copy.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from pathlib import Path

import pytest

from app.extensions import db
from app.services import backup, lookup
from tests.conftest import dispose_engines
from tests.scratch_db import create_scratch_database, drop_scratch_database, scratch_app

ROSTER = "2024年度二级建造师考试合格人员名单.xlsx"
NUMBER, NAME = "202421000001", "田娟"


@pytest.fixture
def restore_target(app, tmp_path):
    url = create_scratch_database(tmp_path, "restore")
    target = scratch_app(url, migrate=False, keys_from=app)
    yield target
    with target.app_context():
        db.session.remove()
        dispose_engines()
    drop_scratch_database(url)


def _backup_file(runner, out_dir: Path) -> Path:
    result = runner.invoke(args=["backup", "--out", str(out_dir)])
    assert result.exit_code == 0, result.output
    match = re.search(r"已备份到 (\S+?)（", result.output)
    assert match, result.output
    return Path(match.group(1))


@pytest.fixture
def drill(app, import_roster, make_staff, runner, restore_target, tmp_path):
    """Fill the session database, back it up and restore the file into `restore_target`."""
    import_roster(ROSTER, "二级建造师", "certificate")
    make_staff("backup-admin")
    with app.app_context():
        expected = backup.table_digests()
    path = _backup_file(runner, tmp_path / "backups")
    result = restore_target.test_cli_runner().invoke(args=["restore", str(path)])
    return expected, path, result


def test_backup_file_written(drill):
    _expected, path, _result = drill
    assert path.is_file()
    assert path.stat().st_size > 0
    assert path.suffix in {backup.SQLITE_SUFFIX, backup.POSTGRES_SUFFIX}


def test_backup_file_private(app, runner, tmp_path):
    # A umask of 022 would give 0644, but the backup contains personal data, so it must be 0600.
    old_umask = os.umask(0o022)
    try:
        path = _backup_file(runner, tmp_path / "backups")
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(path.stat().st_mode) == backup.BACKUP_FILE_MODE
    assert backup.BACKUP_FILE_MODE == 0o600


def test_backup_replaces_leftover_partial_mode(app, tmp_path):
    leftover = tmp_path / "certificates.sqlite3.partial"
    leftover.write_bytes(b"left by a failed run")
    leftover.chmod(0o644)

    backup._create_private(leftover)

    assert stat.S_IMODE(leftover.stat().st_mode) == 0o600
    assert leftover.stat().st_size == 0


def test_restore_into_empty_database(drill):
    _expected, _path, result = drill
    assert result.exit_code == 0, result.output
    assert "certificate: 1500" in result.output


def test_restored_tables_equal(drill, restore_target):
    expected, _path, _result = drill
    with restore_target.app_context():
        restored = backup.table_digests()
    assert sorted(restored) == sorted(expected)
    for table, digest in expected.items():
        assert restored[table] == digest, f"table {table} differs after restore"


def test_restored_certificate_verifies(drill, restore_target):
    with restore_target.app_context():
        result = lookup.verify(NUMBER, NAME)
    assert result.result == lookup.VALID
    assert result.certificate.masked_id_number.endswith("9696")
    assert "*" in result.certificate.masked_id_number


def test_restore_refuses_to_overwrite(drill, restore_target):
    _expected, path, _result = drill
    with restore_target.app_context():
        before = backup.table_digests()
    result = restore_target.test_cli_runner().invoke(args=["restore", str(path)])
    assert result.exit_code == 1
    assert "--force" in result.output
    with restore_target.app_context():
        assert backup.table_digests() == before


def test_restore_force_overwrites(drill, restore_target):
    expected, path, _result = drill
    with restore_target.app_context():
        lookup_certificate = lookup.verify(NUMBER, NAME)
        assert lookup_certificate.result == lookup.VALID
        db.session.execute(db.text("UPDATE certificate SET status = 'revoked'"))
        db.session.commit()
    result = restore_target.test_cli_runner().invoke(args=["restore", "--force", str(path)])
    assert result.exit_code == 0, result.output
    with restore_target.app_context():
        assert backup.table_digests()["certificate"] == expected["certificate"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a backup at all\n", "不是"),
        (b"", "不是"),
    ],
)
def test_restore_rejects_other_files(drill, restore_target, tmp_path, content, message):
    with restore_target.app_context():
        before = backup.table_digests()
    bogus = tmp_path / "bogus.bin"
    bogus.write_bytes(content)
    result = restore_target.test_cli_runner().invoke(args=["restore", "--force", str(bogus)])
    assert result.exit_code == 1
    assert message in result.output
    with restore_target.app_context():
        assert backup.table_digests() == before


def test_restore_missing_file(restore_target, tmp_path):
    result = restore_target.test_cli_runner().invoke(args=["restore", str(tmp_path / "missing.sqlite3")])
    assert result.exit_code == 1
    assert "不存在" in result.output


def test_backup_while_writing(app, import_roster, runner, tmp_path):
    """A backup taken while an import commits is a consistent snapshot: all of the batch or none of it."""
    worker = threading.Thread(target=import_roster, args=("历年二级建造师证书信息2016-2023.xlsx", "二级建造师", "certificate"))
    worker.start()
    path = _backup_file(runner, tmp_path / "during")
    worker.join(timeout=120)

    url = create_scratch_database(tmp_path, "during")
    target = scratch_app(url, migrate=False, keys_from=app)
    try:
        assert target.test_cli_runner().invoke(args=["restore", str(path)]).exit_code == 0
        with target.app_context():
            count = backup.table_digests()["certificate"].rows
            db.session.remove()
            dispose_engines()
    finally:
        drop_scratch_database(url)
    assert count in {0, 5600}


def test_restore_truncated_backup_rejected(drill, restore_target, tmp_path):
    """A backup cut short (a full disk, an interrupted copy) is rejected with a message, and the data stay."""
    _expected, path, result = drill
    assert result.exit_code == 0, result.output
    with restore_target.app_context():
        before = backup.table_digests()
    truncated = tmp_path / f"truncated{path.suffix}"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    result = restore_target.test_cli_runner().invoke(args=["restore", "--force", str(truncated)])

    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), f"restore crashed with {result.exception!r}"
    assert "备份" in result.output
    assert "Traceback" not in result.output
    with restore_target.app_context():
        assert backup.table_digests() == before


def test_restore_current_schema_no_warning(drill):
    _expected, _path, result = drill
    assert result.exit_code == 0, result.output
    assert "db upgrade" not in result.output
    assert "警告" not in result.output


def _backup_at_revision(app, tmp_path, revision: str, version_num: str | None = None) -> Path:
    """Write a backup of a database migrated to `revision`, its alembic_version then set to `version_num` if given."""
    from flask_migrate import upgrade

    url = create_scratch_database(tmp_path, "old_schema")
    source = scratch_app(url, migrate=False, keys_from=app)
    try:
        with source.app_context():
            upgrade(revision=revision)
            if version_num is not None:
                db.session.execute(db.text("UPDATE alembic_version SET version_num = :v"), {"v": version_num})
                db.session.commit()
        return _backup_file(source.test_cli_runner(), tmp_path / "backups")
    finally:
        with source.app_context():
            db.session.remove()
            dispose_engines()
        drop_scratch_database(url)


def test_restore_old_schema_warns(app, restore_target, tmp_path):
    """A backup from before the latest migration restores, exits 0 and warns the operator to run `db upgrade`."""
    from flask_migrate import upgrade

    path = _backup_at_revision(app, tmp_path, "0005")

    result = restore_target.test_cli_runner().invoke(args=["restore", str(path)])

    assert result.exit_code == 0, result.output
    assert "警告：" in result.output
    assert "0005" in result.output
    assert "flask --app wsgi db upgrade" in result.output
    with restore_target.app_context():
        upgrade()
        assert backup.schema_warning() is None


def test_restore_newer_schema_warns(app, restore_target, tmp_path):
    """A backup whose revision the code does not know came from a newer release, so `db upgrade` is the wrong advice."""
    path = _backup_at_revision(app, tmp_path, "head", version_num="9999")

    result = restore_target.test_cli_runner().invoke(args=["restore", str(path)])

    assert result.exit_code == 0, result.output
    assert "9999" in result.output
    assert "更新版本的程序" in result.output
    assert "不要在当前版本" in result.output
