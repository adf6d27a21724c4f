"""Login sessions shared by holders and staff, distinguished by the session id prefix."""

from __future__ import annotations

from flask import Flask
from flask_babel import lazy_gettext as _l

from .extensions import db, login_manager
from .models import Holder, StaffUser

_USER_TYPES = {"staff": StaffUser, "holder": Holder}


def configure_login(app: Flask) -> None:
    login_manager.login_view = "holders.login"
    login_manager.login_message = _l("请先登录。")
    login_manager.session_protection = "strong"


@login_manager.user_loader
def load_user(user_id: str) -> StaffUser | Holder | None:
    prefix, _, raw_id = user_id.partition(":")
    model = _USER_TYPES.get(prefix)
    if model is None or not raw_id.isdigit():
        return None
    return db.session.get(model, int(raw_id))
