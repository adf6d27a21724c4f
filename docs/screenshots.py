"""Take the staff guide's screenshots from the real pages.

Starts the application on 127.0.0.1 with a throwaway SQLite database in a
temporary folder, loads the synthetic sample roster from tests/data/rosters/,
and drives Debian's headless Chromium (/usr/bin/chromium) through upload,
preview, confirm, correction and revocation. Run from the repository root:

    .venv/bin/python docs/screenshots.py [--out docs/images]

The pages name system fonts only, so Chromium needs a Chinese font
installed (Debian: `apt-get install fonts-wqy-zenhei`); without one every
Chinese character would be drawn as a box, and the script stops instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pyotp
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ROSTER_DIR = ROOT / "tests" / "data" / "rosters"
FAULTY_ROSTER = "二级建造师_问题数据样例.xlsx"
CLEAN_ROSTER = "2024年度二级建造师考试合格人员名单.xlsx"
NUMBER, NAME = "202421000001", "田娟"
USERNAME, PASSWORD = "guide-operator", "Guide!Passw0rd-2024"
TOTP_SECRET = pyotp.random_base32()
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}


def start_app(instance: Path):
    os.environ["CERT_INSTANCE_PATH"] = str(instance)
    from flask_migrate import upgrade

    from app import create_app
    from app.services import accounts, batches

    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "screenshots-only",
            "QR_TOKEN_KEYS": ["screenshots-only-key"],
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{instance / 'guide.db'}",
            "RATELIMIT_ENABLED": False,
        }
    )
    with app.app_context():
        upgrade(directory=str(ROOT / "migrations"))
        batches.import_file(ROSTER_DIR / CLEAN_ROSTER, exam="二级建造师", kind="certificate", actor="demo")
        accounts.create_staff(USERNAME, "operator", PASSWORD, actor="demo", totp_secret=TOTP_SECRET)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def shoot(page, out: Path, name: str, full_page: bool = False) -> None:
    path = out / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    print(f"{path.relative_to(ROOT)}  {path.stat().st_size // 1024} KB")


def journey(base: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport=VIEWPORT, locale="zh-CN").new_page()

        page.goto(f"{base}/admin/login")
        page.get_by_label("用户名").fill(USERNAME)
        page.get_by_label("密码").fill(PASSWORD)
        shoot(page, out, "01-login")
        page.get_by_role("button", name="登录").click()
        page.get_by_label("动态验证码").fill(pyotp.TOTP(TOTP_SECRET).now())
        page.get_by_role("button", name="登录").click()
        page.wait_for_url(f"{base}/admin/")

        page.goto(f"{base}/admin/batches/new")
        page.set_input_files("input[type=file]", str(ROSTER_DIR / FAULTY_ROSTER))
        page.get_by_label("考试项目").select_option("二级建造师")
        page.get_by_label("证书类别").select_option("certificate")
        shoot(page, out, "02-upload")
        page.locator("form button[type=submit]").last.click()
        page.wait_for_url("**/admin/batches/*")
        page.wait_for_selector("text=预览")
        shoot(page, out, "03-preview")
        page.get_by_role("button", name="确认导入").click()
        page.wait_for_selector(".flash-success")
        shoot(page, out, "04-confirmed")

        page.goto(f"{base}/admin/certificates?q={NUMBER}")
        shoot(page, out, "05-search")
        page.get_by_role("link", name=NUMBER).click()
        page.locator("#correction").scroll_into_view_if_needed()
        page.locator("#correction input[name=name]").fill("田娟娟")
        page.locator("#correction textarea[name=reason]").fill("考生提交身份证原件，姓名登记有误，核对后更正")
        shoot(page, out, "06-correction")
        page.get_by_role("button", name="保存更正").click()
        page.wait_for_selector(".flash-success")
        page.locator("#versions").scroll_into_view_if_needed()
        shoot(page, out, "07-history")

        page.locator("#revocation").scroll_into_view_if_needed()
        page.get_by_label("撤销原因").fill("经复核，该考生考试资格被取消")
        shoot(page, out, "08-revoke")
        page.get_by_role("button", name="撤销证书").click()
        page.wait_for_selector(".flash-success")

        page.goto(f"{base}/verify")
        page.get_by_label("证书编号").fill(NUMBER)
        page.get_by_label("姓名").fill("田娟娟")
        page.get_by_role("button", name="查验").click()
        page.locator("#verify-result .result-revoked").wait_for()
        shoot(page, out, "09-verify-revoked")

        page.goto(f"{base}/admin/audit")
        shoot(page, out, "10-audit")
        page.goto(f"{base}/admin/stats")
        shoot(page, out, "11-stats")
        browser.close()


def require_chinese_font() -> None:
    """Exit with a message when fontconfig lists no font for Chinese, which the screenshots need."""
    listed = ""
    if shutil.which("fc-list"):
        listed = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True, check=False).stdout
    if not listed.strip():
        sys.exit("没有找到中文字体，截图中的中文会显示为方框：请先安装中文字体（apt-get install fonts-wqy-zenhei），再运行本脚本。")


def main() -> None:
    require_chinese_font()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="folder for the PNG files")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        server, base = start_app(Path(folder))
        try:
            journey(base, args.out)
        finally:
            server.shutdown()


if __name__ == "__main__":
    main()
