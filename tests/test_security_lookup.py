"""Lookup abuse: captcha after repeated misses, API 429, equal answers and timing, limits across workers."""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import pytest

from app.domain import captcha
from app.services import lookup_guard
from tests.conftest import dispose_engines, redis_available

ROSTER = "2024年度二级建造师考试合格人员名单.xlsx"
NUMBER = "202421000001"
NAME = "田娟"
PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture
def loaded(import_roster):
    import_roster(ROSTER, "二级建造师", "certificate")


@pytest.fixture
def guarded(app, monkeypatch):
    """Switch the captcha on for this test, with a known answer and a clean miss counter."""
    monkeypatch.setitem(app.config, "LOOKUP_CAPTCHA_ENABLED", True)
    monkeypatch.setattr(captcha, "new_answer", lambda: "K7M4P")
    app.extensions["lookup_guard"].reset()
    yield
    app.extensions["lookup_guard"].reset()


def miss(client, path="/verify"):
    return client.get(path, query_string={"number": "209999999999", "name": "无此人"})


def test_captcha_appears_after_five_misses(app, client, guarded):
    pages = [miss(client).get_data(as_text=True) for _ in range(5)]

    assert 'name="captcha"' not in pages[3]
    assert 'name="captcha"' in pages[4]
    assert "/captcha.png" in pages[4]


def test_lookup_without_captcha_answer_refused(app, client, loaded, guarded):
    for _ in range(5):
        miss(client)
    client.get("/captcha.png")

    html = client.get("/verify", query_string={"number": NUMBER, "name": NAME, "captcha": "WRONG"}).get_data(as_text=True)

    assert "验证码不正确" in html
    assert "有效" not in html.split("verify-result")[1]


def test_right_captcha_answer_allows_lookup(app, client, loaded, guarded):
    for _ in range(5):
        miss(client)
    image = client.get("/captcha.png")

    html = client.get("/verify", query_string={"number": NUMBER, "name": NAME, "captcha": "k7m4p"}).get_data(as_text=True)

    assert image.mimetype == "image/png"
    assert image.headers["Cache-Control"] == "no-store"
    assert NUMBER in html
    assert 'name="captcha"' not in html  # a solved captcha clears the address's misses


def test_captcha_answer_single_use(app, client, loaded, guarded):
    for _ in range(5):
        miss(client)
    client.get("/captcha.png")
    copied = client.get_cookie("session").value
    client.get("/verify", query_string={"number": NUMBER, "name": NAME, "captcha": "K7M4P"})
    for _ in range(5):
        miss(client)
    replay = app.test_client()
    replay.set_cookie("session", copied)

    html = replay.get("/verify", query_string={"number": NUMBER, "name": NAME, "captcha": "K7M4P"}).get_data(as_text=True)

    assert "验证码不正确" in html


def test_htmx_miss_updates_captcha_slot(client, guarded):
    for _ in range(4):
        miss(client)

    html = client.get("/verify", headers={"HX-Request": "true"}, query_string={"number": "209999999999", "name": "无此人"}).get_data(as_text=True)

    assert 'id="captcha-slot" hx-swap-oob="true"' in html
    assert 'name="captcha"' in html


def test_api_answers_429_after_misses(client, loaded, guarded):
    for _ in range(5):
        miss(client, "/api/v1/verify")

    response = client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME})

    assert response.status_code == 429
    assert "未查到结果过多" in response.get_json()["error"]


def test_captcha_image_is_png():
    from PIL import Image
    import io

    image = Image.open(io.BytesIO(captcha.render_png("K7M4P")))

    assert image.size == (captcha.WIDTH, captcha.HEIGHT)


# --- equal answers ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/verify", "/verify"])
def test_wrong_name_body_equals_unknown_number(client, loaded, path):
    wrong_name = client.get(path, query_string={"number": NUMBER, "name": "王五"})
    unknown = client.get(path, query_string={"number": "202421999999", "name": "王五"})

    assert wrong_name.status_code == unknown.status_code
    assert wrong_name.get_data(as_text=True).replace(NUMBER, "N") == unknown.get_data(as_text=True).replace("202421999999", "N")


