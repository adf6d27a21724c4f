"""Roster reading and row validation, on the sample rosters and on small files made here."""

from __future__ import annotations

import csv
import functools
import unicodedata
import zipfile
from collections import Counter
from datetime import date, datetime
from pathlib import Path

import pytest
from openpyxl import Workbook

from app.domain import fonts, glyph_coverage, sheet_scan
from app.domain import roster as roster_module
from app.domain.catalogue import KIND_CERTIFICATE, KIND_PASS
from app.domain.identity import ID_PASSPORT, ID_RESIDENCE_PERMIT, ID_RESIDENT, check_character
from app.domain.roster import (
    IMPORTED,
    REJECTED,
    SKIPPED,
    FieldError,
    RosterFileError,
    RowOutcome,
    check_roster,
    guess_from_filename,
    id_cell_text,
    iter_outcomes,
    normalise_name,
    parse_identity,
)
from app.domain.seed import build_catalogue

ROSTER_DIR = Path(__file__).parent / "data" / "rosters"
FAULTY = ROSTER_DIR / "二级建造师_问题数据样例.xlsx"
TODAY = date(2026, 12, 4)
CATALOGUE = build_catalogue()

HEADER = ["序号", "姓名", "性别", "证件号码", "出生年月", "专业名称", "批准日期", "证书编号"]
GOOD = {
    "序号": 1,
    "姓名": "张伟",
    "性别": "男",
    "证件号码": "500103199001011232",
    "出生年月": "1990-01",
    "专业名称": "建筑工程",
    "批准日期": "2024-10-18",
    "证书编号": "202421900001",
}


# --- helpers --------------------------------------------------------------


def write_xlsx(path: Path, rows: list[list[object]]) -> Path:
    workbook = Workbook()
    sheet = workbook.active
    for row in rows:
        sheet.append(row)
    workbook.save(path)
    return path


def write_csv(path: Path, rows: list[list[object]], encoding: str = "utf-8") -> Path:
    with path.open("w", encoding=encoding, newline="") as stream:
        csv.writer(stream, lineterminator="\r\n").writerows(rows)
    return path


def table(cells: dict[str, object], header: list[str] | None = None) -> list[list[object]]:
    """Return a header and one row, the row being GOOD with `cells` laid over it."""
    values = {**GOOD, **cells}
    columns = header or HEADER + [name for name in cells if name not in HEADER]
    return [columns, [values.get(name) for name in columns]]


def one_row(tmp_path: Path, cells: dict[str, object], **options: object) -> RowOutcome:
    path = write_xlsx(tmp_path / "roster.xlsx", table(cells))
    options = {"exam": "二级建造师", "kind": KIND_CERTIFICATE, "today": TODAY, **options}
    outcomes = check_roster(path, CATALOGUE, **options)
    assert len(outcomes) == 1
    return outcomes[0]


def with_check(first17: str) -> str:
    return first17 + check_character(first17)


# --- the faulty sample roster ------------------------------------------------


def read_expected() -> list[dict[str, str]]:
    path = ROSTER_DIR / "二级建造师_问题数据样例.expected.csv"
    with path.open(encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream))


@functools.cache
def faulty_outcomes() -> dict[int, RowOutcome]:
    outcomes = check_roster(FAULTY, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE, today=TODAY)
    return {outcome.row: outcome for outcome in outcomes}


EXPECTED = read_expected()


@pytest.mark.parametrize("expected", EXPECTED, ids=[f"row{e['row']}-{e['outcome']}" for e in EXPECTED])
def test_faulty_sample_row(expected: dict[str, str]) -> None:
    outcome = faulty_outcomes()[int(expected["row"])]
    assert outcome.outcome == expected["outcome"], outcome.reason
    if expected["outcome"] == IMPORTED:
        assert outcome.record is not None
        assert outcome.record.name == expected["name"]
        assert outcome.record.id_number == expected["id_number"]
    else:
        assert outcome.record is None
        assert outcome.reason


def test_faulty_sample_covers_every_row() -> None:
    assert sorted(faulty_outcomes()) == [int(e["row"]) for e in EXPECTED]


@pytest.mark.parametrize(
    ("row", "reason_parts"),
    [
        (4, ["在 Excel 中存成了数字", "丢失精度", "文本格式"]),
        (9, ["性别「女」", "500109198304200739", "应为男"]),
        (10, ["出生年月「1987-06」", "1986-06"]),
        (13, ["批准日期", "2031-01-01"]),
        (14, ["与第 3 行完全相同，已跳过"]),
        (15, ["证书编号「202421900001」已在第 3 行用于另一人"]),
        (18, ["专业名称「通信与广电工程」"]),
        (23, ["姓名", "公式"]),
        (28, ["制表人"]),
    ],
)
def test_faulty_sample_reason(row: int, reason_parts: list[str]) -> None:
    reason = faulty_outcomes()[row].reason
    for part in reason_parts:
        assert part in reason


def test_faulty_sample_later_dates() -> None:
    outcomes = check_roster(FAULTY, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE, today=date(2031, 1, 1))
    assert {o.row: o.outcome for o in outcomes}[13] == IMPORTED


# --- the clean sample rosters ------------------------------------------------


CLEAN = [
    ("2024年度二级建造师考试合格人员名单.xlsx", "二级建造师", KIND_CERTIFICATE, 1500),
    ("2023年度二级造价工程师考试合格人员.csv", "二级造价工程师", KIND_CERTIFICATE, 800),
    ("2024年度初级注册安全工程师考试合格人员.xlsx", "初级注册安全工程师", KIND_CERTIFICATE, 600),
    ("2024年度职称考试合格人员.xlsx", None, None, 400),
    ("2024年度增报专业考试合格证明名单.xlsx", None, KIND_PASS, 300),
    ("历年二级建造师证书信息2016-2023.xlsx", "二级建造师", KIND_CERTIFICATE, 5600),
]


@pytest.mark.parametrize(("filename", "exam", "kind", "count"), CLEAN, ids=[c[0] for c in CLEAN])
def test_clean_sample_all_imported(filename: str, exam: str | None, kind: str | None, count: int) -> None:
    outcomes = check_roster(ROSTER_DIR / filename, CATALOGUE, exam=exam, kind=kind, today=TODAY)
    rejected = [(o.row, o.reason) for o in outcomes if o.outcome != IMPORTED]
    assert rejected == []
    assert len(outcomes) == count


