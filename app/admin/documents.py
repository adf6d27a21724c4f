"""Staff pages for certificate documents: official seals (admin only) and batch ZIP exports."""

from __future__ import annotations

import logging

from flask import Response, abort, current_app, flash, redirect, render_template, send_file, url_for
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import StringField
from wtforms.validators import DataRequired, Length

from ..domain import upload_checks
from ..domain.seals import MAX_SEAL_UPLOAD_BYTES, SEAL_CODE_DIGITS, SealUploadError
from ..extensions import db
from ..models import ImportBatch
from ..services import exports, jobs, seals
from . import admin_only, bp

logger = logging.getLogger(__name__)


class SealForm(FlaskForm):
    code = StringField(_l("印章编码（13 位数字）"),
                       validators=[DataRequired(_l("请填写印章编码。")), Length(max=SEAL_CODE_DIGITS + 10)])
    image = FileField(_l("正式印章图片（PNG，透明背景，不超过 2 MB；不更换图片可不选）"))


class PlainForm(FlaskForm):
    """A form with only the CSRF token, for buttons."""


# --- seals -----------------------------------------------------------------


@bp.get("/seals")
@admin_only
def seals_page():
    items = [(seal, SealForm(prefix=f"seal{seal.id}", code=seal.code)) for seal in seals.all_seals()]
    return render_template("admin/seals.html", items=items, reset_form=PlainForm(),
                           max_kb=min(current_app.config["SEAL_UPLOAD_MAX_BYTES"], MAX_SEAL_UPLOAD_BYTES) // 1024)


@bp.post("/seals/<int:seal_id>")
@admin_only
def seal_update(seal_id: int):
    seal = seals.get_seal(seal_id) or abort(404)
    form = SealForm(prefix=f"seal{seal.id}")
    if not form.validate_on_submit():
        for messages in form.errors.values():
            for message in messages:
                flash(f"印章「{seal.name}」：{message}", "error")
        return redirect(url_for(".seals_page"), 303)

    upload = form.image.data
    try:
        image = None
        if upload and upload.filename:
            limit = current_app.config["SEAL_UPLOAD_MAX_BYTES"]
            upload_checks.check_upload_size(upload.stream, upload.filename, limit, "印章图片", "请压缩后再上传")
            image = upload.read(limit + 1)
        changed = seals.update_seal(seal, code=form.code.data, image=image, actor=current_user.username)
    except (SealUploadError, upload_checks.UploadTooLargeError) as error:
        db.session.rollback()
        flash(f"印章「{seal.name}」未更新：{error}", "error")
    else:
        if changed:
            flash(f"印章「{seal.name}」已更新。此后生成的证书使用新的印章和编码，已缓存的证书 PDF 会自动重新生成。", "success")
        else:
            flash(f"印章「{seal.name}」没有变化。", "info")
    return redirect(url_for(".seals_page"), 303)


@bp.post("/seals/<int:seal_id>/specimen")
@admin_only
def seal_specimen(seal_id: int):
    seal = seals.get_seal(seal_id) or abort(404)
    if not PlainForm().validate_on_submit():
        abort(400)
    seals.reset_to_specimen(seal, actor=current_user.username)
    flash(f"印章「{seal.name}」已改回样章。", "info")
    return redirect(url_for(".seals_page"), 303)


@bp.get("/seals/<int:seal_id>/preview.png")
@admin_only
def seal_preview(seal_id: int):
    seal = seals.get_seal(seal_id) or abort(404)
    response = Response(seals.preview_png(seal), mimetype="image/png")
    response.headers["Cache-Control"] = "no-store"
    return response


# --- batch ZIP exports -----------------------------------------------------


@bp.post("/batches/<int:batch_id>/export")
def batch_export(batch_id: int):
    batch = db.session.get(ImportBatch, batch_id) or abort(404)
    if not PlainForm().validate_on_submit():
        abort(400)
    if batch.state != "confirmed":
        flash(f"批次 #{batch.id} 尚未确认导入，没有可导出的证书。", "error")
        return redirect(url_for(".batch", batch_id=batch.id), 303)
    try:
        job, started = exports.start_batch_export(batch, actor=current_user.username)
    except exports.ExportBusyError as error:
        flash(str(error), "error")
        return redirect(url_for(".batch", batch_id=batch.id), 303)
    if not started:
        flash(f"批次 #{batch.id} 的导出已在进行中（任务 #{job.id}），下面是它的进度，无需重复导出。", "info")
    return redirect(url_for(".export_page", job_id=job.id), 303)


def _export_job(job_id: int):
    job = jobs.get_job(job_id)
    if job is None or job.kind != exports.JOB_KIND:
        abort(404)
    return job


@bp.get("/exports/<int:job_id>")
def export_page(job_id: int):
    job = _export_job(job_id)
    return render_template("admin/export.html", job=job)


@bp.get("/exports/<int:job_id>/progress")
def export_progress(job_id: int):
    return render_template("admin/_export_progress.html", job=_export_job(job_id))


@bp.get("/exports/<int:job_id>/download")
def export_download(job_id: int):
    job = _export_job(job_id)
    if job.state != jobs.JOB_DONE or not job.result:
        abort(404)
    path = exports.export_path(job.result)
    if not path.is_file():
        abort(404)
    batch_id = (job.target or "").removeprefix("batch:")
    response = send_file(path, mimetype="application/zip", as_attachment=True,
                         download_name=f"batch-{batch_id}-certificates.zip", max_age=0)
    response.headers["Cache-Control"] = "no-store"
    return response
