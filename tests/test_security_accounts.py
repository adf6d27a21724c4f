"""Accounts and sessions: password rules, lockout, identical answers, second factor, session lifetime."""

from __future__ import annotations

import logging
import re

import pyotp
import pytest
from sqlalchemy import func, select

from app.domain.passwords import holder_password_problem, staff_password_problem
from app.extensions import db
from app.models import Holder, StaffUser
from app.services import accounts

from .conftest import HOLDER_PASSWORD, STAFF_PASSWORD, STAFF_TOTP_SECRET, csrf_token, dispose_engines

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


# --- logs of failed logins ------------------------------------------------

# A password typed into the user name field, as a hurried staff member does.
TYPED_SECRET = "Wr0ng-Field!Secret-2024"


def test_failed_login_log_hides_unknown_name(client, caplog):
    with caplog.at_level(logging.INFO):
        for _ in range(6):  # the fifth failure locks the name and the address, so the sixth attempt is rejected as locked
            response = staff_password_step(client, TYPED_SECRET, "x")
        staff_password_step(client, "Other-Secret-2024!", "x")

    messages = [record.getMessage() for record in caplog.records]
    failed = [message for message in messages if message.startswith("Failed staff login")]
    locked = [message for message in messages if message.startswith("Locked-out staff login attempt")]
    digests = [re.search(r"HMAC ([0-9a-f]{8})", message).group(1) for message in failed + locked]
    assert response.status_code == 200
    assert not [message for message in messages if TYPED_SECRET in message], messages
    assert len(failed) == 5
    assert f"an unknown user name ({len(TYPED_SECRET)} characters, HMAC " in failed[0]
    assert len(set(digests[:6])) == 1, "one typed name must give one digest, so repeats can be counted"
    assert digests[6] != digests[0], "another typed name must give another digest"
    assert [message for message in messages if message.startswith("Login locked")]


def test_failed_login_log_names_known_account(client, make_staff, caplog):
    make_staff("judy")

    with caplog.at_level(logging.INFO):
        staff_password_step(client, "judy", "Wrong!Password1")

    assert "Failed staff login for 'judy' from" in caplog.text


def test_holder_login_log_hides_typed_secret(client, caplog):
    """A holder login that matches no account is logged as a digest, so a password typed there stays out of the log."""
    page = client.get("/login").get_data(as_text=True)

    with caplog.at_level(logging.INFO):
        client.post("/login", data={"login": TYPED_SECRET, "password": "x", "csrf_token": csrf_token(page)})

    failed = [record.getMessage() for record in caplog.records if record.getMessage().startswith("Failed holder login")]
    assert len(failed) == 1
    assert "an unknown user name (" in failed[0]
    assert TYPED_SECRET[:4] not in caplog.text
    assert TYPED_SECRET[-4:] not in caplog.text


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
    """Post the reset request form and wait until the background thread has handled it."""
    page = client.get("/password/forgot").get_data(as_text=True)
    response = client.post("/password/forgot", data={"id_number": id_number, "phone": phone, "csrf_token": csrf_token(page)})
    accounts.wait_for_reset_requests()
    return response


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
    assert unknown.get_data() == known.get_data()
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


WRONG_CODE_MESSAGE = "动态验证码不正确或已过期"
T0 = 1_700_000_010  # inside one 30-second step


