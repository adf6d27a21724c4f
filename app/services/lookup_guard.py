"""Lookup abuse controls: not-found answers counted per address, and the captcha they lead to.

Counters live in the rate-limit storage (RATELIMIT_STORAGE_URI), so with
Redis they are shared by every gunicorn worker. The captcha answer is kept in
the signed session cookie only as an HMAC, and each challenge can be solved
once (a counter keyed by its random id).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time

from flask import Flask, current_app, request, session
from limits.storage import Storage, storage_from_string

from ..domain import captcha

logger = logging.getLogger(__name__)

SESSION_KEY = "captcha"
CHALLENGE_SECONDS = 600


def init_app(app: Flask) -> None:
    app.extensions["lookup_guard"] = storage_from_string(app.config["RATELIMIT_STORAGE_URI"])


def _storage() -> Storage:
    return current_app.extensions["lookup_guard"]


def _miss_key() -> str:
    return f"lookup-miss:{request.remote_addr or 'unknown'}"


def enabled() -> bool:
    return bool(current_app.config["LOOKUP_CAPTCHA_ENABLED"])


def captcha_required() -> bool:
    if not enabled():
        return False
    return _storage().get(_miss_key()) >= current_app.config["LOOKUP_MISSES_BEFORE_CAPTCHA"]


def record_miss() -> None:
    """Count a not-found answer to this address."""
    if not enabled():
        return
    count = _storage().incr(_miss_key(), current_app.config["LOOKUP_MISS_WINDOW_SECONDS"])
    if count == current_app.config["LOOKUP_MISSES_BEFORE_CAPTCHA"]:
        logger.warning("Lookup from %s: %s not-found answers, captcha now required", request.remote_addr, count)


def _answer_hash(challenge_id: str, answer: str) -> str:
    key = str(current_app.config["SECRET_KEY"]).encode()
    return hmac.new(key, f"{challenge_id}:{answer}".encode(), hashlib.sha256).hexdigest()


def new_challenge() -> bytes:
    """Start a challenge for this session and return its PNG image."""
    answer = captcha.new_answer()
    challenge_id = secrets.token_urlsafe(12)
    session[SESSION_KEY] = {"id": challenge_id, "h": _answer_hash(challenge_id, answer), "exp": time.time() + CHALLENGE_SECONDS}
    return captcha.render_png(answer)


def solve(text: str) -> bool:
    """Check the typed answer; a right answer clears this address's misses. Each challenge is single-use."""
    challenge = session.pop(SESSION_KEY, None)
    if not challenge or challenge.get("exp", 0) < time.time():
        return False
    if not hmac.compare_digest(challenge.get("h", ""), _answer_hash(challenge["id"], captcha.normalise_answer(text))):
        logger.warning("Wrong captcha answer from %s", request.remote_addr)
        return False
    if _storage().incr(f"captcha-used:{challenge['id']}", CHALLENGE_SECONDS) != 1:
        logger.warning("Replayed captcha from %s", request.remote_addr)
        return False
    _storage().clear(_miss_key())
    return True
