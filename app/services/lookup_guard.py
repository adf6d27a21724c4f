"""Lookup abuse controls: lookups per address, not-found results per address and per certificate number, and the captcha.

Counters live in the rate-limit storage (RATELIMIT_STORAGE_URI), so with
Redis they are shared by every gunicorn worker. The captcha answer is kept in
the signed session cookie only as an HMAC, and each challenge can be solved
once (a counter keyed by its random id).

check_lookup counts a lookup against LOOKUP_RATE_LIMIT (per address, shared
by /verify, /verify/file and the API) and reads both not-found counters. With
Redis and the fixed-window strategy it does this in one script call, so one
round trip. A Flask-Limiter decorator and two separate counter reads took
three round trips per lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time

from typing import NamedTuple

from flask import Flask, current_app, request, session
from limits import RateLimitItem, parse, parse_many
from limits.storage import RedisClusterStorage, RedisStorage, Storage, storage_from_string
from limits.strategies import STRATEGIES, FixedWindowRateLimiter, RateLimiter

from ..domain import captcha

logger = logging.getLogger(__name__)

SESSION_KEY = "captcha"
CHALLENGE_SECONDS = 600


# Counts one lookup in the address's fixed window (as limits' own incr_expire script does)
# and reads the address's not-found counter and the number's not-found window.
# KEYS: address window, address misses, number window. ARGV: address window seconds.
# Returns the address count, the address window's remaining seconds, and the two counters.
CHECK_LOOKUP_SCRIPT = """
local count = redis.call("incrby", KEYS[1], 1)
if count == 1 then
    redis.call("expire", KEYS[1], ARGV[1])
end
return {count, redis.call("ttl", KEYS[1]), tonumber(redis.call("get", KEYS[2]) or 0), tonumber(redis.call("get", KEYS[3]) or 0)}
"""


def init_app(app: Flask) -> None:
    storage = storage_from_string(app.config["RATELIMIT_STORAGE_URI"])
    app.extensions["lookup_guard"] = storage
    strategy = STRATEGIES[app.config.get("RATELIMIT_STRATEGY") or "fixed-window"]
    app.extensions["lookup_guard_limiter"] = strategy(storage)
    # One script call needs all keys on one server, so not on a Redis cluster.
    one_call = strategy is FixedWindowRateLimiter and isinstance(storage, RedisStorage) and not isinstance(storage, RedisClusterStorage)
    app.extensions["lookup_guard_script"] = storage.get_connection().register_script(CHECK_LOOKUP_SCRIPT) if one_call else None


class LookupCheck(NamedTuple):
    """Result of check_lookup: the address's LOOKUP_RATE_LIMIT state and the two captcha conditions."""

    address_retry_after: int | None  # seconds until the address may look up again, None when within the limit
    captcha_required: bool  # this address has had LOOKUP_MISSES_BEFORE_CAPTCHA not-found results
    number_blocked: bool  # the number has used up LOOKUP_NUMBER_RATE_LIMIT


def _limits_enabled() -> bool:
    return bool(current_app.config.get("RATELIMIT_ENABLED", True))


def _address_limits() -> list[RateLimitItem]:
    """Return every limit of LOOKUP_RATE_LIMIT, such as both of "30 per minute;300 per hour"."""
    return parse_many(current_app.config["LOOKUP_RATE_LIMIT"])


def _number_key(number: str) -> str:
    """Return the key part that stands for `number` in the rate-limit storage.

    It is an HMAC, because people type ID numbers into the number field, and
    the storage (Redis) must not hold them.
    """
    key = str(current_app.config["SECRET_KEY"]).encode()
    return hmac.new(key, b"lookup-number:" + number.encode(), hashlib.sha256).hexdigest()[:32]


def _address() -> str:
    return request.remote_addr or "unknown"


