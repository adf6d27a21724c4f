"""Public pages: home, the lookup form, the QR landing page and the JSON API."""

from __future__ import annotations

import logging

from flask import current_app, jsonify, make_response, render_template, request

from ..domain.tokens import read_token
from ..errors import too_many_requests
from ..extensions import limiter
from ..services import events, lookup, lookup_guard
from ..web import is_htmx
from . import bp
from .forms import VerifyForm

logger = logging.getLogger(__name__)


def _lookup_limit_value() -> str:
    return current_app.config["LOOKUP_RATE_LIMIT"]


# The form and the API share one counter per address.
lookup_limit = limiter.shared_limit(_lookup_limit_value, scope="lookup")


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
@lookup_limit
def verify():
    form = VerifyForm(request.args)
    result = None
    captcha_error = None
    number_key = _number_key()
    # Read once: with Redis each read of the miss counter is a round trip.
    captcha_required = lookup_guard.captcha_required()
    number_blocked = lookup_guard.number_blocked(number_key)
    if number_blocked and not lookup_guard.enabled():
        seconds = lookup_guard.number_retry_after(number_key)
        return too_many_requests(seconds, NUMBER_BLOCKED_FORM_MESSAGE.format(seconds=seconds))
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
                captcha_required = address_needs_captcha or lookup_guard.number_blocked(number_key)
    elif number_blocked:
        captcha_required = True

    context = {"form": form, "result": result, "captcha_required": captcha_required, "captcha_error": captcha_error}
    if is_htmx():
        return render_template("public/_verify_result.html", **context)
    return render_template("public/verify.html", **context)


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
@lookup_limit
def api_verify():
    number = request.args.get("number", "")
    name = request.args.get("name", "")
    if not number.strip() or not name.strip():
        return jsonify(error="缺少参数：number（证书编号）和 name（姓名）都必须填写。"), 400
    if lookup_guard.captcha_required():
        message = "来自您地址的未查到结果过多，接口暂停查验（最长 1 小时）；请核对证书编号和姓名后稍后再试，或在网页 /verify 上输入验证码继续查验。"
        return too_many_requests(current_app.config["LOOKUP_MISS_WINDOW_SECONDS"], message)
    number_key = _number_key()
    if lookup_guard.number_blocked(number_key):
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
def captcha_image():
    """A new captcha challenge for this session (changes only the session cookie, no database row)."""
    response = make_response(lookup_guard.new_challenge())
    response.headers["Content-Type"] = "image/png"
    return response
