"""The lookup limits with Redis storage: one round trip per lookup, and every limit still enforced.

lookup_guard.check_lookup counts the address's lookup and reads both
not-found counters in one script call. These tests run against a real Redis
(127.0.0.1:6379, database TEST_REDIS_DB, default 13, flushed before and after)
and skip when it is not running.
"""

from __future__ import annotations

import pytest

from tests.conftest import TEST_REDIS_DB, dispose_engines

NUMBER = "202421000001"
NAME = "田娟"
REDIS_DB = TEST_REDIS_DB


@pytest.fixture
def redis_app(app, import_roster, redis_db):
    """A second app on the same database with the limits and the captcha on, counted in Redis."""
    from app import create_app
    from app.extensions import db, limiter

    import_roster("2024年度二级建造师考试合格人员名单.xlsx", "二级建造师", "certificate")
    keys = ("SECRET_KEY", "QR_TOKEN_KEYS", "ID_NUMBER_KEY", "ID_HASH_KEY", "SQLALCHEMY_DATABASE_URI", "BASE_URL")
    limited = create_app(
        {
            **{key: app.config[key] for key in keys},
            "TESTING": True,
            "RATELIMIT_ENABLED": True,
            "RATELIMIT_STORAGE_URI": f"redis://127.0.0.1:6379/{REDIS_DB}",
            "LOOKUP_RATE_LIMIT": "6 per minute",
            "LOOKUP_NUMBER_RATE_LIMIT": "3 per minute",
            "LOOKUP_MISSES_BEFORE_CAPTCHA": 1000,
            "LOOKUP_CAPTCHA_ENABLED": True,
        }
    )
    yield limited
    limiter.enabled = False  # the limiter is shared by every app of the process; the session app has it off
    with limited.app_context():
        dispose_engines()


def client_at(app, address: str):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def test_redis_uses_one_script(redis_app):
    assert redis_app.extensions["lookup_guard_script"] is not None


@pytest.mark.parametrize(("path", "mimetype"), [("/api/v1/verify", "application/json"), ("/verify", "text/html")])
def test_address_limit_in_redis(redis_app, path, mimetype):
    client = client_at(redis_app, "127.0.20.1")
    statuses = [client.get(path, query_string={"number": NUMBER, "name": NAME}).status_code for _ in range(6)]

    refused = client.get(path, query_string={"number": NUMBER, "name": NAME})

    assert statuses == [200] * 6
    assert refused.status_code == 429
    assert refused.mimetype == mimetype
    assert "请求过于频繁" in refused.get_data(as_text=True)
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    # Another address still has its own count.
    assert client_at(redis_app, "127.0.20.2").get(path, query_string={"number": NUMBER, "name": NAME}).status_code == 200


def test_address_limit_logged_once_per_window(redis_app, caplog):
    client = client_at(redis_app, "127.0.25.1")
    for _ in range(9):
        client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME})

    logged = [record for record in caplog.records if "Lookup rate limit" in record.getMessage()]

    assert len(logged) == 1
    assert "127.0.25.1" in logged[0].getMessage()


def test_form_and_api_share_the_address_count(redis_app):
    client = client_at(redis_app, "127.0.21.1")
    for _ in range(3):
        assert client.get("/verify", query_string={"number": NUMBER, "name": NAME}).status_code == 200
        assert client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME}).status_code == 200

    assert client.get("/verify").status_code == 429


def test_captcha_after_misses_in_redis(redis_app):
    redis_app.config["LOOKUP_MISSES_BEFORE_CAPTCHA"] = 2
    client = client_at(redis_app, "127.0.22.1")
    for index in range(2):
        client.get("/api/v1/verify", query_string={"number": f"20242199{index:04d}", "name": "王五"})

    api = client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME})
    form = client.get("/verify", query_string={"number": NUMBER, "name": NAME})

    assert api.status_code == 429
    assert "未查到结果过多" in api.get_json()["error"]
    assert 'id="captcha"' in form.get_data(as_text=True)
    assert "本次查验需要验证码" in form.get_data(as_text=True)


def test_number_limit_in_redis(redis_app):
    wrong = [
        client_at(redis_app, f"127.0.23.{index + 1}").get("/api/v1/verify", query_string={"number": NUMBER, "name": "王五"})
        for index in range(4)
    ]
    right_api = client_at(redis_app, "127.0.23.9").get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME})
    right_form = client_at(redis_app, "127.0.23.10").get("/verify", query_string={"number": NUMBER, "name": NAME})
    other_number = client_at(redis_app, "127.0.23.11").get(
        "/api/v1/verify", query_string={"number": "202421000002", "name": "王五"}
    )

    assert [response.status_code for response in wrong] == [200, 200, 200, 429]
    assert right_api.status_code == 429
    assert right_form.status_code == 200
    assert 'id="captcha"' in right_form.get_data(as_text=True)
    assert other_number.status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/verify", "/verify"])
