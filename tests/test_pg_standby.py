"""Anonymous lookups read a real PostgreSQL streaming standby, while logins and staff work use the primary.

The module starts its own primary and hot standby (`initdb`, then
`pg_basebackup -R`, see bench/replica.py's StandbyPair) on free 127.0.0.1
ports, whatever TEST_DATABASE_URL is set to, and stops and deletes both when
it ends. Pausing replay on the standby (`pg_wal_replay_pause()`) shows which
server each request read: a change committed on the primary stays invisible
to the lookups until replay resumes. Skipped, with the reason, when the
PostgreSQL server binaries are not installed, when this process is root and
there is no `postgres` user to run the servers as, or when initdb, pg_ctl or
pg_basebackup fails.
"""

from __future__ import annotations

import threading

import psycopg
import pyotp
import pytest
from flask_migrate import upgrade
from sqlalchemy import select

from app import create_app
from app.domain.tokens import make_token
from app.extensions import db
from app.models import Certificate
from app.services import accounts, batches, events, lookup
from bench.replica import SetupError, StandbyPair

from .conftest import HOLDER_PASSWORD, QR_KEY, ROSTER_DIR, STAFF_PASSWORD, STAFF_TOTP_SECRET, csrf_token, dispose_engines

SAFETY_ROSTER = "2024年度初级注册安全工程师考试合格人员.xlsx"
# The first data rows of the safety roster. Each test changes a certificate of its own.
ROUTED_NUMBER = "202423000001"
PAUSED_NUMBER = "202423000002"
HOLDER_NUMBER = "202423000003"
SYNC_NUMBER = "202423000004"
STAFF_USERNAME = "standby-admin"


@pytest.fixture(scope="module")
def pair():
    try:
        standby_pair = StandbyPair(durable=False).start()
    except SetupError as error:
        pytest.skip(f"no scratch PostgreSQL primary and standby: {error}")
    try:
        yield standby_pair
    finally:
        standby_pair.stop()


@pytest.fixture(scope="module")
def standby_app(pair, tmp_path_factory):
    """An app whose database is the scratch primary and whose LOOKUP_DATABASE_URL is the standby, with one roster."""
    settings = {
        "TESTING": True,
        "SECRET_KEY": "test-secret-key",
        "QR_TOKEN_KEYS": [QR_KEY],
        "SQLALCHEMY_DATABASE_URI": pair.primary_url,
        "RATELIMIT_ENABLED": False,
        "LOOKUP_CAPTCHA_ENABLED": False,
    }
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("CERT_INSTANCE_PATH", str(tmp_path_factory.mktemp("standby-instance")))
        migrating = create_app(settings)
        with migrating.app_context():
            upgrade()
            dispose_engines()

        app = create_app({**settings, "LOOKUP_DATABASE_URL": pair.standby_url})
        with app.app_context():
            batches.import_file(ROSTER_DIR / SAFETY_ROSTER, exam="初级注册安全工程师", kind="certificate", actor="test")
            accounts.create_staff(STAFF_USERNAME, "admin", STAFF_PASSWORD, actor="test", totp_secret=STAFF_TOTP_SECRET)
        pair.wait_for_replay()
        try:
            yield app
        finally:
            pair.resume_replay()
            with app.app_context():
                # Into this primary, before it stops, not into the shared test database.
                events.flush_lookups()
                events.flush_downloads()
                for engine in db.engines.values():
                    engine.dispose()


@pytest.fixture(scope="module")
def staff(standby_app):
    """A client logged in as an admin. TOTP codes cannot be replayed, so the account logs in once per module."""
    client = standby_app.test_client()
    page = client.get("/admin/login").get_data(as_text=True)
    response = client.post(
        "/admin/login", data={"username": STAFF_USERNAME, "password": STAFF_PASSWORD, "csrf_token": csrf_token(page)}
    )
    assert response.status_code == 303
    page = client.get("/admin/login/totp").get_data(as_text=True)
    response = client.post(
        "/admin/login/totp", data={"code": pyotp.TOTP(STAFF_TOTP_SECRET).now(), "csrf_token": csrf_token(page)}
    )
    assert response.status_code == 303
    return client


def certificate_of(app, number: str) -> Certificate:
    with app.app_context():
        certificate = db.session.scalar(select(Certificate).where(Certificate.number == number))
        db.session.expunge(certificate)
        return certificate


def status_on(pair, server: str, number: str) -> str:
    with pair.connect(server) as connection:
        return connection.execute("SELECT status FROM certificate WHERE number = %s", (number,)).fetchone()[0]


def api_result(client, certificate: Certificate) -> str:
    response = client.get("/api/v1/verify", query_string={"number": certificate.number, "name": certificate.name})
    assert response.status_code == 200
    return response.get_json()["result"]


def page_badges(client, certificate: Certificate) -> dict[str, str]:
    """Return the status badge class (badge-valid or badge-revoked) shown by /verify and by /v/<token>."""
    form = client.get("/verify", query_string={"number": certificate.number, "name": certificate.name})
    qr = client.get(f"/v/{make_token(certificate.public_id, [QR_KEY])}")
    badges = {}
    for path, response in (("/verify", form), ("/v/<token>", qr)):
        html = response.get_data(as_text=True)
        assert response.status_code == 200, path
        assert certificate.number in html, path
        badges[path] = ""
        for badge in ("badge-revoked", "badge-valid"):
            if badge in html:
                badges[path] = badge
                break
    return badges


def lookup_events_on_primary(pair, app) -> int:
    """Return the lookup events on the primary after writing out those this process still buffers."""
    with app.app_context():
        events.flush_lookups()
    with pair.connect("primary") as primary:
        return primary.execute("SELECT count(*) FROM lookup_event").fetchone()[0]


