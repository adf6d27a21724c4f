"""nginx from deploy/nginx in front of gunicorn: a holder's cached PDF is sent by nginx through X-Accel-Redirect.

The site file is copied to a temporary folder with its ports, paths and TLS
certificate swapped for test values, the way deploy/smoke.sh does it. nginx
listens on 127.0.0.1 only, gunicorn runs deploy/gunicorn.conf.py against the
test database, and both are stopped when the test ends.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from app.extensions import db
from app.models import Certificate, DownloadEvent
from app.services import certificates

from .conftest import HOLDER_PASSWORD, QR_KEY, csrf_token
from .test_holders import ID_NUMBER, NUMBER, register

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SITE_FILE = PROJECT_ROOT / "deploy" / "nginx" / "certificates.conf"
ACCEL_PREFIX = "/_protected/pdf-cache/"
NGINX = shutil.which("nginx") or next((path for path in ("/usr/sbin/nginx",) if os.access(path, os.X_OK)), None)
GUNICORN = Path(sys.executable).with_name("gunicorn")

pytestmark = [
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx); "
                       "test_holders.py still checks the X-Accel-Redirect response without it"),
    pytest.mark.skipif(not GUNICORN.is_file(), reason=f"gunicorn is not installed next to {sys.executable}"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server on port {port} exited with code {process.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"nothing listens on 127.0.0.1:{port} after {seconds} s:\n{log.read_text()[-3000:]}")


def app_log_line(log: Path, pattern: str, seconds: float = 10) -> str:
    """Return the first line of `log` matching `pattern`; gunicorn writes it just after sending the response."""
    deadline = time.monotonic() + seconds
    while True:
        text = log.read_text() if log.exists() else ""
        match = re.search(f".*{pattern}.*", text)
        if match:
            return match.group(0)
        if time.monotonic() > deadline:
            pytest.fail(f"no line matching {pattern!r} in {log.name} after {seconds} s:\n{text[-3000:]}")
        time.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def self_signed_certificate(folder: Path) -> Path:
    """Write a TLS key and a certificate for 127.0.0.1 as fullchain.pem and privkey.pem; return the certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (folder / "privkey.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_file = folder / "fullchain.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_file


def nginx_config(work: Path, instance: Path, http_port: int, https_port: int, *app_ports: int) -> Path:
    """Write nginx.conf around a copy of the deploy/ site file with test ports and paths; return its path.

    The upstream gets one server line per port in `app_ports`, as several app servers behind one nginx.
    """
    upstream_servers = "\n    ".join(f"server 127.0.0.1:{port};" for port in app_ports)
    site = SITE_FILE.read_text(encoding="utf-8")
    replacements = [
        (r"listen 80;", f"listen 127.0.0.1:{http_port};"),
        (r"listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;"),
        (r"/etc/ssl/certificates/", f"{work}/"),
        (r"/var/log/nginx/", f"{work}/nginx-"),
        (r"/srv/certificates/instance/", f"{instance}/"),
        (r"/srv/certificates/", f"{PROJECT_ROOT}/"),
        (r"server 127.0.0.1:8000;", upstream_servers),
        # The site runs on port 443 in production, where $host is the origin a browser sends
        # as Referer. Here HTTPS listens on a free port, so the Host passed on keeps that port.
        (r"proxy_set_header Host $host;", "proxy_set_header Host $http_host;"),
    ]
    for old, new in replacements:
        assert old in site, f"{SITE_FILE.name} no longer contains {old!r}; update this test's replacements"
        site = site.replace(old, new)
    site = re.sub(r"^\s*listen \[::\].*\n", "", site, flags=re.M)
    (work / "site.conf").write_text(site, encoding="utf-8")

    # Workers run as the user running the test, so they can read its temporary instance folder.
    user = pwd.getpwuid(os.geteuid()).pw_name
    config = work / "nginx.conf"
    config.write_text(f"""
user {user};
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-main.error.log warn;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    include {work}/site.conf;
}}
""", encoding="utf-8")
    return config


def app_server_environment(app, instance: Path, port: int, access_log: Path, error_log: Path, **settings: str) -> dict:
    """Return the environment of a gunicorn on 127.0.0.1:`port` that serves the test app's database with its keys.

    Rate limits and the captcha are off unless `settings` (more CERT_* variables) turn them on.
    """
    return {
        **os.environ,
        "CERT_INSTANCE_PATH": str(instance),
        "CERT_SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
        "CERT_TESTING": "true",
        "CERT_SECRET_KEY": app.config["SECRET_KEY"],
        "CERT_QR_TOKEN_KEYS": f'["{QR_KEY}"]',
        "CERT_BASE_URL": app.config["BASE_URL"],
        "CERT_RATELIMIT_ENABLED": "false",
        "CERT_LOOKUP_CAPTCHA_ENABLED": "false",
        "CERT_PROXY_FIX_X_FOR": "1",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "1",
        "GUNICORN_ACCESS_LOG": str(access_log),
        "GUNICORN_ERROR_LOG": str(error_log),
        **settings,
    }


@dataclass
class Site:
    base_url: str  # https://127.0.0.1:<port>, served by nginx
    cert_file: Path  # the self-signed TLS certificate to trust
    work: Path  # temporary folder with the configuration and logs
    gunicorn: subprocess.Popen


@pytest.fixture
def nginx_site(app, tmp_path):
    """Start gunicorn (X-Accel-Redirect on) and nginx from deploy/ on free loopback ports; yield a Site."""
    instance = Path(app.instance_path)
    (instance / "pdf-cache").mkdir(exist_ok=True)
    app_port, http_port, https_port = free_port(), free_port(), free_port()
    cert_file = self_signed_certificate(tmp_path)
    config = nginx_config(tmp_path, instance, http_port, https_port, app_port)

    environment = app_server_environment(
        app, instance, app_port, tmp_path / "gunicorn-access.log", tmp_path / "gunicorn-error.log",
        CERT_PDF_ACCEL_REDIRECT_PREFIX=ACCEL_PREFIX,
    )
    checked = subprocess.run([NGINX, "-t", "-c", str(config), "-e", str(tmp_path / "nginx-main.error.log")],
                             capture_output=True, text=True)
    assert checked.returncode == 0, f"nginx -t rejected the generated site:\n{checked.stderr}"

    log = tmp_path / "servers.log"
    with log.open("w") as output:
        # --no-control-socket: gunicorn's default control socket is one path in the home
        # folder, shared with any other gunicorn on this machine.
        command = [str(GUNICORN), "--config", "deploy/gunicorn.conf.py", "--no-control-socket", "wsgi:app"]
        gunicorn = subprocess.Popen(command, cwd=PROJECT_ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT)
        nginx = None
        try:
            wait_for_port(app_port, gunicorn, tmp_path / "gunicorn-error.log")
            nginx = subprocess.Popen([NGINX, "-c", str(config), "-e", str(tmp_path / "nginx-main.error.log")],
                                     stdout=output, stderr=subprocess.STDOUT)
            wait_for_port(https_port, nginx, tmp_path / "nginx-main.error.log")
            yield Site(f"https://127.0.0.1:{https_port}", cert_file, tmp_path, gunicorn)
        finally:
            if nginx is not None:
                stop(nginx)
            stop(gunicorn)


def test_nginx_sends_cached_pdf(app, client, import_roster, nginx_site):
    base = nginx_site.base_url
    import_roster("2024年度二级建造师考试合格人员名单.xlsx", "二级建造师", "certificate")
    register(client, log_in=False)
    browser = requests.Session()
    browser.trust_env = False  # no proxy or CA bundle from the environment: loopback and this certificate only
    browser.verify = str(nginx_site.cert_file)
    login_page = browser.get(f"{base}/login", timeout=30)
    page = login_page.text
    assert login_page.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"  # sent once
    # Over HTTPS Flask-WTF requires a same-origin Referer, which a browser sends (see test_browser_logs_in_over_https).
    logged_in = browser.post(f"{base}/login", data={"login": ID_NUMBER, "password": HOLDER_PASSWORD,
                                                     "csrf_token": csrf_token(page)},
                             headers={"Referer": f"{base}/login"}, allow_redirects=False, timeout=30)
    assert logged_in.status_code == 303

    response = browser.get(f"{base}/me/certificates/{NUMBER}.pdf", timeout=60)

    with app.app_context():
        entry = certificates.cache_entry(db.session.scalar(select(Certificate).where(Certificate.number == NUMBER)))
    cached, etag = entry.path, entry.etag
    assert cached.is_file()
    assert response.status_code == 200
    assert response.content == cached.read_bytes()
    assert response.content.startswith(b"%PDF-")
    assert response.headers["Content-Type"] == "application/pdf"
    assert response.headers["Content-Disposition"] == f"attachment; filename={NUMBER}.pdf"
    assert response.headers["ETag"] == f'"{etag}"'
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    assert "X-Accel-Redirect" not in response.headers
    # gunicorn logged an empty body (0 bytes) for this request, so the bytes above came from nginx.
    empty_body = rf'"GET /me/certificates/{NUMBER}\.pdf HTTP/1\.[01]" 200 0 '
    assert app_log_line(nginx_site.work / "gunicorn-access.log", empty_body)

    from_cache = browser.get(f"{base}/me/certificates/{NUMBER}.pdf", timeout=30)
    assert from_cache.status_code == 200
    assert from_cache.content == response.content

    unchanged = browser.get(f"{base}/me/certificates/{NUMBER}.pdf", headers={"If-None-Match": f'"{etag}"'}, timeout=30)
    assert unchanged.status_code == 304
    assert unchanged.content == b""

    direct = browser.get(f"{base}{ACCEL_PREFIX}{cached.name}", timeout=30)
    assert direct.status_code == 404
    assert direct.content != cached.read_bytes()

    other = browser.get(f"{base}/me/certificates/202421000002.pdf", timeout=30)
    assert other.status_code == 404
    assert other.headers["Content-Type"].startswith("text/html")

    # The worker buffers download events; gunicorn's worker_exit hook writes them as it stops.
    stop(nginx_site.gunicorn)
    with app.app_context():
        downloads = db.session.scalar(select(func.count(DownloadEvent.id)))
    assert downloads == 3  # two downloads and the 304; the 404 is not counted


@pytest.mark.browser
def test_browser_logs_in_over_https(client, import_roster, nginx_site):
    """Chromium posts the login form through nginx over HTTPS, and the CSRF check accepts the Referer it sends."""
    from playwright.sync_api import sync_playwright

    from .test_browser import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    base = nginx_site.base_url
    import_roster("2024年度二级建造师考试合格人员名单.xlsx", "二级建造师", "certificate")
    register(client, log_in=False)

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        # The test's TLS certificate is self-signed; the browser still treats the page as HTTPS.
        context = browser.new_context(ignore_https_errors=True, locale="zh-CN")
        page = context.new_page()
        page.goto(f"{base}/login")
        page.get_by_label("证件号码或手机号码").fill(ID_NUMBER)
        page.get_by_label("密码", exact=True).fill(HOLDER_PASSWORD)
        page.get_by_role("button", name="登录").click()
        page.wait_for_url(f"{base}/me")
        content = page.content()
        context.close()
        browser.close()

    assert NUMBER in content


def test_nginx_error_pages_in_chinese(nginx_site):
    """While gunicorn is down nginx answers 502 with its Chinese page, and a body over the upload limit gets 413."""
    browser = requests.Session()
    browser.trust_env = False
    browser.verify = str(nginx_site.cert_file)
    too_large = browser.post(f"{nginx_site.base_url}/admin/batches", data=b"x" * (52 * 1024 * 1024), timeout=60)
    stop(nginx_site.gunicorn)

    down = browser.get(f"{nginx_site.base_url}/verify", timeout=30)

    assert down.status_code == 502
    assert down.headers["Content-Type"].startswith("text/html")
    assert "服务暂时不可用" in down.content.decode("utf-8")
    assert down.headers["Strict-Transport-Security"].startswith("max-age=")
    assert down.headers["X-Frame-Options"] == "DENY"
    assert too_large.status_code == 413
    assert "上传的文件过大" in too_large.content.decode("utf-8")
    assert "nginx" not in down.content.decode("utf-8") + too_large.content.decode("utf-8")
