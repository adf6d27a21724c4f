from flask import Blueprint, redirect, request, url_for
from flask_login import current_user

bp = Blueprint("admin", __name__)

# Endpoints reachable without a staff session.
PUBLIC_ENDPOINTS = {"admin.login"}


@bp.before_request
def require_staff():
    """Guard the whole admin area once: only logged-in staff get past this."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if not current_user.is_authenticated or not getattr(current_user, "is_staff", False):
        return redirect(url_for("admin.login", next=request.full_path), 303)
    return None


from . import routes  # noqa: E402,F401
