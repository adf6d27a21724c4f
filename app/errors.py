"""Error pages: short Chinese pages, and an incident id for errors users cannot fix."""

from __future__ import annotations

import logging
import secrets

from flask import Flask, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

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
        message = "页面已过期或表单无效，请刷新页面后重试。"
        return render_template("error.html", code=400, message=message), 400

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        code = error.code or 500
        message = MESSAGES.get(code, error.description or "请求无法完成。")
        return render_template("error.html", code=code, message=message), code

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception):
        incident = secrets.token_hex(4)
        logger.exception("Incident %s on %s %s", incident, request.method, request.path)
        message = f"系统出现错误，请稍后再试。如需联系我们，请提供事件编号 {incident}。"
        return render_template("error.html", code=500, message=message, incident=incident), 500
