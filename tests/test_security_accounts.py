"""Accounts and sessions: password rules, lockout, identical answers, second factor, session lifetime."""

from __future__ import annotations

import re

import pyotp
import pytest
from sqlalchemy import func, select

from app.domain.passwords import holder_password_problem, staff_password_problem
from app.extensions import db
from app.models import Holder, StaffUser
from app.services import accounts

from .conftest import HOLDER_PASSWORD, STAFF_PASSWORD, STAFF_TOTP_SECRET, csrf_token

ID_NUMBER = "500109196409269696"
NAME = "田娟"
PHONE = "13800000001"
UNKNOWN_ID = "110101199001011237"


def make_holder(app, id_number=ID_NUMBER, phone=PHONE, password=HOLDER_PASSWORD) -> None:
    with app.app_context():
        accounts.register_holder(name=NAME, id_type="居民身份证", id_number=id_number, phone=phone, password=password)


def holder_login(client, login=ID_NUMBER, password=HOLDER_PASSWORD, **extra):
    page = client.get("/login").get_data(as_text=True)
    return client.post("/login", data={"login": login, "password": password, "csrf_token": csrf_token(page), **extra})


def staff_password_step(client, username, password=STAFF_PASSWORD):
    page = client.get("/admin/login").get_data(as_text=True)
    return client.post("/admin/login", data={"username": username, "password": password, "csrf_token": csrf_token(page)})


def staff_code_step(client, code):
    page = client.get("/admin/login/totp").get_data(as_text=True)
    return client.post("/admin/login/totp", data={"code": code, "csrf_token": csrf_token(page)})


def normalised(html: str) -> str:
    """Drop what legitimately differs between two answers: CSRF tokens and echoed input."""
    html = re.sub(r"[\w.-]{40,}", "TOKEN", html)
    return re.sub(r'value="[^"]*"', 'value=""', html)


def session_cookie(client) -> str | None:
    cookie = client.get_cookie("session")
    return cookie.value if cookie else None


# --- passwords ------------------------------------------------------------


@pytest.mark.parametrize(
    "password, expected",
    [
        ("short1!", "至少 8 位"),
        ("password", "过于常见"),
        ("PassWord", "过于常见"),  # the check ignores case
        ("12345678", "过于常见"),
        ("qwertyuiop", "过于常见"),
        ("kettle-orbit-55", None),
        ("长城外古道边芳草碧连天", None),  # no composition rule for holders
    ],
    ids=["too-short", "common", "common-any-case", "common-digits", "common-keyboard", "passphrase", "chinese-phrase"],
)
def test_holder_password_policy(password, expected):
    problem = holder_password_problem(password)

    if expected is None:
        assert problem is None
    else:
        assert expected in problem


@pytest.mark.parametrize(
    "password, expected",
    [
        ("Sh0rt!pass", "至少 12 位"),
        ("alllowercaseletters", "至少三类"),
        ("ALLUPPER12345", "至少三类"),
        ("1qaz2wsx3EDC", "过于常见"),  # three classes, but on the list
        ("Str0ng!Passw0rd", None),
        ("kettle-Orbit-55x", None),
    ],
    ids=["too-short", "one-class", "two-classes", "common", "fixture-password", "three-classes"],
)
def test_staff_password_policy(password, expected):
    problem = staff_password_problem(password)

    if expected is None:
        assert problem is None
    else:
        assert expected in problem


def test_register_rejects_common_password(client):
    page = client.get("/register").get_data(as_text=True)
    data = {
        "name": NAME, "id_type": "居民身份证", "id_number": ID_NUMBER, "phone": PHONE,
        "password": "password1", "confirm": "password1", "consent": "y", "csrf_token": csrf_token(page),
    }

    response = client.post("/register", data=data)

    assert response.status_code == 200
    assert "过于常见" in response.get_data(as_text=True)


# --- lockout --------------------------------------------------------------


def test_account_locks_after_five_failures(app, client):
    make_holder(app)
    for _ in range(5):
        assert "不正确" in holder_login(client, password="wrong-password-1").get_data(as_text=True)

    locked = holder_login(client).get_data(as_text=True)

    assert "暂停登录 15 分钟" in locked
    assert "/me" not in (holder_login(client).headers.get("Location") or "")


