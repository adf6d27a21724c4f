"""Shared pieces of the lookup benchmarks: a synthetic register, a gunicorn server, wrk.

Every server started here listens on 127.0.0.1 and is stopped when the benchmark ends.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

# 100 synthetic two- and three-character names; row g is named NAMES[g % 100].
NAMES = [
    s + g
    for s in ("王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴")
    for g in ("伟", "芳", "娜", "敏", "静", "丽强", "磊", "军", "洋", "勇")
]
NUMBER_PREFIX = "9"  # synthetic numbers are "9" + 11 digits, apart from the sample rosters' numbers
# Fixed keys, so a benchmark database seeded by one run stays readable by the next.
# They protect synthetic data only and must never be used for a real register.
SECRET_KEY = hashlib.sha256(b"certbench secret key").hexdigest()
QR_KEY = hashlib.sha256(b"certbench qr key").hexdigest()
ID_NUMBER_KEY = hashlib.sha256(b"certbench id number key").hexdigest()
ID_HASH_KEY = hashlib.sha256(b"certbench id hash key").hexdigest()
# Every bulk-seeded row carries this synthetic ID number; spike.py gives its holders' rows their own.
SHARED_ID_NUMBER = "500101199001010000"


def number_of(g: int) -> str:
    return f"{NUMBER_PREFIX}{g:011d}"


def name_of(g: int) -> str:
    return NAMES[g % len(NAMES)]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GB RAM, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def today() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


def app_environment(url: str, instance: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "CERT_INSTANCE_PATH": str(instance),
            "CERT_SQLALCHEMY_DATABASE_URI": url,
            "CERT_SECRET_KEY": SECRET_KEY,
            "CERT_QR_TOKEN_KEYS": f'["{QR_KEY}"]',
            "CERT_ID_NUMBER_KEY": ID_NUMBER_KEY,
            "CERT_ID_HASH_KEY": ID_HASH_KEY,
            "CERT_RATELIMIT_ENABLED": "false",
        }
    )
    return env


def create_postgres_database(name: str) -> str:
    """Drop and create database `name` on the local server; return its URL."""
    admin = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def migrate(url: str, instance: Path) -> None:
    env = app_environment(url, instance)
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"],
        env=env, cwd=PROJECT_ROOT, check=True, capture_output=True,
    )  # fmt: skip


def seed(url: str, first: int, last: int, chunk: int = 1_000_000) -> float:
    """Insert synthetic certificates first..last (inclusive) with set-based SQL; return the seconds taken."""
    engine = sa.create_engine(url)
    started = time.monotonic()
    with engine.begin() as connection:
        ids = {
            "exam": connection.scalar(sa.text("SELECT id FROM exam WHERE name = '二级建造师'")),
            "specialty": connection.scalar(
                sa.text("SELECT s.id FROM specialty s JOIN exam e ON e.id = s.exam_id WHERE e.name = '二级建造师' ORDER BY s.id LIMIT 1")
            ),
            "layout": connection.scalar(sa.text("SELECT certificate_layout_id FROM exam WHERE name = '二级建造师'")),
        }
        connection.execute(sa.text("DROP TABLE IF EXISTS bench_names"))
        connection.execute(sa.text("CREATE TABLE bench_names (i INTEGER PRIMARY KEY, name VARCHAR(50))"))
        connection.execute(
            sa.text("INSERT INTO bench_names (i, name) VALUES (:i, :name)"),
            [{"i": i, "name": name} for i, name in enumerate(NAMES)],
        )
    postgres = engine.dialect.name == "postgresql"
    id_columns, id_values = _id_number_columns(engine)
    for start in range(first, last + 1, chunk):
        stop = min(start + chunk - 1, last)
        if postgres:
            # Typed, because PostgreSQL finds generate_series ambiguous for two small untyped parameters.
            series = "SELECT generate_series(CAST(:start AS integer), CAST(:stop AS integer)) AS g"
            number = "'9' || lpad(g::text, 11, '0')"
        else:
            series = "WITH RECURSIVE s(g) AS (SELECT :start UNION ALL SELECT g + 1 FROM s WHERE g < :stop) SELECT g FROM s"
            number = "'9' || substr('00000000000' || g, -11, 11)"
        sql = f"""
            INSERT INTO certificate (public_id, number, kind, exam_id, specialty_id, layout_id, level, name, gender,
                id_type, {id_columns}, birth_month, approval_date, status, version, created_at, updated_at)
            SELECT 'bench-' || g, {number}, 'certificate', :exam, :specialty, :layout, NULL, n.name,
                CASE WHEN g % 2 = 0 THEN '男' ELSE '女' END, '居民身份证', {id_values},
                '1990-01-01', '2024-01-15', 'valid', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP
            FROM ({series}) AS series JOIN bench_names n ON n.i = g % 100
        """
        with engine.begin() as connection:
            connection.execute(sa.text(sql), {"start": start, "stop": stop, **ids, **_shared_id_number(id_columns)})
    # VACUUM sets hint bits and the visibility map, which a freshly loaded table lacks: without it the
    # first lookups of each page write to it, and a 10M-row table measures slower than it runs later.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("VACUUM ANALYZE certificate" if postgres else "ANALYZE"))
    engine.dispose()
    return time.monotonic() - started


def _id_number_columns(engine: sa.Engine) -> tuple[str, str]:
    """Return the ID-number columns to fill and their SQL values: ciphertext and hash where ID numbers are encrypted."""
    columns = {column["name"] for column in sa.inspect(engine).get_columns("certificate")}
    if "id_number_hash" in columns:
        return "id_number, id_number_hash", ":id_number, :id_number_hash"
    return "id_number", ":id_number"


def _shared_id_number(id_columns: str) -> dict[str, str]:
    if "id_number_hash" not in id_columns:
        return {"id_number": SHARED_ID_NUMBER}
    from app.domain import crypto

    return {
        "id_number": crypto.encrypt(crypto.derive_key(ID_NUMBER_KEY), SHARED_ID_NUMBER),
        "id_number_hash": crypto.keyed_hash(crypto.derive_key(ID_HASH_KEY), SHARED_ID_NUMBER),
    }


@contextmanager
def gunicorn(url: str, instance: Path, port: int, workers: int | None = None, settings: dict[str, str] | None = None,
             wsgi_app: str = "bench.wsgi_bench:app"):
    """Run `wsgi_app` (by default bench/wsgi_bench.py) under deploy/gunicorn.conf.py on 127.0.0.1:`port`; yield its base URL.

    `settings` are extra environment variables (CERT_* settings) for the server.
    The app must serve /bench/bare, which is polled until the server is up.
    """
    env = app_environment(url, instance) | (settings or {})
    env.update({"GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_ACCESS_LOG": "/dev/null", "GUNICORN_LOG_LEVEL": "warning"})
    if workers:
        env["GUNICORN_WORKERS"] = str(workers)
    command = [str(Path(sys.executable).parent / "gunicorn"), "--config", "deploy/gunicorn.conf.py", wsgi_app]
    process = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT)
    base = f"http://127.0.0.1:{port}"
    _server_pids[base] = process.pid
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/bench/bare", timeout=1).read()
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"gunicorn did not respond on {base} within 20 s")
        yield base
    finally:
        _server_pids.pop(base, None)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


# Base URL of each running benchmark server -> pid of its gunicorn master.
_server_pids: dict[str, int] = {}
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: str) -> list[str] | None:
    """Return the fields of /proc/PID/stat after the command name (field 3 onwards), or None if it has gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def server_cpu_seconds(base: str) -> float:
    """Return the CPU seconds (user + system) used so far by the server at `base`: master, live and exited workers."""
    master = str(_server_pids[base])
    total = 0.0
    for pid in (name for name in os.listdir("/proc") if name.isdigit()):
        fields = _proc_stat(pid)
        if fields is None:
            continue
        if pid == master:
            # utime, stime, and the cutime, cstime of workers it has reaped (recycled by max_requests).
            total += sum(int(value) for value in fields[11:15]) / _CLOCK_TICKS
        elif fields[1] == master:
            total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return total


