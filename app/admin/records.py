"""Staff pages for certificate records: search, the record page, correction, revocation, reinstatement."""

from __future__ import annotations

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import HiddenField, SelectChoice, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length

from ..domain.identity import ID_TYPES
from ..models import Certificate
from ..services import records
from . import bp

REASON_VALIDATORS = [DataRequired(_l("请填写原因。")), Length(max=records.MAX_REASON_LENGTH)]


class CorrectionForm(FlaskForm):
    version = HiddenField()
    number = StringField(_l("证书编号"))
    name = StringField(_l("姓名"))
    gender = SelectField(_l("性别"), choices=[SelectChoice("男"), SelectChoice("女")], validate_choice=False)
    id_type = SelectField(_l("证件类型"), choices=[SelectChoice(t) for t in ID_TYPES], validate_choice=False)
    id_number = StringField(_l("证件号码"))
    birth_month = StringField(_l("出生年月（如 1990-01）"))
    specialty = SelectField(_l("专业"), choices=[], validate_choice=False)
    level = SelectField(_l("级别"), choices=[], validate_choice=False)
    approval_date = StringField(_l("批准日期（如 2024-10-18）"))
    reason = TextAreaField(_l("更正原因"), validators=REASON_VALIDATORS)


class RevokeForm(FlaskForm):
    reason = TextAreaField(_l("撤销原因"), validators=REASON_VALIDATORS)


class ReinstateForm(FlaskForm):
    reason = TextAreaField(_l("恢复原因"), validators=REASON_VALIDATORS)


def _certificate(certificate_id: int) -> Certificate:
    certificate = records.get(certificate_id)
    if certificate is None:
        abort(404)
    return certificate


def _correction_form(certificate: Certificate, *, from_record: bool) -> CorrectionForm:
    form = CorrectionForm() if not from_record else CorrectionForm(formdata=None, data=_form_data(certificate))
    form.specialty.choices = [SelectChoice(s.name) for s in certificate.exam.specialties]
    form.level.choices = [SelectChoice("", "（无）")] + [SelectChoice(level) for level in certificate.exam.levels or ()]
    return form


def _form_data(certificate: Certificate) -> dict:
    data = records.snapshot(certificate)
    data["level"] = data["level"] or ""
    data["version"] = str(certificate.version)
    return data


@bp.get("/certificates")
def certificates():
    query = (request.args.get("q") or "").strip()
    results = records.search(query) if query else []
    return render_template(
        "admin/certificates.html", query=query, results=results, limit=records.SEARCH_LIMIT
    )


@bp.get("/certificates/<int:certificate_id>")
def certificate(certificate_id: int):
    return _record_page(_certificate(certificate_id))


def _record_page(certificate: Certificate, *, correction=None, revoke=None, reinstate=None, status: int = 200):
    page = render_template(
        "admin/certificate.html",
        certificate=certificate,
        versions=records.versions(certificate),
        history=records.history(certificate),
        correction=correction or _correction_form(certificate, from_record=True),
        revoke=revoke or RevokeForm(formdata=None),
        reinstate=reinstate or ReinstateForm(formdata=None),
        labels=records.HISTORY_LABELS,
    )
    return page, status


@bp.post("/certificates/<int:certificate_id>/correct")
def correct(certificate_id: int):
    certificate = _certificate(certificate_id)
    form = _correction_form(certificate, from_record=False)
    if not form.validate_on_submit():
        return _record_page(certificate, correction=form, status=422)
    values = {key: getattr(form, key).data or "" for key in records.FIELD_LABELS}
    try:
        expected = int(form.version.data) if form.version.data else None
    except ValueError:
        expected = None
    try:
        result = records.correct(
            certificate, values, reason=form.reason.data, actor=current_user.username, expected_version=expected
        )
    except records.RecordError as error:
        _attach_errors(form, error)
        return _record_page(certificate, correction=form, status=422)
    changed = "、".join(records.FIELD_LABELS[key] for key in result.changed)
    flash(f"已更正证书「{certificate.number}」的{changed}，现为第 {certificate.version} 版；原内容已保存在历史版本中。", "success")
    return redirect(url_for(".certificate", certificate_id=certificate.id), 303)


def _attach_errors(form: FlaskForm, error: records.RecordError) -> None:
    for key, messages in error.errors.items():
        target = getattr(form, key, None) if key else None
        if target is None:
            form.form_errors.extend(messages)
        else:
            target.errors = list(target.errors) + messages


@bp.post("/certificates/<int:certificate_id>/revoke")
def revoke(certificate_id: int):
    certificate = _certificate(certificate_id)
    form = RevokeForm()
    if not form.validate_on_submit():
        return _record_page(certificate, revoke=form, status=422)
    try:
        records.revoke(certificate, reason=form.reason.data, actor=current_user.username)
    except records.RecordError as error:
        _attach_errors(form, error)
        return _record_page(certificate, revoke=form, status=422)
    if current_app.config["LOOKUP_DATABASE_URL"]:
        # Lookups read a streaming standby, which shows the change once it has replayed it.
        visibility = "查验页面、二维码和接口读取只读副本，副本同步后（通常不到 1 秒）显示“已撤销”。"
    else:
        visibility = "查验页面、二维码和接口即刻显示“已撤销”。"
    flash(f"已撤销证书「{certificate.number}」。{visibility}", "success")
    return redirect(url_for(".certificate", certificate_id=certificate.id), 303)


@bp.post("/certificates/<int:certificate_id>/reinstate")
def reinstate(certificate_id: int):
    certificate = _certificate(certificate_id)
    form = ReinstateForm()
    if not form.validate_on_submit():
        return _record_page(certificate, reinstate=form, status=422)
    try:
        records.reinstate(certificate, reason=form.reason.data, actor=current_user.username)
    except records.RecordError as error:
        _attach_errors(form, error)
        return _record_page(certificate, reinstate=form, status=422)
    flash(f"已恢复证书「{certificate.number}」，查验结果重新显示“有效”。", "success")
    return redirect(url_for(".certificate", certificate_id=certificate.id), 303)
