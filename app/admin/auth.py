"""Staff login in two steps: password, then a TOTP code (enrolled at the first login)."""

from __future__ import annotations

import base64
import io
import logging
import time

import qrcode
from flask import redirect, render_template, request, session, url_for
from flask_login import current_user

from ..auth import end_session, start_session
from ..domain.crypto import DecryptionError
from ..extensions import db
from ..id_numbers import keyring
from ..models import StaffUser
from ..security import current_address
from ..services import accounts
from . import any_staff, bp
from .forms import StaffLoginForm, TotpForm

logger = logging.getLogger(__name__)

PENDING_KEY = "staff_pending"
# The password step is good for this long before the code must be entered.
PENDING_SECONDS = 300
LOCKED_MESSAGE = "登录失败次数过多，该账号或地址已暂停登录 15 分钟，请稍后再试；如需立即处理请联系系统管理员。"


@bp.route("/login", methods=["GET", "POST"])
def login():
    form = StaffLoginForm()
    if form.validate_on_submit():
        result = accounts.authenticate_staff(form.username.data, form.password.data, current_address())
        if result.outcome == accounts.OK:
            user = result.user
            next_url = _safe_next()
            session.clear()
            session[PENDING_KEY] = {
                "id": user.id,
                "sv": user.session_version,
                "at": time.time(),
                # A fresh secret for enrolment; it is stored on the account only after a code proves the app has it.
                "secret": None if user.totp_secret else _encrypt_enrolment_secret(user, accounts.new_totp_secret()),
                "next": next_url,
            }
            return redirect(url_for(".login_totp"), 303)
        message = LOCKED_MESSAGE if result.outcome == accounts.LOCKED else "用户名或密码不正确。"
        form.password.errors.append(message)
    return render_template("admin/login.html", form=form)


def _pending_user() -> tuple[StaffUser | None, dict]:
    pending = session.get(PENDING_KEY) or {}
    if not pending or time.time() - pending.get("at", 0) > PENDING_SECONDS:
        return None, {}
    user = db.session.get(StaffUser, pending.get("id"))
    if user is None or not user.active or user.session_version != pending.get("sv"):
        return None, {}
    return user, pending


@bp.route("/login/totp", methods=["GET", "POST"])
def login_totp():
    user, pending = _pending_user()
    if user is None:
        session.pop(PENDING_KEY, None)
        return redirect(url_for(".login"), 303)

    secret = user.totp_secret or _decrypt_enrolment_secret(user, pending.get("secret"))
    if secret is None:
        session.pop(PENDING_KEY, None)
        return redirect(url_for(".login"), 303)

    form = TotpForm()
    if form.validate_on_submit():
        outcome = accounts.check_totp(user, secret, form.code.data, current_address())
        if outcome == accounts.OK:
            if not user.totp_secret:
                accounts.enrol_totp(user, secret)
            start_session(user)
            logger.info("Staff %s logged in", user.username)
            return redirect(pending.get("next") or url_for(".index"), 303)
        if outcome == accounts.LOCKED:
            session.pop(PENDING_KEY, None)
            form.code.errors.append(LOCKED_MESSAGE)
        else:
            form.code.errors.append("动态验证码不正确或已过期：请输入身份验证器应用当前显示的 6 位数字。")

    enrolment = None
    if not user.totp_secret:
        enrolment = {"qr": _qr_data_uri(accounts.totp_uri(user, secret)), "key": secret}
    return render_template("admin/login_totp.html", form=form, enrolment=enrolment, username=user.username)


def _enrolment_associated_data(user: StaffUser) -> bytes:
    # Binds the encrypted secret to its account, so it cannot be moved into another account's pending login.
    return f"staff_pending.secret:{user.id}".encode()


def _encrypt_enrolment_secret(user: StaffUser, secret: str) -> str:
    """Encrypt an enrolment secret with the ID number key ring.

    Flask's session cookie is signed, not encrypted, and the secret becomes the
    account's permanent second factor, so the cookie carries only the ciphertext.
    """
    return keyring().encrypt(secret, _enrolment_associated_data(user))


def _decrypt_enrolment_secret(user: StaffUser, encrypted: str | None) -> str | None:
    """Decrypt an enrolment secret, or return None when there is none or it cannot be decrypted for this account."""
    if not encrypted:
        return None
    try:
        return keyring().decrypt(encrypted, _enrolment_associated_data(user))
    except DecryptionError:
        logger.warning(
            "Decrypting the pending second factor enrolment of staff %s failed, so the login restarts", user.username
        )
        return None


def _qr_data_uri(text: str) -> str:
    """Render a QR code here as an inline PNG, so the secret never leaves the server for a QR service."""
    image = qrcode.make(text, box_size=6, border=2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _safe_next() -> str | None:
    target = request.args.get("next", "")
    return target if target.startswith("/admin") and not target.startswith("//") else None


@bp.post("/logout")
@any_staff
def logout():
    end_session(current_user._get_current_object() if current_user.is_authenticated else None)
    return redirect(url_for(".login"), 303)