def test_title_roster_reads_exam_kind_level() -> None:
    outcomes = check_roster(ROSTER_DIR / "2024年度职称考试合格人员.xlsx", CATALOGUE, today=TODAY)
    records = [o.record for o in outcomes if o.record]
    assert {r.kind for r in records} == {KIND_CERTIFICATE, KIND_PASS}
    assert {r.exam for r in records} == {"风景园林", "农业技术人员", "林业", "标准化"}
    assert {r.level for r in records} <= {"初级", "中级", "高级"}


def test_gb18030_csv_first_record() -> None:
    outcomes = iter_outcomes(ROSTER_DIR / "2023年度二级造价工程师考试合格人员.csv", CATALOGUE,
                             exam="二级造价工程师", kind=KIND_CERTIFICATE, today=TODAY)
    first = next(outcomes)
    outcomes.close()
    assert first.row == 2
    assert first.record is not None
    assert first.record.approval_date == date(2023, 12, 1)
    assert first.record.birth_month == date(1973, 4, 1)


# --- file formats and headers ----------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030"])
def test_csv_encodings(tmp_path: Path, encoding: str) -> None:
    rows = [["2024年度名单"], *table({"姓名": "欧阳俊杰"})]
    path = write_csv(tmp_path / "roster.csv", rows, encoding)
    outcomes = check_roster(path, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE, today=TODAY)
    assert [(o.row, o.outcome) for o in outcomes] == [(3, IMPORTED)]
    assert outcomes[0].record is not None
    assert outcomes[0].record.name == "欧阳俊杰"


def test_csv_rows_numbered_by_record(tmp_path: Path) -> None:
    header, row = table({})
    second = table({"证书编号": "202421900002", "证件号码": "500105199105054141", "姓名": "陈静",
                    "性别": "女", "出生年月": "1991-05"})[1]
    path = tmp_path / "roster.csv"
    path.write_text(
        ",".join(header) + "\r\n"
        + ",".join(map(str, row)) + "\r\n"
        + '"备注：第一行\n第二行"\r\n'
        + ",".join(map(str, second)) + "\r\n",
        encoding="utf-8",
    )
    outcomes = check_roster(path, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE, today=TODAY)
    assert [(o.row, o.outcome) for o in outcomes] == [(2, IMPORTED), (3, SKIPPED), (4, IMPORTED)]


def test_tab_separated_text(tmp_path: Path) -> None:
    path = tmp_path / "roster.txt"
    path.write_text("\n".join("\t".join(map(str, row)) for row in table({})), encoding="utf-8")
    outcomes = check_roster(path, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE, today=TODAY)
    assert [o.outcome for o in outcomes] == [IMPORTED]


@pytest.mark.parametrize(
    "header",
    [
        ["序号", "姓 名", "性\u3000别", " 身份证号 ", "出生\n日期", "专业", "发证日期", "编号"],
        ["序号", "姓名", "性别", "身份证号码", "出生年月", "专业名称", "批准日期", "证书号"],
        ["序号", "姓名*", "性别", "证件号", "出生年月（YYYY-MM）", "专业名称", "批准日期", "证书编号"],
        ["序号", "姓名", "性别", "证件号码", "出生年月", "专业名称", "批准日期", "证书编号\r\n"],
    ],
)
def test_header_synonyms(tmp_path: Path, header: list[str]) -> None:
    path = write_xlsx(tmp_path / "roster.xlsx", [header, [GOOD[name] for name in HEADER]])
    outcomes = check_roster(path, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE, today=TODAY)
    assert [o.outcome for o in outcomes] == [IMPORTED]


def test_title_rows_above_header(tmp_path: Path) -> None:
    rows = [["2024年度二级建造师考试合格人员名单"], [None], ["单位：重庆市人事考试中心"], *table({})]
    workbook = Workbook()
    sheet = workbook.active
    for row in rows:
        sheet.append(row)
    sheet.merge_cells("A1:H1")
    workbook.save(tmp_path / "roster.xlsx")
    outcomes = check_roster(tmp_path / "roster.xlsx", CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE, today=TODAY)
    assert [(o.row, o.outcome) for o in outcomes] == [(5, IMPORTED)]


def test_header_found_on_second_sheet(tmp_path: Path) -> None:
    workbook = Workbook()
    workbook.active.append(["说明：本文件第二页为名单"])
    sheet = workbook.create_sheet("名单")
    for row in table({}):
        sheet.append(row)
    workbook.save(tmp_path / "roster.xlsx")
    outcomes = check_roster(tmp_path / "roster.xlsx", CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE, today=TODAY)
    assert [o.outcome for o in outcomes] == [IMPORTED]


def test_missing_columns_named(tmp_path: Path) -> None:
    header = ["序号", "姓名", "性别", "证件号码", "出生年月", "证书编号"]
    path = write_xlsx(tmp_path / "roster.xlsx", [header, [GOOD[name] for name in header]])
    with pytest.raises(RosterFileError) as caught:
        iter_outcomes(path, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE)
    assert "专业名称" in caught.value.reason
    assert "批准日期" in caught.value.reason
    assert "姓名" not in caught.value.reason


def test_no_header_found(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "roster.xlsx", [["A", "B", "C"], [1, 2, 3]])
    with pytest.raises(RosterFileError) as caught:
        iter_outcomes(path, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE)
    assert "没有找到表头" in caught.value.reason


def test_header_below_row_20_not_found(tmp_path: Path) -> None:
    rows = [[f"说明 {i}"] for i in range(20)] + table({})
    path = write_xlsx(tmp_path / "roster.xlsx", rows)
    with pytest.raises(RosterFileError):
        iter_outcomes(path, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE)


