"""Holder pages: register, log in, list, download and print certificates."""

from __future__ import annotations

import logging

from flask import abort, current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, logout_user
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from werkzeug.http import quote_etag

from ..auth import SESSION_VERSION_KEY, end_session, start_session
from ..domain.documents import MissingGlyphError
from ..domain.identity import mask_id_number
from ..extensions import db, limiter, login_manager
from ..models import Certificate
from ..security import EMBEDDED_PDF_HEADERS, PRINT_PAGE_HEADERS, current_address
from ..services import accounts, certificates as certificate_files, events, lookup
from ..services.certificates import CachedPdf, PdfSource
from . import bp
from .forms import DeleteAccountForm, LoginForm, RegisterForm, ResetForm, ResetRequestForm

logger = logging.getLogger(__name__)


# Registration responds the same whether or not the ID number or mobile number
# is already registered, so the form cannot be used to find out who has an account.
REGISTERED_MESSAGE = (
    "注册信息已提交。请用证件号码（或手机号码）和刚设置的密码登录；"
    "如果该证件号码或手机号码此前已注册，请用原密码登录，忘记密码可点击“忘记密码”找回。"
    "如果您从未注册过，却无法登录、也收不到验证码，可能是证件号码已被他人注册："
    "请携带本人身份证件到人力资源和社会保障局服务窗口办理，工作人员核验证件后可删除该账号或改为您的手机号码。"
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


def _reset_address_limit() -> str:
    return current_app.config["PASSWORD_RESET_ADDRESS_RATE_LIMIT"]


def _reset_phone_limit() -> str:
    return current_app.config["PASSWORD_RESET_PHONE_RATE_LIMIT"]


def _reset_phone_key() -> str:
    return accounts.reset_limit_key(request.form.get("phone", "")[:40])


# Both limits count every POST, whether or not the pair belongs to an account, so they reveal nothing.
reset_address_limit = limiter.shared_limit(_reset_address_limit, scope="password-reset-address", methods=["POST"])
reset_phone_limit = limiter.shared_limit(
    _reset_phone_limit, scope="password-reset-phone", key_func=_reset_phone_key, methods=["POST"]
)


@bp.route("/password/forgot", methods=["GET", "POST"])
@reset_address_limit
@reset_phone_limit
def forgot_password():
    form = ResetRequestForm()
    if form.validate_on_submit():
        accounts.queue_reset_request(form.id_number.data, form.phone.data)
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


# Maximum length of certificate.number (String(32)), so longer input cannot match.
MAX_NUMBER_LENGTH = 32


def _own_pdf_source(number: str) -> PdfSource:
    """Return the PDF source of one of the current holder's valid certificates, or abort with 404.

    A revoked certificate stays in the holder's list, marked 已撤销, but is no
    longer issued as a file. Another holder's number, a revoked certificate and
    a missing number all get the same 404; only the log distinguishes them, for staff.
    """
    _holder_required()
    source = None
    # PostgreSQL rejects NUL in text, so such input never reaches the query.
    if len(number) <= MAX_NUMBER_LENGTH and "\x00" not in number:
        source = certificate_files.owned_pdf_source(number, current_user.name, current_user.id_number_hash)
    if source is None:
        _log_refused_number(number)
        abort(404)
    return source


def _log_refused_number(number: str) -> None:
    """Log why a holder's request for `number` gets 404: another holder's record, revoked, or missing."""
    found = None
    if len(number) <= MAX_NUMBER_LENGTH and "\x00" not in number:
        found = db.session.execute(
            select(Certificate.id, Certificate.name, Certificate.id_number_hash, Certificate.status)
            .where(Certificate.number == number)
        ).first()
    if found is None:
        logger.warning("Holder %s requested certificate %r, which does not exist", current_user.id, number[:40])
    elif found.name == current_user.name and found.id_number_hash == current_user.id_number_hash:
        logger.info("Holder %s requested their certificate %s, which is revoked", current_user.id, found.id)
    else:
        logger.warning("Holder %s requested certificate %s, which is not theirs", current_user.id, found.id)


def _session_pdf_source(number: str) -> PdfSource | None:
    """Return the PDF source of `number` when the session's holder owns it, checked in one query; else None.

    This is the download's fast path. It checks what `login_required` and
    `_own_pdf_source` check together (a holder session whose version is still
    current, ownership, not revoked) without loading the holder. Any other
    case returns None: no holder in the session, a session identifier that
    does not match this client (Flask-Login's session protection), a number
    that is not theirs. The caller then takes the full path, which redirects
    to the login or returns 403 or 404, and logs the reason. The idle and
    absolute session limits have already run in `security.expire_session`.
    """
    user_id, version = session.get("_user_id"), session.get(SESSION_VERSION_KEY)
    prefix, _, raw_id = user_id.partition(":") if isinstance(user_id, str) else ("", "", "")
    if prefix != "holder" or not raw_id.isdigit() or not isinstance(version, int):
        return None
    if session.get("_id") != login_manager._session_identifier_generator():
        return None
    if len(number) > MAX_NUMBER_LENGTH or "\x00" in number:
        return None
    return certificate_files.session_owned_pdf_source(number, int(raw_id), version)


@bp.get("/me/certificates/<number>.pdf")
def download(number: str):
    source = _session_pdf_source(number)
    if source is None:
        return _checked_download(number)
    return _send_own(number, source)


@login_required
def _checked_download(number: str):
    return _send_own(number, _own_pdf_source(number))


def _send_own(number: str, source: PdfSource):
    entry = certificate_files.cache_entry(source)
    if not entry.path.is_file():
        try:
            source, entry = _render_own(number, source)
        except MissingGlyphError as error:
            logger.error("Certificate %s cannot be rendered: %s", number, error)
            return render_template("error.html", code=500, message=f"{error}。请联系发证机关处理。"), 500
    disposition = "inline" if request.args.get("inline") else "attachment"
    response = _pdf_response(entry, number, disposition)
    if disposition == "inline":
        # The print page embeds this response, and add_security_headers keeps the headers set here.
        response.headers.update(EMBEDDED_PDF_HEADERS)
    events.record_download(source.certificate_id)
    return response


def _render_own(number: str, source: PdfSource) -> tuple[PdfSource, CachedPdf]:
    """Render, sign and cache the PDF of `source`, checking ownership again if the record changed meanwhile."""
    entry = certificate_files.render_cached(source)
    if entry is None:
        # Corrected or revoked between the ownership query and loading the record.
        source = _own_pdf_source(number)
        entry = certificate_files.render_cached(source)
    if entry is None:
        abort(404)
    return source, entry


@bp.get("/me/certificates/<number>/print")
@login_required
def print_view(number: str):
    source = _own_pdf_source(number)
    certificate = db.session.get(Certificate, source.certificate_id)
    # The page's <object> loads the inline PDF, which the site-wide object-src 'none' would block.
    return render_template("holders/print.html", certificate=certificate), PRINT_PAGE_HEADERS


def _pdf_response(entry: CachedPdf, number: str, disposition: str):
    """Build the download response: 304 when If-None-Match matches, else the bytes or an nginx X-Accel-Redirect.

    The ETag is known before the file is read, so a matching If-None-Match
    costs no disk read.
    """
    # no-store keeps the personal PDF out of every cache, browsers included,
    # so browsers never revalidate. The ETag still lets a client that keeps
    # its own copy (a download manager, a script) send If-None-Match.
    headers = [("ETag", quote_etag(entry.etag)), ("Cache-Control", "no-store")]
    if entry.etag in request.if_none_match:
        return current_app.response_class(status=304, headers=headers)

    headers.append(("Content-Disposition", f"{disposition}; filename={number}.pdf"))
    accel_prefix = current_app.config["PDF_ACCEL_REDIRECT_PREFIX"]
    if accel_prefix:
        # nginx sends the file from its internal location aliased to
        # instance/pdf-cache/; the app has already checked ownership.
        headers.append(("X-Accel-Redirect", f"{accel_prefix.rstrip('/')}/{entry.path.name}"))
        body = b""
    else:
        # Bytes from memory rather than send_file, whose open file handle
        # the test client leaves unclosed.
        body = entry.path.read_bytes()
    return current_app.response_class(body, headers=headers, mimetype="application/pdf")
