"""Staff and holder accounts: passwords, second factor, login throttling, password reset, deletion."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cache

import pyotp
from flask import current_app
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from ..domain.identity import clean_id_number, mask_id_number
from ..domain.passwords import holder_password_problem, staff_password_problem  # noqa: F401 (re-exported)
from ..extensions import db
from ..id_numbers import id_hash
from ..models import AuditEntry, Holder, LoginThrottle, PasswordResetCode, StaffUser, utcnow
from ..security import login_name_for_log

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
    # Staff sometimes type the password into the user name field, so a name matching no account is not logged.
    logged_name = login_name_for_log(username, known=user is not None)
    if is_locked(keys):
        _spend_equal_time(password)
        logger.warning("Locked-out staff login attempt for %s from %s", logged_name, address)
        return LoginResult(LOCKED)
    if user is None or not user.active or not user.check_password(password):
        if user is None or not user.active:
            _spend_equal_time(password)
        logger.warning("Failed staff login for %s from %s", logged_name, address)
        record_failure(keys, label=f"staff {logged_name}")
        return LoginResult(INVALID)
    return LoginResult(OK, user)


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(user: StaffUser, secret: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name="电子证书签发与查验系统")


def check_totp(user: StaffUser, secret: str, code: str, address: str | None = None, *, now: float | None = None) -> str:
    """Check the second factor (the current 30-second code, or the one before or after).

    A code is accepted once: its time step must be later than the last step
    this account used, and a used or earlier step gets the same INVALID as a
    wrong code. The step is claimed with a conditional UPDATE, so two requests
    racing with one code cannot both pass.
    """
    keys = [account_key("staff", user.username), address_key(address)]
    if is_locked(keys):
        logger.warning("Locked-out second factor attempt for staff %s from %s", user.username, address)
        return LOCKED
    code = "".join((code or "").split())
    step = None
    if code.isdigit():
        step = totp_step(secret, code, time.time() if now is None else now)
    if step is None:
        logger.warning("Failed second factor for staff %s from %s", user.username, address)
        record_failure(keys, label=f"staff {user.username!r} second factor")
        return INVALID
    if not _claim_totp_step(user, step):
        logger.warning("Replayed second factor code for staff %s from %s", user.username, address)
        record_failure(keys, label=f"staff {user.username!r} second factor")
        return INVALID
    clear_failures(keys[0])
    return OK


def totp_step(secret: str, code: str, now: float) -> int | None:
    """Return the time step (30-second counter) whose code is `code`, trying the steps before and after; None if none."""
    totp = pyotp.TOTP(secret)
    current = totp.timecode(datetime.fromtimestamp(now, timezone.utc))
    for offset in (0, -1, 1):
        expected = totp.generate_otp(current + offset)
        if hmac.compare_digest(expected, code):
            return current + offset
    return None


def _claim_totp_step(user: StaffUser, step: int) -> bool:
    claimed = db.session.execute(
        update(StaffUser)
        .where(StaffUser.id == user.id, or_(StaffUser.totp_last_step.is_(None), StaffUser.totp_last_step < step))
        .values(totp_last_step=step)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return claimed.rowcount == 1


def enrol_totp(user: StaffUser, secret: str) -> None:
    user.totp_secret = secret
    db.session.add(AuditEntry(actor=user.username, action="staff.enrol_totp", target=f"staff:{user.username}", detail={}))
    db.session.commit()
    logger.info("Staff %s enrolled a second factor", user.username)


# --- holders --------------------------------------------------------------


def find_holder(login: str) -> Holder | None:
    """Find a holder by ID number or mobile number, cleaned as registration cleans ID numbers."""
    login = clean_id_number(login)
    return db.session.scalar(select(Holder).where(or_(Holder.id_number_hash == id_hash(login), Holder.phone == login)))


def authenticate_holder(login: str, password: str, address: str | None = None) -> LoginResult:
    # Full-width or spaced input counts against the same account key as the registered form.
    login = clean_id_number(login)
    keys = [account_key("holder", login), address_key(address)]
    # A login that matches no holder may be a password typed into the wrong field, so it is logged as a digest only.
    if is_locked(keys):
        _spend_equal_time(password)
        logger.warning("Locked-out holder login attempt for %s from %s", login_name_for_log(login, known=False), address)
        return LoginResult(LOCKED)
    holder = find_holder(login)
    if holder is None:
        _spend_equal_time(password)
    if holder is None or not holder.check_password(password):
        logged_login = mask_id_number(login) if holder is not None else login_name_for_log(login, known=False)
        logger.warning("Failed holder login for %s from %s", logged_login, address)
        record_failure(keys, label=f"holder {logged_login}")
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
        select(Holder).where(Holder.id_number_hash == id_hash(clean_id_number(id_number)), Holder.phone == phone.strip())
    )


# One thread per process sends reset codes, so the request path does the same work
# whether or not the pair belongs to an account (see request_reset).
_reset_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="password-reset")
_pending_resets: set[Future] = set()
_pending_lock = threading.Lock()


def queue_reset_request(id_number: str, phone: str) -> None:
    """Queue a reset request: a background thread runs request_reset for the pair.

    The request path only queues the pair, so the responses for known and
    unknown accounts take the same time. The lookup, the daily cap and the SMS
    gateway call run after the response, and their outcome shows only in
    the log.
    """
    app = current_app._get_current_object()
    future = _reset_executor.submit(_run_reset_request, app, clean_id_number(id_number), phone.strip())
    with _pending_lock:
        _pending_resets.add(future)
    future.add_done_callback(_forget_reset)


def _forget_reset(future: Future) -> None:
    with _pending_lock:
        _pending_resets.discard(future)


def wait_for_reset_requests(timeout_seconds: float = 30) -> None:
    """Block until every queued reset request of this process has been handled (tests, shutdown)."""
    with _pending_lock:
        pending = list(_pending_resets)
    wait(pending, timeout=timeout_seconds)


def _run_reset_request(app, id_number: str, phone: str) -> None:
    with app.app_context():
        try:
            request_reset(id_number, phone)
        except Exception:
            # Nothing else reports it, because the holder already got the same response as for an unknown account.
            logger.exception("Password reset request for %s failed", mask_id_number(id_number))
        finally:
            db.session.remove()


def request_reset(id_number: str, phone: str) -> None:
    """Send a reset code by SMS when the ID number and mobile number belong to one account.

    At most PASSWORD_RESET_CODES_PER_PHONE_PER_DAY codes go to one account's
    mobile number in 24 hours; later requests are logged and dropped.
    """
    from .sms import SmsError, sms_sender

    holder = _holder_by_id_and_phone(id_number, phone)
    masked = mask_id_number(id_number.strip())
    if holder is None:
        logger.info("Password reset requested for unknown account %s", masked)
        return
    if _daily_codes_used_up(holder):
        logger.warning(
            "Password reset code for holder %s not sent: %s codes in the last 24 hours",
            masked, current_app.config["PASSWORD_RESET_CODES_PER_PHONE_PER_DAY"],
        )
        return
    code = "".join(secrets.choice("0123456789") for _ in range(RESET_CODE_DIGITS))
    db.session.execute(
        update(PasswordResetCode).where(PasswordResetCode.holder_id == holder.id, PasswordResetCode.used_at.is_(None)).values(used_at=utcnow())
    )
    db.session.add(
        PasswordResetCode(holder_id=holder.id, code_hash=_code_hash(code), expires_at=utcnow() + timedelta(minutes=RESET_CODE_MINUTES))
    )
    db.session.commit()
    try:
        sms_sender().send(holder.phone, f"您正在重置电子证书系统的登录密码，验证码 {code}，{RESET_CODE_MINUTES} 分钟内有效。如非本人操作，请忽略。")
    except SmsError as error:
        # The holder got the same response as for an unknown account, so a failure cannot reveal that
        # the account exists. They can request a new code, and operators find the failure in this log line.
        logger.error("Password reset code for holder %s not sent: %s", masked, error)
        return
    logger.info("Password reset code sent for holder %s", masked)


def _daily_codes_used_up(holder: Holder) -> bool:
    """Return whether the holder's mobile number has had the daily maximum of codes in the last 24 hours."""
    maximum = current_app.config["PASSWORD_RESET_CODES_PER_PHONE_PER_DAY"]
    latest = db.session.scalars(
        select(PasswordResetCode.created_at)
        .where(PasswordResetCode.holder_id == holder.id)
        .order_by(PasswordResetCode.id.desc())
        .limit(maximum)
    ).all()
    # Compared in Python because SQLite stores these columns without a time zone.
    since = utcnow() - timedelta(days=1)
    return len([created for created in latest if _aware(created) > since]) >= maximum


