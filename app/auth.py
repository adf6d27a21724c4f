"""Login sessions shared by holders and staff, distinguished by the session id prefix."""

from __future__ import annotations


from flask import Flask, flash, make_response, redirect, session, url_for
from flask_babel import lazy_gettext as _l
from flask_login import login_user
from sqlalchemy import bindparam, select
from sqlalchemy.orm import defer

from .extensions import db, login_manager
from .models import Holder, StaffUser
from .web import hx_redirect, is_htmx, login_next

SESSION_VERSION_KEY = "sv"

# The loader runs on every logged-in request. The ID number and the password
# hash are deferred, so a page that never shows them skips decrypting and
# fetching them. A page that does show them loads them on first access.
_USER_QUERIES = {
    "staff": select(StaffUser).where(StaffUser.id == bindparam("user_id")),
    "holder": select(Holder)
    .where(Holder.id == bindparam("user_id"))
    .options(defer(Holder.id_number), defer(Holder.password_hash)),
}


def configure_login(app: Flask) -> None:
    login_manager.login_view = "holders.login"
    login_manager.login_message = _l("请先登录。")
    login_manager.session_protection = "strong"


@login_manager.user_loader
def load_user(user_id: str) -> StaffUser | Holder | None:
    prefix, _, raw_id = user_id.partition(":")
    query = _USER_QUERIES.get(prefix)
    if query is None or not raw_id.isdigit():
        return None
    user = db.session.execute(query, {"user_id": int(raw_id)}).scalar_one_or_none()
    # A logout or password change bumps the version, which ends copies of older cookies.
    if user is None or session.get(SESSION_VERSION_KEY) != user.session_version:
        return None
    return user


@login_manager.unauthorized_handler
def unauthorized():
    """Send the visitor to the holder login; htmx gets HX-Redirect so the whole page changes."""
    target = url_for("holders.login", next=login_next())
    if is_htmx():
        return hx_redirect(make_response("", 401), target)
    flash(str(login_manager.login_message), "info")
    return redirect(target, 303)


def start_session(user: StaffUser | Holder) -> None:
    """Log the user in on a fresh session: nothing from the anonymous session carries over."""
    from .security import stamp_new_session

    session.clear()
    login_user(user)
    session[SESSION_VERSION_KEY] = user.session_version
    stamp_new_session()


def end_session(user: StaffUser | Holder | None) -> None:
    """Log out and invalidate every copy of this user's session cookie."""
    from flask_login import logout_user

    from .services.accounts import end_sessions

    if user is not None and getattr(user, "is_authenticated", False):
        end_sessions(user)
    logout_user()
    session.clear()
