"""Staff pages: log in, upload a roster, preview, confirm and download the report."""

from __future__ import annotations

import logging

from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user, logout_user
from sqlalchemy import func, select
from wtforms import SelectChoice

from ..domain.roster import RosterFileError, guess_from_filename
from ..extensions import db
from ..models import Certificate, Exam, ImportBatch
from ..services import accounts, batches
from ..services.catalogue import load_catalogue
from ..services.issuing import report_csv
from . import bp
from .forms import ConfirmForm, StaffLoginForm, UploadForm

logger = logging.getLogger(__name__)


@bp.route("/login", methods=["GET", "POST"])
def login():
    form = StaffLoginForm()
    if form.validate_on_submit():
        user = accounts.authenticate_staff(form.username.data, form.password.data)
        if user is not None:
            login_user(user)
            logger.info("Staff %s logged in", user.username)
            return redirect(_safe_next() or url_for(".index"), 303)
        form.password.errors.append("用户名或密码不正确。")
    return render_template("admin/login.html", form=form)


def _safe_next() -> str | None:
    target = request.args.get("next", "")
    return target if target.startswith("/admin") and not target.startswith("//") else None


@bp.post("/logout")
def logout():
    logout_user()
    return redirect(url_for(".login"), 303)


@bp.get("/")
def index():
    recent = db.session.scalars(select(ImportBatch).order_by(ImportBatch.id.desc()).limit(20)).all()
    total = db.session.scalar(select(func.count(Certificate.id)))
    return render_template("admin/index.html", batches=recent, total=total)


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
            stored_name = batches.store_upload(upload_file.read(), filename)
            batch = batches.create_batch(
                stored_name,
                filename,
                exam=form.exam.data or guessed_exam,
                kind=form.kind.data or guessed_kind,
                actor=current_user.username,
            )
        except RosterFileError as error:
            form.file.errors.append(str(error))
        else:
            return redirect(url_for(".batch", batch_id=batch.id), 303)
    return render_template("admin/upload.html", form=form)


def _batch(batch_id: int) -> ImportBatch:
    batch = db.session.get(ImportBatch, batch_id)
    if batch is None:
        abort(404)
    return batch


@bp.get("/batches/<int:batch_id>")
def batch(batch_id: int):
    batch = _batch(batch_id)
    plan, error = None, None
    if batch.state == "preview":
        try:
            plan = batches.preview(batch)
        except RosterFileError as exc:
            error = str(exc)
    return render_template("admin/batch.html", batch=batch, plan=plan, error=error, form=ConfirmForm())


@bp.post("/batches/<int:batch_id>/confirm")
def confirm(batch_id: int):
    batch = _batch(batch_id)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    try:
        plan = batches.confirm(batch)
    except RosterFileError as error:
        flash(str(error), "error")
    else:
        counts = plan.counts
        flash(f"已导入 {counts['imported']} 条，拒绝 {counts['rejected']} 条，跳过 {counts['skipped']} 条。", "success")
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
    if batch.report_csv is not None:
        body = batch.report_csv
    else:
        try:
            body = report_csv(batches.preview(batch).outcomes)
        except RosterFileError as error:
            abort(400, str(error))
    # The BOM makes Excel open the UTF-8 report with the right encoding.
    response = Response("\ufeff" + body, mimetype="text/csv")
    response.headers["Content-Disposition"] = f"attachment; filename=batch-{batch.id}-report.csv"
    return response


@bp.get("/certificates")
def certificates():
    query = (request.args.get("q") or "").strip()
    results = []
    if query:
        results = db.session.scalars(
            select(Certificate)
            .where((Certificate.number == query.upper()) | (Certificate.name == query) | (Certificate.id_number == query.upper()))
            .limit(100)
        ).all()
    return render_template("admin/certificates.html", query=query, results=results)
