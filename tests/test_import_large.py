"""A 20,000-row synthetic roster through `roster import`: progress on stderr, every row stored."""

from __future__ import annotations

import sys
from pathlib import Path

from sqlalchemy import func, select

from app.extensions import db
from app.models import BatchRow, Certificate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from make_roster import write_roster  # noqa: E402

ROWS = 20_000


def test_large_import_reports_progress(app, tmp_path):
    roster = write_roster(tmp_path / "large.xlsx", ROWS)
    runner = app.test_cli_runner()

    result = runner.invoke(args=["roster", "import", str(roster), "--exam", "二级建造师", "--kind", "证书"])

    assert result.exit_code == 0, result.output
    assert f"imported={ROWS}" in result.stdout
    assert f"/ {ROWS} 行" in result.stderr
    with app.app_context():
        assert db.session.scalar(select(func.count(Certificate.id))) == ROWS
        assert db.session.scalar(select(func.count(BatchRow.id))) == ROWS
