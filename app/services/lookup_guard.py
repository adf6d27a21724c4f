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

IPv6 clients are counted per /64 network (client_key), because one
subscriber is usually given a whole /64 and could otherwise take a fresh
address, and so fresh limits, for every lookup. IPv4 addresses count alone.

When the storage fails (Redis stopped or restarting), lookups fail open: they
are served without counting, and one warning per outage is logged (the
reasons are in the comment above _storage_failed).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time

from typing import NamedTuple

from flask import Flask, current_app, request, session
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisClusterStorage, RedisStorage, Storage, storage_from_string
from limits.strategies import STRATEGIES, FixedWindowRateLimiter, RateLimiter

from ..domain import captcha
from ..security import sanitise

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


# Seconds a Redis connect or reply may take before the storage counts as down. Without them a
# Redis host that drops packets would hold every lookup for minutes. A parameter in the URI
# (redis://host:6379/0?socket_timeout=2) or RATELIMIT_STORAGE_OPTIONS overrides them.
REDIS_TIMEOUTS = {"socket_connect_timeout": 1.0, "socket_timeout": 1.0}
# While the storage is down, lookups skip it for this long after each failure, then try it again.
OUTAGE_RETRY_SECONDS = 5.0


def init_app(app: Flask) -> None:
    uri = app.config["RATELIMIT_STORAGE_URI"]
    options = dict(REDIS_TIMEOUTS) if uri.split("://", 1)[0] in ("redis", "rediss", "redis+unix") else {}
    options.update(app.config.get("RATELIMIT_STORAGE_OPTIONS") or {})
    storage = storage_from_string(uri, **options)
    app.extensions["lookup_guard"] = storage
    strategy = STRATEGIES[app.config.get("RATELIMIT_STRATEGY") or "fixed-window"]
    app.extensions["lookup_guard_limiter"] = strategy(storage)
    # One script call needs all keys on one server, so not on a Redis cluster.
    one_call = strategy is FixedWindowRateLimiter and isinstance(storage, RedisStorage) and not isinstance(storage, RedisClusterStorage)
    app.extensions["lookup_guard_script"] = storage.get_connection().register_script(CHECK_LOOKUP_SCRIPT) if one_call else None
    # What a storage raises when its server is unreachable; memory storage has no server to lose.
    app.extensions["lookup_guard_errors"] = () if isinstance(storage, MemoryStorage) else (StorageError, storage.base_exceptions)
    app.extensions["lookup_guard_outage"] = {"since": None, "retry_at": 0.0}


# --- storage outages -----------------------------------------------------------------
#
# Lookups fail open: while the storage is down they are served without counting,
# rather than refused with 503. The counters only slow down guessing; losing them
# is what a Redis restart does anyway, which docs/deploy.en.md calls harmless. The
# lookup itself needs only the database, and employers checking a certificate
# (including the API clients of other offices) should not be stopped by a cache
# outage. Guessing is still bounded by the database's own speed, and the counters
# come back with Redis. The outage is logged once per process and outage, with the
# error type only (no address, number or name), and its end once. After a failure
# the storage is left alone for OUTAGE_RETRY_SECONDS, so a Redis that hangs rather
# than refuses costs one lookup a timeout now and then, not every lookup.


def _storage_failed(outage: dict, error: Exception) -> None:
    now = time.monotonic()
    outage["retry_at"] = now + OUTAGE_RETRY_SECONDS
    if outage["since"] is None:
        outage["since"] = now
        logger.warning(
            "Lookup counter storage unavailable (%s); lookups continue without rate limits or captcha until it responds again",
            type(error).__name__,
        )


def _storage_answered(outage: dict) -> None:
    logger.warning("Lookup counter storage responds again after %d s; lookup limits apply again", time.monotonic() - outage["since"])
    outage["since"] = None


def _fail_open(fallback):
    """Run the decorated storage operation; when the storage is down, log the outage and return `fallback()` instead."""

    def decorate(operation):
        @functools.wraps(operation)
        def guarded(*args, **kwargs):
            outage = current_app.extensions["lookup_guard_outage"]
            retry_at = outage["retry_at"]
            if outage["since"] is not None and time.monotonic() < retry_at:
                return fallback()
            try:
                result = operation(*args, **kwargs)
            except current_app.extensions["lookup_guard_errors"] as error:
                _storage_failed(outage, error)
                return fallback()
            # Ended only when no operation nested in this one (check_lookup without the script) failed meanwhile.
            if outage["since"] is not None and outage["retry_at"] == retry_at:
                _storage_answered(outage)
            return result

        return guarded

    return decorate


class LookupCheck(NamedTuple):
    """Result of check_lookup: the address's LOOKUP_RATE_LIMIT state and the two captcha conditions."""

    address_retry_after: int | None  # seconds until the address may look up again, None when within the limit
    captcha_required: bool  # this address has had LOOKUP_MISSES_BEFORE_CAPTCHA not-found results
    number_blocked: bool  # the number has used up LOOKUP_NUMBER_RATE_LIMIT


