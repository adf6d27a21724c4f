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
from app.services import batches, issuing

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


# --- Stored previews: GET pages never preview --------------------------------


def write_far_cell_xlsx(path, address: str):
    workbook = Workbook()
    sheet = workbook.active
    sheet.append(HEADER)
    sheet.append(person(1, ZHANG, "202421900001"))
    sheet[address] = "x"
    workbook.save(path)
    return path


def test_far_cell_upload_shows_stored_reason(app, staff_client, login_staff, tmp_path):
    batch_id = upload(staff_client, write_far_cell_xlsx(tmp_path / "far.xlsx", "J1048576"), "far.xlsx")
    # Without the file a second preview would fail with a server error, so a 200 shows none ran.
    with app.app_context():
        batches.stored_path(db.session.get(ImportBatch, batch_id)).unlink()
    auditor = login_staff("far-auditor", "auditor")

    for client in (staff_client, auditor):
        response = client.get(f"/admin/batches/{batch_id}")
        assert response.status_code == 200
        assert "J1048576" in response.get_data(as_text=True)
    report = staff_client.get(f"/admin/batches/{batch_id}/report.csv", follow_redirects=True)
    assert report.status_code == 200
    assert "还没有预览结果" in report.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(ImportBatch, batch_id).previewed_at is None


def test_unfinished_preview_not_run_by_get(app, login_staff, tmp_path):
    from app.services import batches as batch_service

    path = write_xlsx(tmp_path / "r.xlsx", [HEADER, person(1, ZHANG, "202421900001")])
    with app.app_context():
        stored = batch_service.store_upload(path, "r.xlsx")
        batch_id = batch_service.create_batch(stored, "r.xlsx", exam="二级建造师", kind="certificate", actor="test").id
    auditor = login_staff("unfinished-auditor", "auditor")

    page = auditor.get(f"/admin/batches/{batch_id}")
    report = auditor.get(f"/admin/batches/{batch_id}/report.csv")

    assert page.status_code == 200
    assert "预览没有完成" in page.get_data(as_text=True)
    assert report.status_code == 303
    with app.app_context():
        assert db.session.get(ImportBatch, batch_id).previewed_at is None


@pytest.mark.parametrize(
    ("age_seconds", "heartbeat_seconds", "state"),
    [(2 * 3600, None, "failed"), (60, None, "running"), (2 * 3600, 60, "running"), (2 * 3600, 3600, "failed")],
    ids=["old-no-heartbeat", "young", "old-recent-heartbeat", "old-silent-heartbeat"],
)
def test_stale_job_shown_interrupted(app, staff_client, tmp_path, age_seconds, heartbeat_seconds, state):
    from datetime import datetime, timedelta, timezone

    from app.models import Job
    from app.services import batches as batch_service

    path = write_xlsx(tmp_path / "r.xlsx", [HEADER, person(1, ZHANG, "202421900001")])
    now = datetime.now(timezone.utc)
    started = now - timedelta(seconds=age_seconds)
    heartbeat = None if heartbeat_seconds is None else now - timedelta(seconds=heartbeat_seconds)
    with app.app_context():
        stored = batch_service.store_upload(path, "r.xlsx")
        batch = batch_service.create_batch(stored, "r.xlsx", exam="二级建造师", kind="certificate", actor="test")
        # A job whose worker died: still "running" in the table.
        job = Job(kind="batch.preview", state="running", created_by="test", target=f"batch:{batch.id}",
                  created_at=started, started_at=started, heartbeat_at=heartbeat)
        db.session.add(job)
        db.session.flush()
        batch.job_id = job.id
        db.session.commit()
        batch_id, job_id = batch.id, job.id

    page = staff_client.get(f"/admin/batches/{batch_id}").get_data(as_text=True)
    progress = staff_client.get(f"/admin/batches/{batch_id}/progress")

    with app.app_context():
        assert db.session.get(Job, job_id).state == state
    if state == "failed":
        assert "任务已中断" in page
        assert "重新上传" in page
        assert progress.headers.get("HX-Refresh") == "true"
    else:
        assert 'hx-trigger="every 1s"' in progress.get_data(as_text=True)