def make_zip_not_workbook(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not a workbook")


@pytest.mark.parametrize(
    ("filename", "content", "reason_part"),
    [
        ("roster.xlsx", b"", "空的"),
        ("roster.csv", b"", "空的"),
        ("roster.xlsx", "序号,姓名\r\n1,张伟\r\n".encode(), "改了扩展名"),
        ("roster.xlsx", b"PK\x03\x04" + b"\x00garbage" * 50, "无法读取"),
        ("roster.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100, ".xls"),
        ("roster.xlsx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100, "密码"),
        ("roster.pdf", b"%PDF-1.4\n", ".pdf"),
        ("roster.csv", b"PK\x03\x04" + b"\x00" * 100, "改为 .xlsx"),
        ("roster.csv", b"\x00\x01\x02\x03binary", "不是文本"),
        ("roster.csv", "序号,姓名\r\n".encode() + b"\x81\x20" * 10, "编码"),
    ],
)
def test_unreadable_file(tmp_path: Path, filename: str, content: bytes, reason_part: str) -> None:
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(RosterFileError) as caught:
        iter_outcomes(path, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE)
    assert reason_part in caught.value.reason


def test_zip_that_is_not_workbook(tmp_path: Path) -> None:
    make_zip_not_workbook(tmp_path / "roster.xlsx")
    with pytest.raises(RosterFileError) as caught:
        iter_outcomes(tmp_path / "roster.xlsx", CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE)
    assert "roster.xlsx" in caught.value.reason


def test_upload_name_decides_extension(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "upload.tmp", table({}))
    with pytest.raises(RosterFileError):
        iter_outcomes(path, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE)
    outcomes = check_roster(path, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE,
                            filename="名单.xlsx", today=TODAY)
    assert [o.outcome for o in outcomes] == [IMPORTED]


def test_file_without_extension_sniffed(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "upload", table({}))
    outcomes = check_roster(path, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE, today=TODAY)
    assert [o.outcome for o in outcomes] == [IMPORTED]


# --- exam and kind -----------------------------------------------------------


def test_exam_required_without_column(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "roster.xlsx", table({}))
    with pytest.raises(RosterFileError) as caught:
        iter_outcomes(path, CATALOGUE, kind=KIND_CERTIFICATE)
    assert "请选择考试项目" in caught.value.reason


def test_kind_required_without_column(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "roster.xlsx", table({}))
    with pytest.raises(RosterFileError) as caught:
        iter_outcomes(path, CATALOGUE, exam="二级建造师")
    assert "证书类别" in caught.value.reason


@pytest.mark.parametrize(("exam", "kind"), [("一级建造师", KIND_CERTIFICATE), ("二级建造师", "奖状")])
def test_unknown_caller_choice(tmp_path: Path, exam: str, kind: str) -> None:
    path = write_xlsx(tmp_path / "roster.xlsx", table({}))
    with pytest.raises(RosterFileError):
        iter_outcomes(path, CATALOGUE, exam=exam, kind=kind)


@pytest.mark.parametrize(
    ("cells", "caller_exam", "outcome", "exam"),
    [
        ({"考试项目": "二级建造师"}, None, IMPORTED, "二级建造师"),
        ({"考试项目": " 二级建造师考试 "}, None, IMPORTED, "二级建造师"),
        ({"考试项目": None}, "二级建造师", IMPORTED, "二级建造师"),
        ({"考试项目": None}, None, REJECTED, None),
        ({"考试项目": "一级建造师"}, "二级建造师", REJECTED, None),
        ({"考试项目": "二级造价工程师", "专业名称": "安装工程"}, "二级建造师", IMPORTED, "二级造价工程师"),
    ],
)
def test_exam_column(tmp_path: Path, cells: dict, caller_exam: str | None, outcome: str, exam: str | None) -> None:
    result = one_row(tmp_path, cells, exam=caller_exam)
    assert result.outcome == outcome, result.reason
    assert (result.record.exam if result.record else None) == exam


def test_unknown_exam_named(tmp_path: Path) -> None:
    result = one_row(tmp_path, {"考试项目": "一级建造师"})
    assert "考试项目「一级建造师」" in result.reason


@pytest.mark.parametrize(
    ("value", "outcome", "kind"),
    [
        ("证书", IMPORTED, KIND_CERTIFICATE),
        ("考试证书", IMPORTED, KIND_CERTIFICATE),
        ("职业资格证书", IMPORTED, KIND_CERTIFICATE),
        ("合格证明", IMPORTED, KIND_PASS),
        (" 合格 证明 ", IMPORTED, KIND_PASS),
        (None, IMPORTED, KIND_CERTIFICATE),
        ("奖状", REJECTED, None),
    ],
)
def test_kind_column(tmp_path: Path, value: str | None, outcome: str, kind: str | None) -> None:
    result = one_row(tmp_path, {"证书类别": value})
    assert result.outcome == outcome, result.reason
    assert (result.record.kind if result.record else None) == kind


def test_kind_column_blank_without_default(tmp_path: Path) -> None:
    result = one_row(tmp_path, {"证书类别": None}, kind=None)
    assert result.outcome == REJECTED
    assert "证书类别为空" in result.reason


@pytest.mark.parametrize(
    ("filename", "exam", "kind"),
    [
        ("2024年度二级建造师考试合格人员名单.xlsx", "二级建造师", None),
        ("2024年度初级注册安全工程师考试合格人员.xlsx", "初级注册安全工程师", None),
        ("历年二级建造师证书信息2016-2023.xlsx", "二级建造师", KIND_CERTIFICATE),
        ("2024年度增报专业考试合格证明名单.xlsx", None, KIND_PASS),
        ("二级造价工程师增报专业合格证明.csv", "二级造价工程师", KIND_PASS),
        ("/tmp/上传/标准化 职称考试证书.xlsx", "标准化", KIND_CERTIFICATE),
        ("名单.xlsx", None, None),
    ],
)
def test_guess_from_filename(filename: str, exam: str | None, kind: str | None) -> None:
    assert guess_from_filename(filename, CATALOGUE) == (exam, kind)


# --- names -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  陈\u3000静 ", "陈静"),
        ("张 伟", "张伟"),
        ("SMITH JOHN", "SMITH JOHN"),
        ("  SMITH   JOHN  ", "SMITH JOHN"),
        ("ＳＭＩＴＨ　ＪＯＨＮ", "SMITH JOHN"),
        ("王𠮷", "王𠮷"),
        ("阿依古丽•买买提", "阿依古丽·买买提"),
        ("阿依古丽・买买提", "阿依古丽·买买提"),
        ("阿依古丽･买买提", "阿依古丽·买买提"),
        ("阿依古丽‧买买提", "阿依古丽·买买提"),
        ("阿依古丽∙买买提", "阿依古丽·买买提"),
        ("阿依古丽⋅买买提", "阿依古丽·买买提"),
        ("阿依古丽．买买提", "阿依古丽·买买提"),
        ("阿依古丽.买买提", "阿依古丽·买买提"),
        ("阿依古丽 · 买买提", "阿依古丽·买买提"),
        ("JOHN F. KENNEDY", "JOHN F. KENNEDY"),
        ("JEAN-PIERRE", "JEAN-PIERRE"),
        ("\u200b刘洋", "刘洋"),
        ("张\n伟", "张伟"),
    ],
)
def test_name_normalised(tmp_path: Path, raw: str, expected: str) -> None:
    result = one_row(tmp_path, {"姓名": raw})
    assert result.outcome == IMPORTED, result.reason
    assert result.record is not None
    assert result.record.name == expected


@pytest.mark.parametrize(
    ("raw", "reason_part"),
    [
        ('=HYPERLINK("http://example.invalid","点我")', "公式"),
        ("=A1", "公式"),
        ("<b>张伟</b>", "标记字符"),
        ("张&伟", "标记字符"),
        ('张"伟', "标记字符"),
        ("O'BRIEN", "标记字符"),
        ("张\x7f伟", "控制字符"),
        ("张\u202e伟", "控制字符"),
        ("张伟2", "数字"),
        ("张伟２", "数字"),
        ("张" * 31, "超过 30 个字符"),
        (None, "姓名为空"),
        ("\u3000 ", "姓名为空"),
        ("张伟（曾用名）", "不允许的字符"),
        ("张伟@", "不允许的字符"),
        ("·", "没有文字"),
        ("- .", "没有文字"),
    ],
)
def test_name_rejected(tmp_path: Path, raw: str | None, reason_part: str) -> None:
    result = one_row(tmp_path, {"姓名": raw})
    assert result.outcome == REJECTED
    assert reason_part in result.reason


def test_name_of_thirty_accepted(tmp_path: Path) -> None:
    assert one_row(tmp_path, {"姓名": "张" * 30}).outcome == IMPORTED


@pytest.mark.parametrize(("raw", "expected"), [(" 陈\u3000静", "陈静"), ("smith  john", "smith john"), ("", "")])
def test_normalise_name_alone(raw: str, expected: str) -> None:
    assert normalise_name(raw) == expected


# --- identity in rows --------------------------------------------------------


@pytest.mark.parametrize(
    ("gender", "expected"),
    [("男", "男"), ("M", "男"), ("m", "男"), ("男性", "男"), ("Male", "男"), (None, "男"), (" 男 ", "男")],
)
def test_gender_accepted(tmp_path: Path, gender: str | None, expected: str) -> None:
    result = one_row(tmp_path, {"性别": gender})
    assert result.outcome == IMPORTED, result.reason
    assert result.record is not None
    assert result.record.gender == expected


@pytest.mark.parametrize(
    ("id_number", "gender", "reason_part"),
    [
        ("500103199001011232", "女", "应为男"),
        ("500105199105054141", "男", "应为女"),
        ("500105199105054141", "F女", "无法识别"),
        ("500103199001011232", "未知", "无法识别"),
    ],
)
def test_gender_rejected(tmp_path: Path, id_number: str, gender: str, reason_part: str) -> None:
    result = one_row(tmp_path, {"证件号码": id_number, "性别": gender, "出生年月": None})
    assert result.outcome == REJECTED
    assert reason_part in result.reason


def test_female_gender_derived(tmp_path: Path) -> None:
    result = one_row(tmp_path, {"证件号码": "500105199105054141", "性别": None, "出生年月": None})
    assert result.record is not None
    assert result.record.gender == "女"
    assert result.record.birth_month == date(1991, 5, 1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1990-01", date(1990, 1, 1)),
        ("1990-1", date(1990, 1, 1)),
        ("1990.01", date(1990, 1, 1)),
        ("1990年01月", date(1990, 1, 1)),
        ("1990年1月", date(1990, 1, 1)),
        ("199001", date(1990, 1, 1)),
        (199001, date(1990, 1, 1)),
        ("1990/01", date(1990, 1, 1)),
        ("1990-01-01", date(1990, 1, 1)),
        ("1990年1月1日", date(1990, 1, 1)),
        ("19900101", date(1990, 1, 1)),
        ("１９９０－０１", date(1990, 1, 1)),
        (datetime(1990, 1, 1), date(1990, 1, 1)),
        (date(1990, 1, 15), date(1990, 1, 1)),
        (32874, date(1990, 1, 1)),
        (1990.01, date(1990, 1, 1)),
        (None, date(1990, 1, 1)),
    ],
)
def test_birth_month_accepted(tmp_path: Path, value: object, expected: date) -> None:
    result = one_row(tmp_path, {"出生年月": value})
    assert result.outcome == IMPORTED, result.reason
    assert result.record is not None
    assert result.record.birth_month == expected


