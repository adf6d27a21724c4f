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

# PAdES signing of certificate PDFs. Relative paths are inside the instance
# folder; `flask --app wsgi keys init` writes a demo CA and key there. The CA
# files are both the issuer chain embedded in each signature and the trust
# roots that /verify/file accepts.
SIGNING_KEY_FILE = "keys/signing-key.pem"
SIGNING_CERT_FILE = "keys/signing-cert.pem"
SIGNING_CA_FILES = ["keys/ca-cert.pem"]
SIGNING_KEY_PASSPHRASE = None  # for an encrypted PEM key

# Largest PDF accepted by /verify/file, in bytes; a certificate is about 200 KB.
VERIFY_FILE_MAX_BYTES = 5 * 1024 * 1024

# Upload limit, checked before anything parses the body.
MAX_CONTENT_LENGTH = 50 * 1024 * 1024

BABEL_DEFAULT_LOCALE = "zh_Hans_CN"
BABEL_DEFAULT_TIMEZONE = "Asia/Shanghai"

# memory:// keeps counters per process; production sets redis://.
RATELIMIT_STORAGE_URI = "memory://"
RATELIMIT_HEADERS_ENABLED = True
# Number of reverse proxies (nginx) whose X-Forwarded-For and X-Forwarded-Proto
# headers are trusted; 0 when gunicorn faces clients directly.
PROXY_FIX_X_FOR = 0
LOOKUP_RATE_LIMIT = "30 per minute"
# Days that lookup and download events are kept; `flask --app wsgi events purge` deletes older ones.
LOOKUP_LOG_RETENTION_DAYS = 180

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
REMEMBER_COOKIE_HTTPONLY = True
WTF_CSRF_TIME_LIMIT = 3600 * 12

# --- security (see docs/security.md) ---
# Cookies are sent over TLS only. None means "when BASE_URL starts with https://"
# (create_app decides); production sets BASE_URL to its https address.
SESSION_COOKIE_SECURE = None
REMEMBER_COOKIE_SECURE = None
SESSION_COOKIE_NAME = "session"
# A session ends after 30 minutes without a request, and 12 hours after login in any case.
SESSION_IDLE_MINUTES = 30
SESSION_ABSOLUTE_HOURS = 12
# Five failed logins for one account, or from one address, lock it for 15 minutes.
LOGIN_MAX_FAILURES = 5
LOGIN_LOCK_MINUTES = 15
# Destination of password reset codes: "outbox" keeps them in memory (no SMS gateway is connected).
SMS_SENDER = "outbox"
# Lookups of one certificate number, counted across all addresses.
LOOKUP_NUMBER_RATE_LIMIT = "20 per minute"
# After this many not-found answers to one address within the window, the form asks for a captcha
# and the API answers 429.
LOOKUP_MISSES_BEFORE_CAPTCHA = 5
LOOKUP_MISS_WINDOW_SECONDS = 3600
# Keys shorter than this, or copied from the documentation, are rejected outside TESTING.
MIN_KEY_LENGTH = 32
# The cookie's own expiry; the idle and absolute limits above are checked on every request.
PERMANENT_SESSION_LIFETIME = SESSION_ABSOLUTE_HOURS * 3600
# The captcha after repeated not-found answers; tests switch it off except where they test it.
LOOKUP_CAPTCHA_ENABLED = True
# ID numbers are stored encrypted with ID_NUMBER_KEY and looked up by an HMAC
# with ID_HASH_KEY (two separate random keys, at least MIN_KEY_LENGTH characters).
# Never defaulted: losing ID_NUMBER_KEY makes every stored ID number unreadable.
ID_NUMBER_KEY = None
ID_HASH_KEY = None

# Lookup events are written in batches of this many, or after this many
# seconds, whichever comes first (statistics only; see app/services/events.py).
LOOKUP_EVENT_BUFFER = 100
LOOKUP_EVENT_FLUSH_SECONDS = 10