# --- Rejected rows: formulas, control and bidi characters ---------------------


def write_csv(path, rows):
    import csv

    with open(path, "w", encoding="utf-8-sig", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def test_rejected_xlsx_escapes_header_and_control_characters(app, staff_client, tmp_path):
    formula = '=HYPERLINK("http://127.0.0.1:9/","x")'
    control = person(2, LI, "202421900002")
    control[3] = LI[2] + "\x01"
    rows = [HEADER + [formula], person(1, ZHANG, "202421900001") + ["a"], control + ["\x02b"]]
    batch_id = upload(staff_client, write_csv(tmp_path / "r.csv", rows), "r.csv")

    response = staff_client.get(f"/admin/batches/{batch_id}/rejected.xlsx")
    assert response.status_code == 200
    sheet = load_workbook(io.BytesIO(response.data)).active
    header = [cell for cell in next(sheet.iter_rows(min_row=1, max_row=1))]
    rejected = [cell.value for cell in next(sheet.iter_rows(min_row=2, max_row=2))]

    assert header[8].value == "'" + formula
    assert all(cell.data_type != "f" for row in sheet.iter_rows() for cell in row)
    assert rejected[3] == LI[2]
    assert rejected[8] == "b"
    assert "控制字符" in rejected[9]
    assert "第 D、I 列" in rejected[9]


def test_bidi_character_shown_escaped(app, staff_client, tmp_path):
    rows = [HEADER, person(1, ZHANG, "202421900001"), person(2, LI, "202399\u202e000001")]
    batch_id = upload(staff_client, write_csv(tmp_path / "r.csv", rows), "r.csv")

    page = batch_page(staff_client, batch_id)
    report = staff_client.get(f"/admin/batches/{batch_id}/report.csv").get_data(as_text=True)

    for text in (page, report):
        assert "202399\\u202e000001" in text
        assert "\u202e" not in text


def test_duplicate_header_upload_names_both_columns(staff_client, tmp_path):
    rows = [HEADER + ["姓名"], person(1, ZHANG, "202421900001") + ["韩零"]]
    batch_id = upload(staff_client, write_csv(tmp_path / "r.csv", rows), "r.csv")

    assert "第 B 列「姓名」和第 I 列「姓名」是同一列名" in batch_page(staff_client, batch_id)


# --- Batch ZIP export: one job per batch, a bounded number at once -------------


@pytest.fixture
def held_exports(monkeypatch):
    """Hold every export job before it writes its ZIP until the test releases it."""
    import threading

    from app.services import exports

    release = threading.Event()
    real = exports.build_batch_zip

    def held(batch_id, job_id, progress):
        release.wait(60)
        return real(batch_id, job_id, progress)

    monkeypatch.setattr(exports, "build_batch_zip", held)
    yield release
    release.set()


def confirmed_batch(staff_client, tmp_path, name: str, number: str) -> int:
    batch_id = upload(staff_client, write_xlsx(tmp_path / name, [HEADER, person(1, ZHANG, number)]), name)
    confirm(staff_client, batch_id)
    return batch_id


def post_export(client, batch_id: int):
    token = csrf_token(batch_page(client, batch_id))
    return client.post(f"/admin/batches/{batch_id}/export", data={"csrf_token": token})


def wait_for_export_end(app, job_id: int, seconds: float = 120) -> None:
    from app.models import Job

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with app.app_context():
            if db.session.get(Job, job_id).state in ("done", "failed"):
                return
        time.sleep(0.2)
    raise AssertionError(f"export job {job_id} still running after {seconds} s")


def test_export_running_job_reused(app, staff_client, tmp_path, held_exports):
    from app.models import Job

    batch_id = confirmed_batch(staff_client, tmp_path, "e.xlsx", "202421900001")

    first = post_export(staff_client, batch_id)
    second = post_export(staff_client, batch_id)
    held_exports.set()
    job_id = int(first.headers["Location"].rsplit("/", 1)[-1])
    wait_for_export_end(app, job_id)

    assert second.headers["Location"] == first.headers["Location"]
    assert "已在进行中" in staff_client.get(second.headers["Location"]).get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(func.count(Job.id)).where(Job.kind == "batch_zip")) == 1