@pytest.mark.parametrize(("value", "expected"), [(1990.1, date(1990, 10, 1)), (1990.12, date(1990, 12, 1))])
def test_birth_month_decimal_number(tmp_path: Path, value: float, expected: date) -> None:
    number = with_check(f"500103{expected:%Y%m}01123")
    result = one_row(tmp_path, {"出生年月": value, "证件号码": number})
    assert result.outcome == IMPORTED, result.reason
    assert result.record is not None
    assert result.record.birth_month == expected


@pytest.mark.parametrize(
    ("value", "reason_part"),
    [
        ("1990-02", "与证件号码"),
        ("1990-13", "无法识别"),
        ("一九九〇年一月", "无法识别"),
        ("1990", "无法识别"),
        ("2030-01", "不可能"),
        ("=DATE(1990,1,1)", "公式"),
    ],
)
def test_birth_month_rejected(tmp_path: Path, value: object, reason_part: str) -> None:
    result = one_row(tmp_path, {"出生年月": value})
    assert result.outcome == REJECTED
    assert reason_part in result.reason


def test_passport_takes_gender_and_month(tmp_path: Path) -> None:
    cells = {"证件类型": "护照", "证件号码": "e12345678", "性别": "女", "出生年月": "1987-04", "姓名": "SMITH JANE"}
    result = one_row(tmp_path, cells)
    assert result.record is not None
    assert result.record.id_type == ID_PASSPORT
    assert result.record.id_number == "E12345678"
    assert result.record.gender == "女"
    assert result.record.birth_month == date(1987, 4, 1)


@pytest.mark.parametrize("missing", ["性别", "出生年月"])
def test_passport_needs_gender_and_month(tmp_path: Path, missing: str) -> None:
    cells = {"证件类型": "护照", "证件号码": "E12345678", missing: None}
    result = one_row(tmp_path, cells)
    assert result.outcome == REJECTED
    assert missing in result.reason


@pytest.mark.parametrize(
    ("id_type", "id_number", "expected_type"),
    [
        (None, "500103199001011232", ID_RESIDENT),
        ("身份证", "500103199001011232", ID_RESIDENT),
        (None, with_check("81000019900101123"), ID_RESIDENCE_PERMIT),
        ("港澳台居民居住证", with_check("83000019900101123"), ID_RESIDENCE_PERMIT),
    ],
)
def test_id_type_column(tmp_path: Path, id_type: str | None, id_number: str, expected_type: str) -> None:
    result = one_row(tmp_path, {"证件类型": id_type, "证件号码": id_number})
    assert result.outcome == IMPORTED, result.reason
    assert result.record is not None
    assert result.record.id_type == expected_type