def test_found_lookup_makes_one_redis_round_trip(redis_app, monkeypatch, path):
    """Count the commands sent to Redis. The real server replies, and the spy only counts."""
    import redis.connection

    sent = []
    send = redis.connection.Connection.send_packed_command

    def counting(self, command, *args, **kwargs):
        sent.append(command)
        return send(self, command, *args, **kwargs)

    client = client_at(redis_app, "127.0.24.1")
    client.get(path, query_string={"number": NUMBER, "name": NAME})  # loads the script into Redis
    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting)

    response = client.get(path, query_string={"number": NUMBER, "name": NAME})

    assert response.status_code == 200
    assert len(sent) == 1


# --- Redis outages: lookups fail open -------------------------------------------------------


@pytest.mark.parametrize("path", ["/verify", "/api/v1/verify"])
def test_lookups_fail_open_during_outage(app, import_roster, tmp_path, caplog, path):
    """With Redis unreachable, lookups are answered without counting, and the outage is logged once, without personal data."""
    import logging

    from app import create_app
    from app.extensions import limiter

    import_roster("2024年度二级建造师考试合格人员名单.xlsx", "二级建造师", "certificate")
    keys = ("SECRET_KEY", "QR_TOKEN_KEYS", "ID_NUMBER_KEY", "ID_HASH_KEY", "SQLALCHEMY_DATABASE_URI", "BASE_URL")
    # No server listens on this Unix socket, so every Redis call fails as it does while Redis restarts.
    down = create_app(
        {
            **{key: app.config[key] for key in keys},
            "TESTING": True,
            "RATELIMIT_ENABLED": True,
            "RATELIMIT_STORAGE_URI": f"redis+unix://{tmp_path / 'redis-down.sock'}?db={REDIS_DB}",
            "LOOKUP_RATE_LIMIT": "2 per minute",
            "LOOKUP_NUMBER_RATE_LIMIT": "1 per minute",
            "LOOKUP_MISSES_BEFORE_CAPTCHA": 1,
            "LOOKUP_CAPTCHA_ENABLED": True,
        }
    )
    client = client_at(down, "127.0.26.1")
    try:
        with caplog.at_level(logging.INFO):
            statuses = [client.get(path, query_string={"number": NUMBER, "name": name}).status_code for name in ("王五", "王五", NAME)]
            # Past the retry pause the storage is tried again, and fails again: still one warning.
            down.extensions["lookup_guard_outage"]["retry_at"] = 0.0
            found = client.get(path, query_string={"number": NUMBER, "name": NAME})
    finally:
        limiter.enabled = False
        with down.app_context():
            dispose_engines()

    body = found.get_data(as_text=True)
    assert statuses == [200] * 3  # past every limit, and no captcha: nothing could be counted
    assert found.status_code == 200
    assert "result-valid" in body or found.get_json()["result"] == "valid"
    warnings = [record.getMessage() for record in caplog.records if "storage unavailable" in record.getMessage()]
    assert len(warnings) == 1, warnings
    assert "ConnectionError" in warnings[0]
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    for text in (NUMBER, NAME, "王五", "127.0.26.1"):
        assert text not in caplog.text


def test_outage_pauses_storage_then_counting_resumes(redis_app, caplog):
    """A failed script call lets lookups through without calling Redis for a while; then counting resumes, and is logged."""
    import redis

    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise redis.exceptions.ConnectionError("Connection refused")

    client = client_at(redis_app, "127.0.27.1")
    script = redis_app.extensions["lookup_guard_script"]
    redis_app.extensions["lookup_guard_script"] = failing
    during = [client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME}).status_code for _ in range(8)]
    redis_app.extensions["lookup_guard_script"] = script
    paused = client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME}).status_code
    redis_app.extensions["lookup_guard_outage"]["retry_at"] = 0.0  # as when OUTAGE_RETRY_SECONDS have passed
    after = [client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME}).status_code for _ in range(7)]

    messages = [record.getMessage() for record in caplog.records if "Lookup counter storage" in record.getMessage()]
    assert during == [200] * 8
    assert len(calls) == 1  # the next lookups within OUTAGE_RETRY_SECONDS skip the storage
    assert paused == 200
    assert after == [200] * 6 + [429]  # "6 per minute" again, counted from the end of the outage
    assert len(messages) == 2
    assert "unavailable" in messages[0]
    assert "responds again" in messages[1]


@pytest.mark.parametrize(
    "uri, timeout",
    [(f"redis://127.0.0.1:6379/{REDIS_DB}", 1.0), (f"redis://127.0.0.1:6379/{REDIS_DB}?socket_timeout=2.5", 2.5)],
    ids=["default", "from-uri"],
)
def test_redis_calls_time_out(app, uri, timeout):
    """A Redis that hangs rather than refuses must not hold lookups: connects and replies time out."""
    from app import create_app
    from app.extensions import limiter

    keys = ("SECRET_KEY", "QR_TOKEN_KEYS", "ID_NUMBER_KEY", "ID_HASH_KEY", "SQLALCHEMY_DATABASE_URI", "BASE_URL")
    limited = create_app({**{key: app.config[key] for key in keys}, "TESTING": True, "RATELIMIT_STORAGE_URI": uri})
    limiter.enabled = False
    options = limited.extensions["lookup_guard"].storage.connection_pool.connection_kwargs
    with limited.app_context():
        dispose_engines()

    assert options["socket_timeout"] == timeout
    assert options["socket_connect_timeout"] == 1.0
