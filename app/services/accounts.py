"""Staff and holder accounts: passwords, second factor, login throttling, password reset, deletion."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cache

import pyotp
from flask import current_app
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from ..domain.identity import mask_id_number
from ..domain.passwords import holder_password_problem, staff_password_problem  # noqa: F401 (re-exported)
from ..extensions import db
from ..id_numbers import id_hash
from ..models import AuditEntry, Holder, LoginThrottle, PasswordResetCode, StaffUser, utcnow

logger = logging.getLogger(__name__)

OK = "ok"
INVALID = "invalid"
LOCKED = "locked"

RESET_CODE_DIGITS = 6
RESET_CODE_MINUTES = 10
RESET_CODE_MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class LoginResult:
    outcome: str  # OK, INVALID or LOCKED
    user: StaffUser | Holder | None = None


# --- throttling -----------------------------------------------------------


def _keyed_hash(value: str) -> str:
    key = str(current_app.config["SECRET_KEY"]).encode()
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def account_key(kind: str, login: str) -> str:
    return _keyed_hash(f"account:{kind}:{login.strip().upper()}")


def address_key(address: str | None) -> str:
    return _keyed_hash(f"address:{address or 'unknown'}")


def _aware(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes for timezone-aware columns; they were stored in UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def is_locked(keys: list[str]) -> bool:
    now = utcnow()
    rows = db.session.scalars(select(LoginThrottle).where(LoginThrottle.key.in_(keys))).all()
    return any((_aware(row.locked_until) or now) > now for row in rows)


def record_failure(keys: list[str], *, label: str) -> None:
    """Count one failed attempt against each key; lock a key that reaches the maximum."""
    config = current_app.config
    window = timedelta(minutes=config["LOGIN_LOCK_MINUTES"])
    now = utcnow()
    for key in keys:
        row = db.session.scalar(select(LoginThrottle).where(LoginThrottle.key == key))
        if row is None:
            row = LoginThrottle(key=key, failures=0, window_started_at=now)
            db.session.add(row)
        if _aware(row.window_started_at) + window < now:
            row.failures = 0
            row.window_started_at = now
        row.failures += 1
        if row.failures >= config["LOGIN_MAX_FAILURES"] and not (_aware(row.locked_until) or now) > now:
            row.locked_until = now + window
            logger.warning("Login locked for %s minutes after %s failures (%s)", config["LOGIN_LOCK_MINUTES"], row.failures, label)
    try:
        db.session.commit()
    except IntegrityError:
        # Another worker inserted the same key first, and its count is kept.
        db.session.rollback()


def clear_failures(key: str) -> None:
    db.session.execute(delete(LoginThrottle).where(LoginThrottle.key == key))
    db.session.commit()


# --- passwords ------------------------------------------------------------


@cache
def _dummy_hash() -> str:
    return generate_password_hash(secrets.token_hex(16))


def _spend_equal_time(password: str) -> None:
    """Check a password against a throwaway hash, so a missing account costs as much as a wrong password."""
    check_password_hash(_dummy_hash(), password)


# --- staff ----------------------------------------------------------------


def create_staff(username: str, role: str, password: str, *, actor: str, totp_secret: str | None = None) -> StaffUser:
    user = StaffUser(username=username, role=role, totp_secret=totp_secret)
    user.set_password(password)
    db.session.add(user)
    db.session.add(AuditEntry(actor=actor, action="staff.create", target=f"staff:{username}", detail={"role": role}))
    db.session.commit()
    logger.info("Staff account %s (%s) created by %s", username, role, actor)
    return user


def create_or_reset_staff(username: str, role: str, password: str, *, actor: str) -> StaffUser:
    """Create the account, or set its password and role; a reset also ends its sessions and second factor."""
    user = db.session.scalar(select(StaffUser).where(StaffUser.username == username))
    if user is None:
        return create_staff(username, role, password, actor=actor)
    user.set_password(password)
    user.role = role
    user.totp_secret = None
    user.session_version += 1
    db.session.add(AuditEntry(actor=actor, action="staff.reset_password", target=f"staff:{username}", detail={}))
    db.session.commit()
    return user


def authenticate_staff(username: str, password: str, address: str | None = None) -> LoginResult:
    """Check the first factor. Unknown, inactive and wrong-password accounts get the same INVALID."""
    keys = [account_key("staff", username), address_key(address)]
    user = db.session.scalar(select(StaffUser).where(StaffUser.username == username))
    if is_locked(keys):
        _spend_equal_time(password)
        logger.warning("Locked-out staff login attempt for %r from %s", username[:50], address)
        return LoginResult(LOCKED)
    if user is None or not user.active or not user.check_password(password):
        if user is None or not user.active:
            _spend_equal_time(password)
        logger.warning("Failed staff login for %r from %s", username[:50], address)
        record_failure(keys, label=f"staff {username[:50]!r}")
        return LoginResult(INVALID)
    return LoginResult(OK, user)


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(user: StaffUser, secret: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name="电子证书签发与查验系统")


def check_totp(user: StaffUser, secret: str, code: str, address: str | None = None) -> str:
    """Check the second factor (the current 30-second code, or the one before or after)."""
    keys = [account_key("staff", user.username), address_key(address)]
    if is_locked(keys):
        logger.warning("Locked-out second factor attempt for staff %s from %s", user.username, address)
        return LOCKED
    code = "".join((code or "").split())
    if not (code.isdigit() and pyotp.TOTP(secret).verify(code, valid_window=1)):
        logger.warning("Failed second factor for staff %s from %s", user.username, address)
        record_failure(keys, label=f"staff {user.username!r} second factor")
        return INVALID
    clear_failures(keys[0])
    return OK


def enrol_totp(user: StaffUser, secret: str) -> None:
    user.totp_secret = secret
    db.session.add(AuditEntry(actor=user.username, action="staff.enrol_totp", target=f"staff:{user.username}", detail={}))
    db.session.commit()
    logger.info("Staff %s enrolled a second factor", user.username)


# --- holders --------------------------------------------------------------


def find_holder(login: str) -> Holder | None:
    """Find a holder by ID number or mobile number."""
    login = login.strip().upper()
    return db.session.scalar(select(Holder).where(or_(Holder.id_number_hash == id_hash(login), Holder.phone == login)))


def authenticate_holder(login: str, password: str, address: str | None = None) -> LoginResult:
    keys = [account_key("holder", login), address_key(address)]
    masked = mask_id_number(login.strip())
    if is_locked(keys):
        _spend_equal_time(password)
        logger.warning("Locked-out holder login attempt for %s from %s", masked, address)
        return LoginResult(LOCKED)
    holder = find_holder(login)
    if holder is None:
        _spend_equal_time(password)
    if holder is None or not holder.check_password(password):
        logger.warning("Failed holder login for %s from %s", masked, address)
        record_failure(keys, label=f"holder {masked}")
        return LoginResult(INVALID)
    clear_failures(keys[0])
    return LoginResult(OK, holder)


def register_holder(*, name: str, id_type: str, id_number: str, phone: str, password: str) -> Holder:
    holder = Holder(name=name, id_type=id_type, id_number=id_number, phone=phone, consented_at=utcnow())
    holder.set_password(password)
    db.session.add(holder)
    db.session.commit()
    logger.info("Holder %s registered", mask_id_number(id_number))
    return holder


def end_sessions(user: StaffUser | Holder) -> None:
    """End every session of this account (logout, password change): their session version no longer matches."""
    user.session_version = (user.session_version or 1) + 1
    db.session.commit()


def delete_holder(holder: Holder, password: str) -> bool:
    """Delete a holder account after the password is entered again. The certificate register is untouched."""
    if not holder.check_password(password):
        logger.warning("Account deletion rejected for holder %s: wrong password", mask_id_number(holder.id_number))
        return False
    masked = mask_id_number(holder.id_number)
    db.session.execute(delete(PasswordResetCode).where(PasswordResetCode.holder_id == holder.id))
    db.session.delete(holder)
    db.session.commit()
    logger.info("Holder %s deleted their account", masked)
    return True


# --- password reset -------------------------------------------------------


def _code_hash(code: str) -> str:
    return _keyed_hash(f"reset:{code}")


def _holder_by_id_and_phone(id_number: str, phone: str) -> Holder | None:
    return db.session.scalar(
        select(Holder).where(Holder.id_number_hash == id_hash(id_number), Holder.phone == phone.strip())
    )


def request_reset(id_number: str, phone: str) -> None:
    """Send a reset code by SMS when the ID number and mobile number belong to one account.

    The caller shows the same response either way, so the form cannot tell
    which accounts exist.
    """
    from .sms import sms_sender

    holder = _holder_by_id_and_phone(id_number, phone)
    masked = mask_id_number(id_number.strip())
    if holder is None:
        # Spend comparable time so the two paths cannot be distinguished by timing either.
        _code_hash(secrets.token_hex(4))
        logger.info("Password reset requested for unknown account %s", masked)
        return
    code = "".join(secrets.choice("0123456789") for _ in range(RESET_CODE_DIGITS))
    db.session.execute(
        update(PasswordResetCode).where(PasswordResetCode.holder_id == holder.id, PasswordResetCode.used_at.is_(None)).values(used_at=utcnow())
    )
    db.session.add(
        PasswordResetCode(holder_id=holder.id, code_hash=_code_hash(code), expires_at=utcnow() + timedelta(minutes=RESET_CODE_MINUTES))
    )
    db.session.commit()
    sms_sender().send(holder.phone, f"您正在重置电子证书系统的登录密码，验证码 {code}，{RESET_CODE_MINUTES} 分钟内有效。如非本人操作，请忽略。")
    logger.info("Password reset code sent for holder %s", masked)


def reset_password(id_number: str, phone: str, code: str, new_password: str) -> bool:
    """Set a new password when the code is right and unexpired; ends the holder's sessions."""
    holder = _holder_by_id_and_phone(id_number, phone)
    masked = mask_id_number(id_number.strip())
    if holder is None:
        _spend_equal_time(new_password)
        logger.warning("Password reset with a code for unknown account %s", masked)
        return False
    now = utcnow()
    row = db.session.scalar(
        select(PasswordResetCode)
        .where(PasswordResetCode.holder_id == holder.id, PasswordResetCode.used_at.is_(None))
        .order_by(PasswordResetCode.id.desc())
    )
    if row is None or _aware(row.expires_at) < now or row.attempts >= RESET_CODE_MAX_ATTEMPTS:
        _spend_equal_time(new_password)
        logger.warning("Password reset rejected for holder %s: no usable code", masked)
        return False
    if not hmac.compare_digest(row.code_hash, _code_hash("".join((code or "").split()))):
        row.attempts += 1
        db.session.commit()
        _spend_equal_time(new_password)
        logger.warning("Password reset rejected for holder %s: wrong code (attempt %s)", masked, row.attempts)
        return False
    row.used_at = now
    holder.set_password(new_password)
    holder.session_version += 1
    db.session.commit()
    logger.info("Holder %s reset their password", masked)
    return True
