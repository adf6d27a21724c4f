"""Public pages: home, the lookup form, the QR landing page and the JSON API."""

from __future__ import annotations

import logging

from flask import current_app, jsonify, make_response, render_template, request

from ..domain.tokens import read_token
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


def _number_limit_value() -> str:
    return current_app.config["LOOKUP_NUMBER_RATE_LIMIT"]


def _number_key() -> str:
    return "number:" + lookup.normalise_number(request.args.get("number", ""))[:40]


# One certificate number, from any address: slows guessing a name for a known number.
number_limit = limiter.shared_limit(
    _number_limit_value, scope="lookup-number", key_func=_number_key, exempt_when=lambda: not request.args.get("number")
)


@bp.get("/")
def index():
    return render_template("public/index.html")


@bp.get("/verify")
@lookup_limit
@number_limit
def verify():
    form = VerifyForm(request.args)
    result = None
    captcha_error = None
    if request.args and form.validate():
        if lookup_guard.captcha_required() and not lookup_guard.solve(request.args.get("captcha", "")):
            captcha_error = "验证码不正确或已过期：请输入图片中的 5 个字符（不区分大小写）后再查验，看不清可点击图片换一张。"
        else:
            result = lookup.verify(form.number.data, form.name.data)
            events.record_lookup("form", result.result)
            if result.result == lookup.NOT_FOUND:
                lookup_guard.record_miss()

    context = {"form": form, "result": result, "captcha_required": lookup_guard.captcha_required(), "captcha_error": captcha_error}
    if is_htmx():
        return render_template("public/_verify_result.html", **context)
    return render_template("public/verify.html", **context)


@bp.get("/v/<path:token>")
def token_landing(token: str):
    public_id = read_token(token, current_app.config["QR_TOKEN_KEYS"])
    if public_id is None:
        logger.warning("Invalid QR token from %s: %r", request.remote_addr, token[:80])
        return render_template("public/token_invalid.html"), 404

    result = lookup.by_public_id(public_id)
    events.record_lookup("qr", result.result)
    if result.certificate is None:
        return render_template("public/token_invalid.html"), 404
    return render_template("public/token.html", result=result)


@bp.get("/api/v1/verify")
@lookup_limit
@number_limit
def api_verify():
    number = request.args.get("number", "")
    name = request.args.get("name", "")
    if not number.strip() or not name.strip():
        return jsonify(error="缺少参数：number（证书编号）和 name（姓名）都必须填写。"), 400
    if lookup_guard.captcha_required():
        message = "来自您地址的未查到结果过多，接口暂停查验（最长 1 小时）；请核对证书编号和姓名后稍后再试，或在网页 /verify 上输入验证码继续查验。"
        return jsonify(error=message), 429
    result = lookup.verify(number, name)
    events.record_lookup("api", result.result)
    if result.result == lookup.NOT_FOUND:
        lookup_guard.record_miss()
    return jsonify(result.as_json())


@bp.get("/captcha.png")
def captcha_image():
    """A new captcha challenge for this session (changes only the session cookie, no database row)."""
    response = make_response(lookup_guard.new_challenge())
    response.headers["Content-Type"] = "image/png"
    return response