def _limits_enabled() -> bool:
    return bool(current_app.config.get("RATELIMIT_ENABLED", True))


def _address_limits() -> tuple[RateLimitItem, ...]:
    """Return every limit of LOOKUP_RATE_LIMIT, such as both of "30 per minute;300 per hour"."""
    return _parsed_limits(current_app.config["LOOKUP_RATE_LIMIT"])


@functools.lru_cache(maxsize=32)
def _parsed_limits(text: str) -> tuple[RateLimitItem, ...]:
    """Parse a limit string once per process: parsing took about 5 µs per limit, in every lookup."""
    return tuple(parse_many(text))


def _number_key(number: str) -> str:
    """Return the key part that stands for `number` in the rate-limit storage.

    It is an HMAC, because people type ID numbers into the number field, and
    the storage (Redis) must not hold them.
    """
    key = str(current_app.config["SECRET_KEY"]).encode()
    return hmac.new(key, b"lookup-number:" + number.encode(), hashlib.sha256).hexdigest()[:32]


def _address() -> str:
    return client_key(request.remote_addr or "unknown")


def client_key(address: str) -> str:
    """Return what the lookup limits count for `address`: an IPv4 address itself, an IPv6 address's /64 network.

    An IPv4-mapped IPv6 address (::ffff:192.0.2.1) counts as its IPv4 address.
    """
    if ":" not in address:
        return address  # IPv4: no parsing on the hot path
    return _ipv6_key(address)


@functools.lru_cache(maxsize=4096)
def _ipv6_key(address: str) -> str:
    try:
        parsed = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address
    if parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(ipaddress.IPv6Network((parsed, 64), strict=False))


@_fail_open(lambda: LookupCheck(None, False, False))
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


@_fail_open(lambda: None)
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


@_fail_open(lambda: False)
def captcha_required() -> bool:
    if not enabled():
        return False
    return _storage().get(_miss_key()) >= current_app.config["LOOKUP_MISSES_BEFORE_CAPTCHA"]


@_fail_open(lambda: False)
def record_miss() -> bool:
    """Count a not-found result for this address; return whether its next lookup requires the captcha."""
    if not enabled():
        return False
    count = _storage().incr(_miss_key(), current_app.config["LOOKUP_MISS_WINDOW_SECONDS"])
    threshold = current_app.config["LOOKUP_MISSES_BEFORE_CAPTCHA"]
    if count == threshold:
        logger.warning("Lookup from %s: %s not-found answers, captcha now required", _address(), count)
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
    return _parsed_limits(current_app.config["LOOKUP_NUMBER_RATE_LIMIT"])[0]


def _limiter() -> RateLimiter:
    return current_app.extensions["lookup_guard_limiter"]


def _number_limit_enabled(number: str) -> bool:
    return bool(number) and _limits_enabled()


@_fail_open(lambda: False)
def number_blocked(number: str) -> bool:
    """Tell whether `number` (normalised) has used up its not-found results in the current window."""
    if not _number_limit_enabled(number):
        return False
    return not _limiter().test(_number_limit(), "lookup-number-miss", _number_key(number))


@_fail_open(lambda: True)
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
        logger.warning(
            "Lookup number %s: not-found results reached %s, captcha now required for it", loggable_number(number), limit
        )
    return within_limit


def loggable_number(number: str) -> str:
    """Return a typed certificate number fit for a log line: at most 40 printable characters, ID numbers masked.

    Control and other unprintable characters (NUL, backspace, line breaks, bidi
    overrides) are dropped, not escaped, so an ID number typed with them in it
    is masked whole by the log sanitiser rather than left in pieces.
    """
    printable = "".join(c for c in number if c.isprintable())
    return sanitise(printable[:40])


@_fail_open(lambda: int(_number_limit().get_expiry()))
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
    """Check the typed answer; a right answer clears this address's misses.

    Each challenge gets one answer, right or wrong: it is marked used in the
    storage before the answer is compared. Popping it from the session alone
    would not do, because the session is a cookie that a client can send
    again, and so guess one image without end.
    """
    challenge = session.pop(SESSION_KEY, None)
    if not challenge or challenge.get("exp", 0) < time.time():
        return False
    if not _claim_challenge(challenge["id"]):
        logger.warning("Replayed captcha from %s", _address())
        return False
    if not hmac.compare_digest(challenge.get("h", ""), _answer_hash(challenge["id"], captcha.normalise_answer(text))):
        logger.warning("Wrong captcha answer from %s", _address())
        return False
    _clear_misses()
    return True


@_fail_open(lambda: True)
def _claim_challenge(challenge_id: str) -> bool:
    """Mark the challenge used; return False when it was used before. Without storage only the answer is checked."""
    return _storage().incr(f"captcha-used:{challenge_id}", CHALLENGE_SECONDS) == 1


@_fail_open(lambda: None)
def _clear_misses() -> None:
    _storage().clear(_miss_key())
