"""Public pages: home, the lookup form, the QR landing page and the JSON API."""

from __future__ import annotations

from flask import current_app, jsonify, render_template, request

from ..domain.tokens import read_token
from ..extensions import limiter
from ..services import lookup
from ..web import is_htmx
from . import bp
from .forms import VerifyForm


def _lookup_limit_value() -> str:
    return current_app.config["LOOKUP_RATE_LIMIT"]


# The form and the API share one counter per address.
lookup_limit = limiter.shared_limit(_lookup_limit_value, scope="lookup")


@bp.get("/")
def index():
    return render_template("public/index.html")


@bp.get("/verify")
@lookup_limit
def verify():
    form = VerifyForm(request.args)
    result = None
    if request.args and form.validate():
        result = lookup.verify(form.number.data, form.name.data)

    if is_htmx():
        return render_template("public/_verify_result.html", form=form, result=result)
    return render_template("public/verify.html", form=form, result=result)


@bp.get("/v/<path:token>")
def token_landing(token: str):
    public_id = read_token(token, current_app.config["QR_TOKEN_KEYS"])
    if public_id is None:
        return render_template("public/token_invalid.html"), 404

    result = lookup.by_public_id(public_id)
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
    return jsonify(lookup.verify(number, name).as_json())
