"""Concurrency: simultaneous confirms, revocations under lookup load, lookups during an import.

Runs on SQLite (WAL mode, busy timeout) and on the PostgreSQL database that
TEST_DATABASE_URL names. Every load here goes to the app in this process or
to a server on 127.0.0.1, and every loop is bounded in count and in time.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from app.db_settings import SQLITE_BUSY_TIMEOUT_MS
from app.domain.roster import RosterFileError
from app.extensions import db
from app.models import STATUS_REVOKED, Certificate, ImportBatch
from app.services import batches, records
from tests.conftest import ROSTER_DIR
from tests.scratch_db import create_scratch_database, drop_scratch_database, subprocess_environment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from make_roster import write_roster  # noqa: E402

ROSTER = "2024年度二级建造师考试合格人员名单.xlsx"
ROSTER_ROWS = 1500
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _sample_certificates(app, count: int, seed: int) -> list[tuple[int, str, str]]:
    with app.app_context():
        rows = db.session.execute(select(Certificate.id, Certificate.number, Certificate.name)).all()
    return random.Random(seed).sample([tuple(row) for row in rows], count)


# --- Two confirms of the same roster at once ----------------------------


class InsertGate:
    """Hold each thread at its first INSERT into certificate until every thread has reached it.

    Both batches are then past their checks against the register and neither
    has written, which is the moment a duplicate could slip through.
    """

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=30)
        self.passed = threading.local()

    def __call__(self, state) -> None:
        if not state.is_insert or getattr(self.passed, "done", False):
            return
        if state.statement.table.name != "certificate":
            return
        self.passed.done = True
        self.barrier.wait()


def _preview_batch(app) -> int:
    with app.app_context():
        stored = batches.store_upload(ROSTER_DIR / ROSTER, ROSTER)
        batch = batches.create_batch(stored, ROSTER, exam="二级建造师", kind="certificate", actor="test")
        batches.preview(batch)
        return batch.id


def test_simultaneous_confirms_one_set(app):
    batch_ids = [_preview_batch(app), _preview_batch(app)]
    gate = InsertGate(len(batch_ids))
    outcomes: dict[int, object] = {}

    def confirm(batch_id: int) -> None:
        with app.app_context():
            try:
                batches.confirm(db.session.get(ImportBatch, batch_id))
                outcomes[batch_id] = "confirmed"
            except Exception as error:  # noqa: BLE001 - the test inspects every outcome
                outcomes[batch_id] = error

    event.listen(Session, "do_orm_execute", gate)
    try:
        threads = [threading.Thread(target=confirm, args=(batch_id,)) for batch_id in batch_ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        event.remove(Session, "do_orm_execute", gate)

    # Either the second confirm fails cleanly, or it waits for the first and
    # then finds every row already in the register: one set of certificates.
    with app.app_context():
        total = db.session.scalar(select(func.count(Certificate.id)))
        distinct = db.session.scalar(select(func.count(func.distinct(Certificate.number))))
        writers = db.session.scalars(select(Certificate.batch_id).distinct()).all()
        states = {batch_id: db.session.get(ImportBatch, batch_id) for batch_id in batch_ids}
    assert total == ROSTER_ROWS
    assert distinct == ROSTER_ROWS
    assert len(writers) == 1
    winner = states[writers[0]]
    assert winner.state == "confirmed"
    assert winner.imported_count == ROSTER_ROWS
    loser_id = next(batch_id for batch_id in batch_ids if batch_id != writers[0])
    failure = outcomes[loser_id]
    if failure == "confirmed":
        assert states[loser_id].imported_count == 0
        assert states[loser_id].skipped_count == ROSTER_ROWS
    else:
        assert isinstance(failure, RosterFileError), repr(failure)
        assert re.search(r"批次 #\d+ .*(未写入任何记录|不能再次确认)", str(failure)), str(failure)
        assert states[loser_id].state == "preview"


def _counts_line(output: str) -> dict[str, int]:
    match = re.search(r"imported=(\d+) rejected=(\d+) skipped=(\d+)", output)
    return dict(zip(("imported", "rejected", "skipped"), map(int, match.groups()))) if match else {}


def test_simultaneous_cli_imports_one_set(tmp_path):
    """Two `flask roster import` processes of the same file at once leave one set of certificates."""
    url = create_scratch_database(tmp_path, "cli_race")
    try:
        env = subprocess_environment(url, tmp_path / "instance")
        flask = [sys.executable, "-m", "flask", "--app", "wsgi"]
        subprocess.run([*flask, "db", "upgrade"], env=env, cwd=PROJECT_ROOT, check=True, capture_output=True)
        command = [*flask, "roster", "import", str(ROSTER_DIR / ROSTER), "--exam", "二级建造师", "--kind", "证书"]
        processes = [
            subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        results = [process.communicate(timeout=180) + (process.returncode,) for process in processes]

        engine = sa.create_engine(url)
        with engine.connect() as connection:
            total = connection.scalar(sa.text("SELECT count(*) FROM certificate"))
            distinct = connection.scalar(sa.text("SELECT count(DISTINCT number) FROM certificate"))
            confirmed = connection.scalar(sa.text("SELECT count(*) FROM import_batch WHERE state = 'confirmed'"))
        engine.dispose()
    finally:
        drop_scratch_database(url)

    imported = [_counts_line(stdout).get("imported") for stdout, _stderr, _code in results]
    assert total == ROSTER_ROWS
    assert distinct == ROSTER_ROWS
    assert imported.count(ROSTER_ROWS) == 1, results
    for stdout, stderr, code in results:
        counts = _counts_line(stdout)
        if counts.get("imported") == ROSTER_ROWS:
            continue
        # The other process either lost the race at the unique index (exit 1, nothing written)
        # or started after the winner committed and skipped every row.
        assert (code == 1 and "未写入任何记录" in stderr) or counts == {"imported": 0, "rejected": 0, "skipped": ROSTER_ROWS}, (
            stdout,
            stderr,
        )
    assert confirmed in {1, 2}


# --- Revocations under lookup load --------------------------------------

REVOCATIONS = 40
LOOKUP_THREADS = 4
MAX_LOOKUPS_PER_THREAD = 5000
MAX_SECONDS = 60


def test_revocations_under_lookup_load(app, import_roster):
    import_roster(ROSTER, "二级建造师", "certificate")
    sample = _sample_certificates(app, 200, seed=7)
    targets = sample[:REVOCATIONS]
    stop = threading.Event()
    errors: list[str] = []
    lookups = [0] * LOOKUP_THREADS

    def hammer(index: int) -> None:
        client = app.test_client()
        chooser = random.Random(index)
        deadline = time.monotonic() + MAX_SECONDS
        while not stop.is_set() and lookups[index] < MAX_LOOKUPS_PER_THREAD and time.monotonic() < deadline:
            _id, number, name = chooser.choice(sample)
            response = client.get("/api/v1/verify", query_string={"number": number, "name": name})
            lookups[index] += 1
            if response.status_code != 200:
                errors.append(f"{number}: HTTP {response.status_code}")

    threads = [threading.Thread(target=hammer, args=(index,)) for index in range(LOOKUP_THREADS)]
    for thread in threads:
        thread.start()
    try:
        for certificate_id, _number, _name in targets:
            with app.app_context():
                records.revoke(db.session.get(Certificate, certificate_id), reason="并发测试撤销", actor="test")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=MAX_SECONDS + 10)

    with app.app_context():
        revoked = set(db.session.scalars(select(Certificate.id).where(Certificate.status == STATUS_REVOKED)))
    client = app.test_client()
    results = {
        number: client.get("/api/v1/verify", query_string={"number": number, "name": name}).get_json()["result"]
        for _id, number, name in targets
    }
    assert errors == []
    assert sum(lookups) > REVOCATIONS
    assert revoked == {certificate_id for certificate_id, _number, _name in targets}
    assert set(results.values()) == {"revoked"}


# --- SQLite settings and lookups during an import ------------------------


def test_sqlite_connection_settings(app):
    with app.app_context():
        if db.engine.dialect.name != "sqlite":
            pytest.skip("SQLite settings; this run uses PostgreSQL")
        with db.engine.connect() as connection:
            settings = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "busy_timeout", "synchronous")
            }
    assert settings["journal_mode"] == "wal"
    assert settings["busy_timeout"] == SQLITE_BUSY_TIMEOUT_MS
    assert settings["synchronous"] == 1  # NORMAL


LOOKUP_RATE = 50  # requests per second
MAX_IMPORT_SECONDS = 120
MAX_LOOKUPS = LOOKUP_RATE * MAX_IMPORT_SECONDS
MAX_OPEN_REQUESTS = 64


@pytest.fixture
def live_server(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


# Rows of the roster imported under lookups: the 5,600-row sample imported in about 0.3 s once imports
# wrote with executemany, too short for 20 lookups at LOOKUP_RATE.
LOOKUP_IMPORT_ROWS = 30_000


def test_lookups_during_import(app, import_roster, live_server, caplog, tmp_path):
    """About 50 lookups per second while a 30,000-row roster imports: every one returns 200, none hits a lock.

    Requests are sent open-loop (each on its own worker thread at its scheduled
    time), so a slow response does not slow the arrival rate down.
    """
    import_roster(ROSTER, "二级建造师", "certificate")
    sample = _sample_certificates(app, 100, seed=11)
    counts: dict[str, int] = {}

    big_roster = write_roster(tmp_path / "big.xlsx", LOOKUP_IMPORT_ROWS)

    def run_import() -> None:
        with app.app_context():
            plan, _batch = batches.import_file(big_roster, exam="二级建造师", kind="certificate", actor="test")
        counts.update(plan.counts)

    def look_up(number: str, name: str) -> tuple[int, str, float]:
        query = urllib.parse.urlencode({"number": number, "name": name})
        sent = time.monotonic()
        try:
            with urllib.request.urlopen(f"{live_server}/api/v1/verify?{query}", timeout=60) as response:
                result = json.load(response)["result"]
                return response.status, result, time.monotonic() - sent
        except Exception as error:  # noqa: BLE001 - every failure is collected and shown
            return 0, repr(error), time.monotonic() - sent

    chooser = random.Random(3)
    futures = []
    importer = threading.Thread(target=run_import)
    with ThreadPoolExecutor(max_workers=MAX_OPEN_REQUESTS) as pool:
        importer.start()
        started = time.monotonic()
        while importer.is_alive() and len(futures) < MAX_LOOKUPS:
            _id, number, name = chooser.choice(sample)
            futures.append(pool.submit(look_up, number, name))
            time.sleep(max(0.0, started + len(futures) / LOOKUP_RATE - time.monotonic()))
        importer.join(timeout=MAX_IMPORT_SECONDS)
        outcomes = [future.result() for future in futures]

    failures = [(status, result) for status, result, _seconds in outcomes if status != 200 or result != "valid"]
    slowest = max((seconds for _status, _result, seconds in outcomes), default=0.0)
    locked = [record.getMessage() for record in caplog.records if "locked" in record.getMessage().lower()]
    assert not importer.is_alive()
    assert counts.get("imported") == LOOKUP_IMPORT_ROWS
    assert len(outcomes) >= 20, "the import finished before enough lookups overlapped it"
    assert failures == [], f"slowest lookup {slowest:.2f} s"
    assert locked == []
