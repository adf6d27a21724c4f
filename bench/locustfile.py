"""Release-day traffic for bench/spike.py: 85% form lookups, 10% QR pages, 5% PDF downloads.

Each simulated user sends its own X-Forwarded-For address (the app trusts one
proxy hop in the spike run), so per-address rate limits apply per user as they
would behind nginx. Settings come from the environment bench/spike.py sets.
"""

from __future__ import annotations

import os
import random
import re

from locust import HttpUser, between, task

from app.domain.tokens import make_token

ROWS = int(os.environ["BENCH_ROWS"])
QR_KEY = os.environ["BENCH_QR_KEY"]
HOLDERS = int(os.environ["BENCH_HOLDERS"])
HOLDER_PASSWORD = os.environ["BENCH_HOLDER_PASSWORD"]

NAMES = [
    s + g
    for s in ("王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴")
    for g in ("伟", "芳", "娜", "敏", "静", "丽强", "磊", "军", "洋", "勇")
]
CSRF = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')


class ReleaseDayVisitor(HttpUser):
    # A visitor reads each result page before the next request.
    wait_time = between(2, 8)

    def on_start(self) -> None:
        self.address = f"10.{random.randint(0, 255)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        self.client.headers["X-Forwarded-For"] = self.address
        self.holder = None

    @task(85)
    def form_lookup(self) -> None:
        g = random.randint(1, ROWS)
        self.client.get(
            "/verify", params={"number": f"9{g:011d}", "name": NAMES[g % 100]}, name="/verify?number&name"
        )

    @task(10)
    def qr_page(self) -> None:
        g = random.randint(1, ROWS)
        self.client.get(f"/v/{make_token(f'bench-{g}', [QR_KEY])}", name="/v/[token]")

    @task(5)
    def pdf_download(self) -> None:
        if self.holder is None and not self._log_in():
            return
        self.client.get(f"/me/certificates/9{self.holder:011d}.pdf", name="/me/certificates/[number].pdf")

    def _log_in(self) -> bool:
        holder = random.randint(1, HOLDERS)
        page = self.client.get("/login", name="/login")
        match = CSRF.search(page.text or "")
        if not match:
            return False
        response = self.client.post(
            "/login",
            data={"login": f"139{holder:08d}", "password": HOLDER_PASSWORD, "csrf_token": match.group(1)},
            name="/login",
            allow_redirects=False,
        )
        if response.status_code in (302, 303):
            self.holder = holder
            return True
        return False
