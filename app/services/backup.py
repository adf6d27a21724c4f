"""Online backups and restores of the certificate database, plus per-table digests to compare copies.

SQLite uses the sqlite3 backup API, which copies a consistent snapshot while
the site keeps serving. PostgreSQL uses pg_dump/pg_restore (custom format);
their major version must be at least the server's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa
from alembic.script import ScriptDirectory
from alembic.util import CommandError as AlembicCommandError
from flask import current_app
from sqlalchemy.engine import URL, make_url

from ..extensions import db

logger = logging.getLogger(__name__)

SQLITE_SUFFIX = ".sqlite3"
POSTGRES_SUFFIX = ".dump"
# Pages copied per step of sqlite3's backup; other connections may write between steps.
SQLITE_PAGES_PER_STEP = 4096
# Backups contain personal data (names, birth months, encrypted ID numbers), so
# only the service's own user may read them, whatever the umask.
BACKUP_FILE_MODE = 0o600


class BackupError(RuntimeError):
    """A backup or restore that could not run; the message gives the reason and the fix."""


@dataclass(frozen=True)
class TableDigest:
    rows: int
    sha256: str


def database_url() -> URL:
    return make_url(current_app.config["SQLALCHEMY_DATABASE_URI"])


def default_backup_dir() -> Path:
    return Path(current_app.instance_path) / "backups"


def backup(out_dir: Path | None = None) -> Path:
    """Write an online backup of the app's database into `out_dir` and return the file's path."""
    url = database_url()
    out_dir = Path(out_dir or default_backup_dir())
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")

    if url.get_backend_name() == "sqlite":
        target = out_dir / f"certificates-{stamp}{SQLITE_SUFFIX}"
        _sqlite_backup(_sqlite_path(url), target)
    elif url.get_backend_name() == "postgresql":
        target = out_dir / f"certificates-{stamp}{POSTGRES_SUFFIX}"
        _pg_dump(url, target)
    else:
        raise BackupError(f"不支持备份数据库类型 {url.get_backend_name()}：只支持 SQLite 和 PostgreSQL。")

    logger.info("Backup of %s written to %s (%s bytes)", url.get_backend_name(), target, target.stat().st_size)
    return target


def restore(source: Path, *, force: bool = False) -> dict[str, TableDigest]:
    """Replace the app's database with the backup `source` and return the restored tables' digests.

    Raises BackupError, without changing anything, when the database already
    holds certificates or accounts and `force` is false.
    """
    source = Path(source)
    if not source.is_file():
        raise BackupError(f"备份文件 {source} 不存在：请检查路径。")
    url = database_url()
    if not force and not is_empty():
        raise BackupError(
            f"目标数据库 {url.render_as_string(hide_password=True)} 中已有数据，未执行恢复。"
            "确认要用备份覆盖它时，请加 --force 重新运行。"
        )

    db.session.remove()
    _dispose_engines()
    if url.get_backend_name() == "sqlite":
        _sqlite_restore(source, _sqlite_path(url))
    elif url.get_backend_name() == "postgresql":
        _pg_restore(url, source)
    else:
        raise BackupError(f"不支持恢复数据库类型 {url.get_backend_name()}：只支持 SQLite 和 PostgreSQL。")
    _dispose_engines()

    logger.info("Database %s restored from %s", url.get_backend_name(), source)
    return table_digests()


def schema_warning() -> str | None:
    """Return a warning when the database's alembic revision is not the code's head, else None.

    A backup keeps the schema of the day it was written, so restoring an older
    one leaves the database behind the code until `db upgrade` runs.
    """
    script = ScriptDirectory(current_app.extensions["migrate"].directory)
    heads = set(script.get_heads())
    try:
        current = set(db.session.scalars(sa.text("SELECT version_num FROM alembic_version")))
    except sa.exc.DBAPIError:
        current = set()
    finally:
        db.session.rollback()
    if current == heads:
        return None

    logger.warning("Database schema at revision %s, the code's head is %s", sorted(current) or "none", sorted(heads))
    code_revision = "、".join(sorted(heads))
    if not current:
        return (
            f"恢复的数据库中没有结构版本记录（alembic_version 表缺失或为空），无法确认它与程序（结构版本 {code_revision}）一致。"
            "请确认备份文件来自本系统，再运行 flask --app wsgi db upgrade。"
        )
    database_revision = "、".join(sorted(current))
    if all(_is_known_revision(script, revision) for revision in current):
        return (
            f"恢复的数据库结构版本为 {database_revision}，低于程序的结构版本 {code_revision}。"
            "导入名单等操作会出错，请先运行 flask --app wsgi db upgrade 升级数据库结构。"
        )
    return (
        f"恢复的数据库结构版本 {database_revision} 不在程序的迁移记录中，备份可能来自更新版本的程序。"
        f"请把程序升级到写出该备份的版本后再使用，不要在当前版本（结构版本 {code_revision}）上运行 db upgrade。"
    )


def _is_known_revision(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except AlembicCommandError:
        return False


def is_empty() -> bool:
    """Return True when the database has no tables, or none of the tables staff or holders fill has rows."""
    inspector = sa.inspect(db.engine)
    tables = set(inspector.get_table_names())
    for table in ("certificate", "holder", "staff_user", "import_batch"):
        if table in tables and db.session.execute(sa.text(f"SELECT 1 FROM {table} LIMIT 1")).first():
            db.session.rollback()
            return False
    db.session.rollback()
    return True


def table_digests(engine: sa.Engine | None = None) -> dict[str, TableDigest]:
    """Return each table's row count and a SHA-256 of its rows in primary-key order.

    Two databases of the same kind with equal digests hold the same rows; the
    text form of values differs between SQLite and PostgreSQL, so digests are
    only comparable between databases of one kind.
    """
    engine = engine or db.engine
    metadata = sa.MetaData()
    metadata.reflect(bind=engine)
    digests = {}
    with engine.connect() as connection:
        for name, table in sorted(metadata.tables.items()):
            order = list(table.primary_key.columns) or list(table.columns)
            digest = hashlib.sha256()
            count = 0
            for row in connection.execute(sa.select(table).order_by(*order)):
                digest.update(repr(tuple(row)).encode("utf-8"))
                digest.update(b"\n")
                count += 1
            digests[name] = TableDigest(rows=count, sha256=digest.hexdigest())
    return digests


def _sqlite_path(url: URL) -> Path:
    if not url.database or url.database == ":memory:":
        raise BackupError("内存中的 SQLite 数据库无法备份或恢复：请在配置中使用数据库文件。")
    return Path(url.database)


def _sqlite_backup(source: Path, target: Path) -> None:
    if not source.is_file():
        raise BackupError(f"数据库文件 {source} 不存在：请先运行 flask --app wsgi db upgrade。")
    partial = target.with_suffix(target.suffix + ".partial")
    _create_private(partial)
    source_connection = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    target_connection = sqlite3.connect(partial)
    try:
        source_connection.backup(target_connection, pages=SQLITE_PAGES_PER_STEP)
        # A backup file is read on its own, so keep it in rollback-journal mode with no -wal file beside it.
        target_connection.execute("PRAGMA journal_mode=DELETE")
    finally:
        target_connection.close()
        source_connection.close()
    os.replace(partial, target)


def _create_private(path: Path) -> None:
    """Create `path` empty with BACKUP_FILE_MODE before a tool writes the backup into it."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, BACKUP_FILE_MODE)
    os.close(descriptor)
    # O_CREAT leaves the mode of a file left over from a failed run unchanged.
    os.chmod(path, BACKUP_FILE_MODE)


