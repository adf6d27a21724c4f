"""Security response headers (CSP, HSTS and others), session lifetime checks, log sanitising and key checks."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time

from flask import Flask, Response, current_app, request, session
from flask_login import logout_user

from .domain.id_number_text import mask_id_numbers_in_text

logger = logging.getLogger(__name__)

# htmx is configured in templates/base.html not to inject styles or eval code,
# so neither 'unsafe-inline' nor 'unsafe-eval' is needed. data: images are the
# server-rendered TOTP enrolment QR code.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def content_security_policy(**directives: str) -> str:
    """Return CONTENT_SECURITY_POLICY with the named directives replaced (frame_src names frame-src)."""
    replaced = {name.replace("_", "-"): value for name, value in directives.items()}
    parts = []
    for directive in CONTENT_SECURITY_POLICY.split("; "):
        name = directive.split(" ", 1)[0]
        parts.append(f"{name} {replaced.pop(name)}" if name in replaced else directive)
    parts.extend(f"{name} {value}" for name, value in replaced.items())
    return "; ".join(parts)


# The holder's print page embeds the inline PDF with <object>. Only these two
# responses relax the policy: the page may load a same-origin object (frame-src
# falls back to default-src 'self'), and the inline PDF may be embedded by a
# page of this site. Attachment downloads and every other page keep 'none'/DENY.
PRINT_PAGE_HEADERS = {"Content-Security-Policy": content_security_policy(object_src="'self'")}
EMBEDDED_PDF_HEADERS = {
    "Content-Security-Policy": content_security_policy(frame_ancestors="'self'"),
    "X-Frame-Options": "SAMEORIGIN",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Same-origin requests keep their Referer: over HTTPS, Flask-WTF's CSRF check requires one
    # from this site. Other sites get none, so lookup URLs (with names) never leave the site.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
ISSUED_AT_KEY = "iat"
LAST_SEEN_KEY = "seen"
# Rewrite the last-seen stamp at most this often, so not every response sets a cookie:
# a tenth of the idle limit, and never less often than every SEEN_RESOLUTION_SECONDS.
SEEN_RESOLUTION_SECONDS = 60
SEEN_RESOLUTION_FRACTION = 0.1


def seen_resolution_seconds(idle_limit_seconds: float) -> float:
    """Return the resolution of the last-seen stamp, which is also how much earlier than configured an idle session can end."""
    return min(SEEN_RESOLUTION_SECONDS, idle_limit_seconds * SEEN_RESOLUTION_FRACTION)


def configure_security(app: Flask) -> None:
    install_log_sanitiser()
    # Registered after CSRFProtect's check, so a form with a bad token still gets the CSRF error page.
    app.before_request(reject_nul_characters)

    @app.before_request
    def expire_session() -> None:
        if request.endpoint == "static" or "_user_id" not in session:
            return
        now = clock()
        issued = session.get(ISSUED_AT_KEY, 0)
        seen = session.get(LAST_SEEN_KEY, 0)
        idle_limit = app.config["SESSION_IDLE_MINUTES"] * 60
        absolute_limit = app.config["SESSION_ABSOLUTE_HOURS"] * 3600
        if now - seen > idle_limit or now - issued > absolute_limit:
            logger.info("Session of %s expired (idle %.0f s, age %.0f s)", session.get("_user_id"), now - seen, now - issued)
            logout_user()
            session.clear()
            return
        if now - seen > seen_resolution_seconds(idle_limit):
            session[LAST_SEEN_KEY] = now

    @app.after_request
    def add_security_headers(response: Response) -> Response:
        # One pass over the headers a view set, rather than a setdefault per header, each of which scans the list.
        present = {name.lower() for name, _ in response.headers}
        response.headers.extend([(name, value) for name, value in SECURITY_HEADERS.items() if name.lower() not in present])
        if request.endpoint != "static":
            # Pages show personal data or per-user state, and PDFs are personal: keep them out of every cache.
            response.headers["Cache-Control"] = "no-store"
        return response


def clock() -> float:
    """Seconds since the epoch; tests replace it to move sessions past their limits."""
    return time.time()


def stamp_new_session() -> None:
    now = clock()
    session.permanent = True
    session[ISSUED_AT_KEY] = now
    session[LAST_SEEN_KEY] = now


def current_address() -> str | None:
    return request.remote_addr


# --- NUL characters in requests --------------------------------------------------

# PostgreSQL rejects NUL in text values, so a query or an insert carrying one fails
# with a 500. The public lookups handle NUL themselves: they return "not found"
# exactly as for a miss, so NUL reveals nothing and gets no message of its own.
NUL_EXEMPT_ENDPOINTS = frozenset({"public.verify", "public.api_verify", "static"})
# Field values never echoed in the rejection message.
UNECHOED_FIELDS = re.compile(r"password|confirm|code|token|captcha|id_number|login|secret", re.IGNORECASE)
FIELD_LABELS = {
    "q": "搜索内容",
    "login": "登录账号",
    "username": "用户名",
    "password": "密码",
    "confirm": "确认密码",
    "name": "姓名或名称",
    "id_number": "证件号码",
    "phone": "手机号码",
    "reason": "原因",
    "actor": "操作人",
    "action": "操作",
    "target": "对象",
}


def find_nul_field() -> tuple[str, str | None] | None:
    """Return the label of the first query, form or upload field containing NUL, and its value if it may be shown."""
    has_body = request.method not in ("GET", "HEAD", "OPTIONS")
    sources = [request.args, request.form] if has_body else [request.args]
    for values in sources:
        for key, value in values.items(multi=True):
            if "\x00" in key:
                return key.replace("\x00", "\\x00"), None
            if "\x00" in value:
                label = f"{FIELD_LABELS[key]}（{key}）" if key in FIELD_LABELS else key
                return label, None if UNECHOED_FIELDS.search(key) else value
    if has_body:
        for key, upload in request.files.items(multi=True):
            if "\x00" in key or "\x00" in (upload.filename or ""):
                return "上传文件的文件名", upload.filename or ""
    return None


def reject_nul_characters():
    """Return a 400 response naming the field when a query, form field or upload file name contains NUL."""
    if request.endpoint in NUL_EXEMPT_ENDPOINTS:
        return None
    found = find_nul_field()
    if found is None:
        return None
    label, value = found
    echoed_value = "" if value is None else "「%s」" % value.replace("\x00", "\\x00")[:60]
    logger.warning("Rejected a NUL character in field %s on %s %s", label, request.method, redact_path(request.path))
    from .errors import input_error

    return input_error(
        f"输入项「{label}」的内容{echoed_value}含有不允许的空字符（NUL，\\x00），无法处理。请删除该字符后重新提交。"
    )


# --- logs -------------------------------------------------------------------

# Mainland resident ID numbers (18 characters) and anything else that long and
# digit-like; masked to the first 3 and last 2 characters.
_ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])([1-9]\d{5})(\d{8,11})(\d{2}[0-9Xx])(?![0-9A-Za-z])")
_CONTROL = str.maketrans({"\n": "\\n", "\r": "\\r", "\x1b": "\\x1b"})


def sanitise(message: str) -> str:
    """Redact `message` with redact_log_text and escape line breaks, so a log line cannot be forged or leak identities."""
    return redact_log_text(message).translate(_CONTROL)


def redact_log_text(text: str) -> str:
    """Mask whole ID numbers, cut QR tokens and drop PostgreSQL's DETAIL and CONTEXT lines, keeping line breaks."""
    return redact_qr_tokens(drop_database_error_details(mask_id_numbers_in_log(text)))


