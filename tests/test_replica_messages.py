"""Staff wording about when lookups show a revocation, with a LOOKUP_DATABASE_URL replica."""

from __future__ import annotations

import pyotp
import pytest
from flask_migrate import upgrade
from sqlalchemy import select

from app import create_app
from app.extensions import db
from app.models import Certificate
from app.services import accounts, batches, events
from tests.conftest import QR_KEY, ROSTER_DIR, STAFF_PASSWORD, STAFF_TOTP_SECRET, csrf_token

SAFETY_ROSTER = "2024年度初级注册安全工程师考试合格人员.xlsx"


@pytest.fixture
def replica_staff(tmp_path, monkeypatch):
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
        accounts.create_staff("replica1", "admin", STAFF_PASSWORD, actor="test", totp_secret=STAFF_TOTP_SECRET)
        certificate_id = db.session.scalar(select(Certificate.id).order_by(Certificate.id).limit(1))
    client = app.test_client()
    page = client.get("/admin/login").get_data(as_text=True)
    client.post("/admin/login", data={"username": "replica1", "password": STAFF_PASSWORD, "csrf_token": csrf_token(page)})
    page = client.get("/admin/login/totp").get_data(as_text=True)
    code = pyotp.TOTP(STAFF_TOTP_SECRET).now()
    assert client.post("/admin/login/totp", data={"code": code, "csrf_token": csrf_token(page)}).status_code == 303
    yield client, certificate_id
    with app.app_context():
        events.flush_lookups()
        for engine in db.engines.values():
            engine.dispose()


def test_revoke_hint_matches_replica_delay(replica_staff):
    client, certificate_id = replica_staff

    html = client.get(f"/admin/certificates/{certificate_id}").get_data(as_text=True)

    assert "撤销" in html
    # Lookups read the replica, which shows a revocation once it has replayed it,
    # so the hint above the form must not promise that the lookup pages change at once.
    assert "查验接口和持证人的证书列表会立即显示" not in html
