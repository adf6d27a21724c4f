"""Holder sessions and the cached-PDF fast path: a deleted account's cookie never reaches another holder's account."""

from __future__ import annotations

from tests.conftest import HOLDER_PASSWORD, csrf_token

ROSTER = "2024年度二级建造师考试合格人员名单.xlsx"
FIRST = {"name": "田娟", "id_number": "500109196409269696", "phone": "13800000001", "number": "202421000001"}
SECOND = {"name": "周宇子", "id_number": "500108198108055611", "phone": "13800000002", "number": "202421000002"}


def _register_and_login(client, person):
    page = client.get("/register").get_data(as_text=True)
    client.post(
        "/register",
        data={
            "name": person["name"], "id_type": "居民身份证", "id_number": person["id_number"], "phone": person["phone"],
            "password": HOLDER_PASSWORD, "confirm": HOLDER_PASSWORD, "consent": "y", "csrf_token": csrf_token(page),
        },
    )  # fmt: skip
    page = client.get("/login").get_data(as_text=True)
    response = client.post(
        "/login", data={"login": person["id_number"], "password": HOLDER_PASSWORD, "csrf_token": csrf_token(page)}
    )
    assert response.status_code == 303


def test_deleted_account_cookie_not_reused(app, import_roster):
    """A cookie of a deleted account (copied, or left on a shared computer) must not sign in the next registrant."""
    import_roster(ROSTER, "二级建造师", "certificate")
    first = app.test_client()
    _register_and_login(first, FIRST)
    copied = first.get_cookie("session").value
    page = first.get("/me/delete").get_data(as_text=True)
    deleted = first.post("/me/delete", data={"password": HOLDER_PASSWORD, "csrf_token": csrf_token(page)})
    assert deleted.status_code == 303
    second = app.test_client()
    _register_and_login(second, SECOND)
    thief = app.test_client()
    thief.set_cookie("session", copied)

    download = thief.get(f"/me/certificates/{SECOND['number']}.pdf")
    listing = thief.get("/me")

    assert download.status_code != 200, "the deleted account's cookie downloaded the next holder's certificate"
    assert SECOND["name"] not in listing.get_data(as_text=True)
