"""Scratch databases beside the session's one, for tests that need a second database or a subprocess.

With TEST_DATABASE_URL naming a PostgreSQL database `X`, a scratch database is
`X_<suffix>` on the same server, dropped and created again for each test.
Without it, the scratch database is an SQLite file in the test's tmp_path.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import sqlalchemy as sa
from flask import Flask
from flask_migrate import upgrade
from sqlalchemy.engine import make_url

from app import create_app

SECRET_KEY = secrets.token_urlsafe(48)
QR_KEYS = [secrets.token_urlsafe(48)]
ID_NUMBER_KEY = secrets.token_urlsafe(48)
ID_HASH_KEY = secrets.token_urlsafe(48)


def base_url() -> str | None:
    url = os.environ.get("TEST_DATABASE_URL")
    if url and url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def create_scratch_database(tmp_path: Path, suffix: str) -> str:
    """Create an empty database and return its URL (password included, for subprocesses)."""
    base = base_url()
    if not base:
        return f"sqlite:///{tmp_path / f'{suffix}.db'}"

    url = make_url(base)
    name = f"{url.database}_{suffix}"
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def drop_scratch_database(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return
    admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    finally:
        admin.dispose()


KEY_SETTINGS = ("SECRET_KEY", "QR_TOKEN_KEYS", "ID_NUMBER_KEY", "ID_HASH_KEY")


def scratch_app(url: str, *, migrate: bool, keys_from: Flask | None = None) -> Flask:
    """Return an app on `url`, its schema migrated to every head when `migrate` is set.

    With `keys_from`, the app uses that app's keys, so it can read ID numbers
    and QR tokens written by it (a restored copy of its database).
    """
    settings = {
        "TESTING": True,
        "SECRET_KEY": SECRET_KEY,
        "QR_TOKEN_KEYS": QR_KEYS,
        "ID_NUMBER_KEY": ID_NUMBER_KEY,
        "ID_HASH_KEY": ID_HASH_KEY,
        "SQLALCHEMY_DATABASE_URI": url,
        "RATELIMIT_ENABLED": False,
    }
    if keys_from is not None:
        settings.update({key: keys_from.config.get(key) for key in KEY_SETTINGS})
    app = create_app(settings)
    if migrate:
        with app.app_context():
            upgrade()
    return app


def subprocess_environment(url: str, instance: Path) -> dict[str, str]:
    """Return the environment for `flask --app wsgi ...` run against `url` with its own instance folder."""
    env = dict(os.environ)
    env.update(
        {
            "CERT_INSTANCE_PATH": str(instance),
            "CERT_SQLALCHEMY_DATABASE_URI": url,
            "CERT_SECRET_KEY": SECRET_KEY,
            "CERT_QR_TOKEN_KEYS": '["%s"]' % QR_KEYS[0],
            "CERT_ID_NUMBER_KEY": ID_NUMBER_KEY,
            "CERT_ID_HASH_KEY": ID_HASH_KEY,
            "CERT_RATELIMIT_ENABLED": "false",
        }
    )
    return env
