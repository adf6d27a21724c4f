"""Admin pages for staff accounts: list, create with a role, deactivate, reactivate, reset a password or second factor."""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, url_for
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import PasswordField, SelectChoice, SelectField, StringField

from ..extensions import db
from ..models import StaffUser
from ..services import staff
from . import admin_only, bp


class StaffForm(FlaskForm):
    username = StringField(_l("用户名"))
    role = SelectField(_l("角色"), choices=[SelectChoice(k, v) for k, v in staff.ROLES.items()], validate_choice=False)
    password = PasswordField(_l("初始密码（至少 12 位，含大写字母、小写字母、数字和符号中的三类）"))


class PasswordForm(FlaskForm):
    password = PasswordField(_l("新密码"))


class ActionForm(FlaskForm):
    """Carries the CSRF token for deactivate and activate buttons."""


def _user(staff_id: int) -> StaffUser:
    user = db.session.get(StaffUser, staff_id)
    if user is None:
        abort(404)
    return user


def _page(form: StaffForm | None = None, status: int = 200, errors: list[str] | None = None):
    return render_template(
        "admin/staff.html",
        users=staff.list_staff(),
        form=form or StaffForm(formdata=None),
        password_form=PasswordForm(formdata=None),
        action_form=ActionForm(),
        roles=staff.ROLES,
        errors=errors or [],
    ), status


@bp.get("/staff")
@admin_only
def staff_list():
    return _page()


@bp.post("/staff")
@admin_only
def staff_create():
    form = StaffForm()
    if not form.validate_on_submit():
        return _page(form, 422)
    try:
        user = staff.create(form.username.data, form.role.data, form.password.data, actor=current_user.username)
    except staff.StaffError as error:
        for key, messages in error.errors.items():
            getattr(form, key).errors = list(getattr(form, key).errors) + messages
        return _page(form, 422)
    flash(f"已创建工作人员账号 {user.username}（{staff.ROLES[user.role]}），请把初始密码当面告知本人。", "success")
    return redirect(url_for(".staff_list"), 303)


@bp.post("/staff/<int:staff_id>/deactivate")
@admin_only
def staff_deactivate(staff_id: int):
    return _set_active(staff_id, False)


@bp.post("/staff/<int:staff_id>/activate")
@admin_only
def staff_activate(staff_id: int):
    return _set_active(staff_id, True)


def _set_active(staff_id: int, active: bool):
    user = _user(staff_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    try:
        staff.set_active(user, active, actor=current_user.username)
    except staff.StaffError as error:
        return _page(status=422, errors=[m for messages in error.errors.values() for m in messages])
    flash(f"已{'启用' if active else '停用'}账号 {user.username}。", "success")
    return redirect(url_for(".staff_list"), 303)


@bp.post("/staff/<int:staff_id>/password")
@admin_only
def staff_reset_password(staff_id: int):
    user = _user(staff_id)
    form = PasswordForm()
    if not form.validate_on_submit():
        abort(400)
    try:
        staff.reset_password(user, form.password.data or "", actor=current_user.username)
    except staff.StaffError as error:
        return _page(status=422, errors=[f"账号 {user.username}：{m}" for m in error.errors["password"]])
    flash(f"已重置账号 {user.username} 的密码，该账号的现有登录已全部失效，请把新密码当面告知本人。", "success")
    return redirect(url_for(".staff_list"), 303)


@bp.post("/staff/<int:staff_id>/totp/reset")
@admin_only
def staff_reset_totp(staff_id: int):
    user = _user(staff_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    staff.reset_second_factor(user, actor=current_user.username)
    flash(f"已重置账号 {user.username} 的动态验证码，其登录已全部失效；本人下次登录时需重新绑定身份验证器应用。", "success")
    return redirect(url_for(".staff_list"), 303)
