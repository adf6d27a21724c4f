"""Staff pages: log in, upload a roster, preview, confirm and download the report."""

from __future__ import annotations

import logging

from flask import Response, abort, current_app, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select
from wtforms import SelectChoice

from ..domain import upload_checks
from ..domain.roster import RosterFileError, guess_from_filename
from ..extensions import db
from ..models import Certificate, Exam, ImportBatch, Job
from ..services import batches, jobs
from ..services.catalogue import load_catalogue
from ..services.issuing import CHANGE_LABELS
from . import bp
from .forms import ConfirmForm, UploadForm

logger = logging.getLogger(__name__)


@bp.get("/")
def index():
    recent = db.session.scalars(select(ImportBatch).order_by(ImportBatch.id.desc()).limit(20)).all()
    total = db.session.scalar(select(func.count(Certificate.id)))
    return render_template("admin/index.html", batches=recent, total=total)


@bp.get("/batches")
def batch_list():
    # Clamped, because a page number past about 2**63 / 50 overflows the database's OFFSET.
    page = min(max(request.args.get("page", 1, type=int), 1), 1_000_000)
    query = select(ImportBatch).order_by(ImportBatch.id.desc())
    pagination = db.paginate(query, page=page, per_page=50, error_out=False)
    return render_template("admin/batches.html", pagination=pagination)


def _upload_form() -> UploadForm:
    form = UploadForm()
    exams = db.session.scalars(select(Exam.name).order_by(Exam.id)).all()
    form.exam.choices = [SelectChoice("", "按文件内容")] + [SelectChoice(name) for name in exams]
    return form


@bp.route("/batches/new", methods=["GET", "POST"])
def upload():
    form = _upload_form()
    if form.validate_on_submit():
        upload_file = form.file.data
        filename = upload_file.filename or "upload"
        guessed_exam, guessed_kind = guess_from_filename(filename, load_catalogue())
        try:
            upload_checks.check_upload_size(
                upload_file.stream, filename, current_app.config["ROSTER_UPLOAD_MAX_BYTES"], "名单文件",
                "请把名单拆成几个文件分别上传",
            )
            stored_name = batches.store_upload(upload_file.read(), filename)
            batch = batches.create_batch(
                stored_name,
                filename,
                exam=form.exam.data or guessed_exam,
                kind=form.kind.data or guessed_kind,
                actor=current_user.username,
                include_hidden=bool(form.include_hidden.data),
            )
        except (RosterFileError, upload_checks.UploadTooLargeError) as error:
            form.file.errors.append(str(error))
        else:
            _preview_or_start(batch)
            return redirect(url_for(".batch", batch_id=batch.id), 303)
    return render_template("admin/upload.html", form=form)


def _preview_or_start(batch: ImportBatch) -> None:
    """Preview a small file now and a large one in a background job.

    A file that cannot be used is recorded as a failed preview job, whose
    message the batch page shows; GET pages never run a preview themselves.
    """
    if batches.runs_in_background(batch):
        batches.start_preview(batch, current_user.username)
        return
    try:
        batches.preview(batch)
    except RosterFileError as error:
        batches.record_preview_failure(batch, str(error), current_user.username)
        logger.info("Batch %s cannot be previewed; the batch page shows the reason", batch.id)


def _batch(batch_id: int) -> ImportBatch:
    batch = db.session.get(ImportBatch, batch_id)
    if batch is None:
        abort(404)
    return batch


def _running_job(batch: ImportBatch) -> Job | None:
    job = jobs.get_job(batch.job_id) if batch.job_id else None
    if job is not None and job.state in (jobs.JOB_QUEUED, jobs.JOB_RUNNING):
        return job
    return None


@bp.get("/batches/<int:batch_id>")
def batch(batch_id: int):
    batch = _batch(batch_id)
    job = _running_job(batch)
    error = _preview_error(batch) if job is None else None
    page = request.args.get("page", 1, type=int)
    rows, pages = [], 1
    if job is None and batch.previewed_at is not None:
        rows, pages = batches.problem_rows(batch, page)
    progress = batches.job_progress(job) if job else None
    return render_template(
        "admin/batch.html", batch=batch, rows=rows, pages=pages, page=page, job=job, progress=progress,
        error=error, form=ConfirmForm(), earlier_batch_id=_earlier_batch(batch), change_labels=CHANGE_LABELS,
        identities=batches.rejected_identities(batch, rows),
    )  # fmt: skip