def code_at(seconds: float) -> str:
    return pyotp.TOTP(STAFF_TOTP_SECRET).at(seconds)


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [
        ([(T0, T0), (T0, T0)], ["ok", "invalid"]),
        ([(T0, T0), (T0, T0 + 30)], ["ok", "invalid"]),
        ([(T0, T0), (T0 - 30, T0)], ["ok", "invalid"]),
        ([(T0 + 30, T0), (T0, T0)], ["ok", "invalid"]),
        ([(T0, T0), (T0 + 30, T0 + 30)], ["ok", "ok"]),
        ([(T0, T0), (T0 + 30, T0)], ["ok", "ok"]),
        ([(T0 - 60, T0)], ["invalid"]),
    ],
    ids=["same-code-twice", "same-code-next-step", "earlier-step", "earlier-after-later",
         "next-code-later", "next-code-early", "outside-window"],
)
def test_totp_code_accepted_once(app, make_staff, attempts, expected):
    """Each attempt is (time the code belongs to, time it is entered)."""
    make_staff("replay")
    outcomes = []
    with app.app_context():
        user = db.session.scalar(select(StaffUser).where(StaffUser.username == "replay"))
        for code_time, entered in attempts:
            outcomes.append(accounts.check_totp(user, STAFF_TOTP_SECRET, code_at(code_time), now=entered))

    assert outcomes == expected


def test_replayed_code_refused_over_http(app, client, make_staff):
    make_staff("mallory")
    code = pyotp.TOTP(STAFF_TOTP_SECRET).now()
    staff_password_step(client, "mallory")
    first = staff_code_step(client, code)
    thief = app.test_client()
    staff_password_step(thief, "mallory")

    replay = staff_code_step(thief, code)

    assert first.status_code == 303
    assert replay.status_code == 200
    assert WRONG_CODE_MESSAGE in replay.get_data(as_text=True)
    assert thief.get("/admin/").status_code == 303


def test_replay_message_matches_wrong_code(app, client, make_staff):
    make_staff("oscar")
    code = pyotp.TOTP(STAFF_TOTP_SECRET).now()
    staff_password_step(client, "oscar")
    staff_code_step(client, code)
    replayer, guesser = app.test_client(), app.test_client()
    staff_password_step(replayer, "oscar")
    staff_password_step(guesser, "oscar")

    replayed = staff_code_step(replayer, code).get_data(as_text=True)
    wrong = staff_code_step(guesser, "000000" if code != "000000" else "111111").get_data(as_text=True)

    assert normalised(replayed) == normalised(wrong)


def start_enrolment(app, client, username: str) -> str:
    """Create `username` without a second factor, pass the password step and return the enrolment key shown."""
    with app.app_context():
        accounts.create_staff(username, "admin", STAFF_PASSWORD, actor="test")
    staff_password_step(client, username)
    page = client.get("/admin/login/totp").get_data(as_text=True)
    return re.search(r'<code class="totp-key">([A-Z2-7]+)</code>', page).group(1)


def test_enrolment_secret_not_in_cookie(app, client):
    secret = start_enrolment(app, client, "olga")
    cookie = session_cookie(client)
    data = app.session_interface.get_signing_serializer(app).loads(cookie)

    response = staff_code_step(client, pyotp.TOTP(secret).now())

    assert secret not in repr(data)
    assert data["staff_pending"]["secret"].startswith("v2:")
    assert response.status_code == 303
    with app.app_context():
        assert db.session.scalar(select(StaffUser.totp_secret).where(StaffUser.username == "olga")) == secret


@pytest.mark.parametrize("case", ["other-account", "plain-secret"])
def test_foreign_enrolment_secret_refused(app, client, case):
    """An encrypted secret works only for its own account, and a plain one (from a cookie set before encryption) not at all."""
    other = app.test_client()
    start_enrolment(app, other, "peter")
    start_enrolment(app, client, "olga")
    serializer = app.session_interface.get_signing_serializer(app)
    data = serializer.loads(session_cookie(client))
    if case == "other-account":
        data["staff_pending"]["secret"] = serializer.loads(session_cookie(other))["staff_pending"]["secret"]
    else:
        data["staff_pending"]["secret"] = STAFF_TOTP_SECRET
    client.set_cookie("session", serializer.dumps(data))

    response = client.get("/admin/login/totp")

    assert response.status_code == 303
    assert response.headers["Location"].endswith("/admin/login")
    with app.app_context():
        assert db.session.scalar(select(StaffUser.totp_secret).where(StaffUser.username == "olga")) is None


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


