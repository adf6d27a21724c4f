"""Staff and holder accounts."""

from __future__ import annotations

import logging
import secrets
from functools import cache

from sqlalchemy import or_, select
from werkzeug.security import check_password_hash, generate_password_hash

from ..domain.identity import mask_id_number
from ..extensions import db
from ..models import AuditEntry, Holder, StaffUser, utcnow

logger = logging.getLogger(__name__)



def staff_password_problem(password: str) -> str | None:
    """Return why a staff password is unacceptable, or None."""
    if len(password) < 12:
        return "工作人员密码至少 12 位。"
    classes = sum(
        [
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() for c in password),
        ]
    )
    if classes < 3:
        return "工作人员密码须包含大写字母、小写字母、数字和符号中的至少三类。"
    return None


def create_staff(username: str, role: str, password: str, *, actor: str) -> StaffUser:
    user = StaffUser(username=username, role=role)
    user.set_password(password)
    db.session.add(user)
    db.session.add(AuditEntry(actor=actor, action="staff.create", target=f"staff:{username}", detail={"role": role}))
    db.session.commit()
    logger.info("Staff account %s (%s) created by %s", username, role, actor)
    return user


def create_or_reset_staff(username: str, role: str, password: str, *, actor: str) -> StaffUser:
    user = db.session.scalar(select(StaffUser).where(StaffUser.username == username))
    if user is None:
        return create_staff(username, role, password, actor=actor)
    user.set_password(password)
    user.role = role
    db.session.add(AuditEntry(actor=actor, action="staff.reset_password", target=f"staff:{username}", detail={}))
    db.session.commit()
    return user


def authenticate_staff(username: str, password: str) -> StaffUser | None:
    user = db.session.scalar(select(StaffUser).where(StaffUser.username == username))
    if user is None or not user.active:
        _spend_equal_time(password)
        logger.warning("Failed staff login for %r", username[:50])
        return None
    if not user.check_password(password):
        logger.warning("Failed staff login for %r", username[:50])
        return None
    return user


def find_holder(login: str) -> Holder | None:
    """Find a holder by ID number or mobile number."""
    login = login.strip().upper()
    return db.session.scalar(select(Holder).where(or_(Holder.id_number == login, Holder.phone == login)))


def authenticate_holder(login: str, password: str) -> Holder | None:
    holder = find_holder(login)
    if holder is None:
        _spend_equal_time(password)
        logger.warning("Failed holder login for %s", mask_id_number(login.strip()))
        return None
    if not holder.check_password(password):
        logger.warning("Failed holder login for %s", mask_id_number(login.strip()))
        return None
    return holder


def register_holder(*, name: str, id_type: str, id_number: str, phone: str, password: str) -> Holder:
    holder = Holder(name=name, id_type=id_type, id_number=id_number, phone=phone, consented_at=utcnow())
    holder.set_password(password)
    db.session.add(holder)
    db.session.commit()
    logger.info("Holder %s registered", mask_id_number(id_number))
    return holder


@cache
def _dummy_hash() -> str:
    return generate_password_hash(secrets.token_hex(16))


def _spend_equal_time(password: str) -> None:
    """Check a password against a throwaway hash, so a missing account costs as much as a wrong password."""
    check_password_hash(_dummy_hash(), password)
