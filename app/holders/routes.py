"""Holder pages: register, log in, list, download and print certificates."""

from __future__ import annotations

import logging

from flask import abort, flash, make_response, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, logout_user
from sqlalchemy.exc import IntegrityError

from ..auth import end_session, start_session
from ..domain.documents import MissingGlyphError
from ..domain.identity import mask_id_number
from ..extensions import db
from ..models import STATUS_REVOKED, Certificate
from ..security import current_address
from ..services import accounts, events, lookup
from ..services.certificates import cached_pdf
from . import bp
from .forms import DeleteAccountForm, LoginForm, RegisterForm, ResetForm, ResetRequestForm

logger = logging.getLogger(__name__)


# Registration responds the same whether or not the ID number or mobile number
# is already registered, so the form cannot be used to find out who has an account.
REGISTERED_MESSAGE = (
    "注册信息已提交。请用证件号码（或手机号码）和刚设置的密码登录；"
    "如果该证件号码或手机号码此前已注册，请用原密码登录，忘记密码可点击“忘记密码”找回。"
)
RESET_SENT_MESSAGE = "如果证件号码和手机号码与已注册账号一致，验证码已发送到该手机号码，10 分钟内有效。请在下方填写验证码和新密码。"
RESET_FAILED_MESSAGE = "验证码不正确、已过期或已使用，或证件号码与手机号码不匹配：请核对后重试，或重新获取验证码。"
LOCKED_MESSAGE = "登录失败次数过多，该账号或地址已暂停登录 15 分钟，请稍后再试。"


@bp.route("/register", methods=["GET", "POST"])
def register():
    form = RegisterForm()
    if form.validate_on_submit():
        try:
            accounts.register_holder(
                name=form.name.data,
                id_type=form.id_type.data,
                id_number=form.id_number.data,
                phone=form.phone.data,
                password=form.password.data,
            )
        except IntegrityError:
            db.session.rollback()
            logger.info("Registration for an existing ID number or mobile number %s", mask_id_number(form.id_number.data))
        flash(REGISTERED_MESSAGE, "info")
        return redirect(url_for(".login"), 303)
    return render_template("holders/register.html", form=form)


@bp.route("/login", methods=["GET", "POST"])
def login():
    form = LoginForm()
    if form.validate_on_submit():
        result = accounts.authenticate_holder(form.login.data, form.password.data, current_address())
        if result.outcome == accounts.OK:
            start_session(result.user)
            return redirect(url_for(".certificates"), 303)
        if result.outcome == accounts.LOCKED:
            form.password.errors.append(LOCKED_MESSAGE)
        else:
            form.password.errors.append("证件号码（或手机号码）或密码不正确。")
    return render_template("holders/login.html", form=form)


@bp.post("/logout")
def logout():
    end_session(current_user._get_current_object() if current_user.is_authenticated else None)
    flash("您已退出登录。", "info")
    return redirect(url_for("public.index"), 303)


@bp.route("/password/forgot", methods=["GET", "POST"])
def forgot_password():
    form = ResetRequestForm()
    if form.validate_on_submit():
        accounts.request_reset(form.id_number.data, form.phone.data)
        flash(RESET_SENT_MESSAGE, "info")
        return redirect(url_for(".reset_password"), 303)
    return render_template("holders/forgot.html", form=form)


@bp.route("/password/reset", methods=["GET", "POST"])
def reset_password():
    form = ResetForm()
    if form.validate_on_submit():
        if accounts.reset_password(form.id_number.data, form.phone.data, form.code.data, form.password.data):
            flash("密码已重设，请用新密码登录。", "success")
            return redirect(url_for(".login"), 303)
        form.code.errors.append(RESET_FAILED_MESSAGE)
    return render_template("holders/reset.html", form=form)


@bp.route("/me/delete", methods=["GET", "POST"])
@login_required
def delete_account():
    _holder_required()
    form = DeleteAccountForm()
    if form.validate_on_submit():
        holder = current_user._get_current_object()
        if accounts.delete_holder(holder, form.password.data):
            logout_user()
            session.clear()
            flash("账号已注销，您的注册信息已删除。已签发的证书仍在证书库中，可继续通过证书查验核验。", "success")
            return redirect(url_for("public.index"), 303)
        form.password.errors.append("密码不正确，账号未注销。")
    return render_template("holders/delete.html", form=form)


def _holder_required() -> None:
    if getattr(current_user, "is_staff", True):
        abort(403)


@bp.get("/me")
@login_required
def certificates():
    _holder_required()
    items = lookup.certificates_of(current_user.name, current_user.id_number)
    return render_template("holders/certificates.html", certificates=items)


def _own_certificate(number: str) -> Certificate:
    """Load one of the current holder's certificates; anyone else's returns exactly what a missing one returns."""
    _holder_required()
    for certificate in lookup.certificates_of(current_user.name, current_user.id_number):
        # A revoked certificate stays in the list, marked 已撤销, but is no longer issued as a file.
        if certificate.number == number and certificate.status != STATUS_REVOKED:
            return certificate
    # Another holder's number and a missing one get the same 404; the log distinguishes them for staff.
    logger.warning("Holder %s asked for certificate %r, which is not theirs or does not exist", current_user.id, number[:40])
    abort(404)


@bp.get("/me/certificates/<number>.pdf")
@login_required
def download(number: str):
    certificate = _own_certificate(number)
    disposition = "inline" if request.args.get("inline") else "attachment"
    # The response is built first: the event's commit expires the loaded
    # certificate, and reloading it with its layout and seal cost four queries.
    response = _pdf_response(certificate, disposition)
    events.record_download(certificate.id)
    return response


@bp.get("/me/certificates/<number>/print")
@login_required
def print_view(number: str):
    certificate = _own_certificate(number)
    return render_template("holders/print.html", certificate=certificate)


def _pdf_response(certificate: Certificate, disposition: str):
    try:
        entry = cached_pdf(certificate)
    except MissingGlyphError as error:
        logger.error("Certificate %s cannot be rendered: %s", certificate.number, error)
        return render_template("error.html", code=500, message=f"{error}。请联系发证机关处理。"), 500

    # The ETag is known before the file is read, so a matching If-None-Match
    # costs no disk read. The bytes are sent from memory rather than with
    # send_file, whose open file handle the test client leaves unclosed.
    if entry.etag in request.if_none_match:
        response = make_response("", 304)
        response.set_etag(entry.etag)
    else:
        response = make_response(entry.path.read_bytes())
        response.headers["Content-Type"] = "application/pdf"
        response.headers["Content-Disposition"] = f"{disposition}; filename={certificate.number}.pdf"
        response.set_etag(entry.etag)
    # no-store keeps the personal PDF out of every cache, browsers included,
    # so browsers never revalidate. The ETag still lets a client that keeps
    # its own copy (a download manager, a script) send If-None-Match.
    response.headers["Cache-Control"] = "no-store"
    return response