def check_lookup(number: str) -> LookupCheck:
    """Count this request against the address's lookup limit and read the not-found counters for it and `number`.

    `number` is normalised as lookup_guard counts it (may be empty). With
    RATELIMIT_ENABLED off nothing is counted and the number is never blocked;
    the captcha still follows LOOKUP_CAPTCHA_ENABLED, as in captcha_required.
    """
    if not _limits_enabled():
        return LookupCheck(None, captcha_required(), False)
    script = current_app.extensions["lookup_guard_script"]
    address_limits = _address_limits()
    if script is None or len(address_limits) != 1:
        # The script counts one address limit; several take a round trip each.
        retry_after = hit_address_limit()
        return LookupCheck(retry_after, captcha_required(), number_blocked(number))
    storage = _storage()
    address_limit = address_limits[0]
    number_limit = _number_limit()
    keys = [
        storage.prefixed_key(address_limit.key_for("lookup-address", _address())),
        storage.prefixed_key(_miss_key()),
        storage.prefixed_key(number_limit.key_for("lookup-number-miss", _number_key(number) if number else "-")),
    ]
    count, ttl, misses, number_misses = script(keys=keys, args=[address_limit.get_expiry()])
    retry_after = None
    if count > address_limit.amount:
        _log_address_limit(count, address_limit)
        retry_after = max(1, int(ttl))
    return LookupCheck(
        retry_after,
        enabled() and misses >= current_app.config["LOOKUP_MISSES_BEFORE_CAPTCHA"],
        bool(number) and number_misses >= number_limit.amount,
    )


def hit_address_limit() -> int | None:
    """Count this request against the address's lookup limit; return the seconds to wait when over it, else None."""
    if not _limits_enabled():
        return None
    limiter = _limiter()
    retry_after = None
    # Every limit is counted, as Flask-Limiter counts a list of limits, and the longest wait is returned.
    for limit in _address_limits():
        if limiter.hit(limit, "lookup-address", _address()):
            continue
        _log_address_limit(_storage().get(limit.key_for("lookup-address", _address())), limit)
        reset_time, _remaining = limiter.get_window_stats(limit, "lookup-address", _address())
        retry_after = max(retry_after or 0, max(1, int(reset_time - time.time()) + 1))
    return retry_after


def _log_address_limit(count: int, limit: RateLimitItem) -> None:
    """Log the first request of a window that went past the address's lookup limit (later ones in it are not logged)."""
    if count == limit.amount + 1:
        logger.warning("Lookup rate limit %s exceeded by %s; lookups rejected until the window ends", limit, _address())


def _storage() -> Storage:
    return current_app.extensions["lookup_guard"]


def _miss_key() -> str:
    return f"lookup-miss:{_address()}"


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


def _limiter() -> RateLimiter:
    return current_app.extensions["lookup_guard_limiter"]


def _number_limit_enabled(number: str) -> bool:
    return bool(number) and _limits_enabled()


def number_blocked(number: str) -> bool:
    """Tell whether `number` (normalised) has used up its not-found results in the current window."""
    if not _number_limit_enabled(number):
        return False
    return not _limiter().test(_number_limit(), "lookup-number-miss", _number_key(number))


def record_number_miss(number: str) -> bool:
    """Count a not-found result for `number` (normalised); return False when it went past the limit.

    number_blocked is checked before the lookup, so only requests racing each
    other for the last lookups of a window go past it.
    """
    if not _number_limit_enabled(number):
        return True
    limit = _number_limit()
    limiter = _limiter()
    key = _number_key(number)
    within_limit = limiter.hit(limit, "lookup-number-miss", key)
    if within_limit and not limiter.test(limit, "lookup-number-miss", key):
        # Logged once per window, on the miss that used up the limit.
        logger.warning("Lookup number %s: not-found results reached %s, captcha now required for it", number, limit)
    return within_limit


def number_retry_after(number: str) -> int:
    """Return the seconds until `number`'s not-found counter resets (at least 1)."""
    reset_time, _remaining = _limiter().get_window_stats(_number_limit(), "lookup-number-miss", _number_key(number))
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