def test_wrong_name_timing_matches_unknown_number(client, loaded):
    """Median response times over 200 interleaved requests each differ by under 20 % (or 2 ms)."""
    wrong_name, unknown = [], []
    for index in range(200):
        for number, times in ((NUMBER, wrong_name), (f"2024219{index:05d}", unknown)):
            start = time.perf_counter()
            client.get("/api/v1/verify", query_string={"number": number, "name": "王五"})
            times.append(time.perf_counter() - start)

    difference = abs(statistics.median(wrong_name) - statistics.median(unknown))
    bound = max(0.002, 0.2 * statistics.median(unknown))

    assert difference < bound, f"medians {statistics.median(wrong_name):.4f}s vs {statistics.median(unknown):.4f}s"


# --- per-number limit: others' misses must not block a right lookup ----------------------


@pytest.fixture
def limited_app(app):
    """Return a second app on the same database with Flask-Limiter and the captcha on, default lookup limits.

    The limiter is one object shared by every app of the process, so it is
    switched off again afterwards, as the session app has it.
    """
    from app import create_app
    from app.extensions import db, limiter

    keys = ("SECRET_KEY", "QR_TOKEN_KEYS", "ID_NUMBER_KEY", "ID_HASH_KEY", "SQLALCHEMY_DATABASE_URI", "BASE_URL")
    limited = create_app(
        {
            **{key: app.config[key] for key in keys},
            "TESTING": True,
            "RATELIMIT_ENABLED": True,
            "RATELIMIT_STORAGE_URI": "memory://",
            "LOOKUP_RATE_LIMIT": "30 per minute",
            "LOOKUP_NUMBER_RATE_LIMIT": "20 per minute",
            "LOOKUP_CAPTCHA_ENABLED": True,
        }
    )
    limiter.reset()
    yield limited
    limiter.reset()
    limiter.enabled = False
    with limited.app_context():
        dispose_engines()  # its own connection pool, closed so no connection is left to the garbage collector


def client_at(app, address: str):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def wrong_names_from_many_addresses(app, number: str = NUMBER, count: int = 20) -> list[int]:
    """Look `number` up with a wrong name through the API, once from each of `count` addresses."""
    return [
        client_at(app, f"127.0.10.{index + 1}").get("/api/v1/verify", query_string={"number": number, "name": "某某"}).status_code
        for index in range(count)
    ]


def rate_limit_headers(response) -> list[str]:
    return [name for name in response.headers.keys() if name.lower().startswith("x-ratelimit")]


def test_others_misses_leave_form_usable(limited_app, loaded, monkeypatch):
    monkeypatch.setattr(captcha, "new_answer", lambda: "K7M4P")
    assert wrong_names_from_many_addresses(limited_app) == [200] * 20
    employer = client_at(limited_app, "127.0.11.2")

    first = employer.get("/verify", query_string={"number": NUMBER, "name": NAME})
    employer.get("/captcha.png")
    solved = employer.get("/verify", query_string={"number": NUMBER, "name": NAME, "captcha": "K7M4P"})

    assert first.status_code == 200
    assert 'name="captcha"' in first.get_data(as_text=True)
    assert solved.status_code == 200
    assert 'class="card result result-valid"' in solved.get_data(as_text=True)
    assert NUMBER in solved.get_data(as_text=True)


def test_others_misses_api_gets_json_429(limited_app, loaded):
    wrong_names_from_many_addresses(limited_app)

    response = client_at(limited_app, "127.0.11.1").get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME})
    body = response.get_json()

    assert response.status_code == 429
    assert response.mimetype == "application/json"
    assert "/verify" in body["error"]
    assert "验证码" in body["error"]
    assert 0 < body["retry_after"] <= 60
    assert response.headers["Retry-After"] == str(body["retry_after"])
    assert rate_limit_headers(response) == []


def test_right_lookups_never_exhaust_number(limited_app, loaded):
    statuses = [
        client_at(limited_app, f"127.0.12.{index + 1}").get(
            "/api/v1/verify", query_string={"number": NUMBER, "name": NAME}
        ).status_code
        for index in range(40)
    ]

    assert statuses == [200] * 40


@pytest.mark.parametrize("number", [NUMBER, "202421999999"], ids=["known-number", "unknown-number"])
def test_number_misses_still_limited(limited_app, loaded, number):
    statuses = wrong_names_from_many_addresses(limited_app, number, count=21)

    assert statuses == [200] * 20 + [429]


