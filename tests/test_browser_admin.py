"""Staff revocation journey in a real headless Chromium: log in, find a certificate, revoke it, see it on /verify.

Skipped where Debian's chromium is not installed (`.ci/run` installs it).
"""

from __future__ import annotations

import pyotp

from .conftest import STAFF_PASSWORD, STAFF_TOTP_SECRET
from .test_browser import live_server, page, pytestmark  # noqa: F401 (fixtures and skip marks)

NUMBER, NAME = "202421000001", "田娟"


def test_staff_revokes_and_verify_shows_it(import_roster, make_staff, live_server, page):  # noqa: F811
    import_roster("2024年度二级建造师考试合格人员名单.xlsx", "二级建造师", "certificate")
    make_staff("clerk-browser", "operator")

    page.goto(f"{live_server}/admin/login")
    page.get_by_label("用户名").fill("clerk-browser")
    page.get_by_label("密码").fill(STAFF_PASSWORD)
    page.get_by_role("button", name="登录").click()
    page.get_by_label("动态验证码").fill(pyotp.TOTP(STAFF_TOTP_SECRET).now())
    page.get_by_role("button", name="登录").click()
    page.wait_for_url(f"{live_server}/admin/")

    page.get_by_role("link", name="证书查询").click()
    page.get_by_label("证书编号、姓名或完整的证件号码").fill(NUMBER)
    page.get_by_role("button", name="查询").click()
    page.get_by_role("link", name=NUMBER).click()
    page.get_by_label("撤销原因").fill("经复核，该考生考试资格被取消")
    page.get_by_role("button", name="撤销证书").click()
    page.wait_for_selector(".flash-success")
    assert "已撤销证书" in page.inner_text(".flash-success")

    page.goto(f"{live_server}/verify")
    page.get_by_label("证书编号").fill(NUMBER)
    page.get_by_label("姓名").fill(NAME)
    page.get_by_role("button", name="查验").click()
    page.locator("#verify-result .result-revoked").wait_for()
    result = page.inner_text("#verify-result")
    assert "已撤销" in result
    assert "撤销，不再有效" in result
