"""The command line: staff accounts, roster import with its report, certificate rendering."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pypdf import PdfReader
from sqlalchemy import func, select

from app.extensions import db
from app.models import Certificate, ImportBatch, StaffUser

from .conftest import ROSTER_DIR

PROJECT_ROOT = ROSTER_DIR.parents[2]

FAULTY = ROSTER_DIR / "二级建造师_问题数据样例.xlsx"
FAULTY_EXPECTED = ROSTER_DIR / "二级建造师_问题数据样例.expected.csv"

CLEAN_ROSTERS = [
    ("2024年度二级建造师考试合格人员名单.xlsx", ["--exam", "二级建造师", "--kind", "证书"], 1500),
    ("2023年度二级造价工程师考试合格人员.csv", ["--exam", "二级造价工程师", "--kind", "证书"], 800),
    ("2024年度初级注册安全工程师考试合格人员.xlsx", ["--exam", "初级注册安全工程师", "--kind", "证书"], 600),
    ("2024年度职称考试合格人员.xlsx", [], 400),
    ("2024年度增报专业考试合格证明名单.xlsx", ["--kind", "合格证明"], 300),
    ("历年二级建造师证书信息2016-2023.xlsx", ["--exam", "二级建造师", "--kind", "证书"], 5600),
]


def certificate_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count(Certificate.id)))


def test_staff_create_generates_password(app, runner):
    result = runner.invoke(args=["staff", "create", "alice", "--role", "operator", "--generate-password"])

    assert result.exit_code == 0, result.output
    assert "初始密码" in result.output
    with app.app_context():
        user = db.session.scalar(select(StaffUser).where(StaffUser.username == "alice"))
        assert user.role == "operator"


def test_staff_create_prompts_for_password(app, runner):
    result = runner.invoke(args=["staff", "create", "bob", "--role", "admin"], input="Long-enough-Pw1\nLong-enough-Pw1\n")

    assert result.exit_code == 0, result.output
    with app.app_context():
        user = db.session.scalar(select(StaffUser).where(StaffUser.username == "bob"))
        assert user.check_password("Long-enough-Pw1")


def test_staff_create_rejects_short_password(runner):
    result = runner.invoke(args=["staff", "create", "carol", "--role", "admin"], input="short\nshort\n")

    assert result.exit_code != 0
    assert "至少 12 位" in result.output


def test_staff_create_rejects_duplicate_username(runner, make_staff):
    make_staff("dave")
    result = runner.invoke(args=["staff", "create", "dave", "--role", "admin", "--generate-password"])

    assert result.exit_code != 0
    assert "已存在" in result.output


def test_command_error_in_chinese(runner, tmp_path):
    """A command that stops with an error prints 错误： rather than click's English "Error:"."""
    result = runner.invoke(args=["certificate", "render", "209999999999", "--out", str(tmp_path / "x.pdf")])

    assert result.exit_code == 1
    assert result.output == "错误：证书编号「209999999999」不存在。\n"


def test_faulty_roster_report_matches_expected(app, runner, tmp_path):
    report = tmp_path / "report.csv"
    result = runner.invoke(
        args=["roster", "import", str(FAULTY), "--exam", "二级建造师", "--kind", "证书", "--report", str(report)]
    )
    assert result.exit_code == 0, result.output

    with open(FAULTY_EXPECTED, encoding="utf-8") as handle:
        expected = {int(row["row"]): row for row in csv.DictReader(handle)}
    produced = {int(row["row"]): row for row in csv.DictReader(io.StringIO(report.read_text(encoding="utf-8")))}
    assert sorted(produced) == sorted(expected)
    for row_number, row in expected.items():
        assert produced[row_number]["outcome"] == row["outcome"], (row_number, produced[row_number]["reason"])

    with app.app_context():
        stored = {c.name: c.id_number for c in db.session.scalars(select(Certificate))}
    for row in expected.values():
        if row["outcome"] == "imported":
            assert stored.get(row["name"]) == row["id_number"]


def test_rejected_rows_carry_reason(runner, tmp_path):
    report = tmp_path / "report.csv"
    runner.invoke(args=["roster", "import", str(FAULTY), "--exam", "二级建造师", "--kind", "证书", "--report", str(report)])

    rows = list(csv.DictReader(io.StringIO(report.read_text(encoding="utf-8"))))
    for row in rows:
        if row["outcome"] != "imported":
            assert row["reason"], row


@pytest.mark.parametrize("filename, options, rows", CLEAN_ROSTERS, ids=[c[0] for c in CLEAN_ROSTERS])
def test_clean_roster_imports_completely(app, runner, filename, options, rows):
    result = runner.invoke(args=["roster", "import", str(ROSTER_DIR / filename), *options])

    assert result.exit_code == 0, result.output
    assert f"imported={rows} rejected=0 skipped=0" in result.output
    assert certificate_count(app) == rows


