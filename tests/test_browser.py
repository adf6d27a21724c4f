"""User journeys in a real headless Chromium driven by Playwright.

Skipped where Debian's chromium is not installed (`.ci/run` installs it).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pypdfium2
import pytest
import zxingcpp
from werkzeug.serving import make_server

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"),
]

# Flags that keep Chromium off the network: only the local test server is reachable.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

NUMBER, NAME, ID_NUMBER = "202421000001", "田娟", "500109196409269696"


@pytest.fixture
def live_server(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    # Playwright's driver is a Node process; keep its own network fetches off.
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(accept_downloads=True, locale="zh-CN")
        yield context.new_page()
        context.close()
        browser.close()


def test_holder_registers_downloads_and_follows_qr(import_roster, live_server, page, tmp_path):
    import_roster("2024年度二级建造师考试合格人员名单.xlsx", "二级建造师", "certificate")

    page.goto(f"{live_server}/register")
    page.get_by_label("姓名").fill(NAME)
    page.get_by_label("证件类型").select_option("居民身份证")
    page.get_by_label("证件号码").fill(ID_NUMBER)
    page.get_by_label("手机号码").fill("13800000009")
    page.get_by_label("密码", exact=True).fill("holder-pass-2024")
    page.get_by_label("确认密码").fill("holder-pass-2024")
    page.get_by_label("我已阅读并同意").check()
    page.get_by_role("button", name="注册").click()

    # Registration answers alike for new and taken ID numbers, so it ends on the login page.
    page.wait_for_url(f"{live_server}/login")
    page.get_by_label("证件号码或手机号码").fill(ID_NUMBER)
    page.get_by_label("密码", exact=True).fill("holder-pass-2024")
    page.get_by_role("button", name="登录").click()
    page.wait_for_url(f"{live_server}/me")
    assert NUMBER in page.content()

    with page.expect_download() as download_info:
        page.get_by_role("link", name="下载 PDF").first.click()
    pdf_path = tmp_path / "certificate.pdf"
    download_info.value.save_as(pdf_path)

    image = pypdfium2.PdfDocument(str(pdf_path))[0].render(scale=200 / 72).to_pil()
    url = zxingcpp.read_barcodes(image)[0].text
    page.goto(live_server + url.removeprefix("http://127.0.0.1:5000"))
    assert page.get_by_text("有效", exact=True).first.is_visible()
    assert "5001**********9696" in page.content()


def test_verify_answers_in_place(import_roster, live_server, page):
    import_roster("2024年度二级建造师考试合格人员名单.xlsx", "二级建造师", "certificate")
    page.goto(f"{live_server}/verify")
    # A full page load would reset this marker; an htmx swap keeps it.
    page.evaluate("window.__marker = 'kept'")

    page.get_by_label("证书编号").fill(NUMBER)
    page.get_by_label("姓名").fill(NAME)
    page.get_by_role("button", name="查验").click()

    page.locator("#verify-result .result-valid").wait_for()
    assert page.evaluate("window.__marker") == "kept"
    assert "矿业工程" in page.inner_text("#verify-result")


def test_verify_works_without_javascript(import_roster, live_server):
    from playwright.sync_api import sync_playwright

    import_roster("2024年度二级建造师考试合格人员名单.xlsx", "二级建造师", "certificate")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(java_script_enabled=False)
        page = context.new_page()
        page.goto(f"{live_server}/verify")
        page.get_by_label("证书编号").fill(NUMBER)
        page.get_by_label("姓名").fill(NAME)
        page.get_by_role("button", name="查验").click()
        page.wait_for_url("**/verify?*")
        text = page.inner_text("#verify-result")
        browser.close()

    assert "有效" in text


def test_refused_lookup_replaces_result(app, import_roster, page):
    """Past the lookup limit htmx shows the message where the last result was, and keeps the page (no reload)."""
    from app import create_app
    from app.extensions import limiter
    from tests.conftest import dispose_engines

    import_roster("2024年度二级建造师考试合格人员名单.xlsx", "二级建造师", "certificate")
    keys = ("SECRET_KEY", "QR_TOKEN_KEYS", "ID_NUMBER_KEY", "ID_HASH_KEY", "SQLALCHEMY_DATABASE_URI", "BASE_URL")
    # The empty form counts too: the page, one answered lookup, then the refused one.
    limited = create_app({**{key: app.config[key] for key in keys}, "TESTING": True, "RATELIMIT_ENABLED": True,
                          "RATELIMIT_STORAGE_URI": "memory://", "LOOKUP_RATE_LIMIT": "2 per minute",
                          "LOOKUP_CAPTCHA_ENABLED": False})
    server = make_server("127.0.0.1", 0, limited, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        page.goto(f"http://127.0.0.1:{server.server_port}/verify")
        page.evaluate("window.__marker = 'kept'")
        page.get_by_label("证书编号").fill(NUMBER)
        page.get_by_label("姓名").fill(NAME)
        page.get_by_role("button", name="查验").click()
        page.locator("#verify-result .result-valid").wait_for()
        answered_url = page.url

        page.get_by_role("button", name="查验").click()
        page.locator("#verify-result", has_text="请求过于频繁").wait_for()
        result = page.inner_text("#verify-result")
        marker = page.evaluate("window.__marker")
        url = page.url
    finally:
        server.shutdown()
        thread.join()
        limiter.enabled = False
        with limited.app_context():
            dispose_engines()

    assert marker == "kept"
    assert "矿业工程" not in result  # the earlier answer is gone
    assert page.locator("#verify-result .result-valid").count() == 0
    assert url == answered_url  # the refused lookup is no history entry
