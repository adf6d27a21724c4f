"""Fixtures: one migrated database per test session, emptied of records after each test.

Tests use SQLite in a temporary folder, or the database TEST_DATABASE_URL names
(PostgreSQL in CI). That database's public schema is dropped and rebuilt by
the migrations at the start of the session.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pyotp
import pytest
import sqlalchemy as sa
from flask_migrate import upgrade

from app import create_app
from app.extensions import db
from app.services import events
from app.services.certificates import ensure_demo_keys
from app.models import (
    AuditEntry,
    BatchRow,
    Certificate,
    CertificateVersion,
    DownloadEvent,
    Holder,
    ImportBatch,
    Job,
    LoginThrottle,
    LookupEvent,
    PasswordResetCode,
    StaffUser,
)

DATA_DIR = Path(__file__).parent / "data"
ROSTER_DIR = DATA_DIR / "rosters"
QR_KEY = "test-qr-key-0123456789"
STAFF_PASSWORD = "Str0ng!Passw0rd"
HOLDER_PASSWORD = "holder-pass-2024"
# Every staff account made by make_staff has this TOTP secret already enrolled.
STAFF_TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"

# Rows written by tests; the catalogue the migration seeded stays.
RECORD_TABLES = [
    BatchRow, CertificateVersion, DownloadEvent, LookupEvent, Certificate, ImportBatch, AuditEntry, Holder, StaffUser, Job
]
RECORD_TABLES = [LoginThrottle, PasswordResetCode, *RECORD_TABLES]


def _database_url(instance: Path) -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        return f"sqlite:///{instance / 'test.db'}"
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def _reset_postgres(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA IF EXISTS public CASCADE"))
        connection.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(scope="session")
def app(tmp_path_factory):
    instance = tmp_path_factory.mktemp("instance")
    url = _database_url(instance)
    if url.startswith("postgresql"):
        _reset_postgres(url)

    os.environ["CERT_INSTANCE_PATH"] = str(instance)
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test-secret-key",
            "QR_TOKEN_KEYS": [QR_KEY],
            "SQLALCHEMY_DATABASE_URI": url,
            "BASE_URL": "http://127.0.0.1:5000",
            "RATELIMIT_ENABLED": False,
            "LOOKUP_CAPTCHA_ENABLED": False,
        }
    )
    with app.app_context():
        upgrade()
        ensure_demo_keys()  # signs every PDF the tests render
    yield app
    with app.app_context():
        dispose_engines()


@pytest.fixture(autouse=True)
def _empty_records(request):
    yield
    if "app" not in request.fixturenames:
        return
    app = request.getfixturevalue("app")
    with app.app_context():
        db.session.rollback()
        events.flush_lookups()  # so no buffered lookup of this test lands in the next one
        events.flush_downloads()  # and no buffered download either
        for model in RECORD_TABLES:
            if model is AuditEntry:
                _delete_audit_entries()
            else:
                db.session.execute(sa.delete(model))
        db.session.commit()


def _delete_audit_entries() -> None:
    """Empty audit_entry past its append-only triggers, which stay in force for every other statement.

    The triggers are lifted only inside the cleanup transaction: PostgreSQL
    disables them under ALTER TABLE's exclusive lock, and SQLite drops and
    recreates them from their stored SQL. Either way the commit restores them.
    """
    if db.engine.dialect.name == "postgresql":
        db.session.execute(sa.text("ALTER TABLE audit_entry DISABLE TRIGGER USER"))
        db.session.execute(sa.delete(AuditEntry))
        db.session.execute(sa.text("ALTER TABLE audit_entry ENABLE TRIGGER USER"))
        return
    triggers = db.session.execute(
        sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_entry'")
    ).all()
    for name, _sql in triggers:
        db.session.execute(sa.text(f'DROP TRIGGER "{name}"'))
    db.session.execute(sa.delete(AuditEntry))
    for _name, sql in triggers:
        db.session.execute(sa.text(sql))


@pytest.fixture
def app_context(app):
    with app.app_context():
        yield


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def redis_available() -> bool:
    """Return whether a Redis server accepts connections on 127.0.0.1:6379, where the Redis tests expect it."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


# Redis database the Redis tests use and empty before and after each test.
TEST_REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "13"))


@pytest.fixture
def redis_db():
    """Return a client of TEST_REDIS_DB, emptied before and after the test; skip when Redis is not running."""
    if not redis_available():
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=TEST_REDIS_DB)
    client.flushdb()
    yield client
    client.flushdb()


def dispose_engines() -> None:
    """Close the pooled connections of every engine of the current app: on PostgreSQL lookups have their own."""
    from app.extensions import db

    for engine in db.engines.values():
        engine.dispose()


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or re.search(
        r'name="csrf_token" value="([^"]+)"', html
    )
    assert match, "no CSRF token in page"
    return match.group(1)


@pytest.fixture
def import_roster(app):
    """Return a callable that imports a sample roster through the CLI command's service."""
    from app.services import batches

    def _import(filename: str, exam: str | None = None, kind: str | None = None):
        with app.app_context():
            plan, batch = batches.import_file(ROSTER_DIR / filename, exam=exam, kind=kind, actor="test")
            return plan.counts

    return _import


@pytest.fixture
def make_staff(app):
    """Return a callable that creates a staff account and returns its username."""
    from app.services import accounts

    def _make(username: str = "operator1", role: str = "admin") -> str:
        with app.app_context():
            accounts.create_staff(username, role, STAFF_PASSWORD, actor="test", totp_secret=STAFF_TOTP_SECRET)
        return username

    return _make


@pytest.fixture
def staff_client(client, make_staff):
    username = make_staff()
    page = client.get("/admin/login").get_data(as_text=True)
    response = client.post(
        "/admin/login", data={"username": username, "password": STAFF_PASSWORD, "csrf_token": csrf_token(page)}
    )
    assert response.status_code == 303
    page = client.get("/admin/login/totp").get_data(as_text=True)
    code = pyotp.TOTP(STAFF_TOTP_SECRET).now()
    response = client.post("/admin/login/totp", data={"code": code, "csrf_token": csrf_token(page)})
    assert response.status_code == 303
    return client


@pytest.fixture
def login_staff(app, make_staff):
    """Return a callable that creates a staff account with `role` and returns a new client logged in as it.

    It logs in the way `staff_client` does. TOTP codes cannot be replayed, so
    each account logs in once.
    """

    def _login(username: str, role: str):
        make_staff(username, role)
        client = app.test_client()
        page = client.get("/admin/login").get_data(as_text=True)
        response = client.post(
            "/admin/login", data={"username": username, "password": STAFF_PASSWORD, "csrf_token": csrf_token(page)}
        )
        assert response.status_code == 303
        page = client.get("/admin/login/totp").get_data(as_text=True)
        code = pyotp.TOTP(STAFF_TOTP_SECRET).now()
        response = client.post("/admin/login/totp", data={"code": code, "csrf_token": csrf_token(page)})
        assert response.status_code == 303
        return client

    return _login