# --- staff accounts reset by an admin ---------------------------------------------


def staff_id_of(app, username: str) -> int:
    with app.app_context():
        return db.session.scalar(select(StaffUser.id).where(StaffUser.username == username))


def admin_post(admin, path: str, **data):
    page = admin.get("/admin/staff").get_data(as_text=True)
    return admin.post(path, data={"csrf_token": csrf_token(page), **data})


def test_password_reset_ends_staff_sessions(app, login_staff):
    victim = login_staff("reset-victim", "auditor")
    copied = session_cookie(victim)
    admin = login_staff("reset-admin", "admin")
    staff_id = staff_id_of(app, "reset-victim")

    response = admin_post(admin, f"/admin/staff/{staff_id}/password", password="Rotated-Pass-2026!x")
    thief = app.test_client()
    thief.set_cookie("session", copied)

    assert response.status_code == 303
    assert victim.get("/admin/audit").status_code == 303
    assert thief.get("/admin/audit").status_code == 303
    with app.app_context():
        user = db.session.get(StaffUser, staff_id)
        # The second factor is reset only by its own action.
        assert user.totp_secret == STAFF_TOTP_SECRET
        assert user.check_password("Rotated-Pass-2026!x")


def test_second_factor_reset_needs_enrolment(app, client, login_staff):
    from app.models import AuditEntry

    victim = login_staff("totp-victim", "operator")
    admin = login_staff("totp-admin", "admin")
    staff_id = staff_id_of(app, "totp-victim")

    response = admin_post(admin, f"/admin/staff/{staff_id}/totp/reset")
    staff_password_step(client, "totp-victim")
    page = client.get("/admin/login/totp").get_data(as_text=True)

    assert response.status_code == 303
    assert victim.get("/admin/").status_code == 303
    assert '<code class="totp-key">' in page  # enrols a new authenticator
    with app.app_context():
        assert db.session.get(StaffUser, staff_id).totp_secret is None
        entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "staff.reset_totp"))
        assert entry.actor == "totp-admin"
        assert entry.target == "staff:totp-victim"


@pytest.mark.parametrize(
    "attack, role, with_token, expected_status",
    [
        ("operator resets a second factor", "operator", True, 403),
        ("auditor resets a second factor", "auditor", True, 403),
        ("admin without CSRF token", "admin", False, 400),
    ],
)
def test_second_factor_reset_refused(app, login_staff, make_staff, attack, role, with_token, expected_status):
    make_staff("totp-target", "auditor")
    staff_id = staff_id_of(app, "totp-target")
    caller = login_staff(f"caller-{role}", role)
    data = {}
    if with_token:
        data["csrf_token"] = csrf_token(caller.get("/admin/").get_data(as_text=True))

    response = caller.post(f"/admin/staff/{staff_id}/totp/reset", data=data)

    assert response.status_code == expected_status, attack
    with app.app_context():
        assert db.session.get(StaffUser, staff_id).totp_secret == STAFF_TOTP_SECRET


# --- password reset requests: limits, daily cap, timing -----------------------------


def test_reset_codes_capped_per_day(app, client):
    make_holder(app)
    cap = app.config["PASSWORD_RESET_CODES_PER_PHONE_PER_DAY"]
    sent_before = len(outbox(app))

    responses = [reset_request(client, ID_NUMBER, PHONE) for _ in range(cap + 3)]

    assert {response.status_code for response in responses} == {303}
    assert len(outbox(app)) - sent_before == cap


def test_reset_cap_counts_last_24_hours(app, client):
    from datetime import timedelta

    from app.models import PasswordResetCode, utcnow

    make_holder(app)
    cap = app.config["PASSWORD_RESET_CODES_PER_PHONE_PER_DAY"]
    sent_before = len(outbox(app))
    for _ in range(cap):
        reset_request(client, ID_NUMBER, PHONE)
    with app.app_context():
        for row in db.session.scalars(select(PasswordResetCode)):
            row.created_at = utcnow() - timedelta(hours=25)
        db.session.commit()

    reset_request(client, ID_NUMBER, PHONE)

    assert len(outbox(app)) - sent_before == cap + 1