def test_locked_unknown_and_known_accounts_look_alike(app, client):
    make_holder(app)
    for login in (ID_NUMBER, UNKNOWN_ID):
        for _ in range(5):
            holder_login(client, login=login, password="wrong-password-1", **{})
        # The address is now locked too; clear it so each account's own lock is what answers.
        with app.app_context():
            accounts.clear_failures(accounts.address_key("127.0.0.1"))

    known = holder_login(client, login=ID_NUMBER, password="wrong-password-1").get_data(as_text=True)
    unknown = holder_login(client, login=UNKNOWN_ID, password="wrong-password-1").get_data(as_text=True)

    assert "暂停登录" in known
    assert normalised(known) == normalised(unknown)


def test_address_locks_across_accounts(app, client):
    make_holder(app)
    for number in range(5):
        holder_login(client, login=f"1380000010{number}", password="wrong-password-1")

    response = holder_login(client)  # right password for a fresh account, from the locked address

    assert response.status_code == 200
    assert "暂停登录" in response.get_data(as_text=True)


def test_lock_expires_after_fifteen_minutes(app, client):
    from datetime import timedelta

    from app.models import LoginThrottle

    make_holder(app)
    for _ in range(5):
        holder_login(client, password="wrong-password-1")
    with app.app_context():
        for row in db.session.scalars(select(LoginThrottle)):
            row.locked_until = row.locked_until - timedelta(minutes=15, seconds=1)
            row.window_started_at = row.window_started_at - timedelta(minutes=15, seconds=1)
        db.session.commit()

    response = holder_login(client)

    assert response.status_code == 303


def test_staff_lock_after_five_failures(client, make_staff):
    make_staff("grace")
    for _ in range(5):
        staff_password_step(client, "grace", "Wrong!Password1")

    response = staff_password_step(client, "grace")

    assert response.status_code == 200
    assert "暂停登录" in response.get_data(as_text=True)


# --- identical answers ----------------------------------------------------


def test_staff_login_unknown_matches_wrong_password(client, make_staff):
    make_staff("heidi")

    wrong = staff_password_step(client, "heidi", "Wrong!Password1").get_data(as_text=True)
    unknown = staff_password_step(client, "nobody", "Wrong!Password1").get_data(as_text=True)

    assert normalised(wrong) == normalised(unknown)


def register_form(client, **overrides):
    page = client.get("/register").get_data(as_text=True)
    data = {
        "name": NAME, "id_type": "居民身份证", "id_number": ID_NUMBER, "phone": PHONE,
        "password": HOLDER_PASSWORD, "confirm": HOLDER_PASSWORD, "consent": "y", "csrf_token": csrf_token(page),
    }
    data.update(overrides)
    return client.post("/register", data=data)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"phone": "13800000077"}, {"id_number": UNKNOWN_ID}],
    ids=["same-id-and-phone", "taken-id-new-phone", "new-id-taken-phone"],
)
def test_registration_answer_same_for_taken(app, client, overrides):
    fresh = register_form(app.test_client(), id_number="110101199003070011", phone="13800000088")
    make_holder(app)

    taken = register_form(client, **overrides)

    assert taken.status_code == fresh.status_code
    assert taken.headers["Location"] == fresh.headers["Location"]
    assert client.get(taken.headers["Location"]).get_data(as_text=True).count("注册信息已提交") == 1


def reset_request(client, id_number, phone):
    page = client.get("/password/forgot").get_data(as_text=True)
    return client.post("/password/forgot", data={"id_number": id_number, "phone": phone, "csrf_token": csrf_token(page)})


def outbox(app) -> list[tuple[str, str]]:
    return app.extensions.setdefault("sms_outbox", __import__("app.services.sms", fromlist=["x"]).OutboxSender()).messages


