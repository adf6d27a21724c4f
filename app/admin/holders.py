"""Staff pages for holder accounts: find an account by ID number or mobile number, change its mobile number or remove it.

These are the recovery path for a squatted ID number. Registration responds
the same for taken and new ID numbers, so the rightful holder comes to the
service desk with an ID document, and staff act after checking it in person.
Every staff role may search; changes follow the blueprint's write policy
(operator or admin) and are audited with a reason.
"""

from __future__ import annotations

import logging

from flask import abort, flash, redirect, render_template, request, url_for
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import StringField

from ..domain.identity import mask_id_number
from ..extensions import db
from ..models import Holder
from ..services import accounts
from . import bp

logger = logging.getLogger(__name__)


class PhoneForm(FlaskForm):
    phone = StringField(_l("新手机号码"))
    reason = StringField(_l("原因（核验了哪种证件，谁到场办理）"))


class RemoveForm(FlaskForm):
    reason = StringField(_l("原因（核验了哪种证件，谁到场办理）"))


def _holder(holder_id: int) -> Holder:
    holder = db.session.get(Holder, holder_id)
    if holder is None:
        abort(404)
    return holder


def _page(query: str = "", status: int = 200, errors: list[str] | None = None, holders: list[Holder] | None = None):
    if holders is None:
        holders = accounts.search_holders(query) if query else []
    return render_template(
        "admin/holders.html",
        query=query,
        holders=holders,
        phone_form=PhoneForm(formdata=None),
        remove_form=RemoveForm(formdata=None),
        errors=errors or [],
    ), status


@bp.get("/holders")
def holder_accounts():
    query = request.args.get("q", "").strip()[:40]
    if query:
        logger.info("Staff %s searched holder accounts for %s", current_user.username, mask_id_number(query))
    return _page(query)


@bp.post("/holders/<int:holder_id>/phone")
def holder_change_phone(holder_id: int):
    holder = _holder(holder_id)
    form = PhoneForm()
    if not form.validate_on_submit():
        abort(400)
    try:
        accounts.change_holder_phone(holder, form.phone.data, form.reason.data, actor=current_user.username)
    except accounts.HolderAccountError as error:
        return _page(status=422, errors=[error.message], holders=[holder])
    flash(f"已更改证件号码 {mask_id_number(holder.id_number)} 账号的手机号码，该账号的现有登录已全部失效。", "success")
    return redirect(url_for(".holder_accounts", q=holder.phone), 303)


@bp.post("/holders/<int:holder_id>/remove")
def holder_remove(holder_id: int):
    holder = _holder(holder_id)
    form = RemoveForm()
    if not form.validate_on_submit():
        abort(400)
    masked = mask_id_number(holder.id_number)
    try:
        accounts.remove_holder_by_staff(holder, form.reason.data, actor=current_user.username)
    except accounts.HolderAccountError as error:
        return _page(status=422, errors=[error.message], holders=[holder])
    flash(f"已删除证件号码 {masked} 的持证人账号，本人现在可以重新注册。", "success")
    return redirect(url_for(".holder_accounts"), 303)