@pytest.fixture
def limited_app(app):
    """Return a second app on the same database with Flask-Limiter switched on (memory storage) and small limits.

    The limiter is one object shared by every app of the process, so it is
    switched off again afterwards, as the session app has it.
    """
    from app import create_app
    from app.extensions import limiter

    keys = ("SECRET_KEY", "QR_TOKEN_KEYS", "ID_NUMBER_KEY", "ID_HASH_KEY", "SQLALCHEMY_DATABASE_URI", "BASE_URL")
    limited = create_app(
        {
            **{key: app.config[key] for key in keys},
            "TESTING": True,
            "LOOKUP_CAPTCHA_ENABLED": False,
            "RATELIMIT_ENABLED": True,
            "RATELIMIT_STORAGE_URI": "memory://",
            "PASSWORD_RESET_ADDRESS_RATE_LIMIT": "4 per hour",
            "PASSWORD_RESET_PHONE_RATE_LIMIT": "2 per hour",
        }
    )
    limiter.reset()
    yield limited
    accounts.wait_for_reset_requests()
    limiter.reset()
    limiter.enabled = False
    with limited.app_context():
        # Close this app's pooled connections, so no ResourceWarning surfaces in a later test.
        dispose_engines()


def reset_statuses(app, requests: list[tuple[str, str, str]]) -> list[int]:
    """Post each (address, ID number, mobile number) to /password/forgot from a client at that address."""
    statuses = []
    for address, id_number, phone in requests:
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = address
        page = client.get("/password/forgot").get_data(as_text=True)
        response = client.post(
            "/password/forgot", data={"id_number": id_number, "phone": phone, "csrf_token": csrf_token(page)}
        )
        statuses.append(response.status_code)
    accounts.wait_for_reset_requests()
    return statuses


OTHER_PHONES = [f"1390000000{index}" for index in range(6)]
ADDRESSES = [f"127.0.9.{index}" for index in range(1, 7)]


@pytest.mark.parametrize(
    "attack, requests, expected",
    [
        (
            "one address, one registered phone",
            [("127.0.8.1", ID_NUMBER, PHONE)] * 4,
            [303, 303, 429, 429],
        ),
        (
            "one unregistered phone answers alike",
            [("127.0.8.1", UNKNOWN_ID, "13900000099")] * 4,
            [303, 303, 429, 429],
        ),
        (
            "one phone from many addresses",
            [(address, ID_NUMBER, PHONE) for address in ADDRESSES[:4]],
            [303, 303, 429, 429],
        ),
        (
            "one address, many phones",
            [("127.0.8.1", UNKNOWN_ID, phone) for phone in OTHER_PHONES],
            [303, 303, 303, 303, 429, 429],
        ),
    ],
)
def test_reset_request_rate_limits(app, limited_app, attack, requests, expected):
    make_holder(app)

    statuses = reset_statuses(limited_app, requests)

    assert statuses == expected, attack
    assert len(outbox(limited_app)) == sum(
        1 for (_, id_number, phone), status in zip(requests, statuses) if status == 303 and (id_number, phone) == (ID_NUMBER, PHONE)
    )


def test_reset_limit_page_is_chinese(app, limited_app):
    statuses = reset_statuses(limited_app, [("127.0.8.2", UNKNOWN_ID, "13900000098")] * 3)
    client = limited_app.test_client()
    client.environ_base["REMOTE_ADDR"] = "127.0.8.2"
    page = client.get("/password/forgot").get_data(as_text=True)

    response = client.post("/password/forgot", data={"id_number": UNKNOWN_ID, "phone": "13900000098", "csrf_token": csrf_token(page)})

    assert statuses[-1] == 429
    assert response.status_code == 429
    assert "请求过于频繁" in response.get_data(as_text=True)