@pytest.mark.parametrize(
    ("path", "mimetype"), [("/api/v1/verify", "application/json"), ("/verify", "text/html")], ids=["api", "form"]
)
def test_address_limit_kept(limited_app, loaded, monkeypatch, path, mimetype):
    monkeypatch.setitem(limited_app.config, "LOOKUP_MISSES_BEFORE_CAPTCHA", 1000)
    client = client_at(limited_app, "127.0.13.1")
    statuses = [
        client.get(path, query_string={"number": f"2024219{index:05d}", "name": NAME}).status_code for index in range(30)
    ]

    response = client.get(path, query_string={"number": NUMBER, "name": NAME})

    assert statuses == [200] * 30
    assert response.status_code == 429
    assert response.mimetype == mimetype
    assert "请求过于频繁" in response.get_data(as_text=True)
    assert int(response.headers["Retry-After"]) > 0
    assert rate_limit_headers(response) == []


@pytest.mark.parametrize("path", ["/api/v1/verify", "/verify"])
def test_lookup_headers_equal_for_miss_kinds(limited_app, loaded, path):
    wrong_name = client_at(limited_app, "127.0.14.1").get(path, query_string={"number": NUMBER, "name": "王五"})
    unknown = client_at(limited_app, "127.0.14.2").get(path, query_string={"number": "202421999999", "name": "王五"})
    right = client_at(limited_app, "127.0.14.3").get(path, query_string={"number": NUMBER, "name": NAME})

    assert rate_limit_headers(wrong_name) == []
    assert rate_limit_headers(right) == []
    assert sorted(wrong_name.headers.keys()) == sorted(unknown.headers.keys())
    # The numbers differ in the body; no page of the lookup sets a session cookie, but a cookie would differ too.
    varying = ("Content-Length", "Date", "Set-Cookie")
    assert {name: value for name, value in wrong_name.headers.items() if name not in varying} == {
        name: value for name, value in unknown.headers.items() if name not in varying
    }


# --- limits across gunicorn workers ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# This file's own Redis database, flushed before use; TEST_REDIS_DB picks another one.
REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "13"))