@pytest.mark.parametrize(
    ("value", "reason_parts"),
    [
        (5.00106198803092e17, ["500106198803092000", "存成了数字", "文本格式"]),
        (5.00103199001011e17, ["存成了数字", "文本格式"]),
        ("5.00106E+17", ["科学计数法", "文本格式"]),
        (500103199001011232, ["存成了数字", "文本格式"]),
        ("500107197908150231", ["校验位错误", "500107197908150231"]),
        ("50010319900101123", ["18 位"]),
        (None, ["证件号码为空"]),
    ],
)
def test_id_number_rejected(tmp_path: Path, value: object, reason_parts: list[str]) -> None:
    result = one_row(tmp_path, {"证件号码": value})
    assert result.outcome == REJECTED
    for part in reason_parts:
        assert part in result.reason


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (500103199001011232, ("500103199001011232", True)),
        ("500103199001011232", ("500103199001011232", False)),
        (12345678.0, ("12345678", False)),
        (None, ("", False)),
    ],
)
def test_id_cell_text(value: object, expected: tuple[str, bool]) -> None:
    assert id_cell_text(value) == expected


def test_exact_integer_id_with_bad_checksum() -> None:
    # Only a reader that returns exact integers (not openpyxl) reaches this path.
    with pytest.raises(FieldError) as caught:
        parse_identity(None, 500107197908150231, None, None, TODAY)
    assert "校验位错误" in caught.value.reason
    assert "存成了数字" in caught.value.reason


def test_exact_integer_id_accepted() -> None:
    identity = parse_identity(None, 500103199001011232, "男", None, TODAY)
    assert identity == (ID_RESIDENT, "500103199001011232", "男", date(1990, 1, 1))


def test_control_character_in_csv_name(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "roster.csv", table({"姓名": "张\x07伟"}))
    outcomes = check_roster(path, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE, today=TODAY)
    assert outcomes[0].outcome == REJECTED
    assert "控制字符" in outcomes[0].reason


# --- dates -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2024, 10, 18), date(2024, 10, 18)),
        (date(2024, 10, 18), date(2024, 10, 18)),
        (45583, date(2024, 10, 18)),
        (45583.0, date(2024, 10, 18)),
        ("45583", date(2024, 10, 18)),
        ("2024/10/18", date(2024, 10, 18)),
        ("2024-10-18", date(2024, 10, 18)),
        ("2024.10.18", date(2024, 10, 18)),
        ("2024年10月18日", date(2024, 10, 18)),
        ("2024 年 10 月 18 日", date(2024, 10, 18)),
        ("20241018", date(2024, 10, 18)),
        (20241018, date(2024, 10, 18)),
        ("2024/1/8", date(2024, 1, 8)),
        ("2024-10-18 00:00:00", date(2024, 10, 18)),
        ("２０２４－１０－１８", date(2024, 10, 18)),
        ("1990-01-01", date(1990, 1, 1)),
        ("2026-12-04", TODAY),
    ],
)
def test_approval_date_accepted(tmp_path: Path, value: object, expected: date) -> None:
    result = one_row(tmp_path, {"批准日期": value})
    assert result.outcome == IMPORTED, result.reason
    assert result.record is not None
    assert result.record.approval_date == expected


@pytest.mark.parametrize(
    ("value", "reason_part"),
    [
        ("2026-12-05", "将来"),
        (datetime(2031, 1, 1), "将来"),
        ("1989-12-31", "早于 1990 年"),
        (1, "早于 1990 年"),
        ("2024-02-30", "无法识别"),
        ("2024年", "无法识别"),
        ("下周一", "无法识别"),
        (None, "批准日期为空"),
        ("=TODAY()", "公式"),
    ],
)
def test_approval_date_rejected(tmp_path: Path, value: object, reason_part: str) -> None:
    result = one_row(tmp_path, {"批准日期": value})
    assert result.outcome == REJECTED
    assert reason_part in result.reason


# --- certificate numbers, specialties, levels --------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("202421900001", "202421900001"),
        ("２０２４２１９００００１", "202421900001"),
        (" 202421 900001 ", "202421900001"),
        ("hg202421000001", "HG202421000001"),
        ("202421900024.0", "202421900024"),
        (202421900025, "202421900025"),
        (202421900025.0, "202421900025"),
        ("ABC123", "ABC123"),
        ("A" * 32, "A" * 32),
    ],
)
def test_certificate_number_accepted(tmp_path: Path, value: object, expected: str) -> None:
    result = one_row(tmp_path, {"证书编号": value})
    assert result.outcome == IMPORTED, result.reason
    assert result.record is not None
    assert result.record.number == expected


@pytest.mark.parametrize(
    ("value", "reason_part"),
    [
        ("12345", "格式不正确"),
        ("A" * 33, "格式不正确"),
        ("2024-219-0001", "格式不正确"),
        ("202421900001.5", "格式不正确"),
        (1234567.5, "小数"),
        (1.23456789012345678e17, "丢失精度"),
        (None, "证书编号为空"),
        ("=A2", "公式"),
    ],
)
def test_certificate_number_rejected(tmp_path: Path, value: object, reason_part: str) -> None:
    result = one_row(tmp_path, {"证书编号": value})
    assert result.outcome == REJECTED
    assert reason_part in result.reason


@pytest.mark.parametrize(
    ("exam", "specialty", "expected"),
    [
        ("二级建造师", " 建筑 工程 ", "建筑工程"),
        ("初级注册安全工程师", "其他安全(不包括消防安全)", "其他安全（不包括消防安全）"),
        ("初级注册安全工程师", "其他安全（不包括消防安全）", "其他安全（不包括消防安全）"),
    ],
)
def test_specialty_matched(tmp_path: Path, exam: str, specialty: str, expected: str) -> None:
    result = one_row(tmp_path, {"专业名称": specialty}, exam=exam)
    assert result.record is not None
    assert result.record.specialty == expected


@pytest.mark.parametrize("specialty", ["通信与广电工程", None, "安装工程"])
def test_specialty_rejected(tmp_path: Path, specialty: str | None) -> None:
    result = one_row(tmp_path, {"专业名称": specialty})
    assert result.outcome == REJECTED
    assert "专业名称" in result.reason


@pytest.mark.parametrize(
    ("exam", "specialty", "level", "outcome", "expected"),
    [
        ("标准化", "标准化工程", "中级", IMPORTED, "中级"),
        ("标准化", "标准化工程", None, IMPORTED, None),
        ("标准化", "标准化工程", "特级", REJECTED, None),
        ("二级建造师", "建筑工程", "二级", IMPORTED, None),
    ],
)
def test_level(tmp_path: Path, exam: str, specialty: str, level: str | None, outcome: str, expected: str | None) -> None:
    result = one_row(tmp_path, {"专业名称": specialty, "级别": level}, exam=exam)
    assert result.outcome == outcome, result.reason
    assert (result.record.level if result.record else None) == expected


