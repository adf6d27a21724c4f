"""Default settings. The instance `config.py` and `CERT_*` variables override them."""

from __future__ import annotations

# Keys are never defaulted: create_app rejects a configuration without them
# unless TESTING is set. `python -m app.instance_setup` writes them to the
# instance folder for a demo.
SECRET_KEY = None
# Keys that sign QR tokens, oldest first. The last one signs; every one listed
# verifies, so a key can be rotated without breaking printed codes.
QR_TOKEN_KEYS: list[str] = []

# None means SQLite in the instance folder (filled in by create_app).
SQLALCHEMY_DATABASE_URI = None
SQLALCHEMY_ENGINE_OPTIONS: dict = {}

# The public address printed on certificates and encoded in QR codes.
BASE_URL = "http://127.0.0.1:5000"

# Upload limit, checked before anything parses the body.
MAX_CONTENT_LENGTH = 50 * 1024 * 1024

BABEL_DEFAULT_LOCALE = "zh_Hans_CN"
BABEL_DEFAULT_TIMEZONE = "Asia/Shanghai"

# memory:// keeps counters per process; production sets redis://.
RATELIMIT_STORAGE_URI = "memory://"
RATELIMIT_HEADERS_ENABLED = True
LOOKUP_RATE_LIMIT = "30 per minute"

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
REMEMBER_COOKIE_HTTPONLY = True
WTF_CSRF_TIME_LIMIT = 3600 * 12
