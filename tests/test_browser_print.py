"""The holder's print preview in a real headless Chromium: no CSP or framing header blocks the embedded PDF.

Skipped where Debian's chromium is not installed (`.ci/run` installs it).
"""

from __future__ import annotations

import re

from .conftest import HOLDER_PASSWORD
from .test_browser import live_server, page, pytestmark  # noqa: F401 (fixtures and skip marks)
from .test_holders import CONSTRUCTOR_ROSTER, ID_NUMBER, NUMBER, register

# Chromium's console errors for a blocked <object> (CSP object-src), a refused
# frame (CSP frame-ancestors) and X-Frame-Options.
BLOCKED = re.compile(r"Content Security Policy|X-Frame-Options|frame-ancestors|Refused to", re.IGNORECASE)


def test_print_preview_loads_pdf(client, import_roster, live_server, page):  # noqa: F811
    import_roster(CONSTRUCTOR_ROSTER, "二级建造师", "certificate")
    register(client, log_in=False)
    console = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.goto(f"{live_server}/login")
    page.get_by_label("证件号码或手机号码").fill(ID_NUMBER)
    page.get_by_label("密码", exact=True).fill(HOLDER_PASSWORD)
    page.get_by_role("button", name="登录").click()
    page.wait_for_url(f"{live_server}/me")

    pdf_url = f"{live_server}/me/certificates/{NUMBER}.pdf?inline=1"
    with page.expect_response(pdf_url, timeout=10_000) as pdf_info:
        page.goto(f"{live_server}/me/certificates/{NUMBER}/print")
    # A blocked object never gets a frame of its own, so wait for it (or give up after 10 s).
    for _ in range(100):
        if pdf_url in [frame.url for frame in page.frames]:
            break
        page.wait_for_timeout(100)

    assert pdf_info.value.status == 200
    assert pdf_info.value.headers["content-type"] == "application/pdf"
    assert not [line for line in console if BLOCKED.search(line)], console
    assert pdf_url in [frame.url for frame in page.frames], console