# PostgreSQL error lines that quote row values: "DETAIL:  Failing row contains (…)", "Key (phone)=(…) already
# exists", and "CONTEXT:  COPY lookup_event, line 1: …". hide_parameters on the engines does not cover them,
# because they are part of the server's error message.
_DATABASE_ERROR_DETAIL = re.compile(r"^(DETAIL|CONTEXT):[^\n]*", re.MULTILINE)


def drop_database_error_details(text: str) -> str:
    """Return `text` with each PostgreSQL DETAIL and CONTEXT line replaced by a note that it was left out.

    NOTE: a quoted value that contains a line break continues on the next line, which stays.
    """
    if "DETAIL:" not in text and "CONTEXT:" not in text:
        return text
    return _DATABASE_ERROR_DETAIL.sub(r"\1: (left out of the log, because it can quote row values)", text)


# Characters of a QR token kept in logs: enough to tell codes apart, too few to open a certificate's page.
QR_TOKEN_KEPT = 6
# The token of a /v/<token> path anywhere in a text, up to a space, a quote, a query string or a fragment.
_QR_TOKEN_TAIL = re.compile(r"(/v/[^\s'\"?#]{%d})[^\s'\"?#]+" % QR_TOKEN_KEPT)


def redact_path(path: str) -> str:
    """Return a request path for a log line: the token of /v/<token> cut to its first 6 characters."""
    if path.startswith("/v/") and len(path) > 3 + QR_TOKEN_KEPT:
        return path[: 3 + QR_TOKEN_KEPT] + "..."
    return path


