"""Staff account management for admins: create, deactivate, activate, reset a password or the second factor.

Each change is audited.
"""

from __future__ import annotations

import logging
import re

from sqlalchemy import select

from ..extensions import db
from ..models import StaffUser
from . import accounts, audit

logger = logging.getLogger(__name__)

ROLES = {"admin": "管理员", "operator": "业务经办", "auditor": "审计员"}
USERNAME = re.compile(r"[A-Za-z0-9_.-]{3,50}")


class StaffError(ValueError):
    """A staff-account change that cannot be made; `errors` maps a form field to Chinese messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("；".join(m for messages in errors.values() for m in messages))
        self.errors = errors


def list_staff() -> list[StaffUser]:
    return list(db.session.scalars(select(StaffUser).order_by(StaffUser.username)))


def create(username: str, role: str, password: str, *, actor: str) -> StaffUser:
    """Create an account through accounts.create_staff after checking the name, role and password."""
    username = (username or "").strip()
    errors: dict[str, list[str]] = {}
    if not USERNAME.fullmatch(username):
        errors["username"] = [f"用户名「{username[:50]}」不符合要求：只能使用 3 至 50 个英文字母、数字、下划线、点或连字符。"]
    elif db.session.scalar(select(StaffUser.id).where(StaffUser.username == username)):
        errors["username"] = [f"用户名「{username}」已存在，请换一个用户名。"]
    if role not in ROLES:
        errors["role"] = ["请选择角色：管理员、业务经办或审计员。"]
    problem = accounts.staff_password_problem(password or "")
    if problem:
        errors["password"] = [problem]
    if errors:
        raise StaffError(errors)
    return accounts.create_staff(username, role, password, actor=actor)


def set_active(user: StaffUser, active: bool, *, actor: str) -> None:
    """Deactivate or reactivate an account; an admin cannot deactivate their own account."""
    if not active and user.username == actor:
        raise StaffError({"": ["不能停用自己正在使用的账号；请由另一位管理员操作。"]})
    if user.active == active:
        return
    user.active = active
    audit.record(
        actor, "staff.activate" if active else "staff.deactivate", f"staff:{user.username}",
        before={"active": not active}, after={"active": active},
    )
    db.session.commit()
    logger.info("Staff account %s %s by %s", user.username, "activated" if active else "deactivated", actor)


def reset_password(user: StaffUser, password: str, *, actor: str) -> None:
    problem = accounts.staff_password_problem(password or "")
    if problem:
        raise StaffError({"password": [problem]})
    user.set_password(password)
    # Sessions opened with the old password end, including copies of their cookie.
    user.session_version = (user.session_version or 1) + 1
    audit.record(actor, "staff.reset_password", f"staff:{user.username}")
    db.session.commit()
    logger.info("Password of staff account %s reset by %s; its sessions ended", user.username, actor)


def reset_second_factor(user: StaffUser, *, actor: str) -> None:
    """Remove the account's TOTP enrolment and end its sessions; the user enrols a new authenticator at the next login."""
    had_second_factor = user.totp_secret is not None
    user.totp_secret = None
    user.session_version = (user.session_version or 1) + 1
    audit.record(
        actor, "staff.reset_totp", f"staff:{user.username}",
        before={"totp_enrolled": had_second_factor}, after={"totp_enrolled": False},
    )
    db.session.commit()
    logger.info("Second factor of staff account %s reset by %s; its sessions ended", user.username, actor)
