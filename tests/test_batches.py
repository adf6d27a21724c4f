"""Import batches on small workbooks made here: hidden and filtered rows, formulas, changed records,
the rejected-rows workbook, background jobs and all-or-nothing confirmation."""

from __future__ import annotations

import io
import re
import time
from datetime import date

import pytest
from openpyxl import Workbook, load_workbook
from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditEntry, BatchRow, Certificate, CertificateVersion, ImportBatch
from app.services import issuing

from app.domain.roster import RosterFileError

from .conftest import ROSTER_DIR, csrf_token
from .test_browser import CHROMIUM, live_server, page  # noqa: F401 - fixtures for the Chromium test

HEADER = ["序号", "姓名", "性别", "证件号码", "出生年月", "专业名称", "批准日期", "证书编号"]
# Synthetic people with valid check digits.
ZHANG = ["张伟", "男", "500103199001011232", "1990-01"]
LI = ["李强", "男", "500109196409269696", "1964-09"]


def person(index: int, who: list, number: str, specialty: str = "建筑工程") -> list:
    name, gender, id_number, born = who
    return [index, name, gender, id_number, born, specialty, "2024-10-18", number]


def write_xlsx(path, rows, *, hidden=(), auto_filter=None):
    workbook = Workbook()
    sheet = workbook.active
    for row in rows:
        sheet.append(row)
    for number in hidden:
        sheet.row_dimensions[number].hidden = True
    if auto_filter:
        sheet.auto_filter.ref = auto_filter
    workbook.save(path)
    return path


def upload(client, path, filename="名单.xlsx", include_hidden=False):
    page = client.get("/admin/batches/new").get_data(as_text=True)
    data = {
        "file": (io.BytesIO(path.read_bytes()), filename),
        "exam": "二级建造师",
        "kind": "certificate",
        "csrf_token": csrf_token(page),
    }
    if include_hidden:
        data["include_hidden"] = "y"
    response = client.post("/admin/batches/new", data=data, content_type="multipart/form-data")
    assert response.status_code == 303, response.get_data(as_text=True)
    return int(re.search(r"/admin/batches/(\d+)", response.headers["Location"]).group(1))


def batch_page(client, batch_id: int) -> str:
    return client.get(f"/admin/batches/{batch_id}").get_data(as_text=True)


def confirm(client, batch_id: int, apply=()):
    token = csrf_token(batch_page(client, batch_id))
    return client.post(f"/admin/batches/{batch_id}/confirm", data={"csrf_token": token, "apply": list(apply)})


def batch_rows(app, batch_id: int) -> dict[int, BatchRow]:
    with app.app_context():
        rows = db.session.scalars(select(BatchRow).where(BatchRow.batch_id == batch_id)).all()
        return {row.row: row for row in rows}


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count(model.id)))


# --- Hidden and filtered rows ----------------------------------------------


@pytest.mark.parametrize(
    ("auto_filter", "flag", "label"),
    [(None, "hidden", "隐藏行"), ("A1:H3", "filtered", "被筛选隐藏")],
)
def test_hidden_row_flagged_not_imported(app, staff_client, tmp_path, auto_filter, flag, label):
    path = write_xlsx(
        tmp_path / "r.xlsx", [HEADER, person(1, ZHANG, "202421900001"), person(2, LI, "202421900002")],
        hidden=[3], auto_filter=auto_filter,
    )  # fmt: skip
    batch_id = upload(staff_client, path)

    html = batch_page(staff_client, batch_id)
    row = batch_rows(app, batch_id)[3]

    assert row.hidden == flag
    assert row.outcome == "skipped"
    assert label in html
    assert "包括隐藏行" in html


def test_hidden_row_imported_when_ticked(app, staff_client, tmp_path):
    path = write_xlsx(
        tmp_path / "r.xlsx", [HEADER, person(1, ZHANG, "202421900001"), person(2, LI, "202421900002")], hidden=[3]
    )
    batch_id = upload(staff_client, path, include_hidden=True)

    confirm(staff_client, batch_id)

    assert count(app, Certificate) == 2