def test_level_rejection_names_value(tmp_path: Path) -> None:
    result = one_row(tmp_path, {"专业名称": "标准化工程", "级别": "特级"}, exam="标准化")
    assert "级别「特级」" in result.reason


def test_all_faults_listed(tmp_path: Path) -> None:
    result = one_row(tmp_path, {"姓名": None, "批准日期": "2099-01-01", "证书编号": "1"})
    assert result.reason.count("；") >= 2


# --- skipped and duplicate rows ----------------------------------------------


def second_person(number: str = "202421900002") -> list[object]:
    cells = {**GOOD, "姓名": "陈静", "性别": "女", "证件号码": "500105199105054141", "出生年月": "1991-05", "证书编号": number}
    return [cells[name] for name in HEADER]


def outcomes_of(tmp_path: Path, rows: list[list[object]]) -> list[tuple[int, str, str]]:
    path = write_xlsx(tmp_path / "roster.xlsx", rows)
    outcomes = check_roster(path, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE, today=TODAY)
    return [(o.row, o.outcome, o.reason) for o in outcomes]


def test_blank_row_skipped(tmp_path: Path) -> None:
    header, row = table({})
    result = outcomes_of(tmp_path, [header, [None] * 8, ["", " ", None], row])
    assert [(r, o) for r, o, _ in result] == [(2, SKIPPED), (3, SKIPPED), (4, IMPORTED)]


@pytest.mark.parametrize(
    "footer",
    [
        ["制表人：刘某某    审核人：陈某某"],
        [None, "制表人：刘某某", None, None, None, None, None, "审核人：陈某某"],
        ["合计", 1500],
        ["备注：以上人员经审核合格"],
    ],
)
def test_footer_skipped(tmp_path: Path, footer: list[object]) -> None:
    header, row = table({})
    result = outcomes_of(tmp_path, [header, row, footer])
    assert result[1][1] == SKIPPED
    assert "不是人员记录" in result[1][2]


def test_repeated_header_skipped(tmp_path: Path) -> None:
    header, row = table({})
    result = outcomes_of(tmp_path, [header, row, header, second_person()])
    assert [(r, o) for r, o, _ in result] == [(2, IMPORTED), (3, SKIPPED), (4, IMPORTED)]
    assert "表头" in result[1][2]


def test_exact_duplicate_skipped(tmp_path: Path) -> None:
    header, row = table({})
    duplicate = [99, " 张伟 ", "男", "500103199001011232", "1990.01", "建筑工程", datetime(2024, 10, 18), 202421900001]
    result = outcomes_of(tmp_path, [header, row, duplicate])
    assert result[1] == (3, SKIPPED, "与第 2 行完全相同，已跳过")


def test_number_reused_for_another_person(tmp_path: Path) -> None:
    header, row = table({})
    result = outcomes_of(tmp_path, [header, row, second_person("202421900001")])
    assert result[1][1] == REJECTED
    assert "证书编号「202421900001」已在第 2 行用于另一人" in result[1][2]


def test_number_reused_same_person_other_content(tmp_path: Path) -> None:
    header, row = table({})
    changed = list(row)
    changed[HEADER.index("专业名称")] = "机电工程"
    result = outcomes_of(tmp_path, [header, row, changed])
    assert result[1][1] == REJECTED
    assert "已在第 2 行使用" in result[1][2]


def test_rejected_row_does_not_claim_number(tmp_path: Path) -> None:
    header, row = table({})
    broken = list(row)
    broken[HEADER.index("姓名")] = None
    result = outcomes_of(tmp_path, [header, broken, row])
    assert [(r, o) for r, o, _ in result] == [(2, REJECTED), (3, IMPORTED)]


def test_same_person_two_certificates(tmp_path: Path) -> None:
    header, row = table({})
    other = list(row)
    other[HEADER.index("证书编号")] = "202421900099"
    other[HEADER.index("专业名称")] = "机电工程"
    result = outcomes_of(tmp_path, [header, row, other])
    assert [o for _, o, _ in result] == [IMPORTED, IMPORTED]


@pytest.mark.parametrize(("name", "outcome"), [("张玮", REJECTED), (" 张伟 ", IMPORTED), ("张\u3000伟", IMPORTED)])
def test_id_number_under_other_name(tmp_path: Path, name: str, outcome: str) -> None:
    """A second certificate for one ID number must carry the same name once normalised, or the row is rejected."""
    header, row = table({})
    other = list(row)
    other[HEADER.index("姓名")] = name
    other[HEADER.index("证书编号")] = "202421900099"

    result = outcomes_of(tmp_path, [header, row, other])

    assert result[0][1] == IMPORTED
    assert result[1][1] == outcome


def test_other_name_reason_names_both(tmp_path: Path) -> None:
    header, row = table({})
    other = list(row)
    other[HEADER.index("姓名")] = "张玮"
    other[HEADER.index("证书编号")] = "202421900099"

    reason = outcomes_of(tmp_path, [header, row, other])[1][2]

    assert reason.startswith("第 3 行：证件号码 5001**********1232 ")
    assert "已在第 2 行登记在姓名「张伟」名下" in reason
    assert "与本行姓名「张玮」不一致" in reason
    assert "500103199001011232" not in reason


def test_other_name_row_claims_nothing(tmp_path: Path) -> None:
    """A row rejected for its name leaves its certificate number free, and a row rejected earlier leaves its name."""
    header, row = table({})
    wrong_specialty = list(row)
    wrong_specialty[HEADER.index("姓名")] = "张玮"
    wrong_specialty[HEADER.index("专业名称")] = "航天工程"
    other_name = list(row)
    other_name[HEADER.index("姓名")] = "张玮"
    other_name[HEADER.index("证书编号")] = "202421900099"

    result = outcomes_of(tmp_path, [header, wrong_specialty, row, other_name, second_person("202421900099")])

    assert [(r, o) for r, o, _ in result] == [(2, REJECTED), (3, IMPORTED), (4, REJECTED), (5, IMPORTED)]


# --- streaming ---------------------------------------------------------------


def test_iter_outcomes_is_lazy(tmp_path: Path) -> None:
    header, row = table({})
    path = write_xlsx(tmp_path / "roster.xlsx", [header, row, second_person()])
    outcomes = iter_outcomes(path, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE, today=TODAY)
    assert next(outcomes).row == 2
    assert next(outcomes).row == 3
    assert next(outcomes, None) is None