def database_cpu_seconds(database: str) -> dict[str, float]:
    """Return the CPU seconds used so far by each PostgreSQL backend connected to `database`, by pid (none on SQLite)."""
    seconds = {}
    for pid in (name for name in os.listdir("/proc") if name.isdigit()):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if not command.startswith("postgres:") or f" {database} " not in command:
            continue
        fields = _proc_stat(pid)
        if fields is not None:
            seconds[pid] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return seconds


def database_cpu_delta(before: dict[str, float], after: dict[str, float]) -> float:
    """Return the CPU seconds the backends used between two `database_cpu_seconds` readings.

    A backend that exited in between (its gunicorn worker was recycled) is
    missing from `after`, so its last CPU time is not counted: an underestimate.
    """
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


def load_average() -> str:
    return "%.1f, %.1f, %.1f" % os.getloadavg()


def wrk_lookup_script(path: Path, rows: int, endpoint: str, headers: dict[str, str] | None = None) -> Path:
    """Write a wrk Lua script that looks up random synthetic certificates 1..rows at `endpoint`, sending `headers`."""
    names = ",".join(f'"{urllib.parse.quote(name)}"' for name in NAMES)
    header_table = ", ".join(f'["{key}"] = "{value}"' for key, value in (headers or {}).items())
    path.write_text(
        f"""
local names = {{{names}}}
local headers = {{{header_table}}}
math.randomseed(os.time())
request = function()
  local g = math.random(1, {rows})
  local number = string.format("9%011d", g)
  return wrk.format("GET", "{endpoint}?number=" .. number .. "&name=" .. names[(g % 100) + 1], headers)
end
""",
        encoding="utf-8",
    )
    return path


def wrk(url: str, *, seconds: int, connections: int, threads: int = 2, script: Path | None = None) -> float:
    """Run wrk against `url` and return requests per second; raise if any response was not 2xx/3xx."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk")
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        command += ["-s", str(script)]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx or 3xx responses" in output:
        raise RuntimeError(f"wrk saw error responses:\n{output}")
    for line in output.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError(f"no Requests/sec in wrk output:\n{output}")


def scratch_instance() -> Path:
    return Path(tempfile.mkdtemp(prefix="cert-bench-"))
