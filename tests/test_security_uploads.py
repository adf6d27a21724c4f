"""Uploads: ZIP bombs, macros, disguised files, safe XML parsing, generated names, and a 1,000-file fuzz run."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from app.domain import upload_checks
from app.domain.roster import RosterFileError
from app.domain.roster_read import open_roster
from bench.fuzz_rosters import check_file, mutated_files

from .conftest import ROSTER_DIR, csrf_token

SAMPLE = ROSTER_DIR / "二级建造师_问题数据样例.xlsx"
CSV_SAMPLE = ROSTER_DIR / "2023年度二级造价工程师考试合格人员.csv"


def rezip(extra: dict[str, bytes] | None = None, *, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """Copy the sample workbook, adding or replacing members."""
    out = io.BytesIO()
    with zipfile.ZipFile(SAMPLE) as source, zipfile.ZipFile(out, "w", compression) as archive:
        for name in source.namelist():
            if extra and name in extra:
                continue
            archive.writestr(name, source.read(name))
        for name, content in (extra or {}).items():
            archive.writestr(name, content)
    return out.getvalue()


def zip_bomb() -> bytes:
    return rezip({"xl/media/padding.bin": b"\0" * (64 * 1024 * 1024)})


def many_entries() -> bytes:
    return rezip({f"xl/media/{index}.bin": b"x" for index in range(upload_checks.MAX_ENTRIES + 1)})


def with_macros() -> bytes:
    return rezip({"xl/vbaProject.bin": b"\xd0\xcf\x11\xe0 fake VBA project"})


def billion_laughs() -> bytes:
    entities = '<!ENTITY a "aaaaaaaaaa">' + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8))
    xml = f'<?xml version="1.0"?><!DOCTYPE workbook [{entities}]><workbook>&i;</workbook>'.encode()
    return rezip({"xl/workbook.xml": xml})


def external_entity() -> bytes:
    xml = b'<?xml version="1.0"?><!DOCTYPE workbook [<!ENTITY e SYSTEM "file:///etc/passwd">]><workbook>&e;</workbook>'
    return rezip({"xl/workbook.xml": xml})


CASES = [
    ("zip-bomb", "名单.xlsx", zip_bomb, "压缩"),
    ("too-many-entries", "名单.xlsx", many_entries, "部件"),
    ("macros-renamed-xlsx", "名单.xlsx", with_macros, "宏"),
    ("xlsm-with-macros", "名单.xlsm", with_macros, "宏"),
    ("csv-renamed-xlsx", "名单.xlsx", lambda: CSV_SAMPLE.read_bytes(), "不是 Excel 工作簿"),
    ("old-xls", "名单.xls", lambda: b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 512, ".xls"),
    ("ole-renamed-xlsx", "名单.xlsx", lambda: b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 512, ".xls"),
    ("xlsx-renamed-csv", "名单.csv", lambda: SAMPLE.read_bytes(), "扩展名改为 .xlsx"),
    ("empty", "名单.xlsx", lambda: b"", "空的"),
    ("billion-laughs", "名单.xlsx", billion_laughs, "名单"),
    ("external-entity", "名单.xlsx", external_entity, "名单"),
]


@pytest.mark.parametrize("filename, build, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_hostile_file_rejected_with_message(tmp_path, filename, build, expected):
    path = tmp_path / filename
    path.write_bytes(build())

    with pytest.raises(RosterFileError) as caught:
        with open_roster(path) as table:
            list(table.rows())

    assert expected in str(caught.value)
    assert filename in str(caught.value)


def test_archive_check_runs_before_parsing(tmp_path, monkeypatch):
    from app.domain import roster_read

    opened = []
    monkeypatch.setattr(roster_read, "workbook_sheets", lambda path: opened.append(path))
    path = tmp_path / "名单.xlsx"
    path.write_bytes(zip_bomb())

    with pytest.raises(RosterFileError):
        open_roster(path)

    assert opened == []


def test_defusedxml_required_to_start(monkeypatch):
    from openpyxl import xml as openpyxl_xml

    from app import ConfigurationError, create_app

    monkeypatch.setattr(openpyxl_xml, "DEFUSEDXML", False)

    with pytest.raises(ConfigurationError, match="defusedxml"):
        create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": "sqlite://"})


def test_defusedxml_in_use():
    from openpyxl import xml as openpyxl_xml

    assert openpyxl_xml.DEFUSEDXML is True


def upload(client, filename: str, content: bytes):
    page = client.get("/admin/batches/new").get_data(as_text=True)
    data = {"file": (io.BytesIO(content), filename), "exam": "二级建造师", "kind": "certificate", "csrf_token": csrf_token(page)}
    return client.post("/admin/batches/new", data=data, content_type="multipart/form-data")


@pytest.mark.parametrize("case", ["zip-bomb", "macros-renamed-xlsx", "csv-renamed-xlsx", "old-xls"])
def test_hostile_upload_over_http(staff_client, case):
    _name, filename, build, expected = next(c for c in CASES if c[0] == case)

    response = upload(staff_client, filename, build())
    if response.status_code == 303:
        # The upload is stored as a batch; its page shows why it cannot be previewed.
        response = staff_client.get(response.headers["Location"])

    assert response.status_code == 200
    assert expected in response.get_data(as_text=True)


def test_upload_over_size_limit_refused(app, staff_client, monkeypatch):
    monkeypatch.setitem(app.config, "MAX_CONTENT_LENGTH", 10_000)

    response = upload(staff_client, "名单.xlsx", b"x" * 20_000)

    assert response.status_code == 413
    assert "过大" in response.get_data(as_text=True)


def test_upload_stored_under_generated_name(app, staff_client):
    from sqlalchemy import select

    from app.extensions import db
    from app.models import ImportBatch

    upload(staff_client, "../../etc/名单.xlsx", SAMPLE.read_bytes())

    with app.app_context():
        batch = db.session.scalar(select(ImportBatch))
        stored = batch.stored_name
    assert "/" not in stored
    assert ".." not in stored
    assert stored.endswith(".xlsx")
    assert len(stored) == 32 + len(".xlsx")
    assert (Path(app.instance_path) / "uploads" / stored).is_file()


# --- fuzz -------------------------------------------------------------------------

FUZZ_COUNT = 1_000
FUZZ_SEED = 20241204


def test_fuzzed_rosters_answered_clearly(app, tmp_path):
    """1,000 mutated sample rosters through the dry-run import: each imports or gets a RosterFileError message."""
    outcomes = {"imported": 0, "rejected": 0}
    unexpected = []
    with app.app_context():
        for name, data in mutated_files(FUZZ_COUNT, FUZZ_SEED):
            path = tmp_path / name
            path.write_bytes(data)
            try:
                outcomes[check_file(path)] += 1
            except Exception as error:  # noqa: BLE001 (any other exception is the failure being looked for)
                unexpected.append(f"{name}: {type(error).__name__}: {error}")
            path.unlink()

    assert unexpected == []
    assert outcomes["rejected"] > 0
    assert outcomes["imported"] > 0


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4, 5])
def test_fuzzed_roster_over_http(staff_client, index):
    name, data = list(mutated_files(index + 1, FUZZ_SEED + 1))[index]

    response = upload(staff_client, name, data)
    if response.status_code == 303:
        response = staff_client.get(response.headers["Location"])

    assert response.status_code == 200