def test_include_hidden_option_previews_again(app, staff_client, tmp_path):
    path = write_xlsx(
        tmp_path / "r.xlsx", [HEADER, person(1, ZHANG, "202421900001"), person(2, LI, "202421900002")], hidden=[3]
    )
    batch_id = upload(staff_client, path)
    token = csrf_token(batch_page(staff_client, batch_id))

    staff_client.post(f"/admin/batches/{batch_id}/options", data={"csrf_token": token, "include_hidden": "1"})

    assert batch_rows(app, batch_id)[3].outcome == "imported"


def test_hidden_sheet_noticed(staff_client, tmp_path):
    workbook = Workbook()
    workbook.active.append(HEADER)
    workbook.active.append(person(1, ZHANG, "202421900001"))
    workbook.create_sheet("旧名单").sheet_state = "hidden"
    workbook.save(tmp_path / "r.xlsx")
    batch_id = upload(staff_client, tmp_path / "r.xlsx")

    assert "隐藏的工作表「旧名单」" in batch_page(staff_client, batch_id)


# --- Cells that cannot be imported -----------------------------------------


def test_formula_without_value_names_cell(app, staff_client, tmp_path):
    row = person(1, ZHANG, "202421900001")
    row[1] = '=CONCATENATE("张","伟")'
    batch_id = upload(staff_client, write_xlsx(tmp_path / "r.xlsx", [HEADER, row]))

    stored = batch_rows(app, batch_id)[2]

    assert stored.outcome == "rejected"
    assert "单元格 B2" in stored.reason
    assert "没有保存它的计算结果" in stored.reason


def test_name_without_font_rejected(app, staff_client, tmp_path):
    row = person(1, ZHANG, "202421900001")
    row[1] = "张\U00030edd"
    batch_id = upload(staff_client, write_xlsx(tmp_path / "r.xlsx", [HEADER, row]))

    stored = batch_rows(app, batch_id)[2]

    assert stored.outcome == "rejected"
    assert "U+30EDD" in stored.reason


# --- Rows that change an existing record -----------------------------------


@pytest.fixture
def stored_zhang(app, staff_client, tmp_path):
    path = write_xlsx(tmp_path / "first.xlsx", [HEADER, person(1, ZHANG, "202421900001")])
    confirm(staff_client, upload(staff_client, path, "first.xlsx"))
    assert count(app, Certificate) == 1


def test_changed_row_shows_difference(app, staff_client, tmp_path, stored_zhang):
    path = write_xlsx(tmp_path / "second.xlsx", [HEADER, person(1, ZHANG, "202421900001", "机电工程")])
    batch_id = upload(staff_client, path, "second.xlsx")

    html = batch_page(staff_client, batch_id)
    row = batch_rows(app, batch_id)[2]

    assert row.outcome == "changed"
    assert row.changes == {"specialty": ["建筑工程", "机电工程"]}
    assert 'name="apply" value="2"' in html
    assert "<del>建筑工程</del>" in html


@pytest.mark.parametrize(("ticked", "specialty", "version"), [((2,), "机电工程", 2), ((), "建筑工程", 1)])
def test_changed_row_applied_only_when_ticked(app, staff_client, tmp_path, stored_zhang, ticked, specialty, version):
    path = write_xlsx(tmp_path / "second.xlsx", [HEADER, person(1, ZHANG, "202421900001", "机电工程")])
    batch_id = upload(staff_client, path, "second.xlsx")

    confirm(staff_client, batch_id, apply=ticked)

    with app.app_context():
        certificate = db.session.scalar(select(Certificate))
        assert certificate.specialty.name == specialty
        assert certificate.version == version
        assert db.session.scalar(select(func.count(CertificateVersion.id))) == version - 1
        corrections = db.session.scalar(
            select(func.count(AuditEntry.id)).where(AuditEntry.action == "certificate.correct")
        )
        assert corrections == version - 1


