"""gunicorn settings for production: `gunicorn --config deploy/gunicorn.conf.py wsgi:app`.

The bind address, worker count, timeouts, worker recycling and log
destinations can be overridden by environment variables (GUNICORN_BIND,
GUNICORN_WORKERS, ...), so the systemd unit's environment file tunes one
server without editing this file.
"""

import logging
import multiprocessing
import os
import re

from gunicorn import glogging


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


# nginx proxies to this address; keep it on loopback, or on an address only nginx can reach.
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")

# Sync workers: each lookup is a short CPU-bound request. Two per core plus one
# (gunicorn's documented rule of thumb) keeps the cores busy while one worker waits on the database.
workers = _int("GUNICORN_WORKERS", multiprocessing.cpu_count() * 2 + 1)
worker_class = "sync"

# A roster upload is parsed and previewed inside the request (a few seconds for
# the 5,600-row sample on 2 cores); larger imports run as background jobs.
timeout = _int("GUNICORN_TIMEOUT", 60)
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 30)
keepalive = _int("GUNICORN_KEEPALIVE", 5)

# Recycle workers now and then, so a slow leak in a PDF or spreadsheet library cannot grow without bound.
max_requests = _int("GUNICORN_MAX_REQUESTS", 10000)
max_requests_jitter = _int("GUNICORN_MAX_REQUESTS_JITTER", 1000)

# gunicorn 27's control socket defaults to ~/.gunicorn/gunicorn.ctl, one path
# for every instance of the user, and the systemd unit's home is read-only.
# Nothing here uses the control commands, so the socket is off.
control_socket_disable = True

# Load the app once in the master, before forking, so a configuration error stops startup with its message.
preload_app = True

# Logs go to stdout/stderr, which systemd sends to the journal.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
errorlog = os.environ.get("GUNICORN_ERROR_LOG", "-")
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
# %(U)s is the path without the query string: lookup URLs carry the holder's name
# and certificate number in the query, which must not reach the log.
# %(h)s is the proxy's address; nginx's own log has the client's.
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms "%(a)s"'


class RedactingLogger(glogging.Logger):
    """gunicorn's logger with QR tokens cut from paths and no query strings, in the access log and the error log."""

    def setup(self, cfg):
        super().setup(cfg)
        # The error log quotes request lines too, e.g. "Invalid HTTP request line: 'GET /api/v1/verify?number=…'".
        self.error_log.addFilter(redact_record)

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        atoms["U"] = redact_path(atoms.get("U") or "")
        atoms["r"] = "%s %s %s" % (atoms.get("m"), atoms["U"], atoms.get("H"))
        atoms["q"] = "-"
        atoms["f"] = "-"  # a referrer can be a lookup URL with its query string
        return atoms


def redact_path(path: str) -> str:
    """Return `path` with the token of /v/<token> cut to its first 6 characters."""
    if path.startswith("/v/"):
        return "/v/" + path[3:9] + "..."
    return path


# A query string (up to a space or a quote), and the part of a QR token after its first 6 characters.
_QUERY = re.compile(r"\?[^\s'\"]*")
_TOKEN_TAIL = re.compile(r"(/v/[^\s'\"/?]{0,6})[^\s'\"/?]*")


def redact_text(text: str) -> str:
    """Return `text` with every query string replaced by "?-" and every QR token cut to its first 6 characters."""
    return _TOKEN_TAIL.sub(r"\1...", _QUERY.sub("?-", text))


def redact_record(record: logging.LogRecord) -> bool:
    """Logging filter: rewrite the record's message with redact_text; never drops a record."""
    message = record.getMessage()
    redacted = redact_text(message)
    if redacted != message:
        record.msg, record.args = redacted, ()
    return True


logger_class = RedactingLogger

# Requests arrive from nginx on loopback; its X-Forwarded-* headers are trusted
# by the app's ProxyFix (PROXY_FIX_X_FOR), not by gunicorn.
forwarded_allow_ips = "127.0.0.1"
proxy_allow_ips = "127.0.0.1"


def post_fork(server, worker):
    """Give each worker its own database connections; none may be shared across fork."""
    from app.extensions import db

    app = server.app.wsgi()
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose(close=False)


def worker_exit(server, worker):
    """Write the worker's buffered lookup and download events as it exits (restart, max_requests, shutdown).

    gunicorn calls this in the worker after a graceful stop; a worker killed
    for a timeout never gets here and loses its buffered events.
    """
    from app.services import events

    app = server.app.wsgi()
    with app.app_context():
        events.flush_lookups()
        events.flush_downloads()