def _preview_error(batch: ImportBatch) -> str | None:
    """Return why a batch has no preview, from its last job; None when it has one or is no longer in preview."""
    if batch.state != "preview" or batch.previewed_at is not None:
        return None
    last = jobs.get_job(batch.job_id) if batch.job_id else None
    if last is not None and last.state == jobs.JOB_FAILED and last.message:
        return last.message
    return (
        f"批次 #{batch.id} 的预览没有完成，处理它的进程可能已中断。"
        "请放弃本批次后重新上传；如果再次出现，请联系系统管理员。"
    )


def _earlier_batch(batch: ImportBatch) -> int | None:
    return db.session.scalar(
        select(ImportBatch.id)
        .where(ImportBatch.sha256 == batch.sha256, ImportBatch.state == "confirmed", ImportBatch.id != batch.id)
        .limit(1)
    )


@bp.get("/batches/<int:batch_id>/progress")
def batch_progress(batch_id: int):
    """Return the progress fragment htmx polls every second; once the job ends, the page reloads."""
    batch = _batch(batch_id)
    job = jobs.get_job(batch.job_id) if batch.job_id else None
    if job is None or job.state not in (jobs.JOB_QUEUED, jobs.JOB_RUNNING):
        response = make_response(render_template("admin/_batch_progress.html", batch=batch, job=job, progress=None))
        response.headers["HX-Refresh"] = "true"
        return response
    return render_template("admin/_batch_progress.html", batch=batch, job=job, progress=batches.job_progress(job))


@bp.post("/batches/<int:batch_id>/options")
def batch_options(batch_id: int):
    batch = _batch(batch_id)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    include = request.form.get("include_hidden") == "1"
    try:
        batches.set_include_hidden(batch, include, current_user.username)
    except RosterFileError as error:
        flash(str(error), "error")
    else:
        _preview_or_start(batch)
        flash("已包括隐藏行并重新预览。" if include else "已不包括隐藏行并重新预览。", "info")
    return redirect(url_for(".batch", batch_id=batch.id), 303)


@bp.post("/batches/<int:batch_id>/confirm")
def confirm(batch_id: int):
    batch = _batch(batch_id)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    apply_rows = [int(value) for value in request.form.getlist("apply") if value.isdigit()]
    if _running_job(batch) is not None:
        flash(f"批次 #{batch.id} 正在处理中，请等进度条走完后再确认。", "error")
        return redirect(url_for(".batch", batch_id=batch.id), 303)
    if batch.state == "preview" and batch.previewed_at is not None and batches.runs_in_background(batch):
        batches.start_confirm(batch, current_user.username, apply_rows)
        flash(f"批次 #{batch.id} 正在后台导入，完成后本页显示结果。", "info")
        return redirect(url_for(".batch", batch_id=batch.id), 303)
    try:
        plan = batches.confirm(batch, apply_rows=apply_rows)
    except RosterFileError as error:
        flash(str(error), "error")
    else:
        counts = plan.counts
        flash(
            f"已导入 {counts['imported']} 条，更正 {batch.applied_count} 条，"
            f"拒绝 {counts['rejected']} 条，跳过 {counts['skipped']} 条。",
            "success",
        )
    return redirect(url_for(".batch", batch_id=batch.id), 303)


@bp.post("/batches/<int:batch_id>/discard")
def discard(batch_id: int):
    batch = _batch(batch_id)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        batches.discard(batch, current_user.username)
    except RosterFileError as error:
        flash(str(error), "error")
    else:
        flash("已放弃本批次，未写入任何记录。", "info")
    return redirect(url_for(".index"), 303)


@bp.get("/batches/<int:batch_id>/report.csv")
def report(batch_id: int):
    batch = _batch(batch_id)
    if batch.previewed_at is None and batch.report_csv is None:
        # The report is read from the stored preview only, and the batch page shows why there is none.
        flash(f"批次 #{batch.id} 还没有预览结果，无法下载报告。", "error")
        return redirect(url_for(".batch", batch_id=batch.id), 303)
    # The BOM makes Excel open the UTF-8 report with the right encoding.
    response = Response("\ufeff" + batches.batch_report_csv(batch), mimetype="text/csv")
    response.headers["Content-Disposition"] = f"attachment; filename=batch-{batch.id}-report.csv"
    return response


@bp.get("/batches/<int:batch_id>/rejected.xlsx")
def rejected_rows(batch_id: int):
    batch = _batch(batch_id)
    if batch.previewed_at is None:
        abort(404)
    response = Response(
        batches.rejected_xlsx(batch), mimetype="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    response.headers["Content-Disposition"] = f"attachment; filename=batch-{batch.id}-rejected.xlsx"
    return response