def _sqlite_restore(source: Path, target: Path) -> None:
    _check_sqlite_file(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    source_connection = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    target_connection = sqlite3.connect(target, timeout=30)
    try:
        # The backup API replaces every page of the target in one transaction, so
        # readers see either the old database or the restored one. A failed step
        # rolls that transaction back when the backup object is finished.
        source_connection.backup(target_connection)
    except sqlite3.DatabaseError as error:
        logger.error("Restore from %s failed: %s", source, error)
        raise BackupError(f"从备份 {source} 恢复失败（{error}），数据库未改变：请换一个完好的备份文件。") from error
    finally:
        target_connection.close()
        source_connection.close()


def _check_sqlite_file(source: Path) -> None:
    """Raise BackupError unless `source` is an SQLite file that passes `PRAGMA quick_check`.

    A backup cut short (a full disk, an interrupted copy) keeps a valid header,
    so only reading every page finds the damage.
    """
    with open(source, "rb") as handle:
        header = handle.read(16)
    if header != b"SQLite format 3\x00":
        raise BackupError(f"文件 {source} 不是 SQLite 备份：当前数据库是 SQLite，请选择 {SQLITE_SUFFIX} 备份文件。")

    connection = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as error:
        problems = [str(error)]
    finally:
        connection.close()
    if problems != ["ok"]:
        logger.error("Backup %s failed the SQLite quick check: %s", source, "; ".join(problems[:3]))
        raise BackupError(
            f"备份文件 {source} 已损坏（SQLite 完整性检查未通过：{problems[0][:120]}），未执行恢复，数据库未改变。"
            "文件可能在写出或复制时被截断，请换一个完好的备份文件。"
        )


def _pg_environment(url: URL) -> dict[str, str]:
    """Return the libpq variables for `url`; the password goes in PGPASSWORD, never on a command line."""
    env = dict(os.environ)
    values = {
        "PGHOST": url.host,
        "PGPORT": str(url.port) if url.port else None,
        "PGUSER": url.username,
        "PGPASSWORD": url.password,
        "PGDATABASE": url.database,
    }
    for key, value in values.items():
        if value:
            env[key] = value
    return env


def _pg_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(f"找不到 {name}：请安装与服务器同一主版本的 postgresql-client（Debian 12：apt-get install postgresql-client）。")
    return path


def _run(command: list[str], env: dict[str, str], action: str) -> None:
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        summary = _error_summary(completed.stderr or completed.stdout)
        logger.error("%s failed with exit code %s: %s", Path(command[0]).name, completed.returncode, summary)
        raise BackupError(f"{action}失败（{Path(command[0]).name} 退出码 {completed.returncode}）：{summary}")


def _error_summary(output: str) -> str:
    """Return the tool's error lines without DETAIL/CONTEXT lines, which can quote row values such as ID numbers."""
    lines = [
        line.strip()
        for line in output.splitlines()
        if line.strip() and not line.lstrip().startswith(("DETAIL", "CONTEXT", "LINE", "HINT"))
    ]
    errors = [line for line in lines if "error" in line.lower() or "fatal" in line.lower()] or lines
    return " ".join(errors[:2])[:300]


def _pg_dump(url: URL, target: Path) -> None:
    partial = target.with_suffix(target.suffix + ".partial")
    _create_private(partial)  # pg_dump truncates the file and keeps its mode
    command = [_pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", "--file", str(partial)]
    _run(command, _pg_environment(url), "备份")
    os.replace(partial, target)


def _pg_restore(url: URL, source: Path) -> None:
    """Replace schema public with the dump's contents in one transaction: a failed restore changes nothing."""
    with open(source, "rb") as handle:
        if handle.read(5) != b"PGDMP":
            raise BackupError(
                f"文件 {source} 不是 pg_dump 自定义格式备份：当前数据库是 PostgreSQL，请选择 {POSTGRES_SUFFIX} 备份文件。"
            )

    env = _pg_environment(url)
    with tempfile.TemporaryDirectory(prefix="cert-restore-") as work_dir:
        # pg_restore writes the dump as SQL first, so a damaged archive fails before the database is touched.
        sql_file = Path(work_dir) / "restore.sql"
        _run([_pg_tool("pg_restore"), "--no-owner", "--no-privileges", f"--file={sql_file}", str(source)], env, "读取备份")
        # psql then runs the schema reset and that SQL as one transaction. The connecting role must own schema public.
        psql = [
            _pg_tool("psql"), "--no-psqlrc", "--quiet", "--single-transaction", "--set=ON_ERROR_STOP=1",
            "--command=DROP SCHEMA IF EXISTS public CASCADE", "--command=CREATE SCHEMA public", f"--file={sql_file}",
        ]  # fmt: skip
        _run(psql, env, "恢复")


def _dispose_engines() -> None:
    """Close the pooled connections of every engine, the lookup engine's included, around a restore."""
    for engine in db.engines.values():
        engine.dispose()
