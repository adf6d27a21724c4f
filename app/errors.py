"""Error pages: short Chinese pages, and an incident id for errors users cannot fix."""

from __future__ import annotations

import logging
import secrets
import time

from flask import Flask, current_app, flash, jsonify, make_response, redirect, render_template, request
from flask_limiter.errors import RateLimitExceeded
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from .extensions import limiter
from .web import is_htmx

logger = logging.getLogger(__name__)

MESSAGES = {
    400: "请求无效。",
    403: "您没有权限访问此页面。",
    404: "页面不存在。",
    405: "不支持的请求方式。",
    413: "上传的文件过大。",
    429: "请求过于频繁，请稍后再试。",
}


def register(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError):
        logger.warning("CSRF check failed on %s %s: %s", request.method, request.path, error.description)
        message = "页面已过期或表单校验信息无效（可能停留太久），请重新填写并提交。"
        if is_htmx():
            return htmx_message(message)
        if _accepts_get(request.path):
            # Show the same form again, empty, with the message above it.
            flash(message, "error")
            return redirect(request.full_path if request.query_string else request.path, 303)
        return render_template("error.html", code=400, message=message), 400

    @app.errorhandler(RateLimitExceeded)
    def rate_limit_error(error: RateLimitExceeded):
        return too_many_requests(retry_after_seconds(error))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        code = error.code or 500
        message = MESSAGES.get(code, error.description or "请求无法完成。")
        if _is_api():
            response = jsonify(error=message)
        else:
            response = make_response(render_template("error.html", code=code, message=message))
        response.status_code = code
        # Keep the headers the exception carries, such as Allow on a 405 (RFC 9110 section 15.5.6).
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception):
        incident = secrets.token_hex(4)
        logger.exception("Incident %s on %s %s", incident, request.method, request.path)
        message = f"系统出现错误，请稍后再试。如需联系我们，请提供事件编号 {incident}。"
        if _is_api():
            return jsonify(error=message, incident=incident), 500
        return render_template("error.html", code=500, message=message, incident=incident), 500


def retry_after_seconds(error: RateLimitExceeded) -> int:
    """Return the seconds until the breached limit's window resets, or the window length when unknown."""
    breached = limiter.current_limit
    if breached is not None:
        return max(1, int(breached.reset_at - time.time()))
    return max(1, int(error.limit.limit.get_expiry()))


def _is_api() -> bool:
    return request.path.startswith("/api/")


def too_many_requests(retry_after: int, message: str | None = None, *, in_place: bool = False):
    """Return a 429 response with a Retry-After header: JSON under /api/, otherwise the error page.

    htmx 2 swaps no 4xx response, so an htmx request gets the message as a 200
    fragment instead (htmx_message), still with Retry-After. With `in_place`
    the fragment replaces the request's own target, as the lookup forms want:
    their result area then shows the refusal, not the result of an earlier
    lookup, and its aria-live region announces it. Otherwise it goes to the
    page's message area.
    """
    message = message or f"请求过于频繁，请在 {retry_after} 秒后再试。"
    if _is_api():
        response = jsonify(error=message, retry_after=retry_after)
        response.status_code = 429
    elif is_htmx():
        response = htmx_message(message, retarget=not in_place)
    else:
        response = make_response(render_template("error.html", code=429, message=message), 429)
    response.headers["Retry-After"] = str(retry_after)
    return response


def htmx_message(message: str, *, retarget: bool = True):
    """Return `message` to htmx as a 200 fragment, because htmx 2 swaps no 4xx or 5xx response.

    With `retarget` it goes to the page's message area (#messages), else to
    the element the request targets. The refused request's URL is not pushed
    into the browser history (hx-push-url), so Back never replays it.
    """
    response = make_response(render_template("_messages.html", flash_messages=[("error", message)]))
    if retarget:
        response.headers["HX-Retarget"] = "#messages"
        response.headers["HX-Reswap"] = "innerHTML"
    response.headers["HX-Push-Url"] = "false"
    return response


def input_error(message: str, status: int = 400):
    """Return `message` as an error page, or to htmx as a fragment for the page's message area."""
    if is_htmx():
        return htmx_message(message)
    return render_template("error.html", code=status, message=message), status


def _accepts_get(path: str) -> bool:
    adapter = current_app.url_map.bind("localhost")
    try:
        adapter.match(path, method="GET")
    except (MethodNotAllowed, NotFound):
        return False
    except Exception:  # a redirect match (e.g. a missing trailing slash) still serves GET
        return True
    return True
