"""The HTTP SMS gateway sender, against a gateway this test starts on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.services import accounts, sms

from .conftest import HOLDER_PASSWORD

ID_NUMBER = "500109196409269696"
PHONE = "13800000001"
TOKEN = "gateway-token-for-tests"


class Gateway(ThreadingHTTPServer):
    """Records each request and responds with `status` after `delay` seconds."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), GatewayHandler)
        self.status = 200
        self.delay = 0.0
        self.location = ""
        self.received: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/send"


class GatewayHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's method name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
        time.sleep(self.server.delay)
        self.send_response(self.server.status)
        if self.server.location:
            self.send_header("Location", self.server.location)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def gateway():
    server = Gateway()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def http_sender(app, gateway, monkeypatch):
    monkeypatch.setitem(app.config, "SMS_SENDER", "http")
    monkeypatch.setitem(app.config, "SMS_GATEWAY_URL", gateway.url)
    monkeypatch.setitem(app.config, "SMS_GATEWAY_TOKEN", TOKEN)
    monkeypatch.setitem(app.config, "SMS_GATEWAY_TIMEOUT_SECONDS", 0.5)
    return gateway


def test_gateway_receives_message(app, http_sender):
    with app.app_context():
        sms.sms_sender().send(PHONE, "验证码 123456")

    request = http_sender.received[0]
    assert request["path"] == "/send"
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["Content-Type"] == "application/json; charset=utf-8"
    assert request["body"] == {"phone": PHONE, "text": "验证码 123456"}


def test_reset_code_through_gateway(app, http_sender):
    with app.app_context():
        accounts.register_holder(name="田娟", id_type="居民身份证", id_number=ID_NUMBER, phone=PHONE, password=HOLDER_PASSWORD)
        accounts.request_reset(ID_NUMBER, PHONE)
        code = re.search(r"验证码 (\d{6})", http_sender.received[-1]["body"]["text"]).group(1)

        done = accounts.reset_password(ID_NUMBER, PHONE, code, "new-holder-pass-99")

    assert done is True


@pytest.mark.parametrize(
    ("status", "delay", "location", "message"),
    [
        (500, 0.0, "", "HTTP 500"),
        (401, 0.0, "", "HTTP 401"),
        (200, 1.5, "", "timed out"),
        (302, 0.0, "http://127.0.0.1:9/elsewhere", "HTTP 302"),
    ],
    ids=["server-error", "bad-token", "timeout", "redirect-not-followed"],
)
def test_gateway_failure_raises(app, http_sender, status, delay, location, message):
    http_sender.status, http_sender.delay, http_sender.location = status, delay, location

    with app.app_context(), pytest.raises(sms.SmsError, match=message) as raised:
        sms.sms_sender().send(PHONE, "验证码 123456")

    assert PHONE not in str(raised.value)
    assert "138****0001" in str(raised.value)
    assert len(http_sender.received) == 1


def test_unreachable_gateway_raises(app, monkeypatch, gateway):
    url = gateway.url
    gateway.shutdown()
    gateway.server_close()  # nothing listens on the port now
    monkeypatch.setitem(app.config, "SMS_SENDER", "http")
    monkeypatch.setitem(app.config, "SMS_GATEWAY_URL", url)
    monkeypatch.setitem(app.config, "SMS_GATEWAY_TOKEN", TOKEN)

    with app.app_context(), pytest.raises(sms.SmsError, match="unreachable"):
        sms.sms_sender().send(PHONE, "验证码 123456")


def test_failed_send_logged_without_code_or_number(app, http_sender, caplog):
    http_sender.status = 503
    with app.app_context():
        accounts.register_holder(name="田娟", id_type="居民身份证", id_number=ID_NUMBER, phone=PHONE, password=HOLDER_PASSWORD)
        with caplog.at_level(logging.INFO):
            accounts.request_reset(ID_NUMBER, PHONE)
    code = re.search(r"验证码 (\d{6})", http_sender.received[-1]["body"]["text"]).group(1)

    assert "HTTP 503" in caplog.text
    assert PHONE not in caplog.text
    assert ID_NUMBER not in caplog.text
    assert code not in caplog.text


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"SMS_SENDER": "http", "SMS_GATEWAY_URL": None, "SMS_GATEWAY_TOKEN": TOKEN}, "SMS_GATEWAY_URL"),
        ({"SMS_SENDER": "http", "SMS_GATEWAY_URL": "http://127.0.0.1:9/send", "SMS_GATEWAY_TOKEN": None}, "SMS_GATEWAY_TOKEN"),
        ({"SMS_SENDER": "http", "SMS_GATEWAY_URL": "ftp://127.0.0.1/send", "SMS_GATEWAY_TOKEN": TOKEN}, "http:// or https://"),
        ({"SMS_SENDER": "carrier-pigeon"}, "'outbox' or 'http'"),
    ],
    ids=["no-url", "no-token", "not-http", "unknown-sender"],
)
def test_sender_configuration_checked(app, monkeypatch, settings, message):
    for key, value in settings.items():
        monkeypatch.setitem(app.config, key, value)

    with app.app_context(), pytest.raises((RuntimeError, ValueError), match=re.escape(message)):
        sms.sms_sender()