@pytest.fixture
def gunicorn_server(tmp_path):
    if not redis_available():
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    import redis

    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
    port = _free_port()
    env = {
        **os.environ,
        "CERT_INSTANCE_PATH": str(tmp_path),
        "CERT_SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'limits.db'}",
        "CERT_SECRET_KEY": "gunicorn-test-secret-key-0123456789abcdef",
        "CERT_QR_TOKEN_KEYS": json.dumps(["gunicorn-test-qr-key-0123456789abcdef"]),
        "CERT_ID_NUMBER_KEY": "gunicorn-test-id-number-key-0123456789abcdef",
        "CERT_ID_HASH_KEY": "gunicorn-test-id-hash-key-0123456789abcdef",
        "CERT_RATELIMIT_STORAGE_URI": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "CERT_LOOKUP_RATE_LIMIT": "6 per minute",
        "CERT_LOOKUP_NUMBER_RATE_LIMIT": "4 per minute",
        "CERT_LOOKUP_MISSES_BEFORE_CAPTCHA": "1000",
    }
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "flask"), "--app", "wsgi", "db", "upgrade"], cwd=PROJECT, env=env, check=True, capture_output=True)
    log = tmp_path / "access.log"
    process = subprocess.Popen(
        [str(bin_dir / "gunicorn"), "--workers", "2", "--bind", f"127.0.0.1:{port}", "--access-logfile", str(log),
         "--access-logformat", "%(p)s %(s)s %(U)s", "wsgi:app"],
        cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("gunicorn did not start within 30 s")
        _wait_for_both_workers(port, log)
        yield port, log
    finally:
        process.terminate()
        process.wait(timeout=30)
        redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()


def _worker_pids(log: Path, path: str) -> set[str]:
    return {line.split()[0] for line in log.read_text().splitlines() if line.endswith(" " + path)}


def _wait_for_both_workers(port: int, log: Path) -> None:
    """Send concurrent requests to the home page until both workers have answered one (at most 30 s)."""
    deadline = time.monotonic() + 30
    with ThreadPoolExecutor(max_workers=4) as pool:
        while len(_worker_pids(log, "/")) < 2:
            if time.monotonic() > deadline:
                pytest.fail("the second gunicorn worker answered nothing within 30 s")
            list(pool.map(lambda _: _fetch(port, "/"), range(8)))


def _fetch(port: int, path: str, source: str = "127.0.0.1") -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _get(port: int, number: str, source: str = "127.0.0.1") -> int:
    return _fetch(port, "/api/v1/verify?" + urlencode({"number": number, "name": "王五"}), source)


def test_limits_hold_across_two_workers(gunicorn_server):
    port, log = gunicorn_server

    with ThreadPoolExecutor(max_workers=6) as pool:
        per_address = list(pool.map(lambda i: _get(port, f"20242100{i:04d}"), range(16)))
        # Each request from its own loopback address, all for one number.
        per_number = list(pool.map(lambda i: _get(port, "202421000777", f"127.0.0.{i + 2}"), range(10)))
    workers = _worker_pids(log, "/api/v1/verify")

    assert per_address.count(200) == 6
    assert per_address.count(429) == 10
    assert per_number.count(200) == 4
    assert per_number.count(429) == 6
    assert len(workers) == 2


# --- a wrong captcha answer ends the challenge; the number-limit log line -----------------


def test_wrong_captcha_answer_ends_challenge(app, client, loaded, guarded, monkeypatch):
    """A saved session cookie must not let a bot guess one image again: a wrong answer uses the challenge up."""
    monkeypatch.setitem(app.config, "LOOKUP_MISSES_BEFORE_CAPTCHA", 1)
    miss(client)
    client.get("/captcha.png")
    saved_cookie = client.get_cookie("session").value

    wrong = client.get("/verify", query_string={"number": NUMBER, "name": NAME, "captcha": "AAAAA"})
    client.set_cookie("session", saved_cookie)
    replayed = client.get("/verify", query_string={"number": NUMBER, "name": NAME, "captcha": "K7M4P"})
    client.get("/captcha.png")  # the new image the page asks for
    solved = client.get("/verify", query_string={"number": NUMBER, "name": NAME, "captcha": "K7M4P"})

    assert "验证码不正确" in wrong.get_data(as_text=True)
    assert "/captcha.png?t=" in wrong.get_data(as_text=True)  # a new image for the next try
    assert "result-valid" not in replayed.get_data(as_text=True)
    assert "验证码不正确" in replayed.get_data(as_text=True)
    assert "result-valid" in solved.get_data(as_text=True)


def test_number_limit_log_drops_control_characters(app, caplog):
    """The number-limit warning shows the typed number without control characters, and masks an ID number in it."""
    import logging
    import re

    from app import create_app
    from app.extensions import limiter

    keys = ("SECRET_KEY", "QR_TOKEN_KEYS", "ID_NUMBER_KEY", "ID_HASH_KEY", "SQLALCHEMY_DATABASE_URI", "BASE_URL")
    limited = create_app(
        {
            **{key: app.config[key] for key in keys},
            "TESTING": True,
            "RATELIMIT_ENABLED": True,
            "RATELIMIT_STORAGE_URI": "memory://",
            "LOOKUP_RATE_LIMIT": "1000 per minute",
            "LOOKUP_NUMBER_RATE_LIMIT": "1 per minute",
            "LOOKUP_CAPTCHA_ENABLED": False,
        }
    )
    typed = ["2024\x00\x08\x08\x08\x08OK\x1b[2J", "500109\x00196409\x7f269696", "2024\u202e\u0085KO"]
    try:
        with caplog.at_level(logging.INFO):
            for number in typed:
                limited.test_client().get("/api/v1/verify", query_string={"number": number, "name": "无此人"})
    finally:
        limiter.enabled = False
        with limited.app_context():
            dispose_engines()

    messages = [record.getMessage() for record in caplog.records if "Lookup number" in record.getMessage()]
    assert len(messages) == 3, messages
    assert not [message for message in messages if re.search(r"[\x00-\x1f\x7f-\x9f\u202e]", message)], messages
    assert "Lookup number 2024OK[2J:" in messages[0]
    assert "500109196409269696" not in caplog.text
    assert "500*************96" in messages[1]


def test_loggable_number_is_short():
    with_id = "X" * 30 + "500109196409269696"

    assert len(lookup_guard.loggable_number("\x00" * 100 + "A" * 100)) == 40
    assert "500109196409269696" not in lookup_guard.loggable_number(with_id)
