"""The import's fast paths: bulk DB-API inserts, the roster worker process and the sheet extent scan.

Certificates and batch rows are written with one executemany per chunk
outside SQLAlchemy's per-row processing, so these tests read the rows back
through the ORM and the lookups. The worker process must yield exactly the
outcomes of the in-process reader, and the extent scan the used range of a
plain scan over every cell reference.
"""

from __future__ import annotations

import pickle
import random
import re
import sys
from datetime import date
from pathlib import Path

import pytest
from openpyxl import Workbook
from sqlalchemy import select, text

from app.domain import roster, sheet_scan
from app.domain.roster import RosterFileError, iter_outcomes, iter_outcomes_in_worker
from app.domain.sheet_scan import FormulaText, SheetFlags
from app.extensions import db
from app.id_numbers import id_hash
from app.models import BatchRow, Certificate, ImportBatch
from app.services import batches, issuing, lookup
from app.services.catalogue import load_catalogue
from tests.conftest import ROSTER_DIR

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from make_roster import write_roster  # noqa: E402

ROWS = 300


def _import(path: Path):
    return batches.import_file(path, exam="二级建造师", kind="certificate", actor="tester")


def _source_rows(path: Path) -> list[dict]:
    with roster.open_roster(path) as table:
        columns = table.header.columns
        return [
            {"name": row.cells[columns["name"]], "id_number": row.cells[columns["id_number"]],
             "number": row.cells[columns["number"]]}
            for row in table.rows()
        ]  # fmt: skip


# --- Bulk inserts read back through the ORM -------------------------------


def test_bulk_certificates_read_through_orm(app, tmp_path):
    path = write_roster(tmp_path / "fast.xlsx", ROWS)
    source = _source_rows(path)

    with app.app_context():
        plan, batch = _import(path)
        assert plan.counts["imported"] == ROWS
        certificates = {c.number: c for c in db.session.scalars(select(Certificate))}

        assert len(certificates) == ROWS
        for row in source:
            certificate = certificates[row["number"]]
            assert certificate.name == row["name"]
            assert certificate.id_number == row["id_number"]
            assert certificate.id_number_hash == id_hash(row["id_number"])
            assert certificate.batch_id == batch.id
            assert certificate.status == "valid"
            assert certificate.version == 1
            assert isinstance(certificate.birth_month, date)
            assert certificate.created_at is not None
            assert certificate.exam.name == "二级建造师"


def test_bulk_certificates_encrypted_at_rest(app, tmp_path):
    path = write_roster(tmp_path / "fast.xlsx", 20)
    source = _source_rows(path)

    with app.app_context():
        _import(path)
        stored = db.session.execute(text("SELECT number, id_number FROM certificate")).all()

    by_number = dict(stored)
    for row in source:
        assert by_number[row["number"]].startswith("v2:")
        assert row["id_number"] not in by_number[row["number"]]


def test_bulk_certificates_found_by_lookups(app, tmp_path):
    path = write_roster(tmp_path / "fast.xlsx", 20)
    first = _source_rows(path)[0]

    with app.app_context():
        _import(path)
        mine = lookup.certificates_of(first["name"], first["id_number"])
        verified = lookup.verify(first["number"], first["name"])

    assert [certificate.number for certificate in mine] == [first["number"]]
    assert verified.result == "valid"
    assert verified.certificate.number == first["number"]


def test_bulk_certificates_holder_registration(app, client, tmp_path):
    path = write_roster(tmp_path / "fast.xlsx", 20)
    first = _source_rows(path)[0]
    with app.app_context():
        _import(path)
        from app.services import accounts

        holder = accounts.register_holder(
            name=first["name"], id_type="居民身份证", id_number=first["id_number"], phone="13800138000",
            password="correct horse battery 9",
        )  # fmt: skip
        holder_id = holder.id
        found = accounts.find_holder(first["id_number"])
        mine = lookup.certificates_of(found.name, found.id_number)

    assert found.id == holder_id
    assert [certificate.number for certificate in mine] == [first["number"]]