def test_export_busy_when_limit_reached(app, staff_client, tmp_path, held_exports, monkeypatch):
    monkeypatch.setitem(app.config, "EXPORT_MAX_CONCURRENT", 1)
    first_batch = confirmed_batch(staff_client, tmp_path, "a.xlsx", "202421900001")
    second_batch = confirmed_batch(staff_client, tmp_path, "b.xlsx", "202421900002")

    first = post_export(staff_client, first_batch)
    busy = post_export(staff_client, second_batch)
    held_exports.set()
    wait_for_export_end(app, int(first.headers["Location"].rsplit("/", 1)[-1]))

    assert busy.status_code == 303
    assert busy.headers["Location"].endswith(f"/admin/batches/{second_batch}")
    assert "达到同时导出的上限 1 个" in staff_client.get(busy.headers["Location"]).get_data(as_text=True)


def test_far_cell_background_job_fails(app, staff_client, tmp_path, monkeypatch):
    from app.models import Job

    monkeypatch.setitem(app.config, "IMPORT_BACKGROUND_BYTES", 0)
    batch_id = upload(staff_client, write_far_cell_xlsx(tmp_path / "far.xlsx", "XFD1048576"), "far.xlsx")

    wait_for_job(staff_client, batch_id)

    assert "XFD1048576" in batch_page(staff_client, batch_id)
    with app.app_context():
        job_id = db.session.get(ImportBatch, batch_id).job_id
        assert db.session.get(Job, job_id).state == "failed"


def test_progress_writes_heartbeat_when_due(app, monkeypatch):
    from app.models import Job
    from app.services import jobs

    with app.app_context():
        job = jobs.create_job("batch.export", actor="test")
        progress = jobs.Progress(job.id, every=1000)
        progress(1, 10)
        quiet = db.session.get(Job, job.id).heartbeat_at
        monkeypatch.setattr(jobs, "HEARTBEAT_SECONDS", 0)
        progress(2, 10)
        db.session.expire_all()
        beat = db.session.get(Job, job.id)

    assert quiet is None
    assert beat.heartbeat_at is not None
    assert beat.done == 2


def test_preview_names_rejected_rows(app, staff_client, tmp_path):
    row = person(1, ZHANG, "202421900001")
    row[6] = "2099-01-01"  # approval date in the future: rejected before a record is built
    batch_id = upload(staff_client, write_xlsx(tmp_path / "r.xlsx", [HEADER, row]))

    html = staff_client.get(f"/admin/batches/{batch_id}").get_data(as_text=True)
    rejected = html[html.index('class="outcome-rejected'):]
    rejected = rejected[: rejected.index("</tr>")]

    assert f"<td>{ZHANG[0]}</td>" in rejected
    assert "<td>202421900001</td>" in rejected


# --- An ID number already on record under another name ----------------------

ZHANG_RENAMED = ["张玮", *ZHANG[1:]]


def test_id_number_under_other_name_rejected(app, staff_client, tmp_path, stored_zhang):
    path = write_xlsx(tmp_path / "second.xlsx", [HEADER, person(1, ZHANG_RENAMED, "202421900002")])
    batch_id = upload(staff_client, path, "second.xlsx")

    row = batch_rows(app, batch_id)[2]
    html = batch_page(staff_client, batch_id)
    confirm(staff_client, batch_id)

    assert row.outcome == "rejected"
    assert row.reason.startswith("第 2 行：证件号码 5001**********1232 已登记在姓名「张伟」名下")
    assert "与本行姓名「张玮」不一致" in row.reason
    assert "更正" in row.reason
    assert ZHANG[2] not in row.reason
    assert "已登记在姓名「张伟」名下" in html
    assert count(app, Certificate) == 1


def test_renamed_holder_imported_after_correction(app, staff_client, tmp_path, stored_zhang):
    from app.services import records

    with app.app_context():
        certificate = db.session.scalar(select(Certificate))
        values = {key: value or "" for key, value in records.snapshot(certificate).items()}
        values["name"] = ZHANG_RENAMED[0]
        records.correct(certificate, values, reason="持证人已改名，核对户口簿后更正", actor="test")
    path = write_xlsx(tmp_path / "second.xlsx", [HEADER, person(1, ZHANG_RENAMED, "202421900002")])
    batch_id = upload(staff_client, path, "second.xlsx")

    confirm(staff_client, batch_id)

    assert batch_rows(app, batch_id)[2].outcome == "imported"
    assert count(app, Certificate) == 2