def test_reset_request_timing_matches_unknown(app, client):
    """Median response times over 200 interleaved requests each differ by under 20 % (or 2 ms).

    The background thread is drained outside the timed part, so its work
    for the registered pair cannot slow the next request down.
    """
    import statistics
    import time

    make_holder(app)
    page = client.get("/password/forgot").get_data(as_text=True)
    token = csrf_token(page)
    known, unknown = [], []
    for index in range(200):
        for id_number, times in ((ID_NUMBER, known), (f"1101011990{index:04d}0011", unknown)):
            start = time.perf_counter()
            client.post("/password/forgot", data={"id_number": id_number, "phone": PHONE, "csrf_token": token})
            times.append(time.perf_counter() - start)
            accounts.wait_for_reset_requests()

    difference = abs(statistics.median(known) - statistics.median(unknown))
    bound = max(0.002, 0.2 * statistics.median(unknown))

    assert difference < bound, f"medians {statistics.median(known):.4f}s vs {statistics.median(unknown):.4f}s"


# --- squatted ID numbers: recovery through staff ------------------------------------

SQUATTER_PHONE = "13800000088"
VICTIM_PHONE = "13900000088"


def test_recovery_help_on_registration_and_login(client):
    response = register_form(client)
    registered = client.get(response.headers["Location"]).get_data(as_text=True)
    login_page = client.get("/login").get_data(as_text=True)

    for page in (registered, login_page):
        assert "已被他人注册" in page
        assert "身份证件到人力资源和社会保障局服务窗口" in page
        assert "忘记密码" in page


def holders_page(staff, query: str):
    return staff.get("/admin/holders", query_string={"q": query})


@pytest.mark.parametrize(
    "query",
    [ID_NUMBER, "５００１０９１９６４０９２６９６９６", "500109 196409269696", SQUATTER_PHONE],
    ids=["id-number", "full-width-id", "spaced-id", "mobile"],
)
def test_staff_find_holder_account(app, login_staff, query):
    make_holder(app, phone=SQUATTER_PHONE)
    auditor = login_staff("find-auditor", "auditor")

    html = holders_page(auditor, query).get_data(as_text=True)
    table = html.split("<table", 1)[-1]

    assert "5001**********9696" in table
    assert ID_NUMBER not in table
    assert SQUATTER_PHONE in table
    assert "/phone" not in table  # auditors get no change forms


def test_staff_moves_squatted_account_to_victim(app, client, login_staff):
    from app.models import AuditEntry

    make_holder(app, phone=SQUATTER_PHONE, password="Squatter-pass-1")
    squatter = app.test_client()
    holder_login(squatter, password="Squatter-pass-1")
    operator = login_staff("desk-operator", "operator")
    page = holders_page(operator, ID_NUMBER).get_data(as_text=True)
    holder_id = int(re.search(r"/admin/holders/(\d+)/phone", page).group(1))

    response = operator.post(
        f"/admin/holders/{holder_id}/phone",
        data={"phone": VICTIM_PHONE, "reason": "本人持身份证到窗口办理，已核验", "csrf_token": csrf_token(page)},
    )
    sent_before = len(outbox(app))
    reset_request(client, ID_NUMBER, VICTIM_PHONE)

    assert response.status_code == 303
    assert squatter.get("/me").status_code in (302, 303)
    assert len(outbox(app)) == sent_before + 1
    assert outbox(app)[-1][0] == VICTIM_PHONE
    with app.app_context():
        entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "holder.change_phone"))
        assert entry.actor == "desk-operator"
        assert entry.detail["reason"] == "本人持身份证到窗口办理，已核验"
        assert entry.after == {"phone": "139****0088"}
        assert ID_NUMBER not in str(entry.detail)