def test_bulk_batch_rows_keep_rejected_cells(app, tmp_path):
    first = write_roster(tmp_path / "first.xlsx", 3, seed=1)
    second = write_roster(tmp_path / "second.xlsx", 3, seed=2)  # same numbers, other people

    with app.app_context():
        _import(first)
        plan, batch = _import(second)
        rows = db.session.scalars(select(BatchRow).where(BatchRow.batch_id == batch.id).order_by(BatchRow.row)).all()

        assert plan.counts["rejected"] == 3
        for row in rows:
            assert row.outcome == "rejected"
            assert row.cells[7] == row.number  # 证书编号 column, decrypted from batch_row.cells
            assert "已属于证书库中另一人的记录" in row.reason
            assert row.applied is False


def test_web_preview_rows_confirmed(app, tmp_path):
    # The web flow keeps each record in batch_row and inserts the certificates at confirm.
    path = write_roster(tmp_path / "web.xlsx", 30)
    source = _source_rows(path)
    with app.app_context():
        stored_name = batches.store_upload(path, path.name)
        batch = batches.create_batch(stored_name, path.name, exam="二级建造师", kind="certificate", actor="tester")
        batches.preview(batch)
        record = db.session.scalar(select(BatchRow.record).where(BatchRow.batch_id == batch.id).order_by(BatchRow.row))
        batches.confirm(batch)
        certificate = db.session.scalar(select(Certificate).where(Certificate.number == source[0]["number"]))

        assert record["id_number"] == source[0]["id_number"]
        assert certificate.id_number == source[0]["id_number"]
        assert certificate.id_number_hash == id_hash(source[0]["id_number"])
        assert db.session.get(ImportBatch, batch.id).state == "confirmed"


# --- Worker process -------------------------------------------------------


def _outcomes(stream) -> list:
    try:
        return list(stream)
    finally:
        stream.close()


def _roster_with_formula_and_hidden_rows(path: Path) -> Path:
    source = write_roster(path.with_name("source.xlsx"), 12)
    workbook = Workbook()
    sheet = workbook.active
    with roster.open_roster(source) as table:
        sheet.append(list(table.header.labels))
        for row in table.rows():
            sheet.append(list(row.cells))
    sheet["B4"] = "=CONCATENATE(\"张\",\"三\")"  # a formula without a saved value
    sheet.row_dimensions[6].hidden = True
    sheet.append([None] * 8)
    sheet.append(["制表人：陈某某"])
    sheet.append(list(sheet.iter_rows(min_row=3, max_row=3, values_only=True))[0])  # an exact duplicate
    workbook.save(path)
    return path


@pytest.mark.parametrize(
    "filename",
    ["二级建造师_问题数据样例.xlsx", "2024年度二级建造师考试合格人员名单.xlsx", "2023年度二级造价工程师考试合格人员.csv"],
)
def test_worker_outcomes_match_in_process(app, filename):
    path = ROSTER_DIR / filename
    options = {"exam": "二级建造师" if "建造师" in filename else "二级造价工程师", "kind": "certificate",
               "today": date(2025, 1, 1)}  # fmt: skip
    with app.app_context():
        catalogue = load_catalogue()

    in_process = iter_outcomes(path, catalogue, **options)
    header, notices, total = in_process.header, in_process.notices, in_process.total
    expected = _outcomes(in_process)
    worker = iter_outcomes_in_worker(path, catalogue, **options)
    worker_header, worker_notices, worker_total = worker.header, worker.notices, worker.total
    actual = _outcomes(worker)

    assert len(actual) > 0
    assert actual == expected
    assert worker_header == header
    assert worker_notices == notices
    assert worker_total == total