def test_name_change_of_stored_number_offered(app, staff_client, tmp_path, stored_zhang):
    """A row with the stored certificate number is a correction candidate, so the other-name rule leaves it alone."""
    path = write_xlsx(tmp_path / "second.xlsx", [HEADER, person(1, ZHANG_RENAMED, "202421900001")])
    batch_id = upload(staff_client, path, "second.xlsx")

    row = batch_rows(app, batch_id)[2]

    assert row.outcome == "changed"
    assert row.changes == {"name": ["张伟", "张玮"]}


def test_confirm_rejects_name_registered_since_preview(app, runner, staff_client, tmp_path):
    """Another batch may store the ID number under another name between preview and confirm."""
    waiting = write_xlsx(tmp_path / "waiting.xlsx", [HEADER, person(1, ZHANG_RENAMED, "202421900002")])
    batch_id = upload(staff_client, waiting, "waiting.xlsx")
    assert batch_rows(app, batch_id)[2].outcome == "imported"
    first = write_xlsx(tmp_path / "first.xlsx", [HEADER, person(1, ZHANG, "202421900001")])
    result = runner.invoke(args=["roster", "import", str(first), "--exam", "二级建造师", "--kind", "证书"])
    assert result.exit_code == 0, result.output

    confirm(staff_client, batch_id)

    row = batch_rows(app, batch_id)[2]
    assert row.outcome == "rejected"
    assert "已登记在姓名「张伟」名下" in row.reason
    with app.app_context():
        batch = db.session.get(ImportBatch, batch_id)
        assert batch.state == "confirmed"
        assert batch.rejected_count == 1
        assert batch.imported_count == 0
        assert db.session.scalar(select(Certificate.name)) == "张伟"
    assert count(app, Certificate) == 1


# --- The upload's file name ----------------------------------------------------


def test_long_file_name_shortened(app, staff_client, tmp_path):
    """import_batch.filename stores at most 255 characters, so a longer name is cut around an ellipsis, keeping its suffix."""
    filename = "2024年度二级建造师考试合格人员名单" + "补" * 280 + ".xlsx"
    path = write_xlsx(tmp_path / "r.xlsx", [HEADER, person(1, ZHANG, "202421900001")])

    batch_id = upload(staff_client, path, filename)

    with app.app_context():
        stored = db.session.get(ImportBatch, batch_id).filename
    assert len(stored) == batches.MAX_FILENAME_LENGTH == 255
    assert stored.startswith("2024年度二级建造师考试合格人员名单补补")
    assert stored.endswith("补….xlsx")
    assert batch_rows(app, batch_id)[2].outcome == "imported"


@pytest.mark.parametrize(
    ("filename", "expected"),
    [("名单.csv", "名单.csv"), ("名单\u202e.csv", "名单\\u202e.csv"), ("a" * 300 + ".csv", "a" * 250 + "….csv")],
)
def test_display_filename(filename, expected):
    assert batches.display_filename(filename) == expected


def test_failed_batch_leaves_no_upload(app):
    """A batch that cannot be written takes its upload file with it, because the file contains whole ID numbers."""
    from pathlib import Path

    from sqlalchemy.exc import IntegrityError

    with app.app_context():
        uploads = batches.upload_dir()
        before = set(uploads.iterdir())
        stored_name = batches.store_upload((ROSTER_DIR / "2023年度二级造价工程师考试合格人员.csv").read_bytes(), "r.csv")
        assert Path(uploads, stored_name).is_file()
        with pytest.raises(IntegrityError):
            # uploaded_by is NOT NULL on both databases, so the insert fails for real.
            batches.create_batch(stored_name, "r.csv", exam=None, kind=None, actor=None)
        after = set(uploads.iterdir())
        batch_count = db.session.scalar(select(func.count(ImportBatch.id)))

    assert after == before
    assert batch_count == 0
