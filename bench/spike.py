"""A release-day spike on loopback: locust headless, 0 to 500 users in 10 s, held for 5 minutes.

    .venv/bin/python -m bench.spike [--rows 1000000] [--users 500] [--spawn-rate 50] [--hold 300]

Serves the app with deploy/gunicorn.conf.py on PostgreSQL (database
certbench_http) with rate limits in Redis (DB 14, emptied first) and
PROXY_FIX_X_FOR=1, then runs bench/locustfile.py. Prints p95 per request type
and the 5xx and 429 counts. locust and the server share the machine's cores.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from bench.common import ID_HASH_KEY, ID_NUMBER_KEY, PROJECT_ROOT, QR_KEY, app_environment, gunicorn, machine, scratch_instance, today
from bench.setup_db import prepare

PORT = 18092
REDIS_DB = 14
HOLDERS = 50
STATUS = re.compile(r"\b(\d{3}) (?:Client|Server) Error")


def create_holders(url: str, instance: Path, password: str) -> None:
    """Create holder accounts 1..HOLDERS for synthetic rows 1..HOLDERS, logging in by phone 139xxxxxxxx."""
    os.environ.update({"CERT_INSTANCE_PATH": str(instance), "CERT_RATELIMIT_ENABLED": "false"})
    from app import create_app
    from app.extensions import db
    from app.models import Certificate, Holder, utcnow

    app = create_app(
        {"TESTING": True, "SQLALCHEMY_DATABASE_URI": url, "ID_NUMBER_KEY": ID_NUMBER_KEY, "ID_HASH_KEY": ID_HASH_KEY}
    )
    with app.app_context():
        db.session.execute(sa.delete(Holder).where(Holder.phone.like("139%")))
        for g in range(1, HOLDERS + 1):
            certificate = db.session.scalar(sa.select(Certificate).where(Certificate.public_id == f"bench-{g}"))
            # Bulk-seeded rows share one ID number; each holder's row gets its own, so "my certificates" lists one.
            certificate.id_number = f"50010119900101{g:04d}"
            if hasattr(Certificate, "id_number_hash"):
                from app.id_numbers import id_hash

                certificate.id_number_hash = id_hash(certificate.id_number)
            holder = Holder(
                name=certificate.name, id_type=certificate.id_type, id_number=certificate.id_number,
                phone=f"139{g:08d}", consented_at=utcnow(),
            )  # fmt: skip
            holder.set_password(password)
            db.session.add(holder)
        db.session.commit()
        db.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic certificates in the register")
    parser.add_argument("--users", type=int, default=500, help="simulated users at the peak")
    parser.add_argument("--spawn-rate", type=float, default=50, help="users started per second")
    parser.add_argument("--hold", type=int, default=300, help="seconds at the peak")
    parser.add_argument("--database", default="certbench_http",
                        help="PostgreSQL database, dropped and recreated unless it contains --rows certificates")
    parser.add_argument("--port", type=int, default=PORT, help="port of the gunicorn server on 127.0.0.1")
    parser.add_argument("--redis-db", type=int, default=REDIS_DB, help="Redis database for the rate limits, emptied first")
    args = parser.parse_args()

    instance = scratch_instance()
    url = prepare("postgresql", args.rows, instance, name=args.database)
    password = secrets.token_urlsafe(16)
    create_holders(url, instance, password)
    # PDFs are signed; the demo CA and signing key go into this run's instance folder.
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "keys", "init", "--if-missing"],
        env=app_environment(url, instance), cwd=PROJECT_ROOT, check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "-n", str(args.redis_db), "flushdb"], check=True, capture_output=True)

    settings = {
        "CERT_RATELIMIT_ENABLED": "true",
        "CERT_RATELIMIT_STORAGE_URI": f"redis://127.0.0.1:6379/{args.redis_db}",
        "CERT_PROXY_FIX_X_FOR": "1",
    }
    run_seconds = int(args.users / args.spawn_rate) + args.hold
    prefix = instance / "spike"
    with gunicorn(url, instance, args.port, settings=settings) as base:
        env = dict(os.environ, BENCH_ROWS=str(args.rows), BENCH_QR_KEY=QR_KEY, BENCH_HOLDERS=str(HOLDERS),
                   BENCH_HOLDER_PASSWORD=password, PYTHONPATH=str(PROJECT_ROOT))  # fmt: skip
        command = [
            str(Path(sys.executable).parent / "locust"), "-f", "bench/locustfile.py", "--headless", "--host", base,
            "--users", str(args.users), "--spawn-rate", str(args.spawn_rate), "--run-time", f"{run_seconds}s",
            "--csv", str(prefix), "--only-summary", "--stop-timeout", "10",
        ]  # fmt: skip
        subprocess.run(command, env=env, cwd=PROJECT_ROOT, check=False)

    rows = list(csv.DictReader(open(f"{prefix}_stats.csv", encoding="utf-8")))
    failures = list(csv.DictReader(open(f"{prefix}_failures.csv", encoding="utf-8")))
    status_counts = {"5xx": 0, "429": 0, "other": 0}
    for failure in failures:
        match = STATUS.search(failure["Error"])
        code = int(match.group(1)) if match else 0
        if code == 429:
            key = "429"
        elif 500 <= code < 600:
            key = "5xx"
        else:
            key = "other"
        status_counts[key] += int(failure["Occurrences"])

    print(f"\nMachine: {machine()}; date {today()}; PostgreSQL, {args.rows:,} certificates; Redis rate limits;")
    print(f"locust --users {args.users} --spawn-rate {args.spawn_rate} --run-time {run_seconds}s; wait 2-8 s per user\n")
    print("| request | count | failures | median (ms) | p95 (ms) | p99 (ms) | req/s |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['Type']} {row['Name']} | {row['Request Count']} | {row['Failure Count']} | {row['Median Response Time']} | "
              f"{row['95%']} | {row['99%']} | {float(row['Requests/s']):.1f} |")  # fmt: skip
    print(f"\n5xx responses: {status_counts.get('5xx', 0)}; 429 responses: {status_counts.get('429', 0)}; "
          f"other failures: {status_counts.get('other', 0)}")  # fmt: skip
    for failure in failures:
        error = re.sub(r"for url: \S+", "", failure["Error"])  # the URL repeats the request name
        print(f"  {failure['Method']} {failure['Name']}: {error} x{failure['Occurrences']}")


if __name__ == "__main__":
    main()
