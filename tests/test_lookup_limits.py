"""Lookup limits counted by lookup_guard: multi-limit strings, the shared address count, Redis keys, 429 pages."""

from __future__ import annotations

import pytest

from tests.conftest import TEST_REDIS_DB, dispose_engines, redis_available

NUMBER = "202421000001"
NAME = "田娟"
REDIS_DB = TEST_REDIS_DB


def _limited_app(app, **overrides):
    from app import create_app

    keys = ("SECRET_KEY", "QR_TOKEN_KEYS", "ID_NUMBER_KEY", "ID_HASH_KEY", "SQLALCHEMY_DATABASE_URI", "BASE_URL")
    config = {
        **{key: app.config[key] for key in keys},
        "TESTING": True,
        "RATELIMIT_ENABLED": True,
        "LOOKUP_MISSES_BEFORE_CAPTCHA": 1000,
        "LOOKUP_CAPTCHA_ENABLED": False,
        "LOOKUP_NUMBER_RATE_LIMIT": "1000 per minute",
    }
    config.update(overrides)
    return create_app(config)


@pytest.fixture
def restore_limiter():
    yield
    from app.extensions import limiter

    limiter.enabled = False  # shared by every app of the process; the session app has it off


def test_second_limit_of_lookup_rate_limit_holds(app, restore_limiter):
    """Flask-Limiter's shared_limit honoured every limit of "100 per minute;3 per hour"; the 4th lookup is over."""
    limited = _limited_app(app, LOOKUP_RATE_LIMIT="100 per minute;3 per hour", RATELIMIT_STORAGE_URI="memory://")
    client = limited.test_client()
    client.environ_base["REMOTE_ADDR"] = "127.0.31.1"

    statuses = [client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME}).status_code for _ in range(4)]

    with limited.app_context():
        dispose_engines()
    assert statuses[:3] != [429] * 3
    assert statuses[3] == 429, statuses


@pytest.mark.parametrize("path", ["/verify", "/api/v1/verify"])
def test_typed_id_number_not_in_redis(app, redis_db, restore_limiter, path):
    """A holder who types their ID number into the certificate-number field must not leave it in a Redis key."""
    id_number = "11010519491231002X"
    limited = _limited_app(
        app, LOOKUP_RATE_LIMIT="100 per minute", RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:6379/{REDIS_DB}"
    )
    client = limited.test_client()
    client.environ_base["REMOTE_ADDR"] = "127.0.31.2"

    response = client.get(path, query_string={"number": id_number, "name": NAME})

    with limited.app_context():
        dispose_engines()
    keys = [key.decode() for key in redis_db.keys("*")]
    assert response.status_code == 200
    assert keys, "no counter written at all"
    assert not [key for key in keys if id_number in key], keys


@pytest.mark.parametrize("storage", ["memory://", f"redis://127.0.0.1:6379/{REDIS_DB}"])
def test_verify_file_shares_address_counter(app, restore_limiter, storage):
    """3 htmx lookups, 2 API lookups and 1 upload use up "6 per minute"; the next of each kind is 429."""
    import io
    import re

    if storage.startswith("redis"):
        if not redis_available():
            pytest.skip("Redis is not running on 127.0.0.1:6379")
        import redis

        redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
    limited = _limited_app(app, LOOKUP_RATE_LIMIT="6 per minute", RATELIMIT_STORAGE_URI=storage)
    client = limited.test_client()
    client.environ_base["REMOTE_ADDR"] = "127.0.31.3"
    page = client.get("/verify/file").get_data(as_text=True)
    token = re.search(r'"X-CSRFToken": "([^"]+)"', page).group(1)
    query = {"number": NUMBER, "name": NAME}

    def upload():
        return client.post(
            "/verify/file",
            data={"file": (io.BytesIO(b"%PDF-1.4 not a certificate"), "x.pdf")},
            headers={"X-CSRFToken": token, "HX-Request": "true"},
        )

    statuses = [client.get("/verify", query_string=query, headers={"HX-Request": "true"}).status_code for _ in range(3)]
    statuses += [client.get("/api/v1/verify", query_string=query).status_code for _ in range(2)]
    statuses.append(upload().status_code)
    over = [
        client.get("/verify", query_string=query, headers={"HX-Request": "true"}).status_code,
        client.get("/api/v1/verify", query_string=query).status_code,
        upload().status_code,
    ]

    with limited.app_context():
        dispose_engines()
    if storage.startswith("redis"):
        redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
    assert 429 not in statuses, statuses
    assert over == [429, 429, 429], over


def test_verify_429_sets_no_cookie(app, restore_limiter):
    """An anonymous /verify sets no session cookie (templates/public/verify.html); its 429 page should not either."""
    limited = _limited_app(app, LOOKUP_RATE_LIMIT="1 per minute", RATELIMIT_STORAGE_URI="memory://")
    client = limited.test_client()
    client.environ_base["REMOTE_ADDR"] = "127.0.31.4"

    first = client.get("/verify", query_string={"number": NUMBER, "name": NAME})
    refused = client.get("/verify", query_string={"number": NUMBER, "name": NAME})

    with limited.app_context():
        dispose_engines()
    assert "Set-Cookie" not in first.headers
    assert refused.status_code == 429
    assert "Set-Cookie" not in refused.headers, refused.headers.get("Set-Cookie")
