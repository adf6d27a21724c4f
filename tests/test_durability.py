"""Durability: an import killed with SIGKILL leaves all of its batch or none, and earlier rows unchanged.

Each iteration runs `flask --app wsgi roster import` on a copy of a
generated 30,000-row roster as a subprocess against a scratch database (an SQLite file,
or a PostgreSQL database beside TEST_DATABASE_URL's), kills it after a delay
drawn from a fixed seed, and checks the register.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import ROSTER_DIR
from tests.scratch_db import create_scratch_database, drop_scratch_database, subprocess_environment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from make_roster import write_roster  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EARLIER_ROSTER = "2024年度二级建造师考试合格人员名单.xlsx"
# A generated roster (bench/make_roster.py): the 5,600-row sample imports in
# about 0.3 s, so most kills would land after its commit.
BIG_ROSTER = "二级建造师_generated.xlsx"
BIG_ROSTER_ROWS = 30_000
SEED = 20240601
ITERATIONS = 4
# The import subprocess takes about 1.5 s to start and 1.5 to 2 s to import
# this roster on 2 cores, so kills land anywhere from start-up to just after the commit.
KILL_AFTER_SECONDS = (0.5, 4.5)
CERTIFICATE_COLUMNS = (
    "id, public_id, number, kind, exam_id, specialty_id, layout_id, level, name, gender, id_type, id_number, "
    "birth_month, approval_date, status, revoked_at, revoke_reason, version, batch_id"
)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")


def _flask(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "flask", "--app", "wsgi", *args]
    return subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, check=check, timeout=300)


def _register_state(engine: sa.Engine, up_to_id: int | None) -> tuple[int, str, int]:
    """Return the certificate count, a hash of the rows with id <= up_to_id, and the largest id."""
    with engine.connect() as connection:
        count = connection.scalar(sa.text("SELECT count(*) FROM certificate"))
        largest = connection.scalar(sa.text("SELECT coalesce(max(id), 0) FROM certificate"))
        limit = largest if up_to_id is None else up_to_id
        rows = connection.execute(
            sa.text(f"SELECT {CERTIFICATE_COLUMNS} FROM certificate WHERE id <= :limit ORDER BY id"), {"limit": limit}
        )
        digest = hashlib.sha256()
        for row in rows:
            digest.update(repr(tuple(row)).encode("utf-8"))
    return count, digest.hexdigest(), largest


def _orphans(engine: sa.Engine) -> int:
    """Count certificates whose batch is not confirmed: a half-applied batch would leave some."""
    with engine.connect() as connection:
        return connection.scalar(
            sa.text(
                "SELECT count(*) FROM certificate c JOIN import_batch b ON b.id = c.batch_id WHERE b.state <> 'confirmed'"
            )
        )


@pytest.fixture
def scratch(tmp_path):
    url = create_scratch_database(tmp_path, "durability")
    env = subprocess_environment(url, tmp_path / "instance")
    _flask(env, "db", "upgrade")
    _flask(env, "roster", "import", str(ROSTER_DIR / EARLIER_ROSTER), "--exam", "二级建造师", "--kind", "证书")
    engine = sa.create_engine(url)
    yield env, engine
    engine.dispose()
    drop_scratch_database(url)


def test_killed_import_all_or_nothing(scratch, tmp_path):
    env, engine = scratch
    earlier_count, earlier_hash, earlier_largest = _register_state(engine, None)
    chooser = random.Random(SEED)
    outcomes = []

    big_roster = write_roster(tmp_path / BIG_ROSTER, BIG_ROSTER_ROWS)

    for iteration in range(ITERATIONS):
        copy = tmp_path / f"copy-{iteration}-{BIG_ROSTER}"
        shutil.copyfile(big_roster, copy)
        before_count, _hash, _largest = _register_state(engine, None)
        delay = chooser.uniform(*KILL_AFTER_SECONDS)

        command = [sys.executable, "-m", "flask", "--app", "wsgi", "roster", "import", str(copy),
                   "--exam", "二级建造师", "--kind", "证书"]  # fmt: skip
        process = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

        count, hash_now, _largest = _register_state(engine, earlier_largest)
        outcomes.append((round(delay, 2), process.returncode, count - before_count))
        assert count in {before_count, before_count + BIG_ROSTER_ROWS}, outcomes
        assert count in {earlier_count, earlier_count + BIG_ROSTER_ROWS}, outcomes
        assert hash_now == earlier_hash, f"earlier rows changed after iteration {iteration}: {outcomes}"
        assert _orphans(engine) == 0, outcomes

    # The register stays usable: a normal import after the kills completes or skips every row.
    result = _flask(env, "roster", "import", str(big_roster), "--exam", "二级建造师", "--kind", "证书")
    final_count, final_hash, _largest = _register_state(engine, earlier_largest)
    assert "rejected=0" in result.stdout, result.stdout
    assert final_count == earlier_count + BIG_ROSTER_ROWS
    assert final_hash == earlier_hash