def test_number_of_other_person_rejected(app, staff_client, tmp_path, stored_zhang):
    path = write_xlsx(tmp_path / "second.xlsx", [HEADER, person(1, LI, "202421900001")])
    batch_id = upload(staff_client, path, "second.xlsx")

    row = batch_rows(app, batch_id)[2]

    assert row.outcome == "rejected"
    assert "另一人" in row.reason


@pytest.mark.parametrize(("flag", "outcome", "specialty"), [([], "rejected", "建筑工程"), (["--apply-changes"], "changed", "机电工程")])
def test_cli_applies_changes_only_with_flag(app, runner, staff_client, tmp_path, stored_zhang, flag, outcome, specialty):
    path = write_xlsx(tmp_path / "second.xlsx", [HEADER, person(1, ZHANG, "202421900001", "机电工程")])

    result = runner.invoke(args=["roster", "import", str(path), "--exam", "二级建造师", "--kind", "证书", *flag])

    assert result.exit_code == 0, result.output
    with app.app_context():
        batch = db.session.scalar(select(ImportBatch).order_by(ImportBatch.id.desc()))
        row = db.session.scalar(select(BatchRow).where(BatchRow.batch_id == batch.id))
        assert row.outcome == outcome
        assert db.session.scalar(select(Certificate)).specialty.name == specialty


# --- Rejected rows as XLSX ---------------------------------------------------


def test_rejected_rows_round_trip(app, staff_client, tmp_path):
    bad = person(2, LI, "202421900002")
    bad[6] = "2031-01-01"  # an approval date in the future
    path = write_xlsx(tmp_path / "r.xlsx", [HEADER, person(1, ZHANG, "202421900001"), bad])
    batch_id = upload(staff_client, path)
    confirm(staff_client, batch_id)

    response = staff_client.get(f"/admin/batches/{batch_id}/rejected.xlsx")
    sheet = load_workbook(io.BytesIO(response.data)).active
    rows = [list(row) for row in sheet.iter_rows(values_only=True)]

    assert rows[0] == HEADER + ["错误原因"]
    assert rows[1][:8] == [2, "李强", "男", "500109196409269696", "1964-09", "建筑工程", "2031-01-01", "202421900002"]
    assert "批准日期" in rows[1][8]

    sheet.cell(row=2, column=7, value="2024-10-18")
    fixed = tmp_path / "fixed.xlsx"
    sheet.parent.save(fixed)
    confirm(staff_client, upload(staff_client, fixed, "fixed.xlsx"))

    assert count(app, Certificate) == 2


# --- Background jobs and all-or-nothing -------------------------------------