def revoke_form(staff, certificate: Certificate) -> dict[str, str]:
    """Return the revocation form data, read from the record page before the test pauses anything."""
    page = staff.get(f"/admin/certificates/{certificate.id}").get_data(as_text=True)
    return {"reason": "测试：备库查验", "csrf_token": csrf_token(page)}


def test_standby_streams_from_primary(pair, standby_app):
    with pair.connect("primary") as primary:
        state = primary.execute("SELECT state FROM pg_stat_replication WHERE application_name = 'standby'").fetchone()
    with pair.connect("standby") as standby:
        in_recovery = standby.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    with standby_app.app_context():
        lookup_port = lookup.lookup_engine().url.port
        primary_port = db.engine.url.port

    assert state == ("streaming",)
    assert in_recovery is True
    assert lookup_port == pair.ports["standby"]
    assert primary_port == pair.ports["primary"]


def test_standby_rejects_writes(pair, standby_app):
    with pair.connect("standby") as standby:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            standby.execute("UPDATE certificate SET status = 'revoked' WHERE number = %s", (ROUTED_NUMBER,))


def test_lookups_served_by_standby(pair, standby_app):
    client = standby_app.test_client()
    certificate = certificate_of(standby_app, ROUTED_NUMBER)

    result = api_result(client, certificate)
    badges = page_badges(client, certificate)

    assert result == "valid"
    assert badges == {"/verify": "badge-valid", "/v/<token>": "badge-valid"}


def test_paused_standby_hides_revocation(pair, standby_app, staff):
    client = standby_app.test_client()
    certificate = certificate_of(standby_app, PAUSED_NUMBER)
    form = revoke_form(staff, certificate)

    pair.pause_replay()
    try:
        response = staff.post(f"/admin/certificates/{certificate.id}/revoke", data=form)
        on_primary = status_on(pair, "primary", PAUSED_NUMBER)
        while_paused = api_result(client, certificate)
        badges_while_paused = page_badges(client, certificate)
    finally:
        pair.resume_replay()
    pair.wait_for_replay()
    after_replay = api_result(client, certificate)
    badges_after_replay = page_badges(client, certificate)
    flashed = staff.get(response.headers["Location"]).get_data(as_text=True)

    assert response.status_code == 303
    assert "副本同步后" in flashed  # the staff message does not promise an instant change
    assert on_primary == "revoked"
    assert while_paused == "valid"
    assert badges_while_paused == {"/verify": "badge-valid", "/v/<token>": "badge-valid"}
    assert after_replay == "revoked"
    assert badges_after_replay == {"/verify": "badge-revoked", "/v/<token>": "badge-revoked"}


def test_holder_signs_up_while_standby_paused(pair, standby_app):
    client = standby_app.test_client()
    certificate = certificate_of(standby_app, HOLDER_NUMBER)
    with standby_app.app_context():
        id_type, id_number = db.session.execute(
            select(Certificate.id_type, Certificate.id_number).where(Certificate.number == HOLDER_NUMBER)
        ).one()

    pair.pause_replay()
    try:
        page = client.get("/register").get_data(as_text=True)
        registered = client.post(
            "/register",
            data={
                "name": certificate.name,
                "id_type": id_type,
                "id_number": id_number,
                "phone": "13800000003",
                "password": HOLDER_PASSWORD,
                "confirm": HOLDER_PASSWORD,
                "consent": "y",
                "csrf_token": csrf_token(page),
            },
        )
        page = client.get("/login").get_data(as_text=True)
        logged_in = client.post(
            "/login", data={"login": id_number, "password": HOLDER_PASSWORD, "csrf_token": csrf_token(page)}
        )
        own_page = client.get("/me").get_data(as_text=True)
        events_before = lookup_events_on_primary(pair, standby_app)
        api_result(client, certificate)
        with standby_app.app_context():
            events.flush_lookups()
        events_after = lookup_events_on_primary(pair, standby_app)
        with pair.connect("primary") as primary:
            holders_on_primary = primary.execute("SELECT count(*) FROM holder").fetchone()[0]
        with pair.connect("standby") as standby:
            holders_while_paused = standby.execute("SELECT count(*) FROM holder").fetchone()[0]
    finally:
        pair.resume_replay()
    pair.wait_for_replay()
    with pair.connect("standby") as standby:
        holders_after_replay = standby.execute("SELECT count(*) FROM holder").fetchone()[0]

    assert registered.status_code == 303
    assert logged_in.status_code == 303
    assert HOLDER_NUMBER in own_page
    assert events_after == events_before + 1
    assert holders_on_primary == 1
    assert holders_while_paused == 0
    assert holders_after_replay == 1


def test_remote_apply_revocation_visible_at_once(pair, standby_app, staff):
    client = standby_app.test_client()
    certificate = certificate_of(standby_app, SYNC_NUMBER)
    form = revoke_form(staff, certificate)
    responses = []

    def revoke() -> None:
        responses.append(staff.post(f"/admin/certificates/{certificate.id}/revoke", data=form))

    pair.set_synchronous(True)
    try:
        # With replay paused, the revocation's commit must wait on the primary until the standby has applied it.
        pair.pause_replay()
        request = threading.Thread(target=revoke)
        request.start()
        request.join(timeout=2)
        blocked_while_paused = request.is_alive()
        pair.resume_replay()
        request.join(timeout=20)
        # Read at once, with no wait_for_replay: remote_apply already waited.
        on_standby = status_on(pair, "standby", SYNC_NUMBER)
        lookup_result = api_result(client, certificate)
    finally:
        pair.resume_replay()
        pair.set_synchronous(False)

    assert blocked_while_paused
    assert not request.is_alive()
    assert [response.status_code for response in responses] == [303]
    assert on_standby == "revoked"
    assert lookup_result == "revoked"
