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
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

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

    app = create_app({
        "TESTING": True,
        "SECRET_KEY": "bench-secret",
        "QR_TOKEN_KEYS": ["bench-qr-key"],
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{scratch / 'bench.db'}",
        "RATELIMIT_ENABLED": False,
    })
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


if __name__ == "__main__":
    main()