@pytest.mark.parametrize(
    "id_number, phone",
    [(UNKNOWN_ID, PHONE), (ID_NUMBER, "13900000000"), (UNKNOWN_ID, "13900000000")],
    ids=["unknown-id", "wrong-phone", "both-unknown"],
)
def test_reset_request_answer_same_for_unknown(app, client, id_number, phone):
    make_holder(app)
    known = reset_request(app.test_client(), ID_NUMBER, PHONE)
    sent = len(outbox(app))

    unknown = reset_request(client, id_number, phone)

    assert unknown.status_code == known.status_code
    assert unknown.headers["Location"] == known.headers["Location"]
    assert len(outbox(app)) == sent  # nothing sent for the unknown pair


def reset_confirm(client, code, password="new-holder-pass-99", id_number=ID_NUMBER, phone=PHONE):
    page = client.get("/password/reset").get_data(as_text=True)
    return client.post(
        "/password/reset",
        data={"id_number": id_number, "phone": phone, "code": code, "password": password, "confirm": password, "csrf_token": csrf_token(page)},
    )


def test_reset_with_code_sets_password(app, client):
    make_holder(app)
    reset_request(client, ID_NUMBER, PHONE)
    phone, text = outbox(app)[-1]
    code = re.search(r"验证码 (\d{6})", text).group(1)

    response = reset_confirm(client, code)

    assert phone == PHONE
    assert response.status_code == 303
    assert holder_login(client, password="new-holder-pass-99").status_code == 303


@pytest.mark.parametrize(
    "case", ["wrong-code", "reused-code", "unknown-account"],
)
def test_reset_refused(app, client, case):
    make_holder(app)
    reset_request(client, ID_NUMBER, PHONE)
    code = re.search(r"验证码 (\d{6})", outbox(app)[-1][1]).group(1)
    if case == "wrong-code":
        response = reset_confirm(client, "000000" if code != "000000" else "111111")
    elif case == "reused-code":
        reset_confirm(client, code)
        response = reset_confirm(client, code, password="another-pass-77")
    else:
        response = reset_confirm(client, code, id_number=UNKNOWN_ID)

    assert response.status_code == 200
    assert "验证码不正确、已过期或已使用" in response.get_data(as_text=True)


def test_reset_code_stops_after_five_wrong_tries(app, client):
    make_holder(app)
    reset_request(client, ID_NUMBER, PHONE)
    code = re.search(r"验证码 (\d{6})", outbox(app)[-1][1]).group(1)
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(5):
        reset_confirm(client, wrong)

    response = reset_confirm(client, code)

    assert response.status_code == 200


# --- second factor --------------------------------------------------------


def test_first_staff_login_enrols_totp(app, client):
    with app.app_context():
        accounts.create_staff("ivan", "operator", STAFF_PASSWORD, actor="test")
    staff_password_step(client, "ivan")

    page = client.get("/admin/login/totp").get_data(as_text=True)
    secret = re.search(r'<code class="totp-key">([A-Z2-7]+)</code>', page).group(1)
    response = staff_code_step(client, pyotp.TOTP(secret).now())

    assert 'src="data:image/png;base64,' in page
    assert response.status_code == 303
    with app.app_context():
        assert db.session.scalar(select(StaffUser.totp_secret).where(StaffUser.username == "ivan")) == secret


@pytest.mark.parametrize("code", ["000000", "abcdef", "", "1234567"], ids=["wrong", "letters", "empty", "too-long"])
def test_wrong_totp_code_refused(client, make_staff, code):
    make_staff("judy")
    staff_password_step(client, "judy")

    response = staff_code_step(client, code)

    assert response.status_code == 200
    assert client.get("/admin/").status_code == 303


def test_password_alone_gives_no_staff_session(client, make_staff):
    make_staff("ken")

    staff_password_step(client, "ken")

    assert client.get("/admin/").status_code == 303


def test_totp_step_needs_password_step(client):
    response = client.get("/admin/login/totp")

    assert response.status_code == 303
    assert response.headers["Location"].endswith("/admin/login")


def test_staff_client_fixture_reaches_admin(staff_client):
    assert staff_client.get("/admin/").status_code == 200


# --- sessions -------------------------------------------------------------


