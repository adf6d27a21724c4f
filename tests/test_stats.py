"""Lookup and download events, the statistics page and `flask events purge`."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from app.domain.tokens import make_token
from app.extensions import db
from app.models import Certificate, DownloadEvent, LookupEvent
from app.services import events, stats

from .conftest import HOLDER_PASSWORD, QR_KEY
from .test_holders import login as holder_login
from .test_holders import register

CONSTRUCTOR_ROSTER = "2024年度二级建造师考试合格人员名单.xlsx"
NUMBER, NAME, ID_NUMBER = "202421000001", "田娟", "500109196409269696"


@pytest.fixture
def loaded(import_roster):
    import_roster(CONSTRUCTOR_ROSTER, "二级建造师", "certificate")


def lookup_events(app) -> list[tuple[str, str]]:
    with app.app_context():
        events.flush_lookups()
        return [tuple(row) for row in db.session.execute(select(LookupEvent.channel, LookupEvent.result).order_by(LookupEvent.id))]


def test_lookups_are_counted_per_channel(app, client, loaded):
    with app.app_context():
        public_id = db.session.scalar(select(Certificate.public_id).where(Certificate.number == NUMBER))

    client.get("/verify", query_string={"number": NUMBER, "name": NAME})
    client.get("/verify", query_string={"number": NUMBER, "name": "别人"})
    client.get(f"/v/{make_token(public_id, [QR_KEY])}")
    client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME})

    assert lookup_events(app) == [("form", "valid"), ("form", "not_found"), ("qr", "valid"), ("api", "valid")]


def test_lookup_event_holds_no_personal_data(app, client, loaded):
    client.get("/verify", query_string={"number": NUMBER, "name": NAME})

    with app.app_context():
        events.flush_lookups()
        row = db.session.execute(select(LookupEvent)).scalar_one()
        stored = " ".join(str(getattr(row, column.key)) for column in LookupEvent.__table__.columns)
    assert NUMBER not in stored
    assert NAME not in stored
    assert "127.0.0.1" not in stored


def test_download_is_counted(app, client, loaded):
    register(client)
    holder_login(client, ID_NUMBER, HOLDER_PASSWORD)

    response = client.get(f"/me/certificates/{NUMBER}.pdf")

    assert response.status_code == 200
    with app.app_context():
        events.flush_downloads()
        assert db.session.scalar(select(func.count(DownloadEvent.id))) == 1


def test_issued_counts_by_exam_kind_year(app, loaded):
    with app.app_context():
        rows = stats.issued()
        total = db.session.scalar(select(func.count(Certificate.id)))

    assert sum(row.count for row in rows) == total
    assert {(row.exam, row.kind) for row in rows} == {("二级建造师", "certificate")}
    assert all(2016 <= row.year <= datetime.now().year for row in rows)


def add_lookups(app, *days_ago: int, result: str = "valid") -> None:
    with app.app_context():
        now = datetime.now(timezone.utc)
        for offset in days_ago:
            at = now - timedelta(days=offset)
            db.session.add(LookupEvent(at=at, day=events.local_day(at), channel="form", result=result))
        db.session.commit()


def test_days_fill_zeros(app):
    add_lookups(app, 0, 0, 2)
    add_lookups(app, 0, result="revoked")
    add_lookups(app, 45)

    with app.app_context():
        rows = stats.days()

    assert len(rows) == 30
    assert rows[-1].lookups == {"valid": 2, "revoked": 1, "not_found": 0}
    assert rows[-3].lookup_total == 1
    assert sum(row.lookup_total for row in rows) == 4


def test_stats_page_shows_numbers(app, staff_client, loaded):
    add_lookups(app, 0, 0, 0)

    html = staff_client.get("/admin/stats").get_data(as_text=True)

    assert "<svg" in html
    assert re.search(r"<td>\d{4}-\d{2}-\d{2}</td><td>3</td><td>0</td><td>0</td><td>3</td><td>0</td>", html)
    assert "二级建造师" in html
    assert "<script" not in html.split("<main", 1)[1]


def test_purge_deletes_old_events(app, runner, loaded):
    add_lookups(app, 1, 179, 181, 400)
    with app.app_context():
        certificate_id = db.session.scalar(select(Certificate.id))
        old = datetime.now(timezone.utc) - timedelta(days=200)
        db.session.add(DownloadEvent(at=old, day=old.date(), certificate_id=certificate_id))
        db.session.commit()

    result = runner.invoke(args=["events", "purge"])

    assert result.exit_code == 0, result.output
    assert "查验记录 2 条、下载记录 1 条" in result.output
    with app.app_context():
        assert db.session.scalar(select(func.count(LookupEvent.id))) == 2
        assert db.session.scalar(select(func.count(DownloadEvent.id))) == 0


def test_purge_takes_days_option(app, runner):
    add_lookups(app, 1, 10)

    result = runner.invoke(args=["events", "purge", "--days", "5"])

    assert result.exit_code == 0, result.output
    with app.app_context():
        assert db.session.scalar(select(func.count(LookupEvent.id))) == 1


def test_purge_follows_setting(app, runner, monkeypatch):
    add_lookups(app, 1, 10)
    monkeypatch.setitem(app.config, "LOOKUP_LOG_RETENTION_DAYS", 7)

    runner.invoke(args=["events", "purge"])

    with app.app_context():
        assert db.session.scalar(select(func.count(LookupEvent.id))) == 1


def test_purge_rejects_zero_days(runner):
    result = runner.invoke(args=["events", "purge", "--days", "0"])

    assert result.exit_code != 0


def test_lookup_events_are_written_in_batches(app, client, loaded, monkeypatch):
    monkeypatch.setitem(app.config, "LOOKUP_EVENT_BUFFER", 3)
    monkeypatch.setitem(app.config, "LOOKUP_EVENT_FLUSH_SECONDS", 3600)
    with app.app_context():
        events.flush_lookups()

    for _ in range(2):
        client.get("/api/v1/verify", query_string={"number": "209999999999", "name": "某某"})
    with app.app_context():
        before = db.session.scalar(select(db.func.count(LookupEvent.id)))
    client.get("/api/v1/verify", query_string={"number": "209999999999", "name": "某某"})
    with app.app_context():
        after = db.session.scalar(select(db.func.count(LookupEvent.id)))

    assert before == 0
    assert after == 3