def test_staff_removes_squatted_account(app, client, login_staff):
    from app.models import AuditEntry

    make_holder(app, phone=SQUATTER_PHONE, password="Squatter-pass-1")
    admin = login_staff("desk-admin", "admin")
    page = holders_page(admin, ID_NUMBER).get_data(as_text=True)
    holder_id = int(re.search(r"/admin/holders/(\d+)/remove", page).group(1))

    response = admin.post(
        f"/admin/holders/{holder_id}/remove", data={"reason": "证件号码被抢注，本人到场核验", "csrf_token": csrf_token(page)}
    )
    register_form(client, phone=VICTIM_PHONE, password="Victim-pass-123", confirm="Victim-pass-123")

    assert response.status_code == 303
    assert holder_login(client, password="Victim-pass-123").status_code == 303
    with app.app_context():
        entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "holder.remove"))
        assert entry.actor == "desk-admin"
        assert entry.detail["id_number"] == "5001**********9696"


@pytest.mark.parametrize(
    "attack, role, action, data, with_token, expected_status, message",
    [
        ("auditor changes a mobile number", "auditor", "phone", {"phone": VICTIM_PHONE, "reason": "x"}, True, 403, ""),
        ("auditor removes an account", "auditor", "remove", {"reason": "x"}, True, 403, ""),
        ("no CSRF token", "operator", "remove", {"reason": "x"}, False, 400, ""),
        ("no reason", "operator", "remove", {"reason": "  "}, True, 422, "请填写操作原因"),
        ("reason too long", "operator", "remove", {"reason": "长" * 201}, True, 422, "超过 200 个字"),
        ("invalid mobile number", "operator", "phone", {"phone": "12345", "reason": "核验"}, True, 422, "新手机号码「12345」无效"),
        ("mobile number of another account", "operator", "phone", {"phone": "13700000001", "reason": "核验"}, True, 422, "已用于另一个账号"),
    ],
)
def test_holder_account_change_refused(app, login_staff, attack, role, action, data, with_token, expected_status, message):
    make_holder(app, phone=SQUATTER_PHONE)
    make_holder(app, id_number=UNKNOWN_ID, phone="13700000001")
    with app.app_context():
        holder_id = db.session.scalar(select(Holder.id).where(Holder.phone == SQUATTER_PHONE))
    caller = login_staff(f"refused-{role}", role)
    if with_token:
        data = {**data, "csrf_token": csrf_token(caller.get("/admin/").get_data(as_text=True))}

    response = caller.post(f"/admin/holders/{holder_id}/{action}", data=data)

    assert response.status_code == expected_status, attack
    assert message in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(Holder, holder_id).phone == SQUATTER_PHONE


# --- ID numbers typed differently at login and reset --------------------------------

ID_VARIANTS = [
    ("full-width digits", "５００１０９１９６４０９２６９６９６"),
    ("space inside", "500109 196409269696"),
    ("no-break space and ideographic space", "500109\u00a0196409\u3000269696"),
    ("surrounding spaces", "  500109196409269696 "),
    ("zero-width space", "500109\u200b196409269696"),
]


@pytest.mark.parametrize("case, typed", ID_VARIANTS, ids=[case for case, _ in ID_VARIANTS])
def test_login_cleans_id_number(app, client, case, typed):
    make_holder(app)

    response = holder_login(client, login=typed)

    assert response.status_code == 303, case


@pytest.mark.parametrize("case, typed", ID_VARIANTS, ids=[case for case, _ in ID_VARIANTS])
def test_reset_cleans_id_number(app, client, case, typed):
    make_holder(app)
    sent_before = len(outbox(app))
    reset_request(client, typed, PHONE)
    assert len(outbox(app)) == sent_before + 1, case
    code = re.search(r"验证码 (\d{6})", outbox(app)[-1][1]).group(1)

    response = reset_confirm(client, code, id_number=typed)

    assert response.status_code == 303, case


