"""Uploads: ZIP bombs, macros, disguised files, safe XML parsing, generated names, and a 1,000-file fuzz run."""

from __future__ import annotations

import io
import re
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


# --- per-file limits ------------------------------------------------------------------


def post_seal(client, seal_id: int, image: bytes, filename: str = "印章.png"):
    page = client.get("/admin/seals").get_data(as_text=True)
    data = {f"seal{seal_id}-code": "5000000000101", f"seal{seal_id}-image": (io.BytesIO(image), filename),
            "csrf_token": csrf_token(page)}
    return client.post(f"/admin/seals/{seal_id}", data=data, content_type="multipart/form-data")


@pytest.mark.parametrize(
    ("size", "refused", "message"),
    [
        (10 * 1024 + 1, True, "名单文件「大名单.xlsx」有 10 KB，超过名单文件的上限 10 KB；请把名单拆成几个文件分别上传"),
        (20 * 1024, True, "名单文件「大名单.xlsx」有 20 KB，超过名单文件的上限 10 KB"),
        (10 * 1024, False, "内容不是 Excel 工作簿"),
    ],
    ids=["one-byte-over", "double", "at-limit"],
)
def test_roster_over_file_limit_refused(app, staff_client, monkeypatch, size, refused, message):
    from sqlalchemy import func, select

    from app.extensions import db
    from app.models import ImportBatch

    monkeypatch.setitem(app.config, "ROSTER_UPLOAD_MAX_BYTES", 10 * 1024)
    uploads = Path(app.instance_path) / "uploads"
    before = set(uploads.iterdir()) if uploads.is_dir() else set()

    response = upload(staff_client, "大名单.xlsx", b"x" * size)
    if response.status_code == 303:
        response = staff_client.get(response.headers["Location"])
    html = response.get_data(as_text=True)
    with app.app_context():
        batches = db.session.scalar(select(func.count(ImportBatch.id)))
    after = set(uploads.iterdir()) if uploads.is_dir() else set()

    assert response.status_code == 200
    assert message in html
    assert ("超过名单文件的上限" in html) is refused
    assert batches == (0 if refused else 1)
    assert (after == before) is refused


@pytest.mark.parametrize(
    ("size", "refused", "message"),
    [
        (1024 + 1, True, "印章图片「印章.png」有 1 KB，超过印章图片的上限 1 KB；请压缩后再上传"),
        (1024, False, "无法读取"),
    ],
    ids=["over", "at-limit"],
)
def test_seal_over_file_limit_refused(app, staff_client, monkeypatch, size, refused, message):
    from sqlalchemy import select

    from app.extensions import db
    from app.models import Seal

    monkeypatch.setitem(app.config, "SEAL_UPLOAD_MAX_BYTES", 1024)
    with app.app_context():
        seal_id, image_path = db.session.execute(select(Seal.id, Seal.image_path).order_by(Seal.id)).first()

    response = post_seal(staff_client, seal_id, b"\x89PNG" + b"x" * (size - 4))
    html = staff_client.get("/admin/seals").get_data(as_text=True)
    with app.app_context():
        stored = db.session.scalar(select(Seal.image_path).where(Seal.id == seal_id))

    assert response.status_code == 303
    assert message in html
    assert ("超过印章图片的上限" in html) is refused
    assert stored == image_path


# --- Sheet extent: one stray cell far away -------------------------------------

ROSTER_HEADER = ["序号", "姓名", "性别", "身份证号", "出生年月", "专业", "批准日期", "编号"]
ROSTER_ROW = [1, "韩一", "男", "500103199001011232", "1990.01", "土木建筑工程", "2023/12/1", "202396000001"]


def far_cell_workbook(path: Path, address: str) -> Path:
    """Write a one-row roster plus one cell at `address`, as a stray keystroke far down or right leaves it."""
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    sheet.append(ROSTER_HEADER)
    sheet.append(ROSTER_ROW)
    sheet[address] = "x"
    workbook.save(path)
    return path


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("XFD1048576", "1048576 行 × 16384 列"),  # calamine would allocate about 550 GB
        ("J1048576", "1048576 行 × 10 列"),
        ("A1048576", "1048576 行 × 8 列"),
        ("XFD1", "2 行 × 16384 列"),
        ("CV70000", "70000 行 × 100 列"),  # within the row and column bounds, but 7,000,000 cells
    ],
)
def test_far_cell_rejected_before_loading(tmp_path, address, expected):
    path = far_cell_workbook(tmp_path / "名单-far.xlsx", address)

    with pytest.raises(RosterFileError) as caught:
        open_roster(path)

    message = str(caught.value)
    assert "名单-far.xlsx" in message
    assert f"位于 {address} 的单元格" in message
    assert expected in message
    assert "最多 300000 行、100 列" in message


def test_far_cell_within_limits_read(tmp_path):
    path = far_cell_workbook(tmp_path / "名单.xlsx", "Z500")

    with open_roster(path) as table:
        rows = list(table.rows())

    assert rows[0].cells[1] == "韩一"
    assert rows[-1].row == 500


def test_far_cell_limits_configurable(tmp_path):
    from app.domain.roster_read import SheetLimits

    path = far_cell_workbook(tmp_path / "名单.xlsx", "A50")

    with pytest.raises(RosterFileError, match="最多 20 行"):
        open_roster(path, limits=SheetLimits(rows=20, columns=100, cells=10_000))