def test_outcome_counts_on_mixed_file(tmp_path: Path) -> None:
    header, row = table({})
    rows = [header, row, row, [None], second_person("202421900001"), ["制表人：刘某某"]]
    counts = Counter(o for _, o, _ in outcomes_of(tmp_path, rows))
    assert counts == {IMPORTED: 1, SKIPPED: 3, REJECTED: 1}


def test_formula_in_unused_column_ignored(tmp_path: Path) -> None:
    result = one_row(tmp_path, {"序号": "=ROW()-1"})
    assert result.outcome == IMPORTED, result.reason


# --- fast path of the row check -------------------------------------------


def both_ways(path: Path, monkeypatch: pytest.MonkeyPatch, **options: object) -> tuple[list, list, int]:
    """Return the outcomes with the fast path, without it, and how many rows the fast path accepted."""
    options = {"exam": "二级建造师", "kind": KIND_CERTIFICATE, "today": TODAY, **options}
    accepted = 0
    original = roster_module._FastPath.record

    def counting(self, cells):
        nonlocal accepted
        record = original(self, cells)
        accepted += record is not None
        return record

    with monkeypatch.context() as patch:
        patch.setattr(roster_module._FastPath, "record", counting)
        fast = check_roster(path, CATALOGUE, **options)
    with monkeypatch.context() as patch:
        patch.setattr(roster_module._FastPath, "record", lambda self, cells: None)
        full = check_roster(path, CATALOGUE, **options)
    return fast, full, accepted


SAMPLES = sorted(p for p in ROSTER_DIR.iterdir() if p.suffix in (".xlsx", ".csv") and not p.name.endswith(".expected.csv"))


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_fast_path_matches_full_check_on_samples(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exam, kind = guess_from_filename(path.name, CATALOGUE)
    fast, full, _accepted = both_ways(path, monkeypatch, exam=exam or "二级建造师", kind=kind or KIND_CERTIFICATE)

    assert fast == full


# Each case changes GOOD and states whether the fast path accepts the row. Every outcome must match the full check.
FAST_PATH_CASES = [
    ({}, True),
    ({"性别": None, "出生年月": None}, True),
    ({"出生年月": datetime(1990, 1, 15)}, True),
    ({"批准日期": datetime(2024, 10, 18)}, True),
    ({"证书编号": 202421900001}, True),
    ({"姓名": "欧阳娜娜"}, True),
    ({"姓名": " 张伟"}, False),
    ({"姓名": "张 伟"}, False),
    ({"姓名": "Zhang Wei"}, False),
    ({"姓名": "张伟1"}, False),
    ({"姓名": "\ue000伟"}, False),
    ({"姓名": "𠮷伟"}, False),
    ({"姓名": "阿卜杜·热合曼"}, False),
    ({"姓名": "=A1"}, False),
    ({"性别": "女"}, False),
    ({"性别": "男性"}, False),
    ({"性别": " 男"}, False),
    ({"出生年月": "1990-02"}, False),
    ({"出生年月": "1990年1月"}, True),
    ({"出生年月": "  "}, False),
    ({"证件号码": "500103199001011233"}, False),
    ({"证件号码": "50010319900101123x"}, False),
    ({"证件号码": "５００１０３１９９００１０１１２３２"}, False),
    ({"证件号码": "810000199001011234"}, False),
    ({"证件号码": "990103199001011232"}, False),
    ({"证件号码": "500103203001011232"}, False),
    ({"证件号码": 500103199001011232}, False),
    ({"专业名称": "建筑 工程"}, True),
    ({"专业名称": "航天工程"}, False),
    ({"专业名称": None}, False),
    ({"批准日期": "2024/10/18"}, True),
    ({"批准日期": "1989-12-31"}, False),
    ({"批准日期": "2030-01-01"}, False),
    ({"批准日期": 45583}, False),
    ({"证书编号": "b2024 0001"}, False),
    ({"证书编号": "12345"}, False),
    ({"证书编号": 2024.5}, False),
    ({"证件类型": "身份证"}, False),
    ({"证件类型": "护照", "证件号码": "E12345678"}, False),
    ({"考试项目": "二级建造师"}, True),
    ({"考试项目": "一级建造师"}, False),
    ({"证书类别": "合格证明"}, True),
    ({"证书类别": "奖状"}, False),
]


@pytest.mark.parametrize(("cells", "fast_expected"), FAST_PATH_CASES, ids=[str(c[0]) for c in FAST_PATH_CASES])
@pytest.mark.parametrize("suffix", [".xlsx", ".csv"])
def test_fast_path_matches_full_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cells: dict, fast_expected: bool, suffix: str
) -> None:
    rows = table(cells)
    if suffix == ".csv":
        # A CSV contains text only, as Excel writes it.
        rows = [[value.isoformat() if isinstance(value, date) else value for value in row] for row in rows]
        path = write_csv(tmp_path / "roster.csv", rows)
    else:
        path = write_xlsx(tmp_path / "roster.xlsx", rows)

    fast, full, accepted = both_ways(path, monkeypatch)

    assert fast == full
    if suffix == ".xlsx":
        assert accepted == int(fast_expected)


def test_fast_path_skips_duplicates_like_full_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = {**GOOD, "姓名": "李娜"}
    rows = [HEADER, [GOOD[name] for name in HEADER], [GOOD[name] for name in HEADER], [other[name] for name in HEADER]]
    path = write_xlsx(tmp_path / "roster.xlsx", rows)

    fast, full, accepted = both_ways(path, monkeypatch)

    assert fast == full
    assert [outcome.outcome for outcome in fast] == [IMPORTED, SKIPPED, REJECTED]
    assert accepted == 3


def test_cjk_block_is_letters() -> None:
    # The fast path takes a name of U+4E00-U+9FFF as valid without checking each character's category.
    categories = {unicodedata.category(chr(code)) for code in range(0x4E00, 0xA000)}

    assert categories == {"Lo"}


# --- glyph coverage -------------------------------------------------------


def test_glyph_bitmap_matches_reportlab() -> None:
    bitmap = glyph_coverage._build([fonts.font_path(spec) for spec in fonts.FONT_CHAIN])
    fonts.register_fonts()
    registered = set().union(*(fonts._coverage[spec.name] for spec in fonts.FONT_CHAIN))

    covered = {code for code in range(glyph_coverage.CODE_POINTS) if bitmap[code >> 3] & (1 << (code & 7))}

    assert covered == registered


