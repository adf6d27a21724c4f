"""Engine settings applied to every new database connection."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine

# Milliseconds a writer waits for another writer's lock before SQLite reports "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000


def set_sqlite_pragmas(dbapi_connection, _connection_record) -> None:
    """Switch a new SQLite connection to WAL with a busy timeout and synchronous=NORMAL.

    WAL lets lookups read while an import writes. synchronous=NORMAL in WAL mode
    keeps the database consistent after a crash, but a power cut may lose the last
    commits (SQLite documentation, "Write-Ahead Logging").
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def install_sqlite_pragmas(engine: Engine) -> None:
    """Register `set_sqlite_pragmas` on a SQLite engine; other engines are left alone."""
    if engine.dialect.name != "sqlite":
        return
    if not event.contains(engine, "connect", set_sqlite_pragmas):
        event.listen(engine, "connect", set_sqlite_pragmas)


def configure(app: Flask) -> None:
    """Apply the settings to the engines Flask-SQLAlchemy created for `app`."""
    from .extensions import db

    with app.app_context():
        for engine in db.engines.values():
            install_sqlite_pragmas(engine)
