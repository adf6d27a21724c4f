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
    """3 htmx lookups, 2 API lookups and 1 upload use up "6 per minute"; the next of each kind is refused.

    The API answers 429; htmx gets the message with 200 (htmx 2 swaps no 429), and Retry-After in both.
    """
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
        client.get("/verify", query_string=query, headers={"HX-Request": "true"}),
        client.get("/api/v1/verify", query_string=query),
        upload(),
    ]

    with limited.app_context():
        dispose_engines()
    if storage.startswith("redis"):
        redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
    assert 429 not in statuses, statuses
    assert [response.status_code for response in over] == [200, 429, 200]
    assert all("请求过于频繁" in response.get_data(as_text=True) for response in over)
    assert all(int(response.headers["Retry-After"]) > 0 for response in over)


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


def test_captcha_images_share_address_limit(app, restore_limiter):
    """Drawing a captcha costs CPU, so new images count against the address's lookup limit like lookups do."""
    limited = _limited_app(app, LOOKUP_RATE_LIMIT="3 per minute", RATELIMIT_STORAGE_URI="memory://")
    client = limited.test_client()
    client.environ_base["REMOTE_ADDR"] = "127.0.31.5"

    lookup = client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME})
    images = [client.get("/captcha.png") for _ in range(3)]

    with limited.app_context():
        dispose_engines()
    assert lookup.status_code == 200
    assert [image.status_code for image in images] == [200, 200, 429]
    assert images[0].headers["Content-Type"] == "image/png"
    assert images[2].headers["Retry-After"]


# --- refusals under htmx, the captcha switched off, IPv6 ----------------------------------

MISSING = {"number": "209999999999", "name": "无此人"}
HTMX = {"HX-Request": "true", "HX-Current-URL": "http://localhost/verify"}


@pytest.mark.parametrize(
    "overrides, message",
    [({"LOOKUP_RATE_LIMIT": "1 per minute"}, "请求过于频繁"), ({"LOOKUP_NUMBER_RATE_LIMIT": "1 per minute"}, "该证书编号近期未查到结果的查验过多")],
    ids=["address-limit", "number-limit"],
)
def test_htmx_refusal_replaces_result(app, restore_limiter, overrides, message):
    """htmx 2 swaps no 429, so a refused htmx lookup gets its message with 200, in place of the earlier result."""
    limited = _limited_app(app, **{"RATELIMIT_STORAGE_URI": "memory://", "LOOKUP_RATE_LIMIT": "1000 per minute", **overrides})
    client = limited.test_client()
    client.environ_base["REMOTE_ADDR"] = "127.0.32.1"

    answered = client.get("/verify", query_string=MISSING, headers=HTMX)
    refused = client.get("/verify", query_string=MISSING, headers=HTMX)
    plain = client.get("/verify", query_string=MISSING)

    with limited.app_context():
        dispose_engines()
    html = refused.get_data(as_text=True)
    assert "result-not-found" in answered.get_data(as_text=True)
    assert refused.status_code == 200
    assert message in html
    assert "<html" not in html
    assert "result-" not in html
    # No HX-Retarget: the message replaces #verify-result (an aria-live region), so the earlier answer is gone.
    assert "HX-Retarget" not in refused.headers
    assert refused.headers["HX-Push-Url"] == "false"  # a refused lookup is no history entry
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert plain.status_code == 429  # without htmx: the 429 error page
    assert message in plain.get_data(as_text=True)


def test_htmx_flask_limiter_refusal_goes_to_messages(app, restore_limiter):
    """Other htmx requests past a Flask-Limiter limit get the message in the page's message area."""
    from app.errors import too_many_requests

    with app.test_request_context("/password/forgot", method="POST", headers={"HX-Request": "true"}):
        response = too_many_requests(30)

    assert response.status_code == 200
    assert response.headers["HX-Retarget"] == "#messages"
    assert response.headers["Retry-After"] == "30"
    assert "请在 30 秒后再试" in response.get_data(as_text=True)


def test_no_captcha_field_when_captcha_off(app, restore_limiter):
    """With the captcha off a number past its limit is refused with 429, so no captcha field may be offered for it."""
    limited = _limited_app(app, RATELIMIT_STORAGE_URI="memory://", LOOKUP_RATE_LIMIT="1000 per minute", LOOKUP_NUMBER_RATE_LIMIT="1 per minute")
    client = limited.test_client()
    client.environ_base["REMOTE_ADDR"] = "127.0.32.2"

    last_miss = client.get("/verify", query_string=MISSING)
    htmx_miss = client.get("/verify", query_string={**MISSING, "number": "209999999998"}, headers=HTMX)
    next_try = client.get("/verify", query_string={**MISSING, "captcha": "K7M4P"})

    with limited.app_context():
        dispose_engines()
    assert "result-not-found" in last_miss.get_data(as_text=True)
    assert 'name="captcha"' not in last_miss.get_data(as_text=True)
    assert 'name="captcha"' not in htmx_miss.get_data(as_text=True)
    assert next_try.status_code == 429


@pytest.mark.parametrize(
    "address, key",
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:41:7::1", "2001:db8:41:7::/64"),
        ("2001:DB8:41:7:ffff:ffff:ffff:ffff", "2001:db8:41:7::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("unknown", "unknown"),
    ],
)
def test_client_key(address, key):
    from app.services.lookup_guard import client_key

    assert client_key(address) == key


@pytest.mark.parametrize("path", ["/api/v1/verify", "/verify"])
def test_ipv6_counted_per_64(app, restore_limiter, path):
    """One IPv6 subscriber has a whole /64, so its addresses share the lookup limit; the next /64 has its own."""
    limited = _limited_app(app, RATELIMIT_STORAGE_URI="memory://", LOOKUP_RATE_LIMIT="1 per minute")
    client = limited.test_client()

    def status(address: str) -> int:
        return client.get(path, query_string=MISSING, environ_base={"REMOTE_ADDR": address}).status_code

    statuses = [status("2001:db8:41:7::1"), status("2001:db8:41:7:a:b:c:d"), status("2001:db8:41:8::1")]

    with limited.app_context():
        dispose_engines()
    assert statuses == [200, 429, 200]


def test_ipv6_misses_share_captcha_counter(app, restore_limiter):
    """The not-found count that brings the captcha is kept per /64 too."""
    limited = _limited_app(
        app, RATELIMIT_STORAGE_URI="memory://", LOOKUP_RATE_LIMIT="1000 per minute",
        LOOKUP_CAPTCHA_ENABLED=True, LOOKUP_MISSES_BEFORE_CAPTCHA=2,
    )
    client = limited.test_client()
    pages = [
        client.get("/verify", query_string=MISSING, environ_base={"REMOTE_ADDR": f"2001:db8:42::{index + 1}"})
        for index in range(2)
    ]
    other = client.get("/verify", query_string=MISSING, environ_base={"REMOTE_ADDR": "2001:db8:43::1"})

    with limited.app_context():
        dispose_engines()
    assert 'name="captcha"' not in pages[0].get_data(as_text=True)
    assert 'name="captcha"' in pages[1].get_data(as_text=True)
    assert 'name="captcha"' not in other.get_data(as_text=True)