def redact_qr_tokens(text: str) -> str:
    """Return `text` with every /v/<token> cut as `redact_path` cuts it, wherever the path appears in the text.

    A whole token opens the certificate's public page, so it must not reach a
    log. The sanitiser applies this to every record, which covers lines that
    quote request.path without `redact_path` (the 500 incident line, the CSRF
    failure line) and library lines such as Werkzeug's request log.
    """
    if "/v/" not in text:
        return text
    return _QR_TOKEN_TAIL.sub(r"\1...", text)


def login_name_for_log(name: str, *, known: bool) -> str:
    """Return a typed user name as a log line may show it.

    The name of an existing account is shown as typed (at most 50 characters).
    Any other name may be a password typed into the wrong field, so it is shown
    only as its length and 8 hex digits of an HMAC (SECRET_KEY). Repeated
    attempts with one name still show the same digest, so they can be counted.
    """
    if known:
        return repr(name[:50])
    key = str(current_app.config["SECRET_KEY"]).encode()
    digest = hmac.new(key, b"log:login-name:" + name.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return f"an unknown user name ({len(name)} characters, HMAC {digest[:8]})"


_traceback_formatter = logging.Formatter()


def mask_id_numbers_in_log(text: str) -> str:
    """Mask whole ID numbers and keep line breaks, for multi-line traceback and stack text.

    Plain numbers keep their first 3 and last 2 characters. Typed forms that the
    regular expression misses (full-width digits, spaces, letters attached) are
    then masked by mask_id_numbers_in_text, which keeps 4 at each end.
    """
    masked = _ID_NUMBER.sub(lambda m: m.group(1)[:3] + "*" * (len(m.group(0)) - 5) + m.group(3)[-2:], text)
    return mask_id_numbers_in_text(masked)


def sanitise_traceback(record: logging.LogRecord) -> None:
    """Format the record's exception and stack text now, redacted by `redact_log_text`.

    logging.Formatter.format reuses record.exc_text when it is set, so every
    handler's formatter prints this masked text instead of formatting exc_info
    again. A handler that reads record.exc_info itself bypasses this.
    """
    if record.exc_info and not record.exc_text:
        record.exc_text = redact_log_text(_traceback_formatter.formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact_log_text(record.stack_info)


_installed = False


def install_log_sanitiser() -> None:
    """Wrap the log record factory once per process: every record's message is sanitised as it is created."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        sanitise_traceback(record)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return record
        clean = sanitise(message)
        if clean != message or record.args:
            record.msg = clean
            record.args = ()
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


# --- configuration checks ------------------------------------------------------

# Values that appear in the README, tests or examples; a deployment using one
# would sign sessions and QR codes with a public key.
EXAMPLE_KEYS = frozenset(
    {"old-key", "new-key", "change-me", "changeme", "secret", "dev", "test-secret-key", "test-qr-key-0123456789"}
)


def weak_keys(config) -> list[str]:
    """Name the key settings that are too short or copied from an example."""
    minimum = config["MIN_KEY_LENGTH"]
    weak = []
    secret = str(config.get("SECRET_KEY") or "")
    if len(secret) < minimum or secret in EXAMPLE_KEYS:
        weak.append("SECRET_KEY")
    for name in ("ID_NUMBER_KEY", "ID_HASH_KEY"):
        value = str(config.get(name) or "")
        if len(value) < minimum or value in EXAMPLE_KEYS:
            weak.append(name)
    if config.get("ID_NUMBER_KEY") and config.get("ID_NUMBER_KEY") == config.get("ID_HASH_KEY") and "ID_HASH_KEY" not in weak:
        weak.append("ID_HASH_KEY")
    qr_keys = [str(key) for key in config.get("QR_TOKEN_KEYS") or []]
    # Older keys stay listed to verify codes already printed, so only the signing (last) key must be long.
    if qr_keys and (len(qr_keys[-1]) < minimum or any(key in EXAMPLE_KEYS for key in qr_keys)):
        weak.append("QR_TOKEN_KEYS")
    return weak


def require_safe_xml_parser() -> None:
    """Refuse to start unless openpyxl parses workbooks through defusedxml (no entity expansion)."""
    from openpyxl import xml as openpyxl_xml

    if not openpyxl_xml.DEFUSEDXML:
        from . import ConfigurationError

        raise ConfigurationError(
            "openpyxl 未启用 defusedxml：请安装 requirements.txt 中的 defusedxml，"
            "并且不要设置环境变量 OPENPYXL_DEFUSEDXML=False，否则上传的工作簿可能触发 XML 实体攻击。"
        )
