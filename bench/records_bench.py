"""Time the staff statistics, the audit-log exports and the event purge on a large synthetic database.

Builds a fresh SQLite database in a temporary folder with N audit entries,
N lookup events spread over 365 days and N/5 download events, then times each
operation once in this process. The two audit-log exports run the code behind
/admin/audit.csv and /admin/audit.xlsx in a child process each, so each
one's peak RSS is its own and not the filling step's. Run from the repository root:

    .venv/bin/python bench/records_bench.py [--entries 100000]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ID_HASH_KEY, ID_NUMBER_KEY, QR_KEY, SECRET_KEY  # noqa: E402

CHUNK = 5000


def timed(label: str, action) -> None:
    start = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - start
    size = f", {len(result) / 1e6:.1f} MB" if isinstance(result, (bytes, str)) else ""
    print(f"{label}: {elapsed:.2f} s{size}")


def fill(entries: int) -> None:
    from sqlalchemy import insert, select

    from app.extensions import db
    from app.models import AuditEntry, Certificate, DownloadEvent, LookupEvent
    from app.services import batches, events

    roster = Path(__file__).resolve().parent.parent / "tests" / "data" / "rosters" / "2024年度二级建造师考试合格人员名单.xlsx"
    batches.import_file(roster, exam="二级建造师", kind="certificate", actor="bench")
    certificate_ids = list(db.session.scalars(select(Certificate.id)))
    now = datetime.now(timezone.utc)
    for start in range(0, entries, CHUNK):
        audit_rows, lookup_rows = [], []
        for index in range(start, min(start + CHUNK, entries)):
            at = now - timedelta(minutes=index * 5)
            audit_rows.append({
                "at": at, "actor": f"clerk{index % 7}", "action": "certificate.correct",
                "target": f"certificate:{certificate_ids[index % len(certificate_ids)]}",
                "detail": {"reason": "核对后更正", "version": 2}, "before": {"name": "张三"}, "after": {"name": "张三丰"},
            })
            looked_up = now - timedelta(seconds=index * 315)  # 315 s apart, so 100,000 events span 365 days
            lookup_rows.append({"at": looked_up, "day": events.local_day(looked_up), "channel": "form", "result": "valid"})
        db.session.execute(insert(AuditEntry), audit_rows)
        db.session.execute(insert(LookupEvent), lookup_rows)
        download_rows = [
            {"at": row["at"], "day": row["day"], "certificate_id": certificate_ids[i % len(certificate_ids)]}
            for i, row in enumerate(lookup_rows[::5])
        ]
        db.session.execute(insert(DownloadEvent), download_rows)
        db.session.commit()


def make_app(folder: str):
    os.environ["CERT_INSTANCE_PATH"] = folder
    from app import create_app

    return create_app({
        "TESTING": True, "SECRET_KEY": SECRET_KEY, "QR_TOKEN_KEYS": [QR_KEY], "ID_NUMBER_KEY": ID_NUMBER_KEY,
        "ID_HASH_KEY": ID_HASH_KEY, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{folder}/bench.db",
        "RATELIMIT_ENABLED": False,
    })


def export_step(folder: str, kind: str) -> None:
    """Run one audit-log export as its route does, consuming the output; print time, size and peak RSS."""
    from app.services import audit, exports

    app = make_app(folder)
    with app.app_context():
        everything = audit.AuditFilter()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        start = time.perf_counter()
        cpu = time.process_time()
        if kind == "csv":
            size = sum(len(chunk.encode("utf-8")) for chunk in exports.audit_csv_chunks(everything))
        else:
            size = len(exports.audit_xlsx_bytes(everything))
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"audit {kind.upper()} export, all rows: {elapsed:.2f} s (CPU {cpu:.2f} s), {size / 1e6:.1f} MB, "
          f"peak RSS of its process {peak} MB ({before} MB before the export)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000, help="audit entries and lookup events to create")
    parser.add_argument("--export-step", nargs=2, metavar=("FOLDER", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_step:
        export_step(*args.export_step)
        return

    with tempfile.TemporaryDirectory() as folder:
        from flask_migrate import upgrade

        from app.services import audit, events, stats

        app = make_app(folder)
        with app.app_context():
            upgrade()
            timed(f"fill {args.entries} audit entries and lookup events", lambda: fill(args.entries))
            everything = audit.AuditFilter()
            timed("stats.days (30 days)", stats.days)
            timed("stats.issued", stats.issued)
            timed("audit page 1 (100 rows)", lambda: audit.search(everything))
            timed("audit filter by actor", lambda: audit.search(audit.AuditFilter(actor="clerk3")))
        print(f"peak RSS of the filling process so far: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
        for kind in ("csv", "xlsx"):
            subprocess.run([sys.executable, __file__, "--export-step", folder, kind], check=True)
        with app.app_context():
            timed("events purge (180 days)", lambda: events.purge(days=180))
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")


if __name__ == "__main__":
    main()
