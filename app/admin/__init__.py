"""The staff area. Access is decided once, here, for every route of the blueprint.

Policy: anonymous visitors and holders are sent to the staff login. Every
staff role may read (GET, HEAD). Changes (other methods) need the operator or
admin role. Routes marked `@admin_only` need the admin role for every method.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from flask import Blueprint, abort, current_app, make_response, redirect, request, url_for
from flask_login import current_user

from ..web import hx_redirect, is_htmx, login_next

bp = Blueprint("admin", __name__)
logger = logging.getLogger(__name__)

ROLE_ADMIN = "admin"
ROLE_OPERATOR = "operator"
ROLE_AUDITOR = "auditor"
ROLES = (ROLE_ADMIN, ROLE_OPERATOR, ROLE_AUDITOR)
WRITE_ROLES = frozenset({ROLE_ADMIN, ROLE_OPERATOR})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Endpoints reachable without a staff session.
PUBLIC_ENDPOINTS = {"admin.login", "admin.login_totp"}

View = TypeVar("View", bound=Callable)


def admin_only(view: View) -> View:
    """Mark a view as reserved to the admin role (staff accounts, catalogue, seals, keys)."""
    view.admin_only = True  # type: ignore[attr-defined]
    return view


def any_staff(view: View) -> View:
    """Mark a view every staff role may call with any method: it acts on the caller's own session or account."""
    view.any_staff = True  # type: ignore[attr-defined]
    return view


def allowed(role: str, method: str, view: Callable | None) -> bool:
    """Decide whether a staff member with `role` may call `view` with `method`."""
    if getattr(view, "any_staff", False):
        return role in ROLES
    if getattr(view, "admin_only", False):
        return role == ROLE_ADMIN
    if method in SAFE_METHODS:
        return role in ROLES
    return role in WRITE_ROLES


@bp.before_request
def require_staff():
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if not current_user.is_authenticated or not getattr(current_user, "is_staff", False):
        target = url_for("admin.login", next=login_next())
        if is_htmx():
            # A login form swapped into a fragment would be unusable: htmx loads the whole page instead.
            return hx_redirect(make_response("", 401), target)
        return redirect(target, 303)

    view = current_app.view_functions.get(request.endpoint or "")
    if not allowed(current_user.role, request.method, view):
        logger.warning("Staff %s (%s) denied %s %s", current_user.username, current_user.role, request.method, request.path)
        abort(403)
    return None


from . import auth, routes  # noqa: E402,F401
from . import audit, catalogue, records, staff, stats  # noqa: E402,F401
from . import documents  # noqa: E402,F401
from . import holders  # noqa: E402,F401
