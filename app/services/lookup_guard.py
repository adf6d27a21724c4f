"""Lookup abuse controls: not-found results counted per address and per certificate number, and the captcha they trigger.

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
from limits import RateLimitItem, parse
from limits.storage import Storage, storage_from_string
from limits.strategies import STRATEGIES, RateLimiter

from ..domain import captcha

logger = logging.getLogger(__name__)

SESSION_KEY = "captcha"
CHALLENGE_SECONDS = 600


def init_app(app: Flask) -> None:
    storage = storage_from_string(app.config["RATELIMIT_STORAGE_URI"])
    app.extensions["lookup_guard"] = storage
    strategy = STRATEGIES[app.config.get("RATELIMIT_STRATEGY") or "fixed-window"]
    app.extensions["lookup_guard_number_limiter"] = strategy(storage)


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


def record_miss() -> bool:
    """Count a not-found result for this address; return whether its next lookup requires the captcha."""
    if not enabled():
        return False
    count = _storage().incr(_miss_key(), current_app.config["LOOKUP_MISS_WINDOW_SECONDS"])
    threshold = current_app.config["LOOKUP_MISSES_BEFORE_CAPTCHA"]
    if count == threshold:
        logger.warning("Lookup from %s: %s not-found answers, captcha now required", request.remote_addr, count)
    return count >= threshold


# --- not-found results per certificate number ----------------------------------------
#
# LOOKUP_NUMBER_RATE_LIMIT counts only not-found results for one number, from any
# address, so right lookups (an employer checking a certificate) never use it up.
# Past the limit that number needs the captcha on the form and gets 429 from the
# API until the window ends. A hard block for everyone would let anyone stop a
# certificate from being verified. Serving right lookups past the limit while
# rejecting wrong ones would reveal to a guesser which name is right, at no cost.


def _number_limit() -> RateLimitItem:
    return parse(current_app.config["LOOKUP_NUMBER_RATE_LIMIT"])


def _number_limiter() -> RateLimiter:
    return current_app.extensions["lookup_guard_number_limiter"]


def _number_limit_enabled(number: str) -> bool:
    return bool(number) and bool(current_app.config.get("RATELIMIT_ENABLED", True))


def number_blocked(number: str) -> bool:
    """Tell whether `number` (normalised) has used up its not-found results in the current window."""
    if not _number_limit_enabled(number):
        return False
    return not _number_limiter().test(_number_limit(), "lookup-number-miss", number)


def record_number_miss(number: str) -> bool:
    """Count a not-found result for `number` (normalised); return False when it went past the limit.

    number_blocked is checked before the lookup, so only requests racing each
    other for the last lookups of a window go past it.
    """
    if not _number_limit_enabled(number):
        return True
    limit = _number_limit()
    limiter = _number_limiter()
    within_limit = limiter.hit(limit, "lookup-number-miss", number)
    if within_limit and not limiter.test(limit, "lookup-number-miss", number):
        # Logged once per window, on the miss that used up the limit.
        logger.warning("Lookup number %s: not-found results reached %s, captcha now required for it", number, limit)
    return within_limit


def number_retry_after(number: str) -> int:
    """Return the seconds until `number`'s not-found counter resets (at least 1)."""
    reset_time, _remaining = _number_limiter().get_window_stats(_number_limit(), "lookup-number-miss", number)
    return max(1, int(reset_time - time.time()) + 1)


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
