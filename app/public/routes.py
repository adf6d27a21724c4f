"""Public pages: home, the lookup form, the QR landing page and the JSON API."""

from __future__ import annotations

import functools
import logging

from flask import current_app, jsonify, make_response, render_template, request

from ..domain.tokens import read_token
from ..errors import too_many_requests
from ..services import events, lookup, lookup_guard
from ..web import is_htmx
from . import bp
from .forms import VerifyForm

logger = logging.getLogger(__name__)


def lookup_limit(view):
    """Count each request against the address's LOOKUP_RATE_LIMIT counter, and return 429 past the limit.

    /verify, /verify/file and the API share the counter. /verify and the API
    count themselves in lookup_guard.check_lookup instead, which reads the
    not-found counters in the same Redis round trip.
    """

    @functools.wraps(view)
    def limited(*args, **kwargs):
        retry_after = lookup_guard.hit_address_limit()
        if retry_after is not None:
            return too_many_requests(retry_after, in_place=True)
        return view(*args, **kwargs)

    return limited


def _number_key() -> str:
    """Return the requested certificate number as lookup_guard counts it: normalised, at most 40 characters."""
    return lookup.normalise_number(request.args.get("number", ""))[:40]


NUMBER_BLOCKED_API_MESSAGE = (
    "该证书编号近期未查到结果的查验过多，接口暂停查验此编号 {seconds} 秒；请在 {seconds} 秒后再试，"
    "或在网页 /verify 上输入验证码后查验。"
)
NUMBER_BLOCKED_FORM_MESSAGE = "该证书编号近期未查到结果的查验过多，请在 {seconds} 秒后再试。"
CAPTCHA_MISSING_MESSAGE = "本次查验需要验证码：请输入图片中的 5 个字符（不区分大小写）后再查验，看不清可点击图片换一张。"


@bp.get("/")
def index():
    return render_template("public/index.html")


@bp.get("/verify")
def verify():
    number_key = _number_key()
    # One Redis round trip: the address's lookup limit and both not-found counters.
    check = lookup_guard.check_lookup(number_key)
    if check.address_retry_after is not None:
        # Under htmx the refusal replaces the result area, so an earlier result cannot pass for this one.
        return too_many_requests(check.address_retry_after, in_place=True)
    captcha_required = check.captcha_required
    number_blocked = check.number_blocked
    form = VerifyForm(request.args)
    result = None
    captcha_error = None
    if number_blocked and not lookup_guard.enabled():
        seconds = lookup_guard.number_retry_after(number_key)
        return too_many_requests(seconds, NUMBER_BLOCKED_FORM_MESSAGE.format(seconds=seconds), in_place=True)
    if request.args and form.validate():
        typed_captcha = request.args.get("captcha", "")
        if (captcha_required or number_blocked) and not lookup_guard.solve(typed_captcha):
            captcha_required = True
            if typed_captcha.strip():
                captcha_error = "验证码不正确或已过期：请输入图片中的 5 个字符（不区分大小写）后再查验，看不清可点击图片换一张。"
            else:
                captcha_error = CAPTCHA_MISSING_MESSAGE
        else:
            # A solved captcha has cleared this address's misses, but not the number's.
            captcha_required = number_blocked
            result = lookup.verify(form.number.data, form.name.data)
            events.record_lookup("form", result.result)
            if result.result == lookup.NOT_FOUND:
                address_needs_captcha = lookup_guard.record_miss()
                lookup_guard.record_number_miss(number_key)
                # With the captcha off a blocked number is refused with 429 instead, so offer no captcha for it.
                captcha_required = address_needs_captcha or (lookup_guard.enabled() and lookup_guard.number_blocked(number_key))
    elif number_blocked:
        captcha_required = True

    htmx = is_htmx()
    context = {"form": form, "result": result, "captcha_required": captcha_required, "captcha_error": captcha_error, "htmx": htmx}
    if htmx:
        return render_fragment("public/_verify_result.html", context)
    return render_template("public/verify.html", **context)


def render_fragment(name: str, context: dict) -> str:
    """Render an htmx fragment with `context`, the Jinja globals (url_for, _) and filters only.

    render_template would also run the context processors, which load the
    anonymous user for `current_user` and add csrf_token, session and g. The
    lookup fragments use none of them, and skipping them saved about 60 µs
    of CPU per htmx lookup (in-process, on the 2-core benchmark VM). A name
    a processor would have added is undefined here and renders as empty.
    """
    return current_app.jinja_env.get_template(name).render(context)


@bp.get("/v/<path:token>")
def token_landing(token: str):
    public_id = read_token(token, current_app.config["QR_TOKEN_KEYS"])
    if public_id is None:
        # Log only the first characters: an invalid token may be a valid one with a character changed.
        logger.warning("Invalid QR token from %s: %r... (%s characters)", request.remote_addr, token[:6], len(token))
        # Counted as not found, because the visitor gets the page shown for a certificate that no longer exists.
        events.record_lookup("qr", lookup.NOT_FOUND)
        return render_template("public/token_invalid.html"), 404

    result = lookup.by_public_id(public_id)
    events.record_lookup("qr", result.result)
    if result.certificate is None:
        return render_template("public/token_invalid.html"), 404
    return render_template("public/token.html", result=result)


@bp.get("/api/v1/verify")
def api_verify():
    number_key = _number_key()
    # One Redis round trip: the address's lookup limit and both not-found counters.
    check = lookup_guard.check_lookup(number_key)
    if check.address_retry_after is not None:
        return too_many_requests(check.address_retry_after)
    number = request.args.get("number", "")
    name = request.args.get("name", "")
    if not number.strip() or not name.strip():
        return jsonify(error="缺少参数：number（证书编号）和 name（姓名）都必须填写。"), 400
    if check.captcha_required:
        message = "来自您地址的未查到结果过多，接口暂停查验（最长 1 小时）；请核对证书编号和姓名后稍后再试，或在网页 /verify 上输入验证码继续查验。"
        return too_many_requests(current_app.config["LOOKUP_MISS_WINDOW_SECONDS"], message)
    if check.number_blocked:
        seconds = lookup_guard.number_retry_after(number_key)
        return too_many_requests(seconds, NUMBER_BLOCKED_API_MESSAGE.format(seconds=seconds))
    result = lookup.verify(number, name)
    events.record_lookup("api", result.result)
    if result.result == lookup.NOT_FOUND:
        lookup_guard.record_miss()
        if not lookup_guard.record_number_miss(number_key):
            # A concurrent request used up the number's limit, so this miss is refused like a later one.
            seconds = lookup_guard.number_retry_after(number_key)
            return too_many_requests(seconds, NUMBER_BLOCKED_API_MESSAGE.format(seconds=seconds))
    return jsonify(result.as_json())


@bp.get("/captcha.png")
@lookup_limit  # each image costs about 5 ms of CPU, so new images count against the address's lookup limit
def captcha_image():
    """A new captcha challenge for this session (changes only the session cookie, no database row)."""
    response = make_response(lookup_guard.new_challenge())
    response.headers["Content-Type"] = "image/png"
    return response