def wait_for_job(client, batch_id: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = client.get(f"/admin/batches/{batch_id}/progress")
        if response.headers.get("HX-Refresh") == "true":
            return
        assert 'hx-trigger="every 1s"' in response.get_data(as_text=True)
        time.sleep(0.2)
    raise AssertionError(f"job of batch {batch_id} still running after {seconds} s")


def test_background_preview_and_confirm(app, staff_client, tmp_path, monkeypatch):
    monkeypatch.setitem(app.config, "IMPORT_BACKGROUND_BYTES", 0)
    monkeypatch.setitem(app.config, "IMPORT_BACKGROUND_ROWS", 0)
    rows = [HEADER, person(1, ZHANG, "202421900001"), person(2, LI, "202421900002")]
    batch_id = upload(staff_client, write_xlsx(tmp_path / "r.xlsx", rows))

    wait_for_job(staff_client, batch_id)
    assert "将导入 2 行" in batch_page(staff_client, batch_id)
    confirm(staff_client, batch_id)
    wait_for_job(staff_client, batch_id)

    assert count(app, Certificate) == 2
    with app.app_context():
        assert db.session.get(ImportBatch, batch_id).state == "confirmed"


def test_confirm_is_all_or_nothing(app, staff_client, tmp_path, monkeypatch):
    rows = [HEADER] + [person(i, ZHANG, f"20242190{i:04d}") for i in range(1, 5)]
    batch_id = upload(staff_client, write_xlsx(tmp_path / "r.xlsx", rows))
    # Another batch commits the last number after the register check, as a concurrent confirm would.
    with app.app_context():
        other = batch_rows(app, batch_id)[5].record
        record = issuing.record_from_json(other)
        catalogue_ids = issuing._catalogue_ids()
        from app.services.catalogue import load_catalogue

        batch = db.session.get(ImportBatch, batch_id)
        db.session.execute(
            Certificate.__table__.insert(), [issuing._certificate_row(record, load_catalogue(), batch, catalogue_ids)]
        )
        db.session.commit()
    monkeypatch.setattr(issuing, "CHUNK", 2)
    monkeypatch.setattr(issuing, "_existing_by_number", lambda numbers: {})

    response = confirm(staff_client, batch_id)

    assert response.status_code == 303
    assert count(app, Certificate) == 1
    with app.app_context():
        assert db.session.get(ImportBatch, batch_id).state == "preview"
    assert "已全部撤回" in staff_client.get(f"/admin/batches/{batch_id}").get_data(as_text=True)


def test_batch_list_shows_times(staff_client, tmp_path):
    batch_id = upload(staff_client, write_xlsx(tmp_path / "r.xlsx", [HEADER, person(1, ZHANG, "202421900001")]))

    html = staff_client.get("/admin/batches").get_data(as_text=True)

    assert f"#{batch_id}" in html
    assert date.today().isoformat()[:4] in html


# --- In Chromium ------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium")
def test_browser_upload_tick_confirm(app, staff_client, stored_zhang, live_server, page, tmp_path):
    path = write_xlsx(
        tmp_path / "second.xlsx",
        [HEADER, person(1, ZHANG, "202421900001", "机电工程"), person(2, LI, "202421900002")],
    )
    host = live_server.removeprefix("http://").split(":")[0]
    page.context.add_cookies(
        [{"name": "session", "value": staff_client.get_cookie("session").value, "domain": host, "path": "/"}]
    )

    page.goto(f"{live_server}/admin/batches/new")
    assert page.url.endswith("/admin/batches/new"), page.url
    with page.expect_file_chooser() as chooser:
        page.click("#file")
    chooser.value.set_files(str(path))
    page.select_option("#exam", "二级建造师")
    page.select_option("#kind", "certificate")
    page.click("button:has-text('上传并预览')")
    page.wait_for_selector("text=可更正已有记录 1 行")
    page.check("input[name=apply][value='2']")
    page.click("button:has-text('确认导入')")

    page.wait_for_selector("text=已导入 1 条，更正 1 条")
    assert count(app, Certificate) == 2


def test_parallel_confirms_apply_once(app):
    """Two confirms of one batch at the same moment: one writes, the other is refused."""
    import threading

    from app.services import batches as batch_service

    with app.app_context():
        stored = batch_service.store_upload(ROSTER_DIR / "2024年度初级注册安全工程师考试合格人员.xlsx", "safety.xlsx")
        batch = batch_service.create_batch(stored, "safety.xlsx", exam="初级注册安全工程师", kind="certificate", actor="test")
        batch_service.preview(batch)
        db.session.commit()
        batch_id = batch.id

    outcomes: list[str] = []

    def confirm_once() -> None:
        with app.app_context():
            target = db.session.get(ImportBatch, batch_id)
            try:
                batch_service.confirm(target)
            except RosterFileError as error:
                outcomes.append(str(error))
            else:
                outcomes.append("confirmed")

    threads = [threading.Thread(target=confirm_once) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes.count("confirmed") == 1
    with app.app_context():
        assert db.session.scalar(select(func.count(Certificate.id))) == 600
        confirms = db.session.scalar(select(func.count(AuditEntry.id)).where(AuditEntry.action == "batch.confirm"))
        assert confirms == 1
