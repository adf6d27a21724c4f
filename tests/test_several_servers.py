"""Two app servers behind one nginx, as docs/deploy.md's "Beyond one server" describes, all on 127.0.0.1.

Each server is its own gunicorn with its own instance folder for uploads and
the PDF cache. They share the database and the keys from the environment.
Each has a copy of the signing keys, and the rate limits live in Redis. nginx's upstream lists both
and sends requests to them in turn, so consecutive requests of one visitor
reach different servers. Each server's access log shows which one served a request.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from app.extensions import db
from app.models import Certificate
from app.services import records

from .conftest import HOLDER_PASSWORD, TEST_REDIS_DB, csrf_token
from .test_holders import ID_NUMBER, NAME, NUMBER, register
from .test_nginx import (
    GUNICORN,
    NGINX,
    PROJECT_ROOT,
    app_server_environment,
    free_port,
    nginx_config,
    self_signed_certificate,
    stop,
    wait_for_port,
)

pytestmark = [
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)"),
    pytest.mark.skipif(not GUNICORN.is_file(), reason="gunicorn is not installed next to the Python running the tests"),
]

ROSTER = "2024年度二级建造师考试合格人员名单.xlsx"
ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/1\.[01]" (?P<status>\d{3}) ')


@dataclass
class Servers:
    base_url: str  # https://127.0.0.1:<port>, served by nginx
    access_logs: list[Path]  # one gunicorn access log per app server

    def browser(self, cert_file: Path) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # no proxy or CA bundle from the environment: loopback and this certificate only
        session.verify = str(cert_file)
        return session

    def answers(self, path: str, count: int) -> list[list[str]]:
        """Return the statuses each server logged for `path`, waiting until `count` requests are logged in all."""
        deadline = time.monotonic() + 10
        while True:
            per_server = [
                [match["status"] for match in ACCESS_LINE.finditer(log.read_text() if log.exists() else "")
                 if match["path"] == path]
                for log in self.access_logs
            ]
            if sum(map(len, per_server)) >= count or time.monotonic() > deadline:
                return per_server
            time.sleep(0.1)


@pytest.fixture
def start_servers(app, tmp_path):
    """Return a function that starts two app servers and nginx with extra CERT_* settings; stop them at the end."""
    processes: list[subprocess.Popen] = []
    cert_file = self_signed_certificate(tmp_path)

    def start(**settings: str) -> Servers:
        ports = [free_port(), free_port()]
        instances = []
        for name in ("server-a", "server-b"):
            instance = tmp_path / name
            # The signing keys are copied to every app server (docs/deploy.md, "Beyond one server").
            shutil.copytree(Path(app.instance_path) / "keys", instance / "keys")
            instances.append(instance)
        http_port, https_port = free_port(), free_port()
        config = nginx_config(tmp_path, instances[0], http_port, https_port, *ports)
        logs = []
        for name, port, instance in zip(("server-a", "server-b"), ports, instances):
            access_log = tmp_path / f"{name}-access.log"
            environment = app_server_environment(app, instance, port, access_log, tmp_path / f"{name}-error.log", **settings)
            command = [str(GUNICORN), "--config", "deploy/gunicorn.conf.py", "--no-control-socket", "wsgi:app"]
            output = (tmp_path / f"{name}.out").open("w")
            processes.append(subprocess.Popen(command, cwd=PROJECT_ROOT, env=environment, stdout=output,
                                              stderr=subprocess.STDOUT))
            output.close()
            wait_for_port(port, processes[-1], tmp_path / f"{name}-error.log")
            logs.append(access_log)
        error_log = tmp_path / "nginx-main.error.log"
        processes.append(subprocess.Popen([NGINX, "-c", str(config), "-e", str(error_log)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        wait_for_port(https_port, processes[-1], error_log)
        return Servers(f"https://127.0.0.1:{https_port}", logs)

    start.cert_file = cert_file
    yield start
    for process in reversed(processes):
        stop(process)


def api_lookup(browser: requests.Session, servers: Servers, number: str, name: str) -> requests.Response:
    return browser.get(f"{servers.base_url}/api/v1/verify", params={"number": number, "name": name}, timeout=30)


def test_two_servers_share_state(app, client, import_roster, start_servers):
    import_roster(ROSTER, "二级建造师", "certificate")
    register(client, log_in=False)
    servers = start_servers()
    browser = servers.browser(start_servers.cert_file)

    page = browser.get(f"{servers.base_url}/login", timeout=30).text
    logged_in = browser.post(f"{servers.base_url}/login",
                             data={"login": ID_NUMBER, "password": HOLDER_PASSWORD, "csrf_token": csrf_token(page)},
                             headers={"Referer": f"{servers.base_url}/login"}, allow_redirects=False, timeout=30)
    assert logged_in.status_code == 303

    # The session cookie one server signed is accepted by the other.
    for _ in range(4):
        listing = browser.get(f"{servers.base_url}/me", timeout=30)
        assert listing.status_code == 200
        assert NUMBER in listing.text
    assert servers.answers("/me", 4) == [["200", "200"], ["200", "200"]]

    # Each server renders and signs the PDF with its copy of the signing keys, into its own cache.
    for _ in range(2):
        pdf = browser.get(f"{servers.base_url}/me/certificates/{NUMBER}.pdf", timeout=60)
        assert pdf.status_code == 200
        assert pdf.content.startswith(b"%PDF-")
    assert servers.answers(f"/me/certificates/{NUMBER}.pdf", 2) == [["200"], ["200"]]

    assert [api_lookup(browser, servers, NUMBER, NAME).json()["result"] for _ in range(2)] == ["valid", "valid"]
    with app.app_context():
        certificate = db.session.scalar(select(Certificate).where(Certificate.number == NUMBER))
        records.revoke(certificate, reason="测试：两台服务器", actor="test")
    # The revocation, committed once in the shared database, shows on both servers at their next lookup.
    assert [api_lookup(browser, servers, NUMBER, NAME).json()["result"] for _ in range(2)] == ["revoked", "revoked"]
    assert [len(statuses) for statuses in servers.answers("/api/v1/verify", 4)] == [2, 2]


def test_two_servers_share_limits(app, import_roster, start_servers, redis_db):
    """With the limits in Redis, a visitor's lookups count once however nginx spreads them over the servers."""
    import_roster(ROSTER, "二级建造师", "certificate")
    servers = start_servers(
        CERT_RATELIMIT_ENABLED="true",
        CERT_RATELIMIT_STORAGE_URI=f"redis://127.0.0.1:6379/{TEST_REDIS_DB}",
        CERT_LOOKUP_RATE_LIMIT="4 per minute",
        CERT_LOOKUP_CAPTCHA_ENABLED="true",
        CERT_LOOKUP_MISSES_BEFORE_CAPTCHA="2",
    )
    browser = servers.browser(start_servers.cert_file)

    # Two misses, one on each server, reach the address's captcha threshold on both.
    assert [api_lookup(browser, servers, NUMBER, "王五").json()["result"] for _ in range(2)] == ["not_found"] * 2
    refused = [api_lookup(browser, servers, NUMBER, NAME) for _ in range(2)]
    assert [response.status_code for response in refused] == [429, 429]
    assert all("未查到结果过多" in response.json()["error"] for response in refused)
    assert servers.answers("/api/v1/verify", 4) == [["200", "429"], ["200", "429"]]

    # The address's lookup limit (4 per minute) is one count in Redis: the fifth lookup is refused by either server.
    redis_db.flushdb()
    statuses = [api_lookup(browser, servers, NUMBER, NAME).status_code for _ in range(6)]
    assert statuses == [200, 200, 200, 200, 429, 429]