def test_login_rotates_session(app, client):
    make_holder(app)
    client.get("/captcha.png")  # puts something in the anonymous session
    before = session_cookie(client)

    holder_login(client)
    after = session_cookie(client)
    data = app.session_interface.get_signing_serializer(app).loads(after)

    assert before != after
    assert "captcha" not in data


def test_logout_ends_copied_cookie(app, client):
    make_holder(app)
    holder_login(client)
    copied = session_cookie(client)
    page = client.get("/me").get_data(as_text=True)

    client.post("/logout", data={"csrf_token": csrf_token(page)})
    thief = app.test_client()
    thief.set_cookie("session", copied)

    assert thief.get("/me").status_code in (302, 303)


def test_staff_logout_ends_copied_cookie(app, staff_client):
    copied = session_cookie(staff_client)
    page = staff_client.get("/admin/").get_data(as_text=True)

    staff_client.post("/admin/logout", data={"csrf_token": csrf_token(page)})
    thief = app.test_client()
    thief.set_cookie("session", copied)

    assert thief.get("/admin/").status_code == 303


@pytest.mark.parametrize(
    "seconds, still_in",
    [(29 * 60, True), (31 * 60, False)],
    ids=["29-min-idle", "31-min-idle"],
)
def test_idle_timeout(app, client, monkeypatch, seconds, still_in):
    import app.security as security

    make_holder(app)
    holder_login(client)
    start = security.clock()
    monkeypatch.setattr(security, "clock", lambda: start + seconds)

    status = client.get("/me").status_code

    assert (status == 200) is still_in


def test_absolute_timeout_despite_activity(app, client, monkeypatch):
    import app.security as security

    make_holder(app)
    holder_login(client)
    start = security.clock()
    # Active every 20 minutes, so never idle, until 12 hours have passed.
    statuses = []
    for minutes in range(20, 12 * 60 + 40, 20):
        monkeypatch.setattr(security, "clock", lambda m=minutes: start + m * 60)
        statuses.append(client.get("/me").status_code)

    assert set(statuses[:-2]) == {200}
    assert statuses[-1] in (302, 303)


def test_cookie_flags(app, client):
    make_holder(app)
    response = holder_login(client)
    header = response.headers["Set-Cookie"]

    assert "HttpOnly" in header
    assert "SameSite=Lax" in header


def test_cookie_secure_behind_https():
    from app import create_app

    https_app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": "sqlite://", "BASE_URL": "https://zs.example.gov.cn"})

    assert https_app.config["SESSION_COOKIE_SECURE"] is True


def test_session_cookie_holds_no_personal_data(app, client):
    make_holder(app)
    holder_login(client)
    client.get("/me")

    data = app.session_interface.get_signing_serializer(app).loads(session_cookie(client))
    text = repr(data)

    assert ID_NUMBER not in text
    assert NAME not in text
    assert PHONE not in text


# --- account deletion -----------------------------------------------------


def test_holder_deletes_account_register_stays(app, client, import_roster):
    from app.models import Certificate

    import_roster("2024年度二级建造师考试合格人员名单.xlsx", "二级建造师", "certificate")
    make_holder(app)
    holder_login(client)
    with app.app_context():
        certificates_before = db.session.scalar(select(func.count(Certificate.id)))
    page = client.get("/me/delete").get_data(as_text=True)

    response = client.post("/me/delete", data={"password": HOLDER_PASSWORD, "csrf_token": csrf_token(page)})

    assert response.status_code == 303
    with app.app_context():
        assert db.session.scalar(select(func.count(Holder.id))) == 0
        assert db.session.scalar(select(func.count(Certificate.id))) == certificates_before
    assert client.get("/me").status_code in (302, 303)


def test_account_deletion_needs_password(app, client):
    make_holder(app)
    holder_login(client)
    page = client.get("/me/delete").get_data(as_text=True)

    response = client.post("/me/delete", data={"password": "not-my-password", "csrf_token": csrf_token(page)})

    assert response.status_code == 200
    with app.app_context():
        assert db.session.scalar(select(func.count(Holder.id))) == 1


def test_privacy_notice_on_registration(client):
    html = client.get("/register").get_data(as_text=True)

    for part in ["目的", "依据", "保存期限", "您的权利", "联系方式"]:
        assert part in html, part