def test_reimport_adds_nothing(app, runner):
    path = str(ROSTER_DIR / "2024年度初级注册安全工程师考试合格人员.xlsx")
    runner.invoke(args=["roster", "import", path, "--exam", "初级注册安全工程师", "--kind", "证书"])
    result = runner.invoke(args=["roster", "import", path, "--exam", "初级注册安全工程师", "--kind", "证书"])

    assert result.exit_code == 0, result.output
    assert "imported=0 rejected=0 skipped=600" in result.output
    assert "已于批次" in result.output
    assert certificate_count(app) == 600


def test_dry_run_writes_nothing(app, runner):
    path = str(ROSTER_DIR / "2024年度初级注册安全工程师考试合格人员.xlsx")
    result = runner.invoke(args=["roster", "import", path, "--exam", "初级注册安全工程师", "--kind", "证书", "--dry-run"])

    assert result.exit_code == 0, result.output
    assert "imported=600" in result.output
    assert certificate_count(app) == 0
    with app.app_context():
        assert db.session.scalar(select(func.count(ImportBatch.id))) == 0


def test_number_owned_by_other_record_is_rejected(app, runner, tmp_path):
    source = ROSTER_DIR / "2023年度二级造价工程师考试合格人员.csv"
    runner.invoke(args=["roster", "import", str(source), "--exam", "二级造价工程师", "--kind", "证书"])
    lines = source.read_bytes().decode("gb18030").splitlines()
    header, first = lines[0], lines[1].split(",")
    first[1] = "改名字"
    changed = tmp_path / "changed.csv"
    changed.write_text(header + "\n" + ",".join(first) + "\n", encoding="utf-8")
    report = tmp_path / "report.csv"

    result = runner.invoke(
        args=["roster", "import", str(changed), "--exam", "二级造价工程师", "--kind", "证书", "--report", str(report)]
    )

    assert result.exit_code == 0, result.output
    row = list(csv.DictReader(io.StringIO(report.read_text(encoding="utf-8"))))[0]
    assert row["outcome"] == "rejected"
    assert "另一条记录" in row["reason"]
    with app.app_context():
        kept = db.session.scalar(select(Certificate).where(Certificate.number == first[7]))
        assert kept.name != "改名字"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "文件"),
        (b"PK\x03\x04 not really a zip", "文件"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 100, "文件"),
    ],
    ids=["empty", "corrupt-zip", "old-xls"],
)
def test_unreadable_file_exits_nonzero(runner, tmp_path, content, message):
    path = tmp_path / "roster.xlsx"
    path.write_bytes(content)

    result = runner.invoke(args=["roster", "import", str(path), "--exam", "二级建造师", "--kind", "证书"])

    assert result.exit_code != 0
    assert message in result.output


def test_import_without_exam_asks_for_it(runner, tmp_path):
    path = tmp_path / "名单.xlsx"
    shutil.copy(ROSTER_DIR / "2024年度二级建造师考试合格人员名单.xlsx", path)

    result = runner.invoke(args=["roster", "import", str(path), "--kind", "证书"])

    assert result.exit_code != 0
    assert "考试" in result.output


# Rosters without a 证书类别 column whose file names name the exam but not the kind.
KINDLESS_ROSTERS = [
    "2024年度二级建造师考试合格人员名单.xlsx",
    "2024年度初级注册安全工程师考试合格人员.xlsx",
    "二级建造师_问题数据样例.xlsx",
]


@pytest.mark.parametrize("filename", KINDLESS_ROSTERS)
def test_import_without_kind_names_option(app, runner, filename):
    result = runner.invoke(args=["roster", "import", str(ROSTER_DIR / filename)])

    assert result.exit_code == 1, result.output
    assert "没有「证书类别」列" in result.output
    assert "--kind 证书" in result.output
    assert "--kind 合格证明" in result.output
    assert "--exam" not in result.output  # the exam comes from the file name
    assert certificate_count(app) == 0


def test_import_without_exam_or_kind_names_both(app, runner, tmp_path):
    path = tmp_path / "名单.xlsx"
    shutil.copy(ROSTER_DIR / "2024年度二级建造师考试合格人员名单.xlsx", path)

    result = runner.invoke(args=["roster", "import", str(path)])

    assert result.exit_code == 1, result.output
    assert "--exam 二级建造师" in result.output
    assert "初级注册安全工程师" in result.output  # the exams to choose from
    assert "--kind 证书" in result.output
    assert certificate_count(app) == 0


def test_import_with_kind_option_succeeds(app, runner):
    path = ROSTER_DIR / "2024年度二级建造师考试合格人员名单.xlsx"

    result = runner.invoke(args=["roster", "import", str(path), "--kind", "证书"])

    assert result.exit_code == 0, result.output
    assert "imported=1500 rejected=0 skipped=0" in result.output