def test_lockout_counts_variants_as_one_account(app, client):
    make_holder(app)
    for _, typed in ID_VARIANTS:
        holder_login(app.test_client(), login=typed, password="wrong-password-1")

    with app.app_context():
        locked = accounts.is_locked([accounts.account_key("holder", ID_NUMBER)])

    assert locked


# --- idle timeout precision -----------------------------------------------------------


@pytest.mark.parametrize(
    "case, request_seconds, expected_statuses",
    [
        ("active every 20 s for 200 s", list(range(20, 201, 20)), [200] * 10),
        ("active every 50 s", [50, 100, 150, 200], [200] * 4),
        ("idle 54 s, just under the limit less a tenth", [5, 59], [200, 200]),
        ("idle 61 s after login", [61], [303]),
        ("idle 70 s after activity", [30, 100], [200, 303]),
    ],
)
def test_one_minute_idle_limit(app, client, monkeypatch, case, request_seconds, expected_statuses):
    import app.security as security

    monkeypatch.setitem(app.config, "SESSION_IDLE_MINUTES", 1)
    make_holder(app)
    holder_login(client)
    start = security.clock()
    statuses = []
    for seconds in request_seconds:
        monkeypatch.setattr(security, "clock", lambda s=seconds: start + s)
        statuses.append(client.get("/me").status_code)

    assert statuses == expected_statuses, case


@pytest.mark.parametrize(
    "idle_minutes, resolution",
    [(1, 6), (5, 30), (10, 60), (30, 60), (720, 60)],
)
def test_seen_resolution_is_a_tenth(idle_minutes, resolution):
    from app.security import seen_resolution_seconds

    assert seen_resolution_seconds(idle_minutes * 60) == resolution


# --- login target after an expired htmx request ---------------------------------------

HTMX = {"HX-Request": "true"}


@pytest.mark.parametrize(
    "attack, current_url, expected",
    [
        ("poll from the batch page", "http://localhost/admin/batches/1", "/admin/login?next=/admin/batches/1"),
        ("page with a query", "http://localhost/admin/batches/1?page=2", "/admin/login?next=/admin/batches/1?page%3D2"),
        ("no header", None, "/admin/login"),
        ("another origin", "http://evil.example/admin/batches/1", "/admin/login"),
        ("another scheme", "https://localhost/admin/batches/1", "/admin/login"),
        ("scheme-relative", "//evil.example/admin/batches/1", "/admin/login"),
        ("backslash", "http://localhost/\\evil.example/admin", "/admin/login"),
        ("relative path", "admin/batches/1", "/admin/login"),
        ("control character", "http://localhost/admin/batches/1\tX", "/admin/login"),
    ],
)
def test_htmx_expiry_redirects_to_current_page(client, attack, current_url, expected):
    headers = dict(HTMX)
    if current_url is not None:
        headers["HX-Current-URL"] = current_url

    response = client.get("/admin/batches/1/progress", headers=headers)

    assert response.status_code == 401, attack
    assert response.headers["HX-Redirect"] == expected, attack


def test_holder_htmx_expiry_uses_current_page(client):
    response = client.get("/me", headers={**HTMX, "HX-Current-URL": "http://localhost/me"})

    assert response.headers["HX-Redirect"] == "/login?next=/me"


def test_plain_get_keeps_its_own_path(client):
    response = client.get("/admin/batches/1")

    assert response.headers["Location"] == "/admin/login?next=/admin/batches/1"


def test_login_after_htmx_expiry_lands_on_page(app, client, make_staff):
    make_staff("poller", "operator")
    target = client.get(
        "/admin/batches/1/progress", headers={**HTMX, "HX-Current-URL": "http://localhost/admin/batches/1"}
    ).headers["HX-Redirect"]
    page = client.get(target).get_data(as_text=True)
    client.post(target, data={"username": "poller", "password": STAFF_PASSWORD, "csrf_token": csrf_token(page)})

    response = staff_code_step(client, pyotp.TOTP(STAFF_TOTP_SECRET).now())

    assert response.headers["Location"] == "/admin/batches/1"
