"""Admin pages for the certificate catalogue: exams, specialties and layouts."""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, url_for
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import SelectChoice, SelectField, StringField, TextAreaField

from ..domain.catalogue import CATEGORY_QUALIFICATION, CATEGORY_TITLE
from ..extensions import db
from ..models import Exam, Layout
from ..services import catalogue_admin
from . import admin_only, bp


class ExamForm(FlaskForm):
    name = StringField(_l("考试名称"))
    category = SelectField(
        _l("类别"),
        choices=[SelectChoice(CATEGORY_QUALIFICATION, _l("职业资格")), SelectChoice(CATEGORY_TITLE, _l("职称"))],
        validate_choice=False,
    )
    specialties = TextAreaField(_l("专业（每行一个）"))
    levels = StringField(_l("级别（职称考试填写，用顿号分隔，如 初级、中级；没有级别留空）"))
    certificate_layout = SelectField(_l("证书版式"), choices=[], validate_choice=False)
    pass_layout = SelectField(_l("合格证明版式"), choices=[], validate_choice=False)


class SpecialtyForm(FlaskForm):
    name = StringField(_l("专业名称"))
    layout = SelectField(_l("证书版式（不选则沿用考试的版式）"), choices=[], validate_choice=False)


class LayoutForm(FlaskForm):
    co_issuers = TextAreaField(_l("联合发证单位（每行一个，可留空）"))
    statement = TextAreaField(_l("说明文字（可用 {exam}、{specialty}、{issuer}）"))


def _layout_choices(kind: str) -> list[SelectChoice]:
    return [SelectChoice(layout.code, layout.name) for layout in catalogue_admin.layouts_of_kind(kind)]


def _exam_form() -> ExamForm:
    form = ExamForm()
    form.certificate_layout.choices = _layout_choices("qualification") + _layout_choices("title")
    form.pass_layout.choices = _layout_choices("pass")
    return form


def _specialty_form(exam: Exam, formdata: bool = True) -> SpecialtyForm:
    form = SpecialtyForm() if formdata else SpecialtyForm(formdata=None)
    kind = catalogue_admin.CATEGORY_KINDS[exam.category]
    form.layout.choices = [SelectChoice("", "（沿用考试的证书版式）")] + _layout_choices(kind)
    return form


def _apply_errors(form: FlaskForm, error: catalogue_admin.CatalogueError) -> None:
    for key, messages in error.errors.items():
        getattr(form, key).errors = list(getattr(form, key).errors) + messages


def _page(exam_form: ExamForm | None = None, specialty_forms: dict | None = None, status: int = 200):
    exams = db.session.scalars(select(Exam).order_by(Exam.id)).all()
    specialty_forms = specialty_forms or {}
    forms = {exam.id: specialty_forms.get(exam.id) or _specialty_form(exam, formdata=False) for exam in exams}
    layouts = db.session.scalars(select(Layout).order_by(Layout.id)).all()
    return render_template(
        "admin/catalogue.html",
        exams=exams,
        layouts=layouts,
        exam_form=exam_form or _exam_form(),
        specialty_forms=forms,
        category_labels=catalogue_admin.CATEGORY_LABELS,
    ), status


@bp.get("/catalogue")
@admin_only
def catalogue():
    return _page()


@bp.post("/catalogue/exams")
@admin_only
def add_exam():
    form = _exam_form()
    if not form.validate_on_submit():
        return _page(exam_form=form, status=422)
    try:
        exam = catalogue_admin.add_exam(
            name=form.name.data or "",
            category=form.category.data or "",
            levels=catalogue_admin.split_list(form.levels.data or ""),
            specialties=catalogue_admin.split_list(form.specialties.data or ""),
            certificate_layout=form.certificate_layout.data or "",
            pass_layout=form.pass_layout.data or "",
            actor=current_user.username,
        )
    except catalogue_admin.CatalogueError as error:
        _apply_errors(form, error)
        return _page(exam_form=form, status=422)
    flash(f"已新增考试「{exam.name}」及 {len(exam.specialties)} 个专业，上传名单时即可选择。", "success")
    return redirect(url_for(".catalogue"), 303)


@bp.post("/catalogue/exams/<int:exam_id>/specialties")
@admin_only
def add_specialty(exam_id: int):
    exam = db.session.get(Exam, exam_id)
    if exam is None:
        abort(404)
    form = _specialty_form(exam)
    if not form.validate_on_submit():
        return _page(specialty_forms={exam.id: form}, status=422)
    try:
        specialty = catalogue_admin.add_specialty(
            exam, name=form.name.data or "", layout_code=form.layout.data or "", actor=current_user.username
        )
    except catalogue_admin.CatalogueError as error:
        _apply_errors(form, error)
        return _page(specialty_forms={exam.id: form}, status=422)
    flash(f"已为{exam.name}新增专业「{specialty.name}」。", "success")
    return redirect(url_for(".catalogue"), 303)


@bp.route("/catalogue/layouts/<int:layout_id>", methods=["GET", "POST"])
@admin_only
def edit_layout(layout_id: int):
    layout = db.session.get(Layout, layout_id)
    if layout is None:
        abort(404)
    form = LayoutForm()
    if form.validate_on_submit():
        try:
            changed = catalogue_admin.update_layout(
                layout,
                co_issuers=catalogue_admin.split_list(form.co_issuers.data or ""),
                statement=form.statement.data or "",
                actor=current_user.username,
            )
        except catalogue_admin.CatalogueError as error:
            _apply_errors(form, error)
        else:
            flash(f"已保存版式「{layout.name}」，此后生成的证书使用新内容。" if changed else "内容没有变化，未保存。", "success")
            return redirect(url_for(".catalogue"), 303)
    elif not form.is_submitted():
        form.co_issuers.data = "\n".join(layout.co_issuers or [])
        form.statement.data = layout.statement
    return render_template("admin/layout_edit.html", layout=layout, form=form), 422 if form.errors else 200
