"""Benchmark the roster import: parse + validate + commit against parsing alone.

One command generates the synthetic roster (bench/make_roster.py) if it is
missing, then runs each measurement in a fresh Python process so peak RSS
(ru_maxrss) belongs to that step alone:

    .venv/bin/python bench/import_bench.py [--rows 100000]

- "calamine parse": python-calamine reads every cell of the sheet, the
  fastest reader available here, as the baseline;
- "full import": `services.batches.import_file`, as `roster import` runs
  it: calamine values + the sheet-XML pass, validation of every row, every
  row's outcome written to batch_row and every certificate inserted, all
  committed in one transaction, into a new SQLite database under /tmp.
  With `--worker` the reading and validation run in a forked worker process
  (IMPORT_WORKER_MIN_BYTES=0); CPU and peak RSS are then given per process.

A first step, not timed, migrates that database and fills the instance's
glyph-coverage cache (instance/cache/), as the first import on a server does
once; `--cold` leaves the cache empty so the import builds it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"

PARSE = """
import json, resource, sys, time
from python_calamine import CalamineWorkbook
start = time.perf_counter()
cpu = time.process_time()
sheet = CalamineWorkbook.from_path(sys.argv[1]).get_sheet_by_index(0)
rows = 0
for row in sheet.iter_rows():
    rows += 1
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "cpu_seconds": time.process_time() - cpu, "rows": rows, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

APP = """
import json, os, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
instance = Path(sys.argv[2])
os.environ["CERT_INSTANCE_PATH"] = str(instance)
from app import create_app
from app.extensions import db
keys = json.loads((instance / "keys.json").read_text())
app = create_app({**keys, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{instance / 'bench.db'}", "RATELIMIT_ENABLED": False})
"""

PREPARE = APP + """
from flask_migrate import upgrade
with app.app_context():
    upgrade()
    if sys.argv[4] == "warm":
        from app.domain.glyph_coverage import coverage_bitmap
        from app.services.issuing import glyph_cache_dir
        coverage_bitmap(cache_dir=glyph_cache_dir())
print(json.dumps({}))
"""

IMPORT = APP + """
app.config.update(json.loads(sys.argv[4]))
with app.app_context():
    from app.services import batches
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    cpu = time.process_time()
    plan, batch = batches.import_file(Path(sys.argv[1]), exam="二级建造师", kind="certificate", actor="bench")
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    worker_rss = after.ru_maxrss / 1024 if worker_cpu else 0.0
    from sqlalchemy import func, select
    from app.models import Certificate
    stored = db.session.scalar(select(func.count(Certificate.id)))
print(json.dumps({"seconds": elapsed, "cpu_seconds": cpu, "worker_cpu_seconds": worker_cpu, "worker_peak_rss_mb": worker_rss,
                  "counts": plan.counts, "certificates": stored,
                  "rss_before_mb": before, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(code: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"benchmark step failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure roster import speed and peak memory.")
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the synthetic roster (default 100000)")
    parser.add_argument("--cold", action="store_true", help="time the import with an empty glyph-coverage cache")
    parser.add_argument(
        "--worker", action="store_true",
        help="read and validate in a forked worker process while the importing process writes (IMPORT_WORKER_MIN_BYTES=0)",
    )  # fmt: skip
    arguments = parser.parse_args()

    roster = OUT / f"roster-{arguments.rows}.xlsx"
    if not roster.exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "make_roster.py"), str(roster), "--rows", str(arguments.rows)], check=True)

    parse = run(PARSE, str(roster))
    with tempfile.TemporaryDirectory(prefix="import-bench-") as instance:
        keys = {name: secrets.token_urlsafe(48) for name in ("SECRET_KEY", "ID_NUMBER_KEY", "ID_HASH_KEY")}
        keys["QR_TOKEN_KEYS"] = [secrets.token_urlsafe(48)]
        (Path(instance) / "keys.json").write_text(json.dumps(keys))
        run(PREPARE, str(roster), instance, str(ROOT), "cold" if arguments.cold else "warm")
        overrides = {"IMPORT_WORKER_MIN_BYTES": 0} if arguments.worker else {}
        full = run(IMPORT, str(roster), instance, str(ROOT), json.dumps(overrides))

    print(f"machine: {platform.machine()}, {platform.processor() or platform.platform()}, python {platform.python_version()}")
    print(f"roster: {roster.name} ({roster.stat().st_size / 1e6:.1f} MB)")
    print(f"calamine parse: {parse['seconds']:.2f} s (CPU {parse['cpu_seconds']:.2f} s), peak RSS {parse['peak_rss_mb']:.0f} MB")
    total_cpu = full["cpu_seconds"] + full["worker_cpu_seconds"]
    print(f"full import:    {full['seconds']:.2f} s (CPU {full['cpu_seconds']:.2f} s in the importing process, "
          f"{full['worker_cpu_seconds']:.2f} s in the worker process, {total_cpu:.2f} s in all), "
          f"peak RSS {full['peak_rss_mb']:.0f} MB (before import {full['rss_before_mb']:.0f} MB), "
          f"worker peak RSS {full['worker_peak_rss_mb']:.0f} MB, counts {full['counts']}, stored {full['certificates']}")
    print(f"ratio full / parse: {full['seconds'] / parse['seconds']:.1f}x wall, "
          f"{total_cpu / parse['cpu_seconds']:.1f}x CPU of all processes; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