def test_worker_keeps_formulas_and_hidden_rows(app, tmp_path):
    path = _roster_with_formula_and_hidden_rows(tmp_path / "flags.xlsx")
    with app.app_context():
        catalogue = load_catalogue()

    expected = _outcomes(iter_outcomes(path, catalogue, exam="二级建造师", kind="certificate"))
    actual = _outcomes(iter_outcomes_in_worker(path, catalogue, exam="二级建造师", kind="certificate"))

    assert actual == expected
    outcomes = {outcome.row: outcome for outcome in actual}
    assert outcomes[4].outcome == "rejected"
    assert "公式" in outcomes[4].reason
    assert isinstance(outcomes[4].cells[1], FormulaText)
    assert outcomes[6].hidden == "hidden"
    assert {outcome.outcome for outcome in actual} == {"imported", "rejected", "skipped"}


def test_worker_raises_file_error(app, tmp_path):
    path = tmp_path / "名单.xlsx"
    path.write_text("序号,姓名\n", encoding="utf-8")
    with app.app_context():
        catalogue = load_catalogue()

    with pytest.raises(RosterFileError) as in_process:
        iter_outcomes(path, catalogue, exam="二级建造师", kind="certificate")
    with pytest.raises(RosterFileError) as worker:
        iter_outcomes_in_worker(path, catalogue, exam="二级建造师", kind="certificate")

    assert worker.value.reason == in_process.value.reason
    assert "名单.xlsx" in worker.value.reason


def test_worker_closed_early_stops(app, tmp_path):
    path = write_roster(tmp_path / "big.xlsx", 5_000)
    with app.app_context():
        catalogue = load_catalogue()

    stream = iter_outcomes_in_worker(path, catalogue, exam="二级建造师", kind="certificate")
    first = next(stream)
    stream.close()

    assert first.row == 2
    assert not stream._process.is_alive()


def test_cli_import_through_worker(app, tmp_path, monkeypatch):
    path = write_roster(tmp_path / "worker.xlsx", ROWS)
    source = _source_rows(path)
    started = []
    real_worker = issuing.iter_outcomes_in_worker

    def spy(*args, **kwargs):
        started.append(args[0])
        return real_worker(*args, **kwargs)

    monkeypatch.setitem(app.config, "IMPORT_WORKER_MIN_BYTES", 0)
    # pytest may hold idle helper threads; the worker itself needs none of their locks.
    monkeypatch.setattr(issuing, "worker_available", lambda: True)
    monkeypatch.setattr(issuing, "iter_outcomes_in_worker", spy)

    with app.app_context():
        plan, batch = _import(path)
        numbers = set(db.session.scalars(select(Certificate.number)))
        sample = db.session.scalar(select(Certificate).where(Certificate.number == source[-1]["number"]))

        assert started
        assert plan.counts == {"imported": ROWS, "rejected": 0, "skipped": 0, "changed": 0}
        assert numbers == {row["number"] for row in source}
        assert sample.id_number == source[-1]["id_number"]
        assert sample.id_number_hash == id_hash(source[-1]["id_number"])
        assert batches.batch_report_csv(batch).count(",imported,") == ROWS


def test_formula_text_pickles():
    formula = FormulaText("SUM(A1:A3)", "B5", False)

    copy = pickle.loads(pickle.dumps(formula))

    assert copy == "=SUM(A1:A3)"
    assert (copy.ref, copy.cached) == ("B5", False)
    assert isinstance(copy, FormulaText)


# --- Sheet extent -----------------------------------------------------------


_ANY_REFERENCE = re.compile(rb'\sr="([A-Z]+)(\d+)"')


def _plain_extent(chunks: list[bytes]) -> tuple[int, int]:
    """Return (max row, max 0-based column) over every cell reference, the slow and obvious way."""
    references = [found for chunk in chunks for found in _ANY_REFERENCE.findall(chunk)]
    if not references:
        return 0, -1
    return max(int(row) for _letters, row in references), max(sheet_scan._column_index(letters) for letters, _row in references)


