"""Anonymous lookups read the LOOKUP_DATABASE_URL replica; writes and staff work stay on the primary.

Replication is simulated by copying the primary SQLite file onto the replica
with SQLite's backup API, so the test can hold the replica one step behind,
as a standby that has not yet replayed a revocation would be. It runs on
SQLite files of its own, whatever TEST_DATABASE_URL is set to.
"""

from __future__ import annotations

import sqlite3

import pyotp
import pytest
from flask_migrate import upgrade
from sqlalchemy import func, select

from app import create_app
from app.extensions import db
from app.models import Certificate, LookupEvent
from app.services import accounts, batches, events, lookup, records

from .conftest import QR_KEY, ROSTER_DIR, STAFF_PASSWORD, STAFF_TOTP_SECRET, csrf_token

SAFETY_ROSTER = "2024年度初级注册安全工程师考试合格人员.xlsx"
# First data row of the safety roster.
NUMBER, NAME = "202423000001", "杨宇"


def replicate(primary, replica) -> None:
    """Copy the primary database file onto the replica, as a caught-up standby would hold it."""
    source, target = sqlite3.connect(primary), sqlite3.connect(replica)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


@pytest.fixture
def replica_app(tmp_path, monkeypatch):
    primary, replica = tmp_path / "primary.db", tmp_path / "replica.db"
    monkeypatch.setenv("CERT_INSTANCE_PATH", str(tmp_path / "instance"))
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test-secret-key",
            "QR_TOKEN_KEYS": [QR_KEY],
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{primary}",
            "LOOKUP_DATABASE_URL": f"sqlite:///{replica}",
            "RATELIMIT_ENABLED": False,
            "LOOKUP_CAPTCHA_ENABLED": False,
        }
    )
    with app.app_context():
        upgrade()
        batches.import_file(ROSTER_DIR / SAFETY_ROSTER, exam="初级注册安全工程师", kind="certificate", actor="test")
    replicate(primary, replica)
    yield app, primary, replica
    with app.app_context():
        events.flush_lookups()  # into this primary, not the shared test database
        for engine in db.engines.values():
            engine.dispose()


def lookup_result(client) -> str:
    response = client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME})
    assert response.status_code == 200
    return response.get_json()["result"]


def test_lookup_engine_is_replica(replica_app):
    app, _primary, replica = replica_app

    with app.app_context():
        engine = lookup.lookup_engine()

    assert engine.url.database == str(replica)


def test_lookup_reads_replica_until_replayed(replica_app):
    app, primary, replica = replica_app
    client = app.test_client()
    with app.app_context():
        certificate = db.session.scalar(select(Certificate).where(Certificate.number == NUMBER))
        records.revoke(certificate, reason="测试：撤销后备库尚未同步", actor="test")

    before_replay = lookup_result(client)
    with app.app_context():
        lookup.lookup_engine().dispose()
    replicate(primary, replica)
    after_replay = lookup_result(client)

    assert before_replay == "valid"
    assert after_replay == "revoked"


def test_lookup_events_written_to_primary(replica_app):
    app, _primary, replica = replica_app
    client = app.test_client()

    lookup_result(client)
    with app.app_context():
        events.flush_lookups()
        on_primary = db.session.scalar(select(func.count()).select_from(LookupEvent))
    with sqlite3.connect(replica) as connection:
        on_replica = connection.execute("SELECT count(*) FROM lookup_event").fetchone()[0]

    assert on_primary == 1
    assert on_replica == 0


def test_without_replica_lookups_read_primary(app):
    with app.app_context():
        engine = lookup.lookup_engine()
        # On PostgreSQL lookups have an autocommit engine of their own, on the same database.
        assert engine.url == db.engine.url


def test_lookup_engine_takes_pool_settings(tmp_path, monkeypatch):
    """The autocommit lookup engine uses the configured pool size, overflow and recycle time, without the ping."""
    monkeypatch.setenv("CERT_INSTANCE_PATH", str(tmp_path))
    from app import create_app

    options = {"pool_size": 3, "max_overflow": 2, "pool_pre_ping": True, "pool_recycle": 1800}
    # Only the engines are built; no server has to listen at this address.
    app = create_app({
        "TESTING": True,
        "SECRET_KEY": "test-secret-key-0123456789-0123456789",
        "QR_TOKEN_KEYS": ["test-qr-key-0123456789-0123456789"],
        "SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://postgres@127.0.0.1:5432/unused_by_this_test",
        "SQLALCHEMY_ENGINE_OPTIONS": options,
    })
    with app.app_context():
        pool = lookup.lookup_engine().pool
        main_pool = db.engine.pool

    assert pool.size() == 3
    assert pool._max_overflow == 2
    assert pool._recycle == 1800
    assert pool._pre_ping is False
    assert main_pool._pre_ping is True


def test_revoke_hint_matches_replica_delay(replica_app):
    app, _primary, _replica = replica_app
    with app.app_context():
        accounts.create_staff("replica1", "admin", STAFF_PASSWORD, actor="test", totp_secret=STAFF_TOTP_SECRET)
        certificate_id = db.session.scalar(select(Certificate.id).order_by(Certificate.id).limit(1))
    client = app.test_client()
    page = client.get("/admin/login").get_data(as_text=True)
    client.post("/admin/login", data={"username": "replica1", "password": STAFF_PASSWORD, "csrf_token": csrf_token(page)})
    page = client.get("/admin/login/totp").get_data(as_text=True)
    code = pyotp.TOTP(STAFF_TOTP_SECRET).now()
    assert client.post("/admin/login/totp", data={"code": code, "csrf_token": csrf_token(page)}).status_code == 303

    html = client.get(f"/admin/certificates/{certificate_id}").get_data(as_text=True)

    assert "撤销" in html
    # Lookups read the replica, which shows a revocation once it has replayed it,
    # so the hint above the form must not promise that the lookup pages change at once.
    assert "查验接口和持证人的证书列表会立即显示" not in html