def test_unreadable_file_without_kind_keeps_reason(runner, tmp_path):
    path = tmp_path / "empty.xlsx"
    path.write_bytes(b"")

    result = runner.invoke(args=["roster", "import", str(path)])

    assert result.exit_code == 1
    assert "是空的" in result.output
    assert "--kind" not in result.output


def test_configuration_error_prints_one_line(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("CERT_")}
    env["CERT_INSTANCE_PATH"] = str(tmp_path / "instance")  # no config.py, so no keys
    flask = Path(sys.executable).with_name("flask")

    result = subprocess.run(
        [str(flask), "--app", "wsgi", "routes"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("配置错误（configuration error）：缺少配置项 SECRET_KEY")


def test_certificate_render_writes_pdf(app, runner, import_roster, tmp_path):
    import_roster("2024年度初级注册安全工程师考试合格人员.xlsx", "初级注册安全工程师", "certificate")
    out = tmp_path / "cert.pdf"

    result = runner.invoke(args=["certificate", "render", "202423000001", "--out", str(out)])

    assert result.exit_code == 0, result.output
    text = PdfReader(out).pages[0].extract_text()
    assert "202423000001" in text


def test_certificate_render_unknown_number(runner, tmp_path):
    result = runner.invoke(args=["certificate", "render", "NOPE0000", "--out", str(tmp_path / "x.pdf")])

    assert result.exit_code != 0
    assert "不存在" in result.output


def test_header_only_file_exits_nonzero(runner, tmp_path):
    path = tmp_path / "header-only.csv"
    path.write_text("序号,姓名,性别,身份证号,出生年月,专业,批准日期,编号\n", encoding="utf-8")

    result = runner.invoke(args=["roster", "import", str(path), "--exam", "二级造价工程师", "--kind", "证书"])

    assert result.exit_code != 0
    assert "没有任何数据行" in result.output


def test_report_path_in_missing_folder_is_refused(runner, tmp_path):
    result = runner.invoke(
        args=["roster", "import", str(FAULTY), "--exam", "二级建造师", "--kind", "证书", "--report", str(tmp_path / "no" / "r.csv")]
    )

    assert result.exit_code != 0
    assert "不存在" in result.output


def test_import_guesses_exam_from_filename(runner):
    result = runner.invoke(args=["roster", "import", str(ROSTER_DIR / "2024年度初级注册安全工程师考试合格人员.xlsx"), "--kind", "证书"])

    assert result.exit_code == 0, result.output
    assert "imported=600" in result.output


def test_import_missing_file_message(runner, tmp_path):
    missing = tmp_path / "nofile.xlsx"

    result = runner.invoke(args=["roster", "import", str(missing), "--kind", "证书"])

    assert result.exit_code == 2
    assert f"文件「{missing}」不存在" in result.output


def test_import_invalid_kind_message(runner):
    roster = ROSTER_DIR / "2024年度二级建造师考试合格人员名单.xlsx"

    result = runner.invoke(args=["roster", "import", str(roster), "--kind", "证件"])

    assert result.exit_code == 2
    assert "证书类别「证件」无效，应为 证书 或 合格证明" in result.output


ROSTER_HEADER = "序号,姓名,性别,证件号码,出生年月,专业名称,批准日期,证书编号"


@pytest.mark.parametrize("where", ["register", "same-file"])
def test_import_report_flags_other_name(import_roster, runner, tmp_path, where):
    """叶军斌 (500112198102204879) is row 3 of the 2024 二级建造师 roster, so 叶军滨 with that ID number is a typed name."""
    rows = ["1,叶军滨,男,500112198102204879,1981-02,公路工程,2025-03-01,202521900001"]
    if where == "register":
        import_roster("2024年度二级建造师考试合格人员名单.xlsx", "二级建造师", "certificate")
    else:
        rows.insert(0, "1,叶军斌,男,500112198102204879,1981-02,公路工程,2025-03-01,202521900002")
    roster = tmp_path / "2025年度二级建造师考试合格人员名单.csv"
    roster.write_text("\n".join([ROSTER_HEADER, *rows]) + "\n", encoding="utf-8")
    report = tmp_path / "report.csv"

    result = runner.invoke(args=["roster", "import", str(roster), "--kind", "证书", "--dry-run", "--report", str(report)])

    assert result.exit_code == 0, result.output
    with report.open(encoding="utf-8-sig") as handle:
        outcomes = {line["row"]: line for line in csv.DictReader(handle)}
    flagged = outcomes[str(len(rows) + 1)]
    assert flagged["outcome"] == "rejected"
    assert f"第 {len(rows) + 1} 行：证件号码 5001**********4879 " in flagged["reason"]
    assert "「叶军斌」名下" in flagged["reason"]
    assert "本行姓名「叶军滨」" in flagged["reason"]
    assert "500112198102204879" not in flagged["reason"]