def _scan_extent(chunks: list[bytes]) -> SheetFlags:
    flags = SheetFlags()
    for chunk in chunks:
        sheet_scan._record_extent(chunk, flags)
    return flags


def test_extent_matches_plain_scan():
    rng = random.Random(20241205)
    for _case in range(500):
        cells = []
        for _cell in range(rng.randint(0, 25)):
            column = rng.choice([rng.randint(0, 9), rng.randint(0, 800), 16383])
            row = rng.choice([rng.randint(1, 60), rng.randint(1, 1_048_576), 1_048_576])
            separator = rng.choice([" ", "\n", "\t"])
            cells.append(f'<c{separator}r="{sheet_scan.column_letters(column)}{row}" t="n"><v>1</v></c>'.encode())
            if rng.random() < 0.2:
                cells.append(f'<row r="{rng.randint(1, 3_000_000)}" spans="1:8">'.encode())
        cut = rng.randint(0, len(cells))
        chunks = [b"".join(cells[:cut]), b"".join(cells[cut:])]

        flags = _scan_extent(chunks)

        assert (flags.max_row, flags.max_column) == _plain_extent(chunks), chunks
        if flags.max_row:
            assert flags.max_row_cell.endswith(str(flags.max_row))
            assert f'r="{flags.max_row_cell}"'.encode() in b"".join(chunks)
        if flags.max_column >= 0:
            assert flags.max_column_cell.startswith(sheet_scan.column_letters(flags.max_column))


def test_extent_ignores_non_cell_attributes():
    chunk = b'<row r="900"><c r="B7"><v>1</v></c><x spr="ZZ99"/><c r="C8"><v>2</v></c></row>'

    flags = _scan_extent([chunk])

    assert (flags.max_row, flags.max_column) == (8, 2)
    assert (flags.max_row_cell, flags.max_column_cell) == ("C8", "C8")


# --- hostile sheets: the used-range search stays linear -----------------------------------

def _one_row_sheet(tmp_path, cells: str):
    import zipfile

    path = tmp_path / "hostile.xlsx"
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
        f'<row r="1">{cells}</row></sheetData></worksheet>'
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/worksheets/sheet1.xml", xml)
    return path


def _patterns_compiled() -> int:
    from app.domain import sheet_scan

    return sheet_scan._rows_beyond.cache_info().misses + sheet_scan._columns_beyond.cache_info().misses


def test_scan_ascending_rows_then_low_cell(tmp_path):
    # Each new maximum used to compile a pattern: 30,000 of them for this sheet.
    from app.domain import sheet_scan

    path = _one_row_sheet(tmp_path, "".join(f'<c r="A{row}"/>' for row in range(2, 30_002)) + '<c r="A1"/>')
    sheet_scan._rows_beyond.cache_clear()
    sheet_scan._columns_beyond.cache_clear()

    flags = sheet_scan.scan_sheet(path, "xl/worksheets/sheet1.xml")

    assert flags.max_row == 30_001
    assert flags.max_row_cell == "A30001"
    assert _patterns_compiled() <= 4 * sheet_scan.MAX_WIDENINGS_PER_CHUNK


def test_scan_widest_row(tmp_path):
    from app.domain import sheet_scan

    cells = "".join(f'<c r="{sheet_scan.column_letters(column)}1"/>' for column in range(16_384))
    path = _one_row_sheet(tmp_path, cells)
    sheet_scan._rows_beyond.cache_clear()
    sheet_scan._columns_beyond.cache_clear()

    flags = sheet_scan.scan_sheet(path, "xl/worksheets/sheet1.xml")

    assert flags.max_column == 16_383
    assert flags.max_column_cell == "XFD1"
    assert _patterns_compiled() <= 4 * sheet_scan.MAX_WIDENINGS_PER_CHUNK
