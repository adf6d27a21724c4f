"""Large and command-line imports: progress, every row stored, and the direct certificate writes of `roster import`."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from openpyxl import load_workbook
from sqlalchemy import func, select

from app.domain.roster import RosterFileError
from app.extensions import db
from app.models import BatchRow, Certificate, ImportBatch
from app.services import batches, issuing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from make_roster import write_roster  # noqa: E402

ROWS = 20_000
SMALL = 200


def cli_import(app, path: Path, *extra: str):
    runner = app.test_cli_runner()
    return runner.invoke(args=["roster", "import", str(path), "--exam", "二级建造师", "--kind", "证书", *extra])


def count(app, column, *conditions) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count(column)).where(*conditions))


def test_large_import_reports_progress(app, tmp_path):
    roster = write_roster(tmp_path / "large.xlsx", ROWS)

    result = cli_import(app, roster)

    assert result.exit_code == 0, result.output
    assert f"imported={ROWS}" in result.stdout
    assert f"/ {ROWS} 行" in result.stderr
    assert count(app, Certificate.id) == ROWS
    assert count(app, BatchRow.id) == ROWS


def test_cli_rows_written_once(app, tmp_path):
    roster = write_roster(tmp_path / "small.xlsx", SMALL)

    result = cli_import(app, roster)

    assert result.exit_code == 0, result.output
    # Each certificate went straight in, so its batch_row keeps no copy of the record.
    assert count(app, BatchRow.id, BatchRow.outcome == "imported") == SMALL
    assert count(app, BatchRow.id, BatchRow.record.is_not(None)) == 0
    with app.app_context():
        batch = db.session.scalar(select(ImportBatch))
        report = batches.batch_report_csv(batch)
        assert batch.state == "confirmed"
        assert batch.imported_count == SMALL
    assert report.count("\n") == SMALL + 1
    assert report.splitlines()[1] == "2,imported,"


def test_cli_reimport_adds_nothing(app, tmp_path):
    roster = write_roster(tmp_path / "small.xlsx", SMALL)
    assert cli_import(app, roster).exit_code == 0

    result = cli_import(app, roster)

    assert result.exit_code == 0, result.output
    assert f"skipped={SMALL}" in result.stdout
    assert count(app, Certificate.id) == SMALL


def test_cli_number_of_other_person_rejected(app, tmp_path):
    first = write_roster(tmp_path / "first.xlsx", SMALL, seed=1)
    assert cli_import(app, first).exit_code == 0
    # Same certificate numbers (B2024 + row), other people: every row belongs to someone else.
    second = write_roster(tmp_path / "second.xlsx", 3, seed=2)

    result = cli_import(app, second)

    assert result.exit_code == 0, result.output
    assert "rejected=3" in result.stdout
    assert count(app, Certificate.id) == SMALL
    with app.app_context():
        batch = db.session.scalars(select(ImportBatch).order_by(ImportBatch.id.desc())).first()
        sheet = load_workbook(io.BytesIO(batches.rejected_xlsx(batch))).active
        rows = list(sheet.iter_rows(values_only=True))
    assert rows[0][-1] == "错误原因"
    assert len(rows) == 4
    assert "已属于证书库中另一人的记录" in rows[1][-1]


def test_cli_duplicate_number_in_register_rolls_back(app, tmp_path, monkeypatch):
    first = write_roster(tmp_path / "first.xlsx", 3, seed=1)
    assert cli_import(app, first).exit_code == 0
    second = write_roster(tmp_path / "second.xlsx", SMALL, seed=1)
    # As if another process stored these numbers after the register was read: the unique index must stop the batch.
    monkeypatch.setattr(issuing, "_existing_by_number", lambda numbers: {})

    with app.app_context():
        with pytest.raises(RosterFileError) as raised:
            batches.import_file(second, exam="二级建造师", kind="certificate", actor="tester")

    assert "已全部撤回、未写入任何记录" in raised.value.reason
    assert count(app, Certificate.id) == 3
    assert count(app, ImportBatch.id) == 1