@pytest.mark.parametrize(("text", "missing"), [("王伟", []), ("𠮷 A", []), ("王\ue000伟\ue000", ["\ue000"]), ("\U000e0100", ["\U000e0100"])])
def test_uncovered_characters(text: str, missing: list[str]) -> None:
    assert glyph_coverage.uncovered_characters(text, glyph_coverage.coverage_bitmap()) == missing


def test_glyph_cache_written_then_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setattr(glyph_coverage, "_bitmaps", {})
    built = glyph_coverage.coverage_bitmap(cache_dir=cache)
    files = list(cache.glob(f"{glyph_coverage.CACHE_PREFIX}*.bin"))

    assert len(files) == 1
    assert files[0].read_bytes() == built

    def no_build(paths):
        raise AssertionError("the fonts were read again although the cache file exists")

    monkeypatch.setattr(glyph_coverage, "_bitmaps", {})
    monkeypatch.setattr(glyph_coverage, "_build", no_build)
    assert glyph_coverage.coverage_bitmap(cache_dir=cache) == built


def test_glyph_cache_of_wrong_size_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setattr(glyph_coverage, "_bitmaps", {})
    built = glyph_coverage.coverage_bitmap(cache_dir=cache)
    (cache_file,) = cache.glob(f"{glyph_coverage.CACHE_PREFIX}*.bin")
    cache_file.write_bytes(b"\x00" * 10)

    monkeypatch.setattr(glyph_coverage, "_bitmaps", {})

    assert glyph_coverage.coverage_bitmap(cache_dir=cache) == built
    assert cache_file.read_bytes() == built


# --- CSV encoding and quotes ----------------------------------------------

CSV_HEADER = "姓名,性别,证件号码,出生年月,专业名称,批准日期,证书编号\r\n"
CSV_TAIL = ",男,500103199001011232,1990-01,建筑工程,2024-10-18,202421900001\r\n"


@pytest.mark.parametrize(
    ("content", "line", "sample"),
    [
        # A Chinese GB18030 file with a Western name pasted in as Windows-1252.
        (CSV_HEADER.encode("gb18030") + "Müller".encode("cp1252") + CSV_TAIL.encode("gb18030"), 2, "M黮ler"),
        # A whole Latin-1 file that happens to decode as GB18030.
        ("Name;Ville\r\nRenée Dubois;Orléans\r\n".encode("latin-1"), 2, "Ren閑 D"),
        ("Name,City\r\nBjörn Åsa,Malmoe\r\n".encode("cp1252"), 2, "Bj"),
    ],
    ids=["pasted-cp1252-name", "latin-1-file", "cp1252-file"],
)
def test_western_csv_rejected_as_misread(tmp_path: Path, content: bytes, line: int, sample: str) -> None:
    path = tmp_path / "roster.csv"
    path.write_bytes(content)

    with pytest.raises(RosterFileError) as raised:
        check_roster(path, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE, today=TODAY)

    reason = raised.value.reason
    assert "文字编码无法识别" in reason
    assert "Latin-1 或 Windows-1252" in reason
    assert f"文件第 {line} 行" in reason
    assert sample[0] in reason


@pytest.mark.parametrize("name", ["王堃", "李喆", "张赟", "陈珺"])
def test_gb18030_rare_name_accepted(tmp_path: Path, name: str) -> None:
    path = tmp_path / "roster.csv"
    path.write_bytes((CSV_HEADER + name + CSV_TAIL).encode("gb18030"))

    (outcome,) = check_roster(path, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE, today=TODAY)

    assert outcome.outcome == IMPORTED, outcome.reason
    assert outcome.record.name == name


@pytest.mark.parametrize(
    ("text", "row", "swallowed"),
    [
        (CSV_HEADER + '张伟,男,"500103199001011232,1990-01,建筑工程,2024-10-18,202421900001\r\n'
         + "李娜" + CSV_TAIL, 2, "第 3 行"),
        (CSV_HEADER + "张伟" + CSV_TAIL + '李娜,"女,500103199001011224,1990-01,建筑工程,2024-10-18,202421900002\r\n'
         + "王芳" + CSV_TAIL + "赵敏" + CSV_TAIL, 3, "第 4 至 5 行"),
    ],
    ids=["first-row", "middle-row"],
)
def test_unterminated_quote_rejected(tmp_path: Path, text: str, row: int, swallowed: str) -> None:
    path = tmp_path / "roster.csv"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(RosterFileError) as raised:
        check_roster(path, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE, today=TODAY)

    reason = raised.value.reason
    assert f"第 {row} 行" in reason
    assert "没有对应的结束双引号" in reason
    assert swallowed in reason
    assert "500103199001011232" not in reason  # the cell is shown cut short


def test_quoted_cell_with_line_break_accepted(tmp_path: Path) -> None:
    path = tmp_path / "roster.csv"
    path.write_text(CSV_HEADER + '"张伟\n"' + CSV_TAIL, encoding="utf-8")

    (outcome,) = check_roster(path, CATALOGUE, exam="二级建造师", kind=KIND_CERTIFICATE, today=TODAY)

    assert outcome.outcome == IMPORTED, outcome.reason
    assert outcome.record.name == "张伟"


# --- sheet XML scan -------------------------------------------------------


def test_scan_finds_hidden_rows_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workbook = Workbook()
    sheet = workbook.active
    for number in range(1, 401):
        sheet.append([number, f"名字{number}", "500103199001011232"])
    for hidden in (7, 150, 399):
        sheet.row_dimensions[hidden].hidden = True
    sheet["D300"] = "=A1+1"
    path = tmp_path / "hidden.xlsx"
    workbook.save(path)
    # Small chunks, so most hold no hidden row and take the quick branch.
    monkeypatch.setattr(sheet_scan, "_CHUNK_BYTES", 2048)

    flags = sheet_scan.scan_sheet(path, "xl/worksheets/sheet1.xml")

    assert flags.hidden_rows == {7, 150, 399}
    assert list(flags.formulas) == [300]
    assert flags.formulas[300][3].ref == "D300"


def test_scan_counts_rows_without_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = "".join(f'<row><c t="inlineStr"><is><t>{n}</t></is></c></row>' for n in range(1, 200))
    rows += '<row hidden="1"><c t="inlineStr"><is><t>200</t></is></c></row>'
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        f"<sheetData>{rows}</sheetData></worksheet>"
    )
    path = tmp_path / "plain.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("xl/worksheets/sheet1.xml", xml)
    monkeypatch.setattr(sheet_scan, "_CHUNK_BYTES", 1024)

    flags = sheet_scan.scan_sheet(path, "xl/worksheets/sheet1.xml")

    assert flags.hidden_rows == {200}
