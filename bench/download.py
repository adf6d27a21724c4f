"""Benchmark a cached certificate download against a static file served by the same Flask app.

Run from the project root:

    .venv/bin/python -m bench.download [--requests 300]

It builds a throwaway instance (SQLite, demo signing keys), imports the
synthetic faulty roster, registers and logs in one holder, downloads the
holder's PDF once to fill the cache, then times GET requests through
Flask's test client, interleaved: the cached PDF, the same bytes as a static
file through `send_from_directory` (what Flask's own static route does),
a conditional GET returning 304, the cached PDF with
PDF_ACCEL_REDIRECT_PREFIX set (the app's part when nginx sends the bytes;
no nginx runs here), and an empty response behind `login_required` (the
floor that loading the logged-in holder sets). It prints a Markdown table
for docs/benchmarks.md.

With `--http` it also serves the same instance with gunicorn under
deploy/gunicorn.conf.py (`bench/download_wsgi.py`: the app plus the static
route and the login-only route) on 127.0.0.1, logs the holder in over HTTP,
and runs wrk against the static file, the cached PDF and the login-only
route in turn, for several rounds. It prints requests/s and the CPU time of
the gunicorn processes per request, read from /proc. This includes what the
test client leaves out: gunicorn parsing the request and writing the
response, and the loopback socket.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import re
import shutil
import statistics
import tempfile
import time
import urllib.parse
from pathlib import Path

from bench import common

PROJECT_DIR = Path(__file__).resolve().parents[1]
ROSTER = PROJECT_DIR / "tests" / "data" / "rosters" / "二级建造师_问题数据样例.xlsx"
HOLDER_NAME, HOLDER_ID = "张伟", "500103199001011232"  # first valid row of that roster
PASSWORD = "bench-holder-pass-2024"


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or re.search(
        r'name="csrf_token" value="([^"]+)"', html)
    if match is None:
        raise RuntimeError("no CSRF token on the page")
    return match.group(1)


def timed_get(client, url: str, headers: dict | None = None) -> tuple[float, float, int]:
    wall, cpu = time.perf_counter(), time.process_time()
    response = client.get(url, headers=headers or {})
    response.get_data()
    response.close()
    return time.perf_counter() - wall, time.process_time() - cpu, response.status_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests timed per kind")
    parser.add_argument("--http", action="store_true", help="also measure through gunicorn with wrk")
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run with --http")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of wrk runs with --http")
    parser.add_argument("--port", type=int, default=8766, help="port of the gunicorn server with --http, on 127.0.0.1")
    options = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-download-"))
    os.environ["CERT_INSTANCE_PATH"] = str(scratch / "instance")
    from flask import send_from_directory
    from flask_login import login_required
    from flask_migrate import upgrade
    from sqlalchemy import select

    from app import create_app
    from app.extensions import db
    from app.models import Certificate
    from app.services import batches, certificates

    # The keys and the database come from CERT_* variables, so that the
    # gunicorn server of --http reads the same instance as this process.
    database_url = f"sqlite:///{scratch / 'bench.db'}"
    os.environ.update(common.app_environment(database_url, scratch / "instance"))
    app = create_app({"TESTING": True, "RATELIMIT_ENABLED": False})
    static_dir = scratch / "static-copy"
    static_dir.mkdir()
    app.add_url_rule("/bench-static/<path:filename>", "bench_static",
                     lambda filename: send_from_directory(static_dir, filename))
    app.add_url_rule("/bench-login-only", "bench_login_only", login_required(lambda: ""))
    try:
        with app.app_context():
            upgrade()
            certificates.ensure_demo_keys()
            batches.import_file(ROSTER, exam="二级建造师", kind="certificate", actor="bench")
            number = db.session.scalar(select(Certificate.number).where(Certificate.name == HOLDER_NAME))

        client = app.test_client()
        page = client.get("/register").get_data(as_text=True)
        client.post("/register", data={
            "name": HOLDER_NAME, "id_type": "居民身份证", "id_number": HOLDER_ID, "phone": "13800000009",
            "password": PASSWORD, "confirm": PASSWORD, "consent": "y", "csrf_token": csrf_token(page)})
        page = client.get("/login").get_data(as_text=True)
        client.post("/login", data={"login": HOLDER_ID, "password": PASSWORD, "csrf_token": csrf_token(page)})

        url = f"/me/certificates/{number}.pdf"
        started = time.perf_counter()
        first = client.get(url)
        first_render_s = time.perf_counter() - started
        if first.status_code != 200:
            raise RuntimeError(f"download returned HTTP {first.status_code}, expected 200; check the holder login")
        etag = first.headers["ETag"]
        (static_dir / "certificate.pdf").write_bytes(first.data)

        cached, static, conditional, accel, login_only = [], [], [], [], []
        for _ in range(options.requests):
            cached.append(timed_get(client, url))
            static.append(timed_get(client, "/bench-static/certificate.pdf"))
            conditional.append(timed_get(client, url, {"If-None-Match": etag}))
            app.config["PDF_ACCEL_REDIRECT_PREFIX"] = "/_protected/pdf-cache/"
            accel.append(timed_get(client, url))
            app.config["PDF_ACCEL_REDIRECT_PREFIX"] = None
            login_only.append(timed_get(client, "/bench-login-only"))
        # The cache key and response alone, without login, ownership query and
        # the download event that the route records, against the static file.
        from app.holders.routes import _pdf_response

        response_only, static_only = [], []
        with app.app_context():
            certificate = db.session.scalar(select(Certificate).where(Certificate.number == number))
            source = certificates.source_of(certificate)
            for _ in range(options.requests):
                with app.test_request_context(url):
                    wall, cpu = time.perf_counter(), time.process_time()
                    _pdf_response(certificates.cache_entry(source), number, "attachment").get_data()
                    response_only.append((time.perf_counter() - wall, time.process_time() - cpu, 200))
                with app.test_request_context("/bench-static/certificate.pdf"):
                    wall, cpu = time.perf_counter(), time.process_time()
                    response = send_from_directory(static_dir, "certificate.pdf")
                    response.direct_passthrough = False
                    response.get_data()
                    response.close()
                    static_only.append((time.perf_counter() - wall, time.process_time() - cpu, 200))
        assert {status for *_, status in cached} == {200}
        assert {status for *_, status in conditional} == {304}
        assert {status for *_, status in accel} == {200}
        assert {status for *_, status in login_only} == {200}
        http_rows = measure_http(options, scratch, database_url, static_dir, url) if options.http else None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def median_ms(samples, index: int) -> float:
        return statistics.median(sample[index] for sample in samples) * 1000

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}; PDF {len(first.data) // 1024} KB")
    print("| request (median of %d) | wall ms | CPU ms |" % options.requests)
    print("| --- | --- | --- |")
    print(f"| first download: render, sign, store | {first_render_s * 1000:.1f} | – |")
    for label, samples in [("cached PDF download", cached), ("same bytes as a static file", static),
                           ("conditional GET, 304", conditional),
                           ("cached PDF as X-Accel-Redirect, empty body", accel),
                           ("empty response behind login_required", login_only)]:
        print(f"| {label} | {median_ms(samples, 0):.2f} | {median_ms(samples, 1):.2f} |")
    print(f"| ratio cached / static | {median_ms(cached, 0) / median_ms(static, 0):.2f}× | "
          f"{median_ms(cached, 1) / median_ms(static, 1):.2f}× |")
    print(f"| ratio login_required only / static | {median_ms(login_only, 0) / median_ms(static, 0):.2f}× | "
          f"{median_ms(login_only, 1) / median_ms(static, 1):.2f}× |")
    print(f"| cache key and PDF response only (no login, ownership query or event) | "
          f"{median_ms(response_only, 0):.2f} | {median_ms(response_only, 1):.2f} |")
    print(f"| static file response only | {median_ms(static_only, 0):.2f} | {median_ms(static_only, 1):.2f} |")
    print(f"| ratio response only / static only | {median_ms(response_only, 0) / median_ms(static_only, 0):.2f}× | "
          f"{median_ms(response_only, 1) / median_ms(static_only, 1):.2f}× |")
    if http_rows:
        print_http(http_rows, options)


# wrk sends the session cookie and a fixed User-Agent on every request. The
# User-Agent matters because Flask-Login's strong session protection ends a
# session whose address or User-Agent differs from the login's.
USER_AGENT = "bench-download"


def http_login(base: str) -> str:
    """Log the holder in through the server at `base`; return the Cookie header of the new session."""
    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=30)
    connection.request("GET", "/login", headers={"User-Agent": USER_AGENT})
    response = connection.getresponse()
    page = response.read().decode()
    cookie = session_cookie(response)
    connection.close()

    body = urllib.parse.urlencode({"login": HOLDER_ID, "password": PASSWORD, "csrf_token": csrf_token(page)})
    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=30)
    connection.request("POST", "/login", body=body, headers={
        "User-Agent": USER_AGENT, "Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})
    response = connection.getresponse()
    response.read()
    connection.close()
    if response.status != 303:
        raise RuntimeError(f"login over HTTP returned {response.status}, expected 303")
    return session_cookie(response)


def session_cookie(response: http.client.HTTPResponse) -> str:
    """Return the `session=…` pair that `response` sets; it also clears other cookies in separate headers."""
    for header in response.msg.get_all("Set-Cookie") or []:
        if header.startswith("session="):
            return header.split(";", 1)[0]
    raise RuntimeError(f"HTTP {response.status} set no session cookie")


def check_http(base: str, path: str, headers: dict[str, str], content_type: str) -> None:
    """Raise unless GET `path` returns 200 with `content_type`: a redirect to the login would also pass wrk."""
    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=30)
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    if response.status != 200 or not (response.getheader("Content-Type") or "").startswith(content_type):
        raise RuntimeError(f"GET {path} returned {response.status} {response.getheader('Content-Type')}, "
                           f"expected 200 {content_type}")


def measure_http(options, scratch: Path, database_url: str, static_dir: Path, url: str) -> dict[str, list]:
    """Run wrk against the static file, the cached PDF and the login-only route; return rows of (req/s, CPU ms)."""
    settings = {"BENCH_STATIC_DIR": str(static_dir)}
    kinds = {
        "static": ("/bench-static/certificate.pdf", "application/pdf"),
        "cached": (url, "application/pdf"),
        "login_only": ("/bench-login-only", "text/html"),
    }
    rows: dict[str, list] = {kind: [] for kind in kinds}
    with common.gunicorn(database_url, scratch / "instance", options.port, settings=settings,
                         wsgi_app="bench.download_wsgi:app") as base:
        headers = {"Cookie": http_login(base), "User-Agent": USER_AGENT}
        script = scratch / "headers.lua"
        script.write_text("".join(f'wrk.headers["{key}"] = "{value}"\n' for key, value in headers.items()))
        for path, content_type in kinds.values():
            check_http(base, path, headers, content_type)
        for _ in range(options.rounds):
            for kind, (path, content_type) in kinds.items():
                cpu_before = common.server_cpu_seconds(base)
                rate = common.wrk(base + path, seconds=options.seconds, connections=8, script=script)
                cpu = common.server_cpu_seconds(base) - cpu_before
                rows[kind].append((rate, cpu / (rate * options.seconds) * 1000))
        # The session must still be valid at the end, or the last runs measured redirects.
        for path, content_type in kinds.values():
            check_http(base, path, headers, content_type)
    return rows


def print_http(rows: dict[str, list], options) -> None:
    print()
    print(f"wrk -t2 -c8 -d{options.seconds}s, {options.rounds} rounds, gunicorn with deploy/gunicorn.conf.py; "
          f"load average {common.load_average()}")
    print("| request | requests/s (median) | per-round requests/s | CPU ms/request, gunicorn (median) |")
    print("| --- | ---: | --- | ---: |")
    labels = {"static": "same bytes as a static file", "cached": "cached PDF download",
              "login_only": "empty response behind login_required"}
    for kind, label in labels.items():
        rates = [rate for rate, _ in rows[kind]]
        cpus = [cpu for _, cpu in rows[kind]]
        print(f"| {label} | {statistics.median(rates):,.0f} | {', '.join(f'{rate:,.0f}' for rate in rates)} | "
              f"{statistics.median(cpus):.2f} |")
    ratios = [static[0] / cached[0] for static, cached in zip(rows["static"], rows["cached"])]
    cpu_ratios = [cached[1] / static[1] for static, cached in zip(rows["static"], rows["cached"])]
    print(f"| ratio cached / static, time per request (static req/s ÷ cached req/s) | "
          f"{statistics.median(ratios):.2f}× | {', '.join(f'{ratio:.2f}' for ratio in ratios)} | "
          f"{statistics.median(cpu_ratios):.2f}× by CPU |")


if __name__ == "__main__":
    main()
