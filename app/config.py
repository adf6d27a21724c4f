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
# create_app adds hide_parameters=True to these and to every bind's options, so logs get no bound values.
SQLALCHEMY_ENGINE_OPTIONS: dict = {}
# A read replica for the anonymous lookups (/verify, /v/<token>, the JSON API), e.g. a
# PostgreSQL streaming standby. None means the lookups read the primary database. Every
# write, staff page and holder page uses the primary. A revocation shows on the replica
# once it is replayed there; see "Beyond one server" in docs/deploy.en.md.
LOOKUP_DATABASE_URL = None

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
# Limits per uploaded file, in bytes, checked before the file is stored or parsed.
# Each must stay below MAX_CONTENT_LENGTH, which returns 413 for the whole request first.
ROSTER_UPLOAD_MAX_BYTES = 40 * 1024 * 1024
# Seal images above 2 MB are also refused by app/domain/seals.py, so a larger value has no effect.
SEAL_UPLOAD_MAX_BYTES = 2 * 1024 * 1024
# Bounds on a roster sheet's used range (rows, columns, rows x columns), checked before the
# XLSX reader allocates it, because one stray cell at XFD1048576 would otherwise need about
# 550 GB. CSV files are checked for rows and columns only.
ROSTER_MAX_ROWS = 300_000
ROSTER_MAX_COLUMNS = 100
ROSTER_MAX_CELLS = 6_000_000
# Seconds without a progress write (heartbeat) after which a queued or running job is shown
# as interrupted, because its worker died. Running jobs write one at least every 30 s
# (jobs.HEARTBEAT_SECONDS), so this must only exceed the longest single step, such as the
# final commit of a large import.
JOB_STALE_SECONDS = 10 * 60
# ZIP export jobs that may run at once in one web process.
EXPORT_MAX_CONCURRENT = 2

BABEL_DEFAULT_LOCALE = "zh_Hans_CN"
BABEL_DEFAULT_TIMEZONE = "Asia/Shanghai"

# memory:// keeps counters per process; production sets redis://.
RATELIMIT_STORAGE_URI = "memory://"
# No X-RateLimit-* headers, so no lookup response shows counts that other visitors' requests
# change. A 429 response still carries Retry-After (app/errors.py).
RATELIMIT_HEADERS_ENABLED = False
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
# Destination of password reset codes: "outbox" keeps them in memory (development and tests);
# "http" posts them to SMS_GATEWAY_URL (see app/services/sms.py for the request format).
SMS_SENDER = "outbox"
SMS_GATEWAY_URL = None
SMS_GATEWAY_TOKEN = None  # sent as "Authorization: Bearer <token>"
SMS_GATEWAY_TIMEOUT_SECONDS = 10
# Password reset requests (POST /password/forgot), counted in the rate-limit storage above:
# per client address, and per mobile number entered, from any address.
PASSWORD_RESET_ADDRESS_RATE_LIMIT = "10 per hour"
PASSWORD_RESET_PHONE_RATE_LIMIT = "3 per 15 minutes"
# Reset codes sent to one account's mobile number in any 24 hours; later requests send nothing.
PASSWORD_RESET_CODES_PER_PHONE_PER_DAY = 5
# Not-found lookups of one certificate number, counted across all addresses. Past the limit the
# form requires the captcha for that number and the API returns 429; right lookups never count.
LOOKUP_NUMBER_RATE_LIMIT = "20 per minute"
# After this many not-found answers to one address within the window, the form asks for a captcha
# and the API answers 429.
LOOKUP_MISSES_BEFORE_CAPTCHA = 5
LOOKUP_MISS_WINDOW_SECONDS = 3600
# Keys shorter than this, or copied from the documentation, are rejected outside TESTING.
MIN_KEY_LENGTH = 32
# The cookie's own expiry; the idle and absolute limits above are checked on every request.
PERMANENT_SESSION_LIFETIME = SESSION_ABSOLUTE_HOURS * 3600
# Re-sign the cookie only when the session changes. The last-seen stamp changes at
# least once a minute of activity, or every tenth of SESSION_IDLE_MINUTES when that
# is shorter (security.seen_resolution_seconds). That also moves the cookie's expiry
# on, so a request need not pay for a new cookie.
SESSION_REFRESH_EACH_REQUEST = False
# The captcha after repeated not-found answers; tests switch it off except where they test it.
LOOKUP_CAPTCHA_ENABLED = True
# ID numbers are stored encrypted with ID_NUMBER_KEY and looked up by an HMAC
# with ID_HASH_KEY (two separate random keys, at least MIN_KEY_LENGTH characters).
# Never defaulted: losing ID_NUMBER_KEY makes every stored ID number unreadable.
ID_NUMBER_KEY = None
ID_HASH_KEY = None
# Earlier ID_NUMBER_KEYs, read only: values they encrypted stay readable until
# `flask --app wsgi keys rotate-id-key` has re-encrypted them with ID_NUMBER_KEY.
# Remove a key once that command reports every value under the current key.
ID_NUMBER_OLD_KEYS: list[str] = []

# Lookup events, and separately download events, are written in batches of
# this many, or after this many seconds, whichever comes first (statistics
# only; see app/services/events.py).
LOOKUP_EVENT_BUFFER = 100
LOOKUP_EVENT_FLUSH_SECONDS = 10

# URL prefix of the nginx `internal` location aliased to instance/pdf-cache/,
# for example "/_protected/pdf-cache/". When set, the response to a holder's
# PDF download carries an X-Accel-Redirect header to the cached file instead of
# the bytes, and nginx sends the file. Leave it None without nginx in front.
PDF_ACCEL_REDIRECT_PREFIX = None
