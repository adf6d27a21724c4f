"""The app plus the comparison routes of `bench/download.py --http`, served by gunicorn as `bench.download_wsgi:app`.

BENCH_STATIC_DIR names the folder whose files `/bench-static/<name>` serves
with `send_from_directory`, which is what Flask's own static route does.
"""

import os

from flask import send_from_directory
from flask_login import login_required

from bench.wsgi_bench import app

_STATIC_DIR = os.environ["BENCH_STATIC_DIR"]


@app.get("/bench-static/<path:filename>")
def bench_static(filename: str):
    return send_from_directory(_STATIC_DIR, filename)


@app.get("/bench-login-only")
@login_required
def bench_login_only():
    """Return an empty body behind login_required: what loading the logged-in holder costs."""
    return ""
