"""The role matrix: every URL rule under /admin, every method it allows, for every kind of visitor.

Rules are read from app.url_map, so routes added later are covered without
editing this file. CSRF checks are switched off here, so that a refusal can
only come from the role guard and not from a missing token.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select
from werkzeug.routing import IntegerConverter

from app.admin import PUBLIC_ENDPOINTS, SAFE_METHODS
from app.domain.tokens import make_token
from app.extensions import db
from app.models import Certificate, Exam, ImportBatch, Layout, StaffUser

from .conftest import HOLDER_PASSWORD, QR_KEY
from .test_holders import login as holder_login
from .test_holders import register

CONSTRUCTOR_ROSTER = "2024年度二级建造师考试合格人员名单.xlsx"
NUMBER, ID_NUMBER = "202421000001", "500109196409269696"
VISITORS = ("anonymous", "holder", "auditor", "operator", "admin")
# Staff sessions survive every request but this one, which is checked last.
LOGOUT = "admin.logout"


def is_success(status: int) -> bool:
    return 200 <= status < 300


@pytest.fixture
def objects(app, import_roster, make_staff):
    """Return real ids and values to put into URL parameters, by parameter name."""
    import_roster(CONSTRUCTOR_ROSTER, "二级建造师", "certificate")
    make_staff("bystander", "operator")
    with app.app_context():
        certificate = db.session.scalar(select(Certificate).where(Certificate.number == NUMBER))
        return {
            "certificate_id": certificate.id,
            "batch_id": db.session.scalar(select(ImportBatch.id)),
            "staff_id": db.session.scalar(select(StaffUser.id).where(StaffUser.username == "bystander")),
            "exam_id": db.session.scalar(select(Exam.id)),
            "layout_id": db.session.scalar(select(Layout.id)),
            "number": NUMBER,
            "token": make_token(certificate.public_id, [QR_KEY]),
            "filename": "css/site.css",
        }


@pytest.fixture
def visitors(app, login_staff, objects, monkeypatch):
    holder = app.test_client()
    register(holder)
    holder_login(holder, ID_NUMBER, HOLDER_PASSWORD)
    clients = {
        "anonymous": app.test_client(),
        "holder": holder,
        "auditor": login_staff("matrix-auditor", "auditor"),
        "operator": login_staff("matrix-operator", "operator"),
        "admin": login_staff("matrix-admin", "admin"),
    }
    # Off only after the logins, which read their tokens from the pages.
    monkeypatch.setitem(app.config, "WTF_CSRF_ENABLED", False)
    return clients


def url_for_rule(rule, objects: dict) -> str:
    values = {}
    for name in rule.arguments:
        converter = rule._converters[name]
        default = 1 if isinstance(converter, IntegerConverter) else "x"
        values[name] = objects.get(name, default)
    return rule.build(values, append_unknown=False)[1]


def admin_requests(app, objects) -> list[tuple[str, str, str, bool]]:
    """Return (endpoint, method, url, admin_only) for every rule under /admin."""
    requests = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/admin"):
            continue
        view = app.view_functions[rule.endpoint]
        for method in sorted(rule.methods - {"OPTIONS"}):
            requests.append((rule.endpoint, method, url_for_rule(rule, objects), getattr(view, "admin_only", False)))
    # Logging out ends the session the later requests rely on.
    return sorted(requests, key=lambda item: item[0] == LOGOUT)


def may(visitor: str, method: str, admin_only: bool) -> bool:
    """Return whether the policy lets `visitor` call a route with `method`."""
    if visitor in ("anonymous", "holder"):
        return False
    if admin_only:
        return visitor == "admin"
    if method in SAFE_METHODS:
        return True
    return visitor in ("operator", "admin")


def test_matrix_covers_admin_routes(app, objects):
    endpoints = {endpoint for endpoint, *_ in admin_requests(app, objects)}

    assert {"admin.certificate", "admin.revoke", "admin.staff_create", "admin.audit_log", "admin.statistics"} <= endpoints
    assert {"admin.holder_accounts", "admin.holder_change_phone", "admin.holder_remove", "admin.staff_reset_totp"} <= endpoints


def test_role_matrix(app, objects, visitors):
    failures = []
    for endpoint, method, url, admin_only in admin_requests(app, objects):
        for visitor in VISITORS:
            if endpoint in PUBLIC_ENDPOINTS:
                continue
            response = visitors[visitor].open(url, method=method)
            # A WSGI server closes every response; a streamed body keeps its request context until then.
            response.close()
            allowed = may(visitor, method, admin_only)
            if not allowed and is_success(response.status_code):
                failures.append(f"{visitor} got {response.status_code} for {method} {url}")
            if allowed and response.status_code == 403:
                failures.append(f"{visitor} was refused {method} {url}")
            if allowed and "/admin/login" in response.headers.get("Location", "") and endpoint != LOGOUT:
                failures.append(f"{visitor} was sent to the login page for {method} {url}")

    assert failures == []


@pytest.mark.parametrize(
    ("visitor", "method", "admin_only", "expected"),
    [
        ("auditor", "GET", False, True),
        ("auditor", "POST", False, False),
        ("auditor", "HEAD", False, True),
        ("operator", "POST", False, True),
        ("operator", "GET", True, False),
        ("admin", "POST", True, True),
        ("holder", "GET", False, False),
        ("anonymous", "GET", False, False),
    ],
)
def test_policy_table(visitor, method, admin_only, expected):
    assert may(visitor, method, admin_only) is expected


@pytest.mark.parametrize(
    ("visitor", "status"),
    [("anonymous", 303), ("holder", 303), ("auditor", 403), ("operator", 403), ("admin", 200)],
)
def test_staff_page_by_visitor(visitors, visitor, status):
    assert visitors[visitor].get("/admin/staff").status_code == status


def test_auditor_cannot_revoke(app, visitors, objects):
    response = visitors["auditor"].post(
        f"/admin/certificates/{objects['certificate_id']}/revoke", data={"reason": "审计员不应能撤销"}
    )

    assert response.status_code == 403
    with app.app_context():
        assert db.session.get(Certificate, objects["certificate_id"]).status == "valid"


ADMIN_ONLY_ENDPOINTS = {
    "admin.catalogue", "admin.add_exam", "admin.add_specialty", "admin.edit_layout",
    "admin.staff_list", "admin.staff_create", "admin.staff_activate", "admin.staff_deactivate",
    "admin.staff_reset_password", "admin.staff_reset_totp",
}


@pytest.mark.parametrize("endpoint", sorted(ADMIN_ONLY_ENDPOINTS))
def test_admin_views_are_marked(app, endpoint):
    assert getattr(app.view_functions[endpoint], "admin_only", False) is True