def test_dimension_beyond_limits_rejected(tmp_path):
    source = far_cell_workbook(tmp_path / "source.xlsx", "H2")
    out = io.BytesIO()
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in original.namelist():
            content = original.read(name)
            if name == "xl/worksheets/sheet1.xml":
                content = re.sub(rb'<dimension ref="[^"]+"', b'<dimension ref="A1:XFD1048576"', content)
            archive.writestr(name, content)
    path = tmp_path / "名单.xlsx"
    path.write_bytes(out.getvalue())

    with pytest.raises(RosterFileError) as caught:
        open_roster(path)

    assert "XFD1048576" in str(caught.value)
    assert "dimension" in str(caught.value)


def test_scan_reports_extent(tmp_path):
    from app.domain.sheet_scan import scan_sheet

    path = far_cell_workbook(tmp_path / "名单.xlsx", "J1048576")

    flags = scan_sheet(path, "xl/worksheets/sheet1.xml")

    assert (flags.max_row, flags.max_column) == (1048576, 9)
    assert flags.max_row_cell == "J1048576"
    assert flags.dimension == (1048576, 9)


# --- CSV: width, repeated columns, a quote left open ---------------------------


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


CSV_HEADER = ",".join(ROSTER_HEADER)
CSV_ROWS = [
    "1,韩一,男,500103199001011232,1990.01,土木建筑工程,2023/12/1,202395041000",
    "2,韩二,男,500109196409269696,1964.09,土木建筑工程,2023/12/1,202395041001",
]


@pytest.mark.parametrize(
    ("case", "text", "expected"),
    [
        ("wide-header", CSV_HEADER + "," + ",".join(f"c{i}" for i in range(20_000)) + "\n" + CSV_ROWS[0] + "\n",
         ["第 1 行有 20008 列", "最多 100 列"]),
        ("wide-row", CSV_HEADER + "\n" + CSV_ROWS[0] + ",x" * 200 + "\n",
         ["第 2 行有 208 列", "最多 100 列"]),
        ("repeated-name", CSV_HEADER + ",姓名\n" + CSV_ROWS[0] + ",韩零\n",
         ["第 B 列「姓名」和第 I 列「姓名」是同一列名"]),
        ("synonym-of-id", CSV_HEADER + ",证件号码\n" + CSV_ROWS[0] + ",500109196409269696\n",
         ["第 D 列「身份证号」和第 I 列「证件号码」是同一列名"]),
        ("quote-open-last-row", CSV_HEADER + "\n" + CSV_ROWS[0] + '\n3,"韩四,男,500103199001011232,1990.01,土木建筑工程,2023/12/1,202395999999\n',
         ["第 3 行（文件第 3 行）第 2 列", "以双引号开始但没有对应的结束双引号", "直到文件末尾"]),
        ("quote-open-last-row-no-newline", CSV_HEADER + "\n" + CSV_ROWS[0] + '\n3,"韩四,男,500103199001011232,1990.01',
         ["第 3 行（文件第 3 行）第 2 列", "直到文件末尾"]),
        ("quote-open-mid-file", CSV_HEADER + '\n1,"韩一,男,500103199001011232\n' + CSV_ROWS[1] + "\n",
         ["第 2 行（文件第 2 行）第 2 列", "后面第 3 行被并进了这一个单元格"]),
    ],
)
def test_csv_defect_rejected_with_message(tmp_path, case, text, expected):
    path = write_csv(tmp_path / "名单.csv", text)

    with pytest.raises(RosterFileError) as caught:
        with open_roster(path) as table:
            list(table.rows())

    for part in expected:
        assert part in str(caught.value)


@pytest.mark.parametrize(
    ("case", "last_row"),
    [
        ("quoted-cell-closed", '3,"韩三",男,500103199001011232,1990.01,"土木建筑工程,造价",2023/12/1,202395041002\n'),
        ("doubled-quote", '3,"韩""三",男,500103199001011232,1990.01,土木建筑工程,2023/12/1,202395041002'),
        ("quote-inside-cell", '3,韩"三,男,500103199001011232,1990.01,土木建筑工程,2023/12/1,202395041002\n'),
    ],
)
def test_csv_closed_quotes_read(tmp_path, case, last_row):
    path = write_csv(tmp_path / "名单.csv", "\n".join([CSV_HEADER, *CSV_ROWS, last_row]))

    with open_roster(path) as table:
        rows = list(table.rows())

    assert [row.row for row in rows] == [2, 3, 4]
    assert rows[-1].cells[7] == "202395041002"


@pytest.mark.parametrize("as_bytes", [True, False], ids=["web-upload", "command-line-file"])
def test_stored_roster_private(app, tmp_path, as_bytes):
    """A stored roster is readable by the service's user only, even under a permissive umask such as 022."""
    import os

    from app.services import batches

    source = tmp_path / "名单.csv"
    source.write_bytes("姓名,证件号码\n".encode())
    old_umask = os.umask(0o022)
    try:
        with app.app_context():
            (Path(app.instance_path) / "uploads").mkdir(exist_ok=True)
            (Path(app.instance_path) / "uploads").chmod(0o755)
            stored = batches.store_upload(source.read_bytes() if as_bytes else source, source.name)
            path = batches.upload_dir() / stored
    finally:
        os.umask(old_umask)

    assert path.read_bytes() == source.read_bytes()
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    path.unlink()