def reset_limit_key(phone: str) -> str:
    """Return the rate-limit key of a mobile number, an HMAC, so the limiter storage contains no plain numbers."""
    return _keyed_hash(f"reset-phone:{phone.strip()}")


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


# --- holder accounts handled by staff ---------------------------------------------

PHONE_PATTERN = re.compile(r"1\d{10}")
MAX_REASON_LENGTH = 200


class HolderAccountError(ValueError):
    """A staff change to a holder account that cannot be made; `field` names the form field, the message is Chinese."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def search_holders(query: str) -> list[Holder]:
    """Find holder accounts by ID number (through its keyed hash) or by mobile number, for the staff page."""
    cleaned = clean_id_number((query or "")[:40])
    if not cleaned or "\x00" in cleaned:
        return []
    condition = Holder.id_number_hash == id_hash(cleaned)
    if PHONE_PATTERN.fullmatch(cleaned):
        condition = or_(condition, Holder.phone == cleaned)
    return list(db.session.scalars(select(Holder).where(condition).order_by(Holder.created_at)))


def _checked_reason(reason: str) -> str:
    reason = " ".join((reason or "").split())
    if not reason:
        raise HolderAccountError("reason", "请填写操作原因，例如“本人持身份证到窗口办理，已核验证件”。")
    if len(reason) > MAX_REASON_LENGTH:
        raise HolderAccountError("reason", f"操作原因有 {len(reason)} 个字，超过 {MAX_REASON_LENGTH} 个字的上限，请精简后重新提交。")
    return reason


def remove_holder_by_staff(holder: Holder, reason: str, *, actor: str) -> None:
    """Delete a holder account after in-person verification (for example a squatted ID number), with an audited reason.

    The certificate register is untouched, and the rightful holder can then register.
    """
    from . import audit

    reason = _checked_reason(reason)
    masked = mask_id_number(holder.id_number)
    audit.record(
        actor, "holder.remove", f"holder:{holder.id}",
        detail={"reason": reason, "id_type": holder.id_type, "id_number": masked},
        before={"phone": _masked_phone(holder.phone)},
    )
    db.session.execute(delete(PasswordResetCode).where(PasswordResetCode.holder_id == holder.id))
    db.session.delete(holder)
    db.session.commit()
    logger.info("Holder account %s removed by staff %s", masked, actor)


def change_holder_phone(holder: Holder, phone: str, reason: str, *, actor: str) -> None:
    """Set a holder's mobile number after in-person verification; ends the account's sessions and unused reset codes."""
    from . import audit

    phone = (phone or "").strip()
    if not PHONE_PATTERN.fullmatch(phone):
        raise HolderAccountError("phone", f"新手机号码「{phone[:20]}」无效：应为 11 位数字，以 1 开头。")
    reason = _checked_reason(reason)
    if phone == holder.phone:
        raise HolderAccountError("phone", f"新手机号码 {_masked_phone(phone)} 与账号现有号码相同，无需更改。")
    if db.session.scalar(select(Holder.id).where(Holder.phone == phone, Holder.id != holder.id)):
        raise HolderAccountError("phone", f"手机号码 {_masked_phone(phone)} 已用于另一个账号，请先核实该账号。")
    masked = mask_id_number(holder.id_number)
    audit.record(
        actor, "holder.change_phone", f"holder:{holder.id}",
        detail={"reason": reason, "id_number": masked},
        before={"phone": _masked_phone(holder.phone)}, after={"phone": _masked_phone(phone)},
    )
    holder.phone = phone
    holder.session_version = (holder.session_version or 1) + 1
    db.session.execute(
        update(PasswordResetCode)
        .where(PasswordResetCode.holder_id == holder.id, PasswordResetCode.used_at.is_(None))
        .values(used_at=utcnow())
    )
    try:
        db.session.commit()
    except IntegrityError:
        # Another request took the number between the check above and this commit.
        db.session.rollback()
        raise HolderAccountError("phone", f"手机号码 {_masked_phone(phone)} 已用于另一个账号，请先核实该账号。") from None
    logger.info("Mobile number of holder %s changed by staff %s", masked, actor)


def _masked_phone(phone: str) -> str:
    return phone[:3] + "****" + phone[-4:]
